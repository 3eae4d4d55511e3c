"""Review queue: automatic registration decisions that a person must confirm.

An orientation or tract in state ``review`` stays out of the VOC split lists
(so out of training and evaluation) until a person confirms or corrects it with
the ``biopsies.tsv`` override written here; that reruns only that biopsy's jobs.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np
import pandas as pd

from workflow_scripts.orient import DIRECTIONS

COLUMNS = ["participant_id", "biopsy_id", "step", "reason", "confirm", "correct", "qc_figure"]


def needs_review(orient: dict, tract: dict) -> bool:
    """Whether either automatic decision of a biopsy awaits a person."""
    return orient.get("state") == "review" or tract.get("state") == "review"


def dye_end_side(orient: dict, flipped: bool = False) -> str:
    """The displayed side (left/right/top/bottom) nearest the dyed end as found (or the other end)."""
    v = np.array(orient["axis"]) * (1 if orient["dye_at_positive_end"] != flipped else -1)
    return max(DIRECTIONS, key=lambda k: float(np.dot(v, DIRECTIONS[k])))


def entries(pid: str, bid: str, orient: dict, tract: dict, region_xy: list[float], qc_figure: str) -> list[dict]:
    """The review rows of one biopsy, each with the override that confirms it and the one that corrects it."""
    rows = []
    if orient.get("state") == "review":
        m = orient["dye_mass_px"]
        rows.append(
            {
                "step": "orient",
                "reason": f"dyed end uncertain: confidence {orient['confidence']:.2f} ({orient.get('evidence')}; "
                f"dye {m[0]:.0f} / {m[1]:.0f} px in from the two ends)"
                + (f": {orient['review_reason']}" if orient.get("review_reason") else ""),
                "confirm": f"dye_end={dye_end_side(orient)}",
                "correct": f"dye_end={dye_end_side(orient, flipped=True)}",
            }
        )
    if tract.get("state") == "review":
        c = tract.get("confidence", {})
        x, y = np.array(tract["t0_px"]) + np.array(region_xy[:2])
        stroke = tract.get("stroke_mm", float("nan"))
        why = ", ".join(f"{k} {v:.2f}" for k, v in c.items()) + (
            f"; a length a {stroke:g} mm stroke cannot give (set stroke_mm if this gun was set to another stroke)"
            if tract["length_flag"]
            else ""
        )
        if tract.get("review_reason"):
            why += f"; {tract['review_reason']}"
        rows.append(
            {
                "step": "tract",
                "reason": f"needle uncertain: confidence {why}",
                "confirm": f"tip_x={x:.1f} tip_y={y:.1f} axis_deg={tract['axis_deg']:.2f} "
                f"override_length_mm={tract['sampled_length_mm']:.2f}",
                "correct": "measure tip_x/tip_y (pre-fire tip, DICOM frame px), axis_deg and override_length_mm on the "
                "QC figure",
            }
        )
    return [{"participant_id": pid, "biopsy_id": bid, **r, "qc_figure": qc_figure} for r in rows]


def parser() -> argparse.ArgumentParser:
    """The command line; every setting that config.yaml carries is a required option the rule passes."""
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--orient", nargs="*", default=[], help="orient JSONs, one per biopsy")
    p.add_argument("--tract", nargs="*", default=[], help="tract JSONs, same biopsy order")
    p.add_argument("--prefire", nargs="*", default=[], help="pre-fire ingest JSONs, same biopsy order")
    p.add_argument("--qc", nargs="*", default=[], help="QC figures, same biopsy order")
    p.add_argument("--out", required=True)
    return p


def main(argv: list[str] | None = None) -> None:
    a = parser().parse_args(argv)
    rows = []
    for o, t, m, q in zip(a.orient, a.tract, a.prefire, a.qc, strict=True):
        pid, bid = Path(t).parent.name, Path(t).stem  # <results>/tract/<participant>/<biopsy>.json
        load = lambda f: json.loads(Path(f).read_text())  # noqa: E731
        rows += entries(pid, bid, load(o), load(t), load(m)["region_bounds_xyxy"], q)
    table = pd.DataFrame(rows, columns=COLUMNS)
    table.to_csv(a.out, sep="\t", index=False)
    print(f"{len(table)} decision(s) need review" + (f"; listed in {a.out}" if len(table) else ""))


if __name__ == "__main__":
    main()
