"""One biopsy's files and truth, the demo sample sheets, and the command line."""

from __future__ import annotations

import argparse
import json
from dataclasses import asdict
from pathlib import Path

import numpy as np
import pandas as pd

from .annotations import write_geojson
from .histology import write_wsi
from .truth import (
    BiopsyTruth,
    biopsy_rng,
    place_on_slide,
    sample_truth,
    truth_label,
    truth_record,
)
from .ultrasound import export_dicom, render_prefire, render_ultrasound, write_dicom


def generate_biopsy(
    seed: int,
    participant_id: str,
    biopsy_id: str,
    out: dict[str, Path],
    large_slide: bool = False,
    varied: bool = False,
) -> BiopsyTruth:
    """Render every file of one biopsy and its truth."""
    t = sample_truth(seed, participant_id, biopsy_id, large_slide, varied)
    rng = biopsy_rng(seed + 1, participant_id, biopsy_id)
    place_on_slide(t, rng)
    pre = render_prefire(t, first_noise_seed=100)
    write_dicom(t, out["prefire"], pre, rng)
    post_t = BiopsyTruth(**{**asdict(t), "frames": 1})
    shift = tuple(t.nuisance.get("shift_mm", (0.0, 0.0)))
    write_dicom(post_t, out["postfire"], [render_ultrasound(t, np.array(t.t1_mm), noise_seed=200, shift_mm=shift)], rng)
    write_wsi(t, out["wsi"])
    write_geojson(t, out["annotation"], rng)
    out["truth_mask"].parent.mkdir(parents=True, exist_ok=True)
    from skimage.io import imsave

    imsave(out["truth_mask"], truth_label(t), check_contrast=False)
    out["truth"].write_text(json.dumps(truth_record(t), indent=1))
    return t


EXPORT_EXTENSIONS = {"png": "png", "jpg": "jpeg"}  # file extension -> export format (rules/demo.smk: demo_export)


def cohort_sheets(
    n: int, seed: int, data_dir: str, exports: float = 0.0, render_seed: int = 2026, varied: bool = False
) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Participants (Table 1 characteristics) and biopsies sheets for a demo cohort.

    A share ``exports`` of the biopsies has its ultrasound as PNG or JPEG exports of the rendered
    DICOMs (half each), with ``us_mm_per_px`` set to the spacing the DICOMs are rendered at (with
    ``render_seed`` and ``varied``, as config demo.seed and demo.varied); 0 (default) leaves the sheet as it was.
    """
    rng = np.random.default_rng(seed)
    export_rng = np.random.default_rng([seed, 28])  # a separate stream: the other draws stay as they were
    cat = lambda opts, p=None: str(rng.choice(opts, p=p))  # noqa: E731
    parts, biops = [], []
    for i in range(1, n + 1):
        pid = f"P{i:03d}"
        parts.append(
            {
                "participant_id": pid,
                "age": int(np.clip(rng.normal(53, 11), 28, 85)),
                "lesion_number": cat(["solitary", "numerous"], [0.88, 0.12]),
                "birads": cat(["4a", "4b", "4c", "5"], [0.07, 0.12, 0.22, 0.59]),
                "side": cat(["left", "right"]),
                "quadrant": cat(["UOQ", "LOQ", "UIQ", "LIQ"], [0.58, 0.12, 0.19, 0.11]),
                "volume_mm3": round(float(rng.lognormal(1.0, 0.8)), 2),
                "orientation": cat(["parallel", "not parallel"], [0.87, 0.13]),
                "echo_pattern": cat(["hypoechoic", "heterogeneous"], [0.94, 0.06]),
                "margin": cat(["circumscribed", "not circumscribed"], [0.1, 0.9]),
                "shape": cat(["oval/round", "irregular"], [0.05, 0.95]),
                "calcification": cat(["absent", "in mass"], [0.52, 0.48]),
                "vascularity": cat(["absent", "internal", "rim"], [0.19, 0.7, 0.11]),
                "histology": cat(["invasive", "DCIS"], [0.87, 0.13]),
            }
        )
        for b in range(1, int(rng.integers(1, 5)) + 1):
            bid = f"B{b}"
            stem = f"{data_dir}/{pid}/{bid}"
            ext = str(export_rng.choice(list(EXPORT_EXTENSIONS))) if export_rng.random() < exports else "dcm"
            row = {
                "participant_id": pid,
                "biopsy_id": bid,
                "prefire": f"{stem}_prefire.{ext}",
                "postfire": f"{stem}_postfire.{ext}",
                "wsi": f"{stem}_wsi.ome.tif",
                "annotation": f"{stem}_annotations.geojson",
            }
            if ext != "dcm":
                row["us_mm_per_px"] = f"{sample_truth(render_seed, pid, bid, varied=varied).mm_per_px:.6g}"
            biops.append(row)
    return pd.DataFrame(parts), pd.DataFrame(biops)


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    sub = p.add_subparsers(dest="cmd", required=True)
    s = sub.add_parser("sheets", help="write participants.tsv and biopsies.tsv for a demo cohort")
    s.add_argument("--n", type=int, default=24)
    s.add_argument("--seed", type=int, default=2026)
    s.add_argument("--data-dir", default="demo/data")
    s.add_argument("--outdir", default="demo")
    s.add_argument("--exports", type=float, default=0.0, help="share of biopsies with PNG/JPEG ultrasound exports")
    s.add_argument("--render-seed", type=int, default=2026, help="config demo.seed (for the exports' us_mm_per_px)")
    s.add_argument("--varied", action="store_true", help="config demo.varied (for the exports' us_mm_per_px)")
    e = sub.add_parser("export", help="export a rendered DICOM's saved frame as PNG or JPEG (format by extension)")
    e.add_argument("dicom", type=Path)
    e.add_argument("out", type=Path)
    e.add_argument("--quality", type=int, default=85, help="JPEG quality")
    b = sub.add_parser("biopsy", help="render one biopsy")
    b.add_argument("--seed", type=int, required=True)
    b.add_argument("--participant", required=True)
    b.add_argument("--biopsy", required=True)
    b.add_argument("--large-slide", action="store_true")
    b.add_argument("--varied", action="store_true", help="domain-randomised: the nuisances of real data")
    for k in ("prefire", "postfire", "wsi", "annotation", "truth", "truth_mask"):
        b.add_argument(f"--{k.replace('_', '-')}", required=True, type=Path)
    a = p.parse_args(argv)
    if a.cmd == "sheets":
        parts, biops = cohort_sheets(a.n, a.seed, a.data_dir, a.exports, a.render_seed, a.varied)
        Path(a.outdir).mkdir(parents=True, exist_ok=True)
        parts.to_csv(Path(a.outdir) / "participants.tsv", sep="\t", index=False)
        biops.to_csv(Path(a.outdir) / "biopsies.tsv", sep="\t", index=False)
    elif a.cmd == "export":
        export_dicom(a.dicom, a.out, EXPORT_EXTENSIONS[a.out.suffix.lstrip(".").lower()], a.quality)
    else:
        out = {k: getattr(a, k) for k in ("prefire", "postfire", "wsi", "annotation", "truth", "truth_mask")}
        t = generate_biopsy(a.seed, a.participant, a.biopsy, out, a.large_slide, a.varied)
        print(
            f"rendered {a.participant}/{a.biopsy}: slide {t.slide_shape[1]}x{t.slide_shape[0]} px at "
            f"{t.slide_um_per_px} um/px"
        )


if __name__ == "__main__":
    main()
