"""The train/inference crop shift: each biopsy's two-frame tract (what training crops) against the tract that
tractmap-infer finds in its pre-fire frame alone (tip and axis from the pixels, T1 one throw further).

Reads a finished run's results folder (tract JSONs and ingested pre-fire frames), or renders ``--varied N``
biopsies of the domain-randomised cohort straight to pixels (as benchmarks/registration_sweep.py does) and
runs both tract finders on them, and prints, over the biopsies whose automatic two-frame tract was accepted,
p50 and p95 of: the T0 offset (mm; along and across the two-frame axis), the axis angle difference (deg) and
the length difference (throw - sampled, mm).  The p95s are what config.yaml's train.shift_* augmentation uses.

    python benchmarks/crop_shift.py results [--throw-mm 22]
    python benchmarks/crop_shift.py --varied 30 --seeds 1 2      # 60 varied biopsies, no pipeline run
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np
import PIL.Image
import yaml

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from workflow_scripts import infer, synthetic, tract  # noqa: E402
from workflow_scripts.errors import InputError  # noqa: E402


def shift(two: dict, one: dict, mm: np.ndarray) -> dict[str, float]:
    """The single-frame tract ``one`` against the two-frame ``two``: T0 offset along/across the axis, axis and
    length differences."""
    a = np.radians(two["axis_deg"])
    u = np.array([np.cos(a), np.sin(a)])
    d = (np.array(one["t0_px"]) - np.array(two["t0_px"])) * mm
    return {
        "t0_offset_mm": float(np.hypot(*d)),
        "t0_along_mm": float(d @ u),
        "t0_across_mm": float(d @ np.array([-u[1], u[0]])),
        "axis_deg": float((one["axis_deg"] - two["axis_deg"] + 180) % 360 - 180),
        "length_mm": float(one["sampled_length_mm"] - two["sampled_length_mm"]),
    }


def from_results(results: Path, throw_mm: float | None) -> tuple[list[dict], list[str]]:
    """Shift rows of a finished run's accepted automatic tracts, and the biopsies whose single-frame tract failed."""
    rows, failed = [], []
    for tj in sorted((results / "tract").glob("*/*.json")):
        part, biopsy = tj.parent.name, tj.stem
        two = json.loads(tj.read_text())
        if two.get("state") != "accepted" or set(two.get("source", {}).values()) != {"auto"}:
            continue
        ing = results / "ingest" / part / biopsy
        image = np.asarray(PIL.Image.open(ing / "prefire.png").convert("L"))
        meta = json.loads((ing / "prefire.json").read_text())
        try:
            one = infer.locate(image, meta, {"throw_mm": throw_mm or two["stroke_mm"]}, None, None)
        except InputError as e:
            failed.append(f"{part}/{biopsy}: {e.what}")
            continue
        rows.append({"biopsy": f"{part}/{biopsy}", **shift(two, one, np.array(meta["mm_per_px"]))})
    return rows, failed


def from_varied(n: int, seeds: list[int], min_confidence: float) -> tuple[list[dict], list[str]]:
    """Shift rows of ``n`` rendered varied biopsies per seed (participants V001..), both tracts from their pixels."""
    rows, failed = [], []
    for seed in seeds:
        for k in range(n):
            pid = f"V{k + 1:03d}"
            t = synthetic.sample_truth(seed, pid, "B1", varied=True)
            pre = synthetic.render_ultrasound(t, np.array(t.t0_mm), noise_seed=100)
            post = synthetic.render_ultrasound(
                t, np.array(t.t1_mm), noise_seed=200, shift_mm=tuple(t.nuisance["shift_mm"])
            )
            mm = (t.mm_per_px, t.mm_per_px)
            meta = {"mm_per_px": list(mm), "region_bounds_xyxy": [0, 0, pre.shape[1], pre.shape[0]]}
            try:
                two = tract.tract(pre, post, mm, t.stroke_mm, {}, min_confidence)
                if two["state"] != "accepted":
                    continue
                one = infer.locate(pre, meta, {"throw_mm": t.stroke_mm}, None, None)
            except InputError as e:
                failed.append(f"seed {seed} {pid}: {e.what}")
                continue
            rows.append({"biopsy": f"{seed}/{pid}", **shift(two, one, np.array(mm))})
    return rows, failed


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("results", type=Path, nargs="?", help="a finished run's results folder")
    p.add_argument("--throw-mm", type=float, help="default: each biopsy's own stroke (its tract JSON's stroke_mm)")
    p.add_argument("--varied", type=int, metavar="N", help="instead: render N varied biopsies per seed")
    p.add_argument("--seeds", type=int, nargs="+", default=[1], help="with --varied (default 1)")
    p.add_argument("--config", type=Path, default=Path("config.yaml"), help="with --varied: its tract.min_confidence")
    p.add_argument("--gross-mm", type=float, default=2.0, help="T0 offsets beyond this are listed as gross")
    p.add_argument("--gross-deg", type=float, default=5.0, help="axis differences beyond this are listed as gross")
    p.add_argument("--tsv", type=Path, help="write the per-biopsy shifts here")
    a = p.parse_args()
    if (a.results is None) == (a.varied is None):
        p.error("give a results folder or --varied N")
    if a.varied:
        rows, failed = from_varied(a.varied, a.seeds, yaml.safe_load(a.config.read_text())["tract"]["min_confidence"])
        where = f"varied seeds {a.seeds}"
    else:
        rows, failed = from_results(a.results, a.throw_mm)
        where = str(a.results / "tract")
    if not rows:
        raise SystemExit("no accepted automatic tracts in " + where)
    print(f"{len(rows)} biopsies ({where}); single-frame tract not found in {len(failed)}")
    for f in failed:
        print("  ", f)
    gross = [r for r in rows if r["t0_offset_mm"] > a.gross_mm or abs(r["axis_deg"]) > a.gross_deg]
    print(f"{len(gross)} gross (T0 > {a.gross_mm:g} mm or axis > {a.gross_deg:g} deg off: another echo taken)")
    for r in gross:
        print(f"   {r['biopsy']}: T0 {r['t0_offset_mm']:.2f} mm, axis {r['axis_deg']:+.2f} deg")
    summarise("all found", rows)
    summarise("found, not gross (train.shift_* defaults: these p95s)", [r for r in rows if r not in gross])
    if a.tsv:
        import pandas as pd

        pd.DataFrame(rows).to_csv(a.tsv, sep="\t", index=False, float_format="%.4g")


def summarise(title: str, rows: list[dict]) -> None:
    """p50 and p95 of |.| of each shift over ``rows``."""
    print(f"{title}: n {len(rows)}")
    for k in ("t0_offset_mm", "t0_along_mm", "t0_across_mm", "axis_deg", "length_mm"):
        v = np.array([r[k] for r in rows])
        print(
            f"  {k:14s} p50 {np.median(v):+.2f}  p95 |.| {np.percentile(np.abs(v), 95):.2f}  "
            f"mean {v.mean():+.2f}  max |.| {np.abs(v).max():.2f}"
        )


if __name__ == "__main__":
    main()
