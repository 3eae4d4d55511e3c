"""How often "the pre-fire frame shows no needle" fires: on pre-fire frames with no needle, and on normal ones.

Each biopsy of the varied cohort (and of the demo's forward model) is rendered as the sweep renders it, then with
a pre-fire frame that holds no needle at all (its tip placed 1 m back along the axis, so no pixel of the shaft is
in the frame), and that no-needle frame again with a post-fire needle seen only 0.3-1.5 mm behind T0 (the rest of
its shaft out of the plane), so the advance reads about a stroke long.  The tract step's own detection and
decision (``tract.two_frame``, ``tract.no_prefire_needle``) run on each; the truth only builds the frames.  The
rule before this check (``prefire_shaft`` < 0.3 and a tract longer than the stroke) is printed beside it.

    python benchmarks/prefire_needle.py --seeds 1000 --n 48 --workers 2
"""

from __future__ import annotations

import argparse
import dataclasses
import sys
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

import numpy as np
import pandas as pd

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
sys.path.insert(0, str(Path(__file__).resolve().parent))

import registration_sweep as sweep  # noqa: E402

from workflow_scripts import synthetic, tract  # noqa: E402
from workflow_scripts.errors import InputError  # noqa: E402

MIN_CONFIDENCE = sweep.CONFIG["tract"]["min_confidence"]


def ultrasound(t: synthetic.BiopsyTruth) -> tuple[np.ndarray, np.ndarray]:
    """Pre- and post-fire frames as the sweep renders them (the demo's model: no probe movement)."""
    pre = synthetic.render_ultrasound(t, np.array(t.t0_mm), noise_seed=100)
    shift = tuple(t.nuisance.get("shift_mm", (0.0, 0.0)))
    return pre, synthetic.render_ultrasound(t, np.array(t.t1_mm), noise_seed=200, shift_mm=shift)


def frames(seed: int, model: str) -> tuple[synthetic.BiopsyTruth, dict[str, tuple[np.ndarray, np.ndarray]]]:
    """One biopsy's truth and its (pre, post) pairs: ``normal``, ``no needle`` and ``no needle, short shaft``."""
    t = synthetic.sample_truth(seed, f"P{seed % 7}", "B1", varied=model == "varied", strokes=(15.0, 22.0))
    d = (np.array(t.t1_mm) - t.t0_mm) / np.linalg.norm(np.array(t.t1_mm) - t.t0_mm)
    pre, post = ultrasound(t)
    empty = synthetic.render_ultrasound(t, np.array(t.t0_mm) - 1000 * d, noise_seed=100)
    pairs = {"normal": (pre, post), "no needle": (empty, post)}
    if model == "varied":  # the forward model's out-of-plane shaft, shortened to 0.3-1.5 mm
        short = dataclasses.replace(t, nuisance={**t.nuisance, "visible_mm": 0.3 + 1.2 * ((seed * 0.618) % 1)})
        pairs["no needle, short shaft"] = (empty, ultrasound(short)[1])
    return t, pairs


def judge(pre: np.ndarray, post: np.ndarray, t: synthetic.BiopsyTruth) -> dict:
    """The tract step's evidence and call on one pair: fires (this check), old rule, and accepted otherwise."""
    mm = (t.mm_per_px, t.mm_per_px)
    r = tract.two_frame(pre, post, mm, t.stroke_mm)
    length = float(np.linalg.norm((r["t1"] - r["t0"]) * t.mm_per_px))
    return {
        "prefire_echo": r["prefire_echo"],
        "prefire_shaft": r["prefire_shaft"],
        "length_mm": length,
        "fires": tract.no_prefire_needle(r),
        "old_rule_fires": bool(r["prefire_shaft"] < 0.3 and length > t.stroke_mm + tract.STROKE_OVERSHOOT_MM),
        "else_accepted": min(r["confidence"].values()) >= MIN_CONFIDENCE
        and not tract.implausible_length(length, t.stroke_mm),
    }


def one(job: tuple[int, str]) -> list[dict]:
    """Every pair of one biopsy, judged."""
    seed, model = job
    t, pairs = frames(seed, model)
    rows = []
    for case, (pre, post) in pairs.items():
        row = {"seed": seed, "model": model, "case": case, "stroke_mm": t.stroke_mm}
        try:
            row.update(judge(pre, post, t))
        except InputError as e:
            row.update(error=e.what)
        rows.append(row)
    return rows


def summary(df: pd.DataFrame) -> pd.DataFrame:
    """Per model and case: biopsies, errors, fires (this check and the old rule), and fires on tracts that were
    accepted otherwise; the evidence's range."""
    ok = df[df["fires"].notna()]
    g = ok.groupby(["model", "case"])
    out = pd.DataFrame(
        {
            "n": df.groupby(["model", "case"]).size(),
            "fires": g["fires"].sum().astype(int),
            "old_rule_fires": g["old_rule_fires"].sum().astype(int),
            "fires_on_else_accepted": g.apply(lambda x: int((x["fires"] & x["else_accepted"]).sum())),
            "echo_min": g["prefire_echo"].min().round(2),
            "echo_max": g["prefire_echo"].max().round(2),
        }
    )
    return out.fillna(0)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--seeds", type=int, default=1000, help="the first seed; one biopsy per seed")
    p.add_argument("--n", type=int, default=48)
    p.add_argument("--workers", type=int, default=2)
    p.add_argument("--models", nargs="+", default=["varied", "demo"], choices=["varied", "demo"])
    p.add_argument("--out", help="per-pair TSV")
    a = p.parse_args()
    jobs = [(s, m) for s in range(a.seeds, a.seeds + a.n) for m in a.models]
    with ProcessPoolExecutor(a.workers) as ex:
        df = pd.DataFrame([r for rows in ex.map(one, jobs) for r in rows])
    if a.out:
        df.to_csv(a.out, sep="\t", index=False)
    print(f"threshold tract.PREFIRE_ECHO = {tract.PREFIRE_ECHO}")
    print(summary(df).to_string())


if __name__ == "__main__":
    main()
