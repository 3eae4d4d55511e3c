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
    place_cores_on_slide,
    place_on_slide,
    sample_truth,
    truth_label,
    truth_record,
)
from .ultrasound import export_dicom, render_prefire, render_ultrasound, write_dicom


def slide_truths(
    seed: int,
    participant_id: str,
    biopsy_ids: list[str],
    large_slide: bool = False,
    varied: bool = False,
    named: bool = False,
    strokes: tuple[float, ...] = (22.0,),
) -> list[BiopsyTruth]:
    """The truths of the cores on one slide (one biopsy: as a single-core slide), placed on it.

    Several cores lie side by side, pointing either way, some in fragments; ``named``: the pathologist
    drew a named outline around each core.  A few biopsies carry a QuPath mark of their dyed end.  Each
    gun's stroke is one of ``strokes``."""
    ts = [sample_truth(seed, participant_id, b, large_slide, varied, strokes=strokes) for b in biopsy_ids]
    for t in ts:
        extra = biopsy_rng(seed + 3, participant_id, t.biopsy_id)  # a stream of its own: the draws above stay
        t.dye_mark = str(extra.choice(["", "", "", "", "", "Point", "LineString", "Polygon"]))
        if len(ts) > 1:
            t.slide_id, t.core_name = f"S-{'-'.join(biopsy_ids)}", t.biopsy_id if named else ""
            if extra.random() < 0.5:
                t.gaps_mm = [[float(extra.uniform(0.3, 0.7) * t.throw_mm), float(extra.uniform(0.2, 0.7))]]
    if len(ts) == 1:
        place_on_slide(ts[0], biopsy_rng(seed + 1, participant_id, biopsy_ids[0]))
    else:
        place_cores_on_slide(ts, biopsy_rng(seed + 1, participant_id, "+".join(biopsy_ids)))
    return ts


def generate_ultrasound(t: BiopsyTruth, out: dict[str, Path]) -> None:
    """Render one biopsy's pre- and post-fire DICOMs and write its truth (slide placement included)."""
    rng = biopsy_rng(t.seed[0] + 2, t.participant_id, t.biopsy_id)
    write_dicom(t, out["prefire"], render_prefire(t, first_noise_seed=100), rng)
    post_t = BiopsyTruth(**{**asdict(t), "frames": 1})
    shift = tuple(t.nuisance.get("shift_mm", (0.0, 0.0)))
    write_dicom(post_t, out["postfire"], [render_ultrasound(t, np.array(t.t1_mm), noise_seed=200, shift_mm=shift)], rng)
    out["truth_mask"].parent.mkdir(parents=True, exist_ok=True)
    from skimage.io import imsave

    imsave(out["truth_mask"], truth_label(t), check_contrast=False)
    out["truth"].write_text(json.dumps(truth_record(t), indent=1))


def generate_slide(ts: list[BiopsyTruth], out: dict[str, Path]) -> None:
    """Render one slide carrying the cores ``ts`` and its QuPath export."""
    write_wsi(ts, out["wsi"])
    write_geojson(
        ts, out["annotation"], biopsy_rng(ts[0].seed[0] + 4, ts[0].participant_id, ts[0].slide_id or ts[0].biopsy_id)
    )


def generate_biopsy(
    seed: int,
    participant_id: str,
    biopsy_id: str,
    out: dict[str, Path],
    large_slide: bool = False,
    varied: bool = False,
) -> BiopsyTruth:
    """Render every file of one biopsy on a slide of its own, and its truth."""
    (t,) = slide_truths(seed, participant_id, [biopsy_id], large_slide, varied)
    generate_ultrasound(t, out)
    generate_slide([t], out)
    return t


EXPORT_EXTENSIONS = {"png": "png", "jpg": "jpeg"}  # file extension -> export format (rules/demo.smk: demo_export)


