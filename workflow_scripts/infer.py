"""Infer: a trained model's cancer probability along the planned needle tract of a new pre-fire DICOM.

The tract is found as the pipeline finds it (needle tip T0 and axis from the
pixels, T1 one throw further), or from a tip and axis given by hand.  The strip
is cropped at the training resolution, predicted, and mapped back onto the
original image.  Writes ``<name>_heatmap.png`` (the probability over the
ultrasound image), ``<name>_prob.npy`` (float32, tissue-region pixels, NaN
outside the strip), ``<name>_prob_crop.npy`` and ``<name>.json`` (geometry).

``--model`` is one model.pt, or a folder of cross-validation fold models
(``results/cv/<model>``: its ``fold*/model.pt``).  A folder's models are averaged,
as the evaluation's fold ensemble is, and the per-pixel SD of their probabilities is
written too: ``<name>_uncertainty.png`` beside the heatmap, ``<name>_prob_sd.npy``.

    tractmap-infer --model results/train/fcn_resnet101/model.pt --dicom new.dcm --out infer/
    tractmap-infer --model results/cv/fcn_resnet101 --dicom new.dcm --out infer/   # the fold ensemble
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
        res = tract.tract(
            image, None, mm, settings["throw_mm"], {**ov, "length_mm": settings["throw_mm"]}, manual="override"
        )
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


def frame_choice(frame: str | None, config_path: Path | None) -> str | int | None:
    """The cine frame to read: ``--frame``, else ``--config``'s ingest.frame, else none (a cine is then an error)."""
    if frame is not None or config_path is None:
        return frame
    if not config_path.is_file():
        raise InputError(f"config file {config_path} not found", "leave out --config: model.pt holds its settings")
    return ((yaml.safe_load(config_path.read_text()) or {}).get("ingest") or {}).get("frame")


def model_files(model_path: Path) -> list[Path]:
    """The model.pt files of ``--model``: the file itself, or a folder's ``fold*/model.pt`` (else its ``*.pt``)."""
    if not model_path.is_dir():
        return [model_path]
    found = sorted(model_path.glob("fold*/model.pt")) or sorted(model_path.glob("*.pt"))
    if not found:
        raise InputError(
            f"folder {model_path} holds no fold models (fold*/model.pt) and no *.pt file",
            "give one model.pt, or the cross-validation folder results/cv/<model> after training its folds",
        )
    return found


def load_models(paths: list[Path], device: torch.device, config: Path | None, normalise: str | None) -> tuple:
    """Each model with its checkpoint, and the crop settings they share (fold models that cut their crops
    differently cannot be averaged pixel by pixel)."""
    loaded = [models.load_checkpoint(p, device, normalise) for p in paths]
    settings = [crop_settings(ck, p, config) for p, (_, ck) in zip(paths, loaded, strict=True)]
    for p, s in zip(paths[1:], settings[1:], strict=True):
        if s != settings[0]:
            raise InputError(
                f"{p} was trained on crops cut with {s}, {paths[0]} with {settings[0]}",
                "average only fold models of one cross-validation run (results/cv/<model>)",
            )
    return loaded, settings[0]


