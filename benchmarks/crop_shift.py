"""The train/inference crop shift: each biopsy's two-frame tract (what training crops) against the tract that
tractmap-infer finds in its pre-fire frame alone (tip and axis from the pixels, T1 one throw further).

Reads a finished run's results folder (tract JSONs and ingested pre-fire frames) and prints, over the
biopsies whose automatic tract was accepted, p50 and p95 of: the T0 offset (mm; along and across the
two-frame axis), the axis angle difference (deg) and the length difference (throw - sampled, mm).

    python benchmarks/crop_shift.py results [--throw-mm 22]
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np
import PIL.Image

from workflow_scripts import infer
from workflow_scripts.errors import InputError


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


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("results", type=Path)
    p.add_argument("--throw-mm", type=float, help="default: each biopsy's own (its tract JSON's throw_mm)")
    a = p.parse_args()
    rows, failed = [], []
    for tj in sorted((a.results / "tract").glob("*/*.json")):
        part, biopsy = tj.parent.name, tj.stem
        two = json.loads(tj.read_text())
        if two.get("state") != "accepted" or set(two.get("source", {}).values()) != {"auto"}:
            continue
        ing = a.results / "ingest" / part / biopsy
        image = np.asarray(PIL.Image.open(ing / "prefire.png").convert("L"))
        meta = json.loads((ing / "prefire.json").read_text())
        throw = a.throw_mm or two["throw_mm"]
        try:
            one = infer.locate(image, meta, {"throw_mm": throw}, None, None)
        except InputError as e:
            failed.append(f"{part}/{biopsy}: {e.what}")
            continue
        rows.append({"biopsy": f"{part}/{biopsy}", **shift(two, one, np.array(meta["mm_per_px"]))})
    if not rows:
        raise SystemExit("no accepted automatic tracts under " + str(a.results / "tract"))
    print(f"{len(rows)} biopsies; single-frame tract not found in {len(failed)}")
    for f in failed:
        print("  ", f)
    for k in ("t0_offset_mm", "t0_along_mm", "t0_across_mm", "axis_deg", "length_mm"):
        v = np.array([r[k] for r in rows])
        print(
            f"{k:14s} p50 {np.median(v):+.2f}  p95 |.| {np.percentile(np.abs(v), 95):.2f}  "
            f"mean {v.mean():+.2f}  max |.| {np.abs(v).max():.2f}"
        )


if __name__ == "__main__":
    main()
