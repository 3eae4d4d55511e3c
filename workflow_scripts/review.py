"""Review queue: automatic registration decisions that a person must confirm.

Which steps are held, and why, is the biopsy's review state (``state/<p>/<b>.json``,
decided in :mod:`workflow_scripts.state`); this module only writes each held step's
row, with the ``biopsies.tsv`` override that confirms it and the one that corrects
it.  A held biopsy stays out of the VOC split lists (so out of training and
evaluation) until a person decides; that reruns only that biopsy's jobs.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np
import pandas as pd

from workflow_scripts.errors import run_cli
from workflow_scripts.orient import DIRECTIONS
from workflow_scripts.state import read_state

COLUMNS = ["participant_id", "biopsy_id", "step", "reason", "confirm", "correct", "qc_figure"]


def dye_end_side(orient: dict, flipped: bool = False) -> str:
    """The displayed side (left/right/top/bottom) nearest the dyed end as found (or the other end)."""
    v = np.array(orient["axis"]) * (1 if orient["dye_at_positive_end"] != flipped else -1)
    return max(DIRECTIONS, key=lambda k: float(np.dot(v, DIRECTIONS[k])))


def orient_entry(orient: dict, reason: str) -> dict:
    """The review row of a held orientation: its confidence and evidence, and the dye_end overrides."""
    m = orient["dye_mass_px"]
    return {
        "step": "orient",
        "reason": f"dyed end uncertain: confidence {orient['confidence']:.2f} ({orient.get('evidence')}; "
        f"dye {m[0]:.0f} / {m[1]:.0f} px in from the two ends)" + (f": {reason}" if reason else ""),
        "confirm": f"dye_end={dye_end_side(orient)}",
        "correct": f"dye_end={dye_end_side(orient, flipped=True)}",
    }


def tract_entry(tract: dict, reason: str, region_xy: list[float]) -> dict:
    """The review row of a held tract: its confidences and the reason (which of them, or the length, held it), and
    the tip/axis/length overrides."""
    c = tract.get("confidence", {})
    x, y = np.array(tract["t0_px"]) + np.array(region_xy[:2])
    why = ", ".join(f"{k} {v:.2f}" for k, v in c.items())  # the reason (tract.py) says which held it, and why
    return {
        "step": "tract",
        "reason": f"needle uncertain: confidence {why}" + (f"; {reason}" if reason else ""),
        "confirm": f"tip_x={x:.1f} tip_y={y:.1f} axis_deg={tract['axis_deg']:.2f} "
        f"override_length_mm={tract['sampled_length_mm']:.2f}",
        "correct": "measure tip_x/tip_y (pre-fire tip, DICOM frame px), axis_deg and override_length_mm on the "
        "QC figure",
    }


def transfer_entry(orient: dict, tract: dict, reason: str, region_xy: list[float]) -> dict:
    """The review row of a label its own evidence contradicts (the core's length, tumour on a left-over piece):
    confirmed by deciding the orientation and the tract as found, corrected by fixing whichever is wrong."""
    confirm = f"{orient_entry(orient, '')['confirm']} {tract_entry(tract, '', region_xy)['confirm']}"
    return {
        "step": "transfer",
        "reason": f"label doubtful: {reason}",
        "confirm": confirm,
        "correct": "check the slide's cores (cores.json, the QC figure): fix the core in biopsies.tsv (core), the "
        "dyed end or the tips, or exclude the biopsy",
    }


def entries(state: dict, orient: dict, tract: dict, region_xy: list[float], qc_figure: str) -> list[dict]:
    """The review rows of one biopsy: a row for each step its review state holds (``state.biopsy_state``)."""
    held = {k for k, s in state["steps"].items() if s == "review"}
    why = state.get("reasons", {})
    rows = [orient_entry(orient, why.get("orient", ""))] if "orient" in held else []
    rows += [tract_entry(tract, why.get("tract", ""), region_xy)] if "tract" in held else []
    rows += [transfer_entry(orient, tract, why.get("transfer", ""), region_xy)] if "transfer" in held else []
    who = {"participant_id": state["participant_id"], "biopsy_id": state["biopsy_id"]}
    return [{**who, **r, "qc_figure": qc_figure} for r in rows]


def parser() -> argparse.ArgumentParser:
    """The command line; every setting that config.yaml carries is a required option the rule passes."""
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--state", nargs="*", default=[], help="review state JSONs (state/<p>/<b>.json), one per biopsy")
    p.add_argument("--orient", nargs="*", default=[], help="orient JSONs, same biopsy order")
    p.add_argument("--tract", nargs="*", default=[], help="tract JSONs, same biopsy order")
    p.add_argument("--prefire", nargs="*", default=[], help="pre-fire ingest JSONs, same biopsy order")
    p.add_argument("--qc", nargs="*", default=[], help="QC figures, same biopsy order")
    p.add_argument("--out", required=True)
    return p


def main(argv: list[str] | None = None) -> None:
    a = parser().parse_args(argv)

    def go() -> None:
        rows = []
        load = lambda f: json.loads(Path(f).read_text())  # noqa: E731
        for st, o, t, m, q in zip(a.state, a.orient, a.tract, a.prefire, a.qc, strict=True):
            pid, bid = Path(t).parent.name, Path(t).stem  # <results>/tract/<participant>/<biopsy>.json
            rows += entries(read_state(st, pid, bid), load(o), load(t), load(m)["region_bounds_xyxy"], q)
        table = pd.DataFrame(rows, columns=COLUMNS)
        table.to_csv(a.out, sep="\t", index=False)
        print(f"{len(table)} decision(s) need review" + (f"; listed in {a.out}" if len(table) else ""))

    run_cli(go)


if __name__ == "__main__":
    main()