def heatmap(
    image: np.ndarray,
    prob: np.ndarray,
    res: dict,
    path: Path,
    title: str,
    label: str = "cancer probability",
    vmax: float = 1.0,
) -> None:
    """A map (probability, or its SD across fold models) over the grayscale image, with T0, T1 and a colour bar."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    h, w = image.shape
    fig, ax = plt.subplots(figsize=(min(14, 2 + w / 60), min(10, 1 + h / 60)))
    ax.imshow(image, cmap="gray", vmin=0, vmax=255)
    shown = ax.imshow(np.ma.masked_invalid(prob), cmap="jet", vmin=0, vmax=vmax, alpha=0.55)
    (x0, y0), (x1, y1) = res["t0_px"], res["t1_px"]
    ax.plot([x0, x1], [y0, y1], "w--", lw=0.8)
    ax.plot([x0], [y0], "wo", ms=4)
    ax.annotate("T0", (x0, y0), color="w", fontsize=8, xytext=(3, -6), textcoords="offset points")
    ax.annotate("T1", (x1, y1), color="w", fontsize=8, xytext=(3, -6), textcoords="offset points")
    fig.colorbar(shown, ax=ax, fraction=0.03, label=label)
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
    frame: str | None = None,
    mm_per_px: tuple[float, float] | None = None,
    normalise: str | None = None,
) -> dict:
    """Run the whole inference for one DICOM; returns the geometry and output paths.

    ``model_path`` is one model.pt or a folder of fold models (averaged; their SD is the uncertainty map).
    The tract is cropped with the settings recorded in the model(s) (``config``, if given, must agree), and
    each model's input normalised as it was trained (``normalise``, if given, must agree).  A cine's frame is
    ``frame``, else ``config``'s ingest.frame; with neither, only a single-frame file is read."""
    try:
        image, meta = ingest.read_ultrasound(dicom, frame=frame_choice(frame, config), mm_per_px=mm_per_px)
    except InputError as e:
        raise InputError(
            e.what,
            f"{e.hint}; or give the pixel size by hand: --mm-per-px SX SY (and, if no needle is "
            f"visible, {MANUAL_HINT})",
        ) from None
    dev = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    paths = model_files(model_path)
    loaded, settings = load_models(paths, dev, config, normalise)  # after the cheap checks: a bad DICOM fails fast
    res = locate(image, meta, settings, tip, axis_deg)
    crop, frame_info = tract.crop_strip(
        image, res, tuple(meta["mm_per_px"]), settings["width_mm"], settings["out_mm_per_px"], settings["margin_mm"]
    )
    probs = np.stack([predict.probability(model, ck["norm"], crop, dev) for model, ck in loaded])
    prob_crop = probs.mean(0)
    to_crop = geo.invert(np.array(frame_info["crop_to_original"]))

    def to_image(a: np.ndarray) -> np.ndarray:
        return geo.warp(a.astype(float), to_crop, image.shape, order=1, cval=np.nan).astype(np.float32)

    prob = to_image(prob_crop)
    out.mkdir(parents=True, exist_ok=True)
    name = dicom.stem
    np.save(out / f"{name}_prob.npy", prob)
    np.save(out / f"{name}_prob_crop.npy", prob_crop.astype(np.float32))
    arch = ", ".join(dict.fromkeys(ck["config"]["arch"] for _, ck in loaded))
    what = arch if len(loaded) == 1 else f"{arch} ensemble of {len(loaded)} fold models"
    where = f"({res['source']['t0']} tip, throw {settings['throw_mm']} mm)"
    title = f"{what}: cancer probability along the planned tract {where}"
    heatmap(image, prob, res, out / f"{name}_heatmap.png", title)
    outputs = [f"{name}_heatmap.png", f"{name}_prob.npy", f"{name}_prob_crop.npy"]
    if len(loaded) > 1:
        sd = to_image(probs.std(0))  # the spread of the fold models' probabilities, pixel by pixel
        np.save(out / f"{name}_prob_sd.npy", sd)
        heatmap(
            image,
            sd,
            res,
            out / f"{name}_uncertainty.png",
            f"{what}: SD of the folds' cancer probabilities {where}",
            label="SD across fold models",
            vmax=0.5,  # the largest SD of values in [0, 1]
        )
        outputs += [f"{name}_uncertainty.png", f"{name}_prob_sd.npy"]
    summary = {
        **res,
        **frame_info,
        "model": str(model_path),
        "models": [str(p) for p in paths],
        "arch": arch,
        "selected_epoch": [ck.get("epoch") for _, ck in loaded] if len(loaded) > 1 else loaded[0][1].get("epoch"),
        "crop_settings": settings,
        "region_bounds_xyxy": meta["region_bounds_xyxy"],
        "max_probability": float(np.nanmax(prob_crop)),
        "outputs": outputs,
    }
    (out / f"{name}.json").write_text(json.dumps(summary, indent=1))
    return summary


def parser() -> argparse.ArgumentParser:
    """The command line; its settings come from model.pt or --config, never from defaults of its own."""
    p = argparse.ArgumentParser(
        description=__doc__.splitlines()[0],
        formatter_class=argparse.RawDescriptionHelpFormatter,
        epilog="\n".join(__doc__.splitlines()[1:]),
    )
    p.add_argument(
        "--model", required=True, help="results/train/<model>/model.pt, or a folder of fold models (results/cv/<model>)"
    )
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
    p.add_argument(
        "--frame",
        help="a cine's frame: last (the frozen one), first or an index; left out: --config's ingest.frame, "
        "else only a single-frame DICOM is read",
    )
    p.add_argument(
        "--normalise",
        choices=data.NORMALISE,
        help="optional: the input normalisation expected; an error if model.pt was trained with another "
        "(left out, the model's own is applied)",
    )
    return p


def main(argv: list[str] | None = None) -> None:
    a = parser().parse_args(argv)

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
