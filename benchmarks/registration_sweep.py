"""Registration on the varied cohort: orientation, tips, axis, ROI Dice and review share, per nuisance factor.

Each biopsy is rendered by the domain-randomised forward model (``synthetic.sample_truth(..., varied=True)``)
straight to pixels: the WSI level at 16 um/px, the pre- and post-fire tissue regions and the QuPath
features.  Registration runs through the pipeline's own functions with the thresholds in config.yaml;
the truth is read only to score.  Run from the repository root:

    python benchmarks/registration_sweep.py --n 240 --seeds 1 2 --workers 2
    python benchmarks/registration_sweep.py --n 60 --strokes 15 22 --steps tract   # mixed gun strokes, tract only

Each biopsy's gun stroke (``--strokes``: drawn per biopsy) reaches the tract step as biopsies.tsv's
``stroke_mm`` would (``--config-stroke``: the config's one stroke for all, as without that column).
"""

from __future__ import annotations

import argparse
import sys
import time
import tracemalloc
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

import numpy as np
import pandas as pd
import yaml

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from workflow_scripts import geometry as geo
from workflow_scripts import orient, qc, synthetic, tract, transfer, voc  # noqa: E402
from workflow_scripts.errors import InputError  # noqa: E402

LEVEL_UM = 16.0
CONFIG = yaml.safe_load((Path(__file__).resolve().parents[1] / "config.yaml").read_text())


def jpeg(rgb: np.ndarray, quality: int) -> np.ndarray:
    """A JPEG round trip, as slide scanners store their tiles (4:2:0 chroma)."""
    import io

    import PIL.Image

    buf = io.BytesIO()
    PIL.Image.fromarray(rgb).save(buf, format="JPEG", quality=quality)
    return np.asarray(PIL.Image.open(buf).convert("RGB"))


def render(
    seed: int, pid: str, compress: bool = True, strokes: tuple[float, ...] = (22.0,), slide: bool = True
) -> tuple[synthetic.BiopsyTruth, np.ndarray | None, np.ndarray, np.ndarray, list[dict]]:
    """One varied biopsy as pixels: WSI level (``compress``: through a JPEG round trip; ``slide``: else none),
    pre-fire, post-fire, and the annotation features; its gun's stroke is one of ``strokes``."""
    t = synthetic.sample_truth(seed, pid, "B1", varied=True, strokes=strokes)
    rng = synthetic.biopsy_rng(seed + 1, pid, "B1")
    synthetic.place_on_slide(t, rng)
    shape = [int(n * t.slide_um_per_px / LEVEL_UM) for n in t.slide_shape]
    thumb = synthetic.render_slide_tile(t, 0, 0, shape[0], shape[1], LEVEL_UM) if slide else None
    quality = int(rng.integers(75, 96))  # drawn either way: the annotation features below stay the same
    thumb = jpeg(thumb, quality) if compress and slide else thumb
    pre = synthetic.render_ultrasound(t, np.array(t.t0_mm), noise_seed=100)
    post = synthetic.render_ultrasound(t, np.array(t.t1_mm), noise_seed=200, shift_mm=tuple(t.nuisance["shift_mm"]))
    return t, thumb, pre, post, synthetic.qupath_features(t, rng)


def factors(t: synthetic.BiopsyTruth) -> dict:
    """The nuisance levels a row is grouped by."""
    nz = t.nuisance
    ends = [d for d in nz["dense"] if d[0] < 2.0 or d[0] > t.throw_mm - 2.0]
    angle = abs(np.degrees(np.arctan2(t.t1_mm[1] - t.t0_mm[1], abs(t.t1_mm[0] - t.t0_mm[0]))))
    return {
        "stroke": t.stroke_mm,
        "dye": t.dye,
        "dye_cover": nz["dye_cover"],
        "dense_at_end": bool(ends),
        "pen": bool(nz["pen"]),  # off the tissue
        "bubbles": bool(nz["bubbles"]),  # on it: their dark rims cross the core
        "gaps_or_folds": bool(nz["gaps"] or nz["folds"]),
        "stain_h_scale": "faded" if nz["h_scale"] < 0.8 else ("over" if nz["h_scale"] > 1.3 else "normal"),
        "spacing_mm": "0.02-0.04" if t.mm_per_px < 0.04 else ("0.04-0.07" if t.mm_per_px < 0.07 else "0.07-0.10"),
        "angle_deg": "5-15" if angle < 15 else ("15-30" if angle < 30 else "30-45"),
        "entry": t.entry_side,
        "short_shaft": nz["visible_mm"] is not None,
        "reverb": len(nz["reverb"]) > 0,
        "fascia": nz["fascia"] is not None,
        "moved": any(nz["shift_mm"]),
        "border": nz["border"] > 0,
    }


