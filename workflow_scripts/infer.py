"""Infer: a trained model's cancer probability along the planned needle tract of a new pre-fire DICOM.

The tract is found as the pipeline finds it (needle tip T0 and axis from the
pixels, T1 one throw further), or from a tip and axis given by hand.  The strip
is cropped at the training resolution, predicted, and mapped back onto the
original image.  Writes ``<name>_heatmap.png`` (the probability over the
ultrasound image), ``<name>_prob.npy`` (float32, tissue-region pixels, NaN
outside the strip), ``<name>_prob_crop.npy`` and ``<name>.json`` (geometry).

    tractmap-infer --model results/train/fcn_resnet101/model.pt --dicom new.dcm --out infer/
    tractmap-infer ... --tip 412 160 --axis-deg 12     # manual tip (DICOM px) and axis
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np
import torch
import yaml

from workflow_scripts import data, ingest, models, predict, tract
from workflow_scripts import geometry as geo
from workflow_scripts.errors import InputError, run_cli

MANUAL_HINT = "give the tip and axis by hand: --tip X Y (pre-fire tip, DICOM frame pixels) --axis-deg A"


def locate(image: np.ndarray, meta: dict, settings: dict, tip: list[float] | None, axis_deg: float | None) -> dict:
    """T0 and T1 (one throw along the axis), detected or from the manual tip/axis."""
    mm = tuple(meta["mm_per_px"])
    ov = tract.pixel_overrides(tip, axis_deg, meta["region_bounds_xyxy"][:2], mm)
    try:
        res = tract.tract(image, None, mm, settings["throw_mm"], {**ov, "throw_mm": settings["throw_mm"]})
    except InputError as e:
        raise InputError(e.what, MANUAL_HINT) from None
    return res


def crop_settings(ck: dict, model_path: Path, config_path: Path | None) -> dict:
    """The tract settings the model's training crops were cut with; a ``--config`` that disagrees is an error."""
    trained = ck.get("crop")
    given = None
    if config_path is not None:
        if not config_path.is_file():
            raise InputError(f"config file {config_path} not found", "leave out --config: model.pt holds its settings")
        tract_cfg = (yaml.safe_load(config_path.read_text()) or {}).get("tract") or {}
        given = {k: tract_cfg.get(k) for k in geo.CROP_SETTINGS}
    if trained is None:
        if given is None:
            raise InputError(
                f"{model_path} does not record the crop settings it was trained with (an older tractmap)",
                "pass --config with the config.yaml it was trained with, or retrain it",
            )
        return given
    differ = [
        f"tract.{k} {given[k]} (model: {trained[k]})" for k in geo.CROP_SETTINGS if given and given[k] != trained[k]
    ]
    if differ:
        raise InputError(
            f"{config_path} disagrees with the settings {model_path} was trained with: {', '.join(differ)}",
            "leave out --config to use the model's own settings, or use the model trained with this config",
        )
    return trained