def cohort_sheets(
    n: int,
    seed: int,
    data_dir: str,
    render_seed: int | None = None,
    multi_share: float = 0.4,
    exports: float = 0.0,
    varied: bool = False,
) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Participants (Table 1 characteristics) and biopsies sheets for a demo cohort.

    About ``multi_share`` of the participants with several biopsies have all their cores on one slide;
    the sheet picks each core by its QuPath name or by its position on the slide.  A share ``exports`` of
    the biopsies has its ultrasound as PNG or JPEG exports of the rendered DICOMs (half each), with
    ``us_mm_per_px`` set to the spacing the DICOMs are rendered at.  Positions and spacings are those of
    the cohort as rendered with ``render_seed`` (config demo.seed; default ``seed``) and ``varied``."""
    render_seed = seed if render_seed is None else render_seed
    rng = np.random.default_rng(seed)
    slides = np.random.default_rng([seed, 1])  # streams of their own: the draws above stay as they were
    export_rng = np.random.default_rng([seed, 28])
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
        bids = [f"B{b}" for b in range(1, int(rng.integers(1, 5)) + 1)]
        shared = len(bids) > 1 and slides.random() < multi_share
        if shared:  # the lab sheet records each core's name or its position: names and positions alternate
            named = sum(1 for r in biops if r["core"] == "B1") % 2 == 0
            ts = slide_truths(render_seed, pid, bids, varied=varied, named=named)
            core = {t.biopsy_id: t.biopsy_id if named else str(t.core_position) for t in ts}
        for bid in bids:
            stem, slide = f"{data_dir}/{pid}/{bid}", f"{data_dir}/{pid}/{'S1' if shared else bid}"
            ext = str(export_rng.choice(list(EXPORT_EXTENSIONS))) if export_rng.random() < exports else "dcm"
            row = {
                "participant_id": pid,
                "biopsy_id": bid,
                "prefire": f"{stem}_prefire.{ext}",
                "postfire": f"{stem}_postfire.{ext}",
                "wsi": f"{slide}_wsi.ome.tif",
                "annotation": f"{slide}_annotations.geojson",
                "core": core[bid] if shared else "",
            }
            if ext != "dcm":
                row["us_mm_per_px"] = f"{sample_truth(render_seed, pid, bid, varied=varied).mm_per_px:.6g}"
            biops.append(row)
    return pd.DataFrame(parts), pd.DataFrame(biops)


# the files each render command writes (one required option each)
RENDERED = {"ultrasound": ("prefire", "postfire", "truth", "truth_mask"), "slide": ("wsi", "annotation")}


def parser() -> argparse.ArgumentParser:
    """The demo generator's command line; what config.yaml's demo section sets is required, never defaulted."""
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    sub = p.add_subparsers(dest="cmd", required=True)
    s = sub.add_parser("sheets", help="write participants.tsv and biopsies.tsv for a demo cohort")
    s.add_argument("--n", type=int, default=24, help="participants")
    s.add_argument("--seed", type=int, required=True, help="the sheets' own seed (the demo's: 2026)")
    s.add_argument("--data-dir", required=True, help="where the sheets say the files are: config demo.root + /data")
    s.add_argument("--outdir", required=True, help="where the sheets go (the demo's: config demo.root)")
    s.add_argument("--exports", type=float, default=0.0, help="share of biopsies with PNG/JPEG ultrasound exports")
    s.add_argument("--render-seed", type=int, required=True, help="config demo.seed (positions, exports' spacing)")
    s.add_argument("--varied", action="store_true", help="config demo.varied (positions, exports' spacing)")
    e = sub.add_parser("export", help="export a rendered DICOM's saved frame as PNG or JPEG (format by extension)")
    e.add_argument("dicom", type=Path)
    e.add_argument("out", type=Path)
    e.add_argument("--quality", type=int, default=85, help="JPEG quality")
    for cmd, keys in RENDERED.items():
        b = sub.add_parser(cmd, help=f"render one biopsy's {cmd} files")
        b.add_argument("--seed", type=int, required=True)
        b.add_argument("--participant", required=True)
        b.add_argument("--biopsy", required=cmd == "ultrasound", help="the biopsy (ultrasound)")
        b.add_argument("--slide-biopsies", required=True, help="comma-separated biopsies whose cores share the slide")
        b.add_argument("--named", action="store_true", help="named QuPath outlines around the cores")
        b.add_argument("--large-slide", action="store_true")
        b.add_argument("--varied", action="store_true", help="domain-randomised: the nuisances of real data")
        for k in keys:
            b.add_argument(f"--{k.replace('_', '-')}", required=True, type=Path)
    return p


def main(argv: list[str] | None = None) -> None:
    a = parser().parse_args(argv)
    if a.cmd == "sheets":
        parts, biops = cohort_sheets(
            a.n, a.seed, a.data_dir, render_seed=a.render_seed, exports=a.exports, varied=a.varied
        )
        Path(a.outdir).mkdir(parents=True, exist_ok=True)
        parts.to_csv(Path(a.outdir) / "participants.tsv", sep="\t", index=False)
        biops.to_csv(Path(a.outdir) / "biopsies.tsv", sep="\t", index=False)
        return
    if a.cmd == "export":
        export_dicom(a.dicom, a.out, EXPORT_EXTENSIONS[a.out.suffix.lstrip(".").lower()], a.quality)
        return
    ts = slide_truths(a.seed, a.participant, a.slide_biopsies.split(","), a.large_slide, a.varied, a.named)
    out = {k: getattr(a, k) for k in RENDERED[a.cmd]}
    if a.cmd == "slide":
        generate_slide(ts, out)
    else:
        generate_ultrasound(next(t for t in ts if t.biopsy_id == a.biopsy), out)
    t = ts[0]
    print(f"rendered {a.participant} {a.cmd}: slide {t.slide_shape[1]}x{t.slide_shape[0]} px, {len(ts)} core(s)")


if __name__ == "__main__":
    main()