def peak_mb(step, *args, **kwargs) -> float:
    """Peak memory (MB) that one call allocates, numpy arrays included (tracemalloc; the interpreter not counted)."""
    tracemalloc.start()
    try:
        step(*args, **kwargs)
    except InputError:
        pass
    peak = tracemalloc.get_traced_memory()[1]
    tracemalloc.stop()
    return peak / 2**20


def orient_one(thumb: np.ndarray, t: synthetic.BiopsyTruth, row: dict) -> dict | None:
    """The orientation step on one slide level, its state and evidence written into ``row``."""
    c = CONFIG
    try:
        found = orient.find_orientation(thumb, **c["orient"])
        row.update(
            orient_state=found["state"],
            orient_conf=found["confidence"],
            orient_evidence=found["evidence"],
            orient_shared=found.get("shared_with_other_end"),
        )
        can = orient.canonical(found, LEVEL_UM, t.slide_um_per_px)
        res_o = {**found, **can}
    except InputError as e:
        row.update(orient_state="failed", orient_error=e.what)
        res_o = None
    return res_o


def register_one(args: tuple[int, str, bool, bool, tuple[float, ...], bool, tuple[str, ...]]) -> dict:
    """Render, register and score one biopsy (``measure``: also the peak memory of each step, in a second run;
    ``compress``: the slide level through a JPEG round trip; ``strokes``: the guns' strokes drawn from;
    ``stroke_given``: the biopsy's stroke reaches the tract step, else the config's; ``steps``: which run)."""
    seed, pid, measure, compress, strokes, stroke_given, steps = args
    t, thumb, pre, post, features = render(seed, pid, compress, strokes, "orient" in steps)
    truth = synthetic.truth_record(t)
    row = {"seed": seed, "biopsy": pid, **factors(t)}
    mm = (t.mm_per_px, t.mm_per_px)
    c = CONFIG
    stroke = t.stroke_mm if stroke_given else c["tract"]["throw_mm"]
    t_start = time.process_time()
    if "orient" not in steps:
        row["orient_state"], res_o = "skipped", None
    else:
        res_o = orient_one(thumb, t, row)
    row["orient_s"] = time.process_time() - t_start
    t_start = time.process_time()
    try:
        res_t = tract.tract(pre, post, mm, stroke, {}, c["tract"]["min_confidence"])
        row["tract_state"], row["length_flag"] = res_t["state"], res_t["length_flag"]
        crop, frame = tract.crop_strip(
            pre, res_t, mm, c["tract"]["width_mm"], c["tract"]["out_mm_per_px"], c["tract"]["margin_mm"]
        )
        res_t.update(frame)
        row.update({f"conf_{k}": v for k, v in res_t["confidence"].items()})
        row.update(
            {f"fit_{k}": v for k, v in res_t["fit"].items() if np.isscalar(v)},
            snr_t0=res_t["fit"]["snr"][0],
            snr_t1=res_t["fit"]["snr"][1],
        )
    except InputError as e:
        row.update(tract_state="failed", tract_error=e.what)
        res_t = None
    row["tract_s"] = time.process_time() - t_start
    if measure:
        if "orient" in steps:
            row["orient_mb"] = peak_mb(orient.find_orientation, thumb, **c["orient"])
        row["tract_mb"] = peak_mb(tract.tract, pre, post, mm, stroke, {}, c["tract"]["min_confidence"])
    if res_t is not None:
        err = lambda a, b: float(np.linalg.norm((np.array(a) - np.array(b)) * t.mm_per_px))  # noqa: E731
        row["t0_mm"], row["t1_mm"] = err(res_t["t0_px"], truth["t0_px"]), err(res_t["t1_px"], truth["t1_px"])
        row["axis_deg"] = abs((res_t["axis_deg"] - truth["axis_deg"] + 180) % 360 - 180)
        u = np.array(res_t["t1_px"]) - np.array(res_t["t0_px"])
        u = u / (np.linalg.norm(u) + 1e-9)
        row["t0_along_mm"] = float((np.array(res_t["t0_px"]) - truth["t0_px"]) @ u * t.mm_per_px)  # + : beyond the tip
        row["t1_along_mm"] = float((np.array(res_t["t1_px"]) - truth["t1_px"]) @ u * t.mm_per_px)
    if res_o is not None:
        dye = geo.apply(np.array(res_o["slide_px_to_canonical_um"]), [truth["dye_end_slide_px"]])[0]
        row["orient_correct"] = bool(dye[0] > 0)
    if res_o is not None and res_t is not None:
        polys, _ = transfer.tumour_polygons(transfer.parse_features(features), CONFIG["transfer"]["classes"])
        to_crop = transfer.registered_canonical_to_crop(res_o, res_t, CONFIG["transfer"]["across"])
        m = geo.compose(np.array(res_o["slide_px_to_canonical_um"]), to_crop)
        polys = [(lab, cls, geo.apply_polygons(m, [poly])[0]) for lab, cls, poly in polys]
        voids = transfer.void_polygons(res_t["crop_shape"], res_t["tract_x_px"], transfer.core_rows(res_o, to_crop))
        label = voc.rasterize(transfer.labelme_shapes(polys, voids), crop.shape, voc.label_values())
        row["dice"] = qc.score(res_t, res_o, label, truth, synthetic.truth_label(t))["dice"]
    return row