def heatmap(image: np.ndarray, prob: np.ndarray, res: dict, path: Path, title: str) -> None:
    """The probability over the grayscale image, with T0, T1 and a colour bar."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    h, w = image.shape
    fig, ax = plt.subplots(figsize=(min(14, 2 + w / 60), min(10, 1 + h / 60)))
    ax.imshow(image, cmap="gray", vmin=0, vmax=255)
    shown = ax.imshow(np.ma.masked_invalid(prob), cmap="jet", vmin=0, vmax=1, alpha=0.55)
    (x0, y0), (x1, y1) = res["t0_px"], res["t1_px"]
    ax.plot([x0, x1], [y0, y1], "w--", lw=0.8)
    ax.plot([x0], [y0], "wo", ms=4)
    ax.annotate("T0", (x0, y0), color="w", fontsize=8, xytext=(3, -6), textcoords="offset points")
    ax.annotate("T1", (x1, y1), color="w", fontsize=8, xytext=(3, -6), textcoords="offset points")
    fig.colorbar(shown, ax=ax, fraction=0.03, label="cancer probability")
    ax.set_title(title, fontsize=9)
    ax.set_axis_off()
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def infer(
    model_path: Path,
    dicom: Path,
    out: Path,
    config: Path | None = None,
    tip: list[float] | None = None,
    axis_deg: float | None = None,
    frame: str = "last",
    mm_per_px: tuple[float, float] | None = None,
    normalise: str | None = None,
) -> dict:
    """Run the whole inference for one DICOM; returns the geometry and output paths.

    The tract is cropped with the settings recorded in the model (``config``, if given, must agree), and
    normalised as the model was trained (``normalise``, if given, must agree)."""
    try:
        image, meta = ingest.read_ultrasound(dicom, frame, mm_per_px)
    except InputError as e:
        raise InputError(
            e.what,
            f"{e.hint}; or give the pixel size by hand: --mm-per-px SX SY (and, if no needle is "
            f"visible, {MANUAL_HINT})",
        ) from None
    dev = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    model, ck = models.load_checkpoint(model_path, dev, normalise)  # after the cheap checks: a bad DICOM fails fast
    settings = crop_settings(ck, model_path, config)
    res = locate(image, meta, settings, tip, axis_deg)
    crop, frame_info = tract.crop_strip(
        image, res, tuple(meta["mm_per_px"]), settings["width_mm"], settings["out_mm_per_px"], settings["margin_mm"]
    )
    prob_crop = predict.probability(model, ck["norm"], crop, dev)
    to_crop = geo.invert(np.array(frame_info["crop_to_original"]))
    prob = geo.warp(prob_crop.astype(float), to_crop, image.shape, order=1, cval=np.nan).astype(np.float32)
    out.mkdir(parents=True, exist_ok=True)
    name = dicom.stem
    np.save(out / f"{name}_prob.npy", prob)
    np.save(out / f"{name}_prob_crop.npy", prob_crop.astype(np.float32))
    arch = ck["config"]["arch"]
    heatmap(
        image,
        prob,
        res,
        out / f"{name}_heatmap.png",
        f"{arch}: cancer probability along the planned tract ({res['source']['t0']} tip, throw "
        f"{settings['throw_mm']} mm)",
    )
    summary = {
        **res,
        **frame_info,
        "model": str(model_path),
        "arch": arch,
        "selected_epoch": ck.get("epoch"),
        "crop_settings": settings,
        "region_bounds_xyxy": meta["region_bounds_xyxy"],
        "max_probability": float(np.nanmax(prob_crop)),
        "outputs": [f"{name}_heatmap.png", f"{name}_prob.npy", f"{name}_prob_crop.npy"],
    }
    (out / f"{name}.json").write_text(json.dumps(summary, indent=1))
    return summary


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(
        description=__doc__.splitlines()[0],
        formatter_class=argparse.RawDescriptionHelpFormatter,
        epilog="\n".join(__doc__.splitlines()[1:]),
    )
    p.add_argument("--model", required=True, help="results/train/<model>/model.pt")
    p.add_argument("--dicom", required=True, help="pre-fire ultrasound DICOM")
    p.add_argument("--out", required=True, help="output directory")
    p.add_argument(
        "--config",
        type=Path,
        help="optional: a config.yaml whose tract settings must match the ones model.pt was trained with",
    )
    p.add_argument("--tip", type=float, nargs=2, metavar=("X", "Y"), help="manual pre-fire tip, DICOM frame pixels")
    p.add_argument("--axis-deg", type=float, help="manual needle advance direction, degrees (x right, y down)")
    p.add_argument(
        "--mm-per-px",
        type=float,
        nargs=2,
        metavar=("SX", "SY"),
        help="manual pixel size for a DICOM without calibration",
    )
    p.add_argument("--frame", default="last")
    p.add_argument(
        "--normalise",
        choices=data.NORMALISE,
        help="optional: the input normalisation expected; an error if model.pt was trained with another "
        "(left out, the model's own is applied)",
    )
    a = p.parse_args(argv)

    def go() -> None:
        if (a.tip is None) != (a.axis_deg is None):
            raise InputError("--tip and --axis-deg go together", MANUAL_HINT)
        s = infer(
            Path(a.model), Path(a.dicom), Path(a.out), a.config, a.tip, a.axis_deg, a.frame, a.mm_per_px, a.normalise
        )
        print(
            f"{a.dicom}: tract {s['sampled_length_mm']:.1f} mm at {s['axis_deg']:.1f} deg ({s['source']['t0']} tip); "
            f"max cancer probability {s['max_probability']:.2f}; wrote {', '.join(s['outputs'])} to {a.out}"
        )

    run_cli(go, file=a.dicom)


if __name__ == "__main__":
    main()