def summary(df: pd.DataFrame) -> dict:
    """The issue's figures for a group of biopsies."""
    n = len(df)
    acc_o = df["orient_state"] == "accepted"
    correct = df.get("orient_correct", pd.Series(False, index=df.index)).fillna(False).astype(bool)
    review = (df["orient_state"] == "review") | (df["tract_state"] == "review")
    acc_t = df["tract_state"] == "accepted"
    orient_run = bool((df["orient_state"] != "skipped").any())
    q = lambda c, p: float(np.nanpercentile(df[c], p)) if c in df and df[c].notna().any() else float("nan")  # noqa: E731
    return {
        "n": n,
        "orient_auto_correct_%": 100 * float((acc_o & correct).mean()) if orient_run else float("nan"),
        "orient_wrong_accepted": int((acc_o & ~correct).sum()),
        "orient_review": int((df["orient_state"] == "review").sum()),
        "orient_failed": int((df["orient_state"] == "failed").sum()),
        "tract_review": int((df["tract_state"] == "review").sum()),
        "tract_failed": int((df["tract_state"] == "failed").sum()),
        "length_flag": int(df.get("length_flag", pd.Series(False, index=df.index)).fillna(False).astype(bool).sum()),
        "T0_med": q("t0_mm", 50),
        "T0_p95": q("t0_mm", 95),
        "T1_med": q("t1_mm", 50),
        "T1_p95": q("t1_mm", 95),
        "axis_med": q("axis_deg", 50),
        "axis_p95": q("axis_deg", 95),
        "dice_med": q("dice", 50),
        "T0_p95_acc": float(np.nanpercentile(df.loc[acc_t, "t0_mm"], 95)) if acc_t.any() else float("nan"),
        "T1_p95_acc": float(np.nanpercentile(df.loc[acc_t, "t1_mm"], 95)) if acc_t.any() else float("nan"),
        "review_%": 100 * float(review.mean()),
    }


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--n", type=int, default=120, help="biopsies per seed")
    p.add_argument("--seeds", type=int, nargs="+", default=[1, 2])
    p.add_argument("--workers", type=int, default=2)
    p.add_argument("--out", default="benchmarks/out/registration_sweep.tsv")
    p.add_argument("--memory-every", type=int, default=4, help="measure each step's peak memory on every k-th biopsy")
    p.add_argument("--no-jpeg", action="store_true", help="slide level as rendered (no JPEG round trip)")
    p.add_argument("--strokes", type=float, nargs="+", default=[22.0], help="gun strokes (mm), one drawn per biopsy")
    p.add_argument("--config-stroke", action="store_true", help="the config's stroke for all, not each biopsy's")
    p.add_argument("--steps", nargs="+", choices=["orient", "tract"], default=["orient", "tract"], help="tract: always")
    a = p.parse_args()
    jobs = [
        (s, f"V{i:04d}", i % a.memory_every == 0, not a.no_jpeg, tuple(a.strokes), not a.config_stroke, tuple(a.steps))
        for s in a.seeds
        for i in range(a.n)
    ]
    t0 = time.time()
    with ProcessPoolExecutor(a.workers) as ex:
        rows = []
        for k, r in enumerate(ex.map(register_one, jobs, chunksize=2), 1):
            rows.append(r)
            if k % 20 == 0:
                el = time.time() - t0
                print(
                    f"  {k}/{len(jobs)} biopsies, {el:.0f} s, ETA {el / k * (len(jobs) - k):.0f} s",
                    file=sys.stderr,
                    flush=True,
                )
    df = pd.DataFrame(rows)
    Path(a.out).parent.mkdir(parents=True, exist_ok=True)
    df.to_csv(a.out, sep="\t", index=False, float_format="%.4g")
    pd.set_option("display.width", 250, "display.max_columns", 30, "display.max_rows", 200)
    fmt = lambda d: d.to_string(float_format=lambda v: f"{v:.3g}")  # noqa: E731
    slide = "as rendered" if a.no_jpeg else "JPEG round trip"
    given = "the config's" if a.config_stroke else "each biopsy's"
    print(
        f"Varied cohort: {len(df)} biopsies, seeds {a.seeds}, slide level {slide}, strokes {a.strokes} mm "
        f"({given} given), steps {a.steps}, {time.time() - t0:.0f} s\n"
    )
    print("OVERALL")
    print(fmt(pd.DataFrame([summary(df)])))
    for f in (
        "stroke",
        "dye",
        "dye_cover",
        "dense_at_end",
        "pen",
        "bubbles",
        "gaps_or_folds",
        "stain_h_scale",
        "spacing_mm",
        "angle_deg",
        "entry",
        "short_shaft",
        "reverb",
        "fascia",
        "moved",
        "border",
    ):
        print(f"\nBY {f}")
        print(fmt(pd.DataFrame([{f: k, **summary(g)} for k, g in df.groupby(f)])))
    print(
        f"\nCPU seconds per biopsy: orient median {df['orient_s'].median():.2f} max {df['orient_s'].max():.2f}; "
        f"tract median {df['tract_s'].median():.2f} max {df['tract_s'].max():.2f}"
    )
    o_mb = df.get("orient_mb", pd.Series(np.nan, index=df.index))
    print(
        f"Peak memory per biopsy (MB allocated by the step, {df['tract_mb'].notna().sum()} biopsies; the interpreter "
        f"with its libraries adds about 100 MB): orient median {o_mb.median():.0f} max "
        f"{o_mb.max():.0f}; tract median {df['tract_mb'].median():.0f} max {df['tract_mb'].max():.0f}"
    )
    bad = df[
        (df["orient_state"] == "accepted")
        & ~df.get("orient_correct", pd.Series(True, index=df.index)).fillna(True).astype(bool)
    ]
    if len(bad):
        print("\nWRONG BUT ACCEPTED orientations:\n" + fmt(bad[["seed", "biopsy", "dye", "dye_cover", "dense_at_end"]]))


if __name__ == "__main__":
    main()
