"""Registration on the varied cohort: orientation, tips, axis, ROI Dice and review share, per nuisance factor.

Each biopsy is rendered by the domain-randomised forward model (``synthetic.sample_truth(..., varied=True)``)
straight to pixels: the WSI level at 16 um/px, the pre- and post-fire tissue regions and the QuPath
features.  Registration runs through the pipeline's own functions with the thresholds in config.yaml;
the truth is read only to score.  Run from the repository root:

    python benchmarks/registration_sweep.py --n 240 --seeds 1 2 --workers 2
    python benchmarks/registration_sweep.py --n 60 --strokes 15 22 --steps tract   # mixed gun strokes, tract only
    python benchmarks/registration_sweep.py --seeds 13 14 --n 40 --steps tract --ablation tract  # ablation_tract.md

``--ablate STEP.NAME`` (repeatable) leaves one element of ``orient.ABLATABLE`` or ``tract.ABLATABLE`` out;
``--ablation tract`` runs nothing removed and then each element of ``tract.ABLATABLE`` removed, on the same
rendered biopsies, and prints one table (an accepted tract is wrong with a tip over ``WRONG_MM`` or its
axis over ``WRONG_AXIS_DEG`` off the truth).

Each biopsy's gun stroke (``--strokes``: drawn per biopsy) reaches the tract step as biopsies.tsv's
``stroke_mm`` would (``--config-stroke``: the config's one stroke for all, as without that column).
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
import tracemalloc
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

import numpy as np
import pandas as pd
import yaml

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from workflow_scripts import (  # noqa: E402
    cores,
    ingest,  # noqa: E402
    orient,
    qc,
    state,
    synthetic,
    tract,
    transfer,
    voc,
)
from workflow_scripts import geometry as geo
from workflow_scripts.errors import InputError  # noqa: E402

LEVEL_UM = 16.0
CONFIG = yaml.safe_load((Path(__file__).resolve().parents[1] / "config.yaml").read_text())
CORES = {k: v for k, v in CONFIG["cores"].items() if k != "dye_class"}
WRONG_MM = 1.0  # an accepted tract with a tip further off than this is wrong (twice the T0 p95 required)
WRONG_AXIS_DEG = 1.5  # or with its axis further off than this (the axis p95 required)
BAD_DICE = 0.5  # an accepted label with a Dice below this against the truth is a wrong label nobody was told of
PLAUSIBLE = tuple(CONFIG["transfer"]["plausible_shrinkage"])
ABLATABLE = {"orient": orient.ABLATABLE, "tract": tract.ABLATABLE}


def jpeg(rgb: np.ndarray, quality: int) -> np.ndarray:
    """A JPEG round trip, as slide scanners store their tiles (4:2:0 chroma)."""
    import io

    import PIL.Image

    buf = io.BytesIO()
    PIL.Image.fromarray(rgb).save(buf, format="JPEG", quality=quality)
    return np.asarray(PIL.Image.open(buf).convert("RGB"))


def render(
    seed: int,
    pid: str,
    compress: bool = True,
    n_cores: int = 1,
    marks: bool = False,
    strokes: tuple[float, ...] = (22.0,),
    slide: bool = True,
) -> tuple[list[synthetic.BiopsyTruth], np.ndarray | None, list[dict]]:
    """One varied slide as pixels: its cores' truths (biopsies B1..Bn of ``pid``), the WSI level (``compress``:
    through a JPEG round trip) and the annotation features (several cores: a named outline around every core
    of every other slide; ``marks``: the pathologist's dye marks the forward model drew); each gun's stroke is
    one of ``strokes``; ``slide``: else no slide level is rendered."""
    named = n_cores > 1 and seed % 2 == int(pid[1:]) % 2
    ts = synthetic.slide_truths(
        seed, pid, [f"B{k + 1}" for k in range(n_cores)], varied=True, named=named, strokes=strokes
    )
    rng = synthetic.biopsy_rng(seed + 1, pid, "B1")
    if n_cores == 1:
        synthetic.place_on_slide(ts[0], rng)  # as before: the single-core draws stay as they were
    shape = [int(n * ts[0].slide_um_per_px / LEVEL_UM) for n in ts[0].slide_shape]
    thumb = synthetic.render_slide(ts, 0, 0, shape[0], shape[1], LEVEL_UM) if slide else None
    quality = int(rng.integers(75, 96))  # drawn either way: the annotation features below stay the same
    thumb = jpeg(thumb, quality) if compress and slide else thumb
    feats = [f for t in ts for f in synthetic.qupath_features(t, rng)]
    if n_cores > 1 or marks:
        feats += [f for t in ts for f in synthetic.annotations.core_features(t if marks else _no_mark(t), rng)]
    return ts, thumb, feats


def fine_reader(ts: list[synthetic.BiopsyTruth], quality: int | None):
    """The slide's 4 µm/px level read by region (``synthetic.region_reader``), through a JPEG round trip at
    ``quality`` as a scanner stores its tiles (None: as rendered)."""
    read = synthetic.region_reader(ts, LEVEL_UM)

    def jpeg_read(x0: float, y0: float, x1: float, y1: float) -> tuple[np.ndarray, float, tuple[float, float]]:
        rgb, um, origin = read(x0, y0, x1, y1)
        return (jpeg(rgb, quality) if quality and rgb.size else rgb), um, origin

    return jpeg_read


def _no_mark(t: synthetic.BiopsyTruth) -> synthetic.BiopsyTruth:
    """The truth without a dye mark: the automatic call is what is measured."""
    from dataclasses import replace

    return replace(t, dye_mark="")


def ablated(names: list[str]) -> dict[str, frozenset[str]]:
    """``--ablate STEP.NAME`` values -> the names each step leaves out; an unknown step or name is an error."""
    out: dict[str, set[str]] = {"orient": set(), "tract": set()}
    for v in names:
        step, _, name = v.partition(".")
        if step not in ABLATABLE or name not in ABLATABLE[step]:
            raise SystemExit(
                f"--ablate {v}: not one of " + ", ".join(f"{k}.{n}" for k in ABLATABLE for n in ABLATABLE[k])
            )
        out[step].add(name)
    return {k: frozenset(v) for k, v in out.items()}


def ultrasound(t: synthetic.BiopsyTruth) -> tuple[np.ndarray, np.ndarray]:
    """A biopsy's pre-fire and post-fire tissue regions."""
    pre = synthetic.render_ultrasound(t, np.array(t.t0_mm), noise_seed=100)
    post = synthetic.render_ultrasound(t, np.array(t.t1_mm), noise_seed=200, shift_mm=tuple(t.nuisance["shift_mm"]))
    return pre, post


US_FORMATS = ("mixed", "dicom", "png", "jpeg75", "jpeg90")


def us_format(seed: int, pid: str, choice: str, bid: str = "B1") -> tuple[str, int]:
    """(format, JPEG quality) of a biopsy's ultrasound: ``choice``, or for 'mixed' a draw (half of them exports:
    PNG a fifth, JPEG at quality 70-95 three tenths) from its own stream, so that every other draw stays."""
    if choice != "mixed":
        return (choice[:4], int(choice[4:])) if choice.startswith("jpeg") else (choice, 0)
    rng = synthetic.biopsy_rng(seed + 28, pid, bid)
    u, quality = rng.random(), int(rng.integers(70, 96))
    return ("dicom", 0) if u < 0.5 else ("png", 0) if u < 0.7 else ("jpeg", quality)


def as_export(
    t: synthetic.BiopsyTruth, pre: np.ndarray, post: np.ndarray, fmt: str, quality: int, rng: np.random.Generator
) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Pre- and post-fire frames through a screen export (with a 1 mm depth ruler) and the pipeline's reader
    (given the spacing, as us_mm_per_px): the two tissue regions it finds, the pre-fire one's offset from the
    truth's region (px), and the pre-fire export's pixels over the truth's region (for scoring the crop)."""
    out = []
    with tempfile.TemporaryDirectory() as d:
        for name, region in (("pre", pre), ("post", post)):
            path = Path(d) / f"{name}.{fmt}"
            synthetic.write_export(t, path, region, rng, fmt, quality)
            gray, meta = ingest.read_ultrasound(path, frame="last", mm_per_px=(t.mm_per_px, t.mm_per_px))
            out.append((gray, meta))
        full, _ = ingest.read_export(Path(d) / f"pre.{fmt}", fmt, "last")
    offset = np.array(out[0][1]["region_bounds_xyxy"][:2]) - [t.region_x0, t.region_y0]
    truth_view = full[t.region_y0 : t.region_y0 + t.rows, t.region_x0 : t.region_x0 + t.cols]
    return out[0][0], out[1][0], offset, truth_view


def factors(t: synthetic.BiopsyTruth) -> dict:
    """The nuisance levels a row is grouped by."""
    nz = t.nuisance
    ends = [d for d in nz["dense"] if d[0] < 2.0 or d[0] > t.throw_mm - 2.0]
    angle = abs(np.degrees(np.arctan2(t.t1_mm[1] - t.t0_mm[1], abs(t.t1_mm[0] - t.t0_mm[0]))))
    return {
        "stroke": t.stroke_mm,
        "dye": t.dye,
        "cores_on_slide": 1 if not t.slide_id else int(t.slide_id.count("-")),
        "core_by": "" if not t.slide_id else ("name" if t.core_name else "position"),
        "fragments": 1 + len(t.gaps_mm) + len(nz["gaps"]),
        "fat": t.fat.get("richness", "none"),  # fat lobules (tissue, not gaps): none, some or rich
        "fat_crossing": len(t.fat.get("crossings_mm", [])),  # where lobules fill the core's full width
        "dye_mark": t.dye_mark or "none",
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


def register_slide(args: tuple) -> list[dict]:
    """Render one slide of one or several cores, find its cores once, then register and score each biopsy on its
    own core, picked as the sheet would (by name or position).  ``measure``: also the peak memory of each step;
    ``compress``: the slide level through a JPEG round trip; ``marks``: the pathologist's dye marks used;
    ``formats``: the ultrasound's (see ``us_format``); ``strokes``: the guns' strokes drawn from;
    ``stroke_given``: each biopsy's stroke reaches the tract step, else the config's; ``steps``: which run;
    ``orient_off``: the orientation elements left out; ``variants``: (label, tract elements left out), each run
    on the same rendered biopsy (one row per variant, its label in ``ablated``)."""
    seed, pid, measure, compress, n_cores, marks, formats, strokes, stroke_given, steps, orient_off, variants, opts = (
        args
    )
    fine, length_check = opts
    ts, thumb, features = render(seed, pid, compress, n_cores, marks, strokes, "orient" in steps)
    rows = []
    try:
        if thumb is None:
            raise InputError("orientation skipped")
        quality = 75 + (seed * 31 + int(pid[1:])) % 21 if compress else None  # the fine level's tiles: JPEG 75-95
        read = fine_reader(ts, quality) if fine else None
        labels, found, pieces = cores.find_cores(orient.optical_density(thumb), LEVEL_UM, **CORES, read=read)
        cores.annotate(
            found, labels, features, LEVEL_UM / ts[0].slide_um_per_px, LEVEL_UM, CONFIG["cores"]["dye_class"]
        )
    except InputError as e:
        labels, found, pieces = None, e.what, []
    for t in ts:
        stroke = t.stroke_mm if stroke_given else CONFIG["tract"]["throw_mm"]
        us = us_inputs(t, formats)
        for label, tract_off in variants:
            row = register_one(
                t, thumb, features, labels, found, measure, us, stroke, orient_off, tract_off, pieces, length_check
            )
            row.update(accounting(t, labels, pieces, found if labels is not None else []))
            rows.append({**row, "ablated": label})
    return rows


def accounting(t: synthetic.BiopsyTruth, labels: np.ndarray | None, pieces: list[dict], found: list[dict]) -> dict:
    """How the finder saw this biopsy's true core (scored on the truth): the found cores along its centre line
    (1: whole; more: split), and the left-over pieces (over 0.5 mm) lying on it."""
    if labels is None:
        return {"core_found_as": 0, "leftover_on_core": 0}
    truth = synthetic.truth_record(t)
    f = t.slide_um_per_px / LEVEL_UM
    c, d = np.array(truth["core_centre_slide_px"]) * f, np.array(truth["dye_end_slide_px"]) * f
    line = c + (d - c) * np.linspace(-0.95, 0.95, 400)[:, None]
    x, y = np.clip(np.round(line).astype(int), 0, np.array(labels.shape[::-1]) - 1).T
    found_as = len(set(labels[y, x].tolist()) - {0})
    half_w = t.core_width_mm * t.shrink * 1000 / LEVEL_UM / 2
    seg, length = d - c, np.linalg.norm(d - c)

    def on_core(p: dict) -> bool:
        v = np.array(p["centre_px"]) - c
        along = float(v @ seg / length)
        return abs(along) <= length + 10 and abs(float(v @ np.array([-seg[1], seg[0]]) / length)) <= half_w

    left = sum(1 for p in pieces if p["role"] == "leftover" and p["length_mm"] > 0.5 and on_core(p))
    mine = [k for k in found if k["position"] in set(labels[y, x].tolist())]
    crossings = t.fat.get("crossings_mm", [])
    return {
        "core_found_as": found_as,
        "leftover_on_core": left,
        # fat and glass between pieces in line: what the finder joined as fat / left as gaps, against the truth
        "fat_true_mm": round(sum(b - a for a, b in crossings) * t.shrink, 3),
        "fat_found_mm": round(sum(k["fat_mm"] for k in mine), 3),
        "gaps_true": len(t.gaps_mm) + len(t.nuisance["gaps"]),
        "gaps_found": sum(len(k["gaps_mm"]) for k in mine),
    }


def us_inputs(t: synthetic.BiopsyTruth, formats: str) -> dict:
    """A biopsy's ultrasound as the tract step reads it: pre- and post-fire frames (rendered, or through an
    export and the reader), the pre-fire region's offset from the truth's (px), the pixels over the truth's
    region (for scoring the crop), and the format."""
    pre, post = ultrasound(t)
    fmt, quality = us_format(t.seed[0], t.participant_id, formats, t.biopsy_id)
    offset, truth_view = np.zeros(2), pre
    if fmt != "dicom":
        furniture = synthetic.biopsy_rng(t.seed[0] + 29, t.participant_id, t.biopsy_id)
        pre, post, offset, truth_view = as_export(t, pre, post, fmt, quality, furniture)
    return {"pre": pre, "post": post, "offset": offset, "truth_view": truth_view, "fmt": fmt, "quality": quality}


def register_one(
    t: synthetic.BiopsyTruth,
    thumb: np.ndarray,
    features: list[dict],
    labels: np.ndarray | None,
    found,
    measure: bool,
    us: dict,
    stroke: float,
    orient_off: frozenset[str] = frozenset(),
    tract_off: frozenset[str] = frozenset(),
    pieces: list[dict] | None = None,
    length_check: bool = True,
) -> dict:
    """Register and score one biopsy whose core lies on a slide level with the cores ``found`` (or their error);
    ``us``: its ultrasound (``us_inputs``); ``stroke``: the gun's stroke the tract step is given;
    ``orient_off``/``tract_off``: the elements each step leaves out."""
    pre, post, offset, truth_view, fmt, quality = (
        us[k] for k in ("pre", "post", "offset", "truth_view", "fmt", "quality")
    )
    seed, pid = t.seed[0], f"{t.participant_id}/{t.biopsy_id}"
    truth = synthetic.truth_record(t)
    row = {"seed": seed, "biopsy": pid, **factors(t), "us_format": fmt, "us_jpeg_quality": quality or None}
    mm = (t.mm_per_px, t.mm_per_px)
    c = CONFIG
    t_start = time.process_time()
    value = "" if not t.slide_id else (t.core_name or str(t.core_position))
    try:
        if labels is None:
            raise InputError(found)
        mine = cores.select(found, value)
        centre = np.array([truth["core_centre_slide_px"]]) * t.slide_um_per_px / LEVEL_UM
        row["core_matched"] = cores.nearest_core(labels, centre, 1000 / LEVEL_UM) == mine["position"]
        found_o = orient.orient_core(thumb, labels, mine, LEVEL_UM, None, orient_off, **c["orient"])
        found_o.update(tissue_doubts=cores.unaccounted(pieces or [], found, found_o), cores_on_slide=len(found))
        row.update(
            orient_state=found_o["state"],
            orient_source=found_o["source"],
            orient_conf=found_o["confidence"],
            orient_evidence=found_o.get("evidence"),
        )
        can = orient.canonical(found_o, LEVEL_UM, t.slide_um_per_px)
        res_o = {**found_o, **can}
    except InputError as e:
        row.update(orient_state="skipped" if thumb is None else "failed", orient_error=e.what)
        res_o = None
    row["orient_s"] = time.process_time() - t_start
    t_start = time.process_time()
    try:
        res_t = tract.tract(pre, post, mm, stroke, {}, c["tract"]["min_confidence"], disabled=tract_off)
        row["tract_state"], row["length_flag"] = res_t["state"], res_t["length_flag"]
        for k in ("t0_px", "t1_px"):  # an export's region (trimmed by the reader) -> the truth's region
            res_t[k] = (np.array(res_t[k]) + offset).tolist()
        crop, frame = tract.crop_strip(
            truth_view, res_t, mm, c["tract"]["width_mm"], c["tract"]["out_mm_per_px"], c["tract"]["margin_mm"]
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
        row["orient_mb"] = (
            peak_mb(orient.orient_core, thumb, labels, mine, LEVEL_UM, None, **c["orient"])
            if res_o is not None
            else np.nan
        )
        row["tract_mb"] = peak_mb(tract.tract, pre, post, mm, stroke, {}, c["tract"]["min_confidence"])
    if res_t is not None:
        err = lambda a, b: float(np.linalg.norm((np.array(a) - np.array(b)) * t.mm_per_px))  # noqa: E731
        row["t0_mm"], row["t1_mm"] = err(res_t["t0_px"], truth["t0_px"]), err(res_t["t1_px"], truth["t1_px"])
        row["axis_deg"] = abs((res_t["axis_deg"] - truth["axis_deg"] + 180) % 360 - 180)
        row["tract_wrong"] = max(row["t0_mm"], row["t1_mm"]) > WRONG_MM or row["axis_deg"] > WRONG_AXIS_DEG
        u = np.array(res_t["t1_px"]) - np.array(res_t["t0_px"])
        u = u / (np.linalg.norm(u) + 1e-9)
        row["t0_along_mm"] = float((np.array(res_t["t0_px"]) - truth["t0_px"]) @ u * t.mm_per_px)  # + : beyond the tip
        row["t1_along_mm"] = float((np.array(res_t["t1_px"]) - truth["t1_px"]) @ u * t.mm_per_px)
    if res_o is not None:
        dye = geo.apply(np.array(res_o["slide_px_to_canonical_um"]), [truth["dye_end_slide_px"]])[0]
        row["orient_correct"] = bool(dye[0] > 0)
    if res_o is not None and res_t is not None:
        polys, _ = transfer.tumour_polygons(transfer.parse_features(features), CONFIG["transfer"]["classes"])
        raw = polys
        if labels is not None:  # only the outlines on this biopsy's core (an outline spanning two: an error)
            scale, names = LEVEL_UM / t.slide_um_per_px, {k["position"]: str(k["position"]) for k in found}
            try:
                polys, _ = transfer.on_core(polys, labels, res_o["core_position"], scale, names)
            except InputError as e:
                row["transfer_error"] = e.what
                return row
        to_crop = transfer.registered_canonical_to_crop(res_o, res_t, CONFIG["transfer"]["across"])
        m = geo.compose(np.array(res_o["slide_px_to_canonical_um"]), to_crop)
        polys = [(lab, cls, geo.apply_polygons(m, [poly])[0]) for lab, cls, poly in polys]
        voids = transfer.void_polygons(res_t["crop_shape"], res_t["tract_x_px"], transfer.core_rows(res_o, to_crop))
        voids += transfer.gap_voids(res_o["core_gaps_x_um"], to_crop, res_t["crop_shape"])
        label = voc.rasterize(transfer.labelme_shapes(polys, voids), crop.shape, voc.label_values())
        row["dice"] = qc.score(res_t, res_o, label, truth, synthetic.truth_label(t))["dice"]
        core_mm = (res_o["core_x_um"][1] - res_o["core_x_um"][0]) / 1000
        row["shrinkage"] = core_mm / res_t["sampled_length_mm"]
        reasons = [transfer.shrinkage_reason(core_mm, res_t["sampled_length_mm"], PLAUSIBLE)] if length_check else []
        if labels is not None:
            reasons += transfer.on_leftover(raw, pieces or [], res_o["core_position"], scale)
        rows_on_slide = 1 if not t.slide_id else int(t.slide_id.count("-"))  # the sheet's rows: every core's
        st = state.biopsy_state(res_o, res_t, "auto", {"review_reasons": [r for r in reasons if r]}, rows_on_slide)
        row["state"], row["reasons"] = st["state"], "; ".join(f"{k}: {v}" for k, v in st["reasons"].items())
        row["accepted_bad_label"] = st["state"] in state.USABLE and row["dice"] < BAD_DICE
    return row


def summary(df: pd.DataFrame) -> dict:
    """The issue's figures for a group of biopsies."""
    n = len(df)
    acc_o = df["orient_state"] == "accepted"
    correct = df.get("orient_correct", pd.Series(False, index=df.index)).fillna(False).astype(bool)
    review = (df["orient_state"] == "review") | (df["tract_state"] == "review")
    if "state" in df:  # every hold: orient, tract and the label's own evidence (state.py)
        review = df["state"] == "review"
    acc_t = df["tract_state"] == "accepted"
    orient_run = bool((df["orient_state"] != "skipped").any())
    q = lambda c, p: float(np.nanpercentile(df[c], p)) if c in df and df[c].notna().any() else float("nan")  # noqa: E731
    return {
        "n": n,
        "core_wrong": int((~df.get("core_matched", pd.Series(True, index=df.index)).fillna(True).astype(bool)).sum()),
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
        "axis_p95_acc": float(np.nanpercentile(df.loc[acc_t, "axis_deg"], 95)) if acc_t.any() else float("nan"),
        "tract_wrong_accepted": int((acc_t & df.get("tract_wrong", pd.Series(False, index=df.index)).eq(True)).sum()),
        "review_%": 100 * float(review.mean()),
        "cores_whole": int((df.get("core_found_as", pd.Series(dtype=float)) == 1).sum()),
        "cores_split": int((df.get("core_found_as", pd.Series(dtype=float)) > 1).sum()),
        "leftover_pieces": int(df.get("leftover_on_core", pd.Series(dtype=float)).fillna(0).sum()),
        "fat_found_%": 100 * float(df["fat_found_mm"].sum() / max(df["fat_true_mm"].sum(), 1e-9))
        if "fat_true_mm" in df
        else float("nan"),
        "gaps_found/true": f"{int(df['gaps_found'].sum())}/{int(df['gaps_true'].sum())}" if "gaps_true" in df else "",
        "accepted_dice_lt_0.5": int(
            df.get("accepted_bad_label", pd.Series(dtype=bool)).fillna(False).astype(bool).sum()
        ),
    }


def ablation_table(df: pd.DataFrame) -> pd.DataFrame:
    """One row per element removed (``none``: the baseline): wrong accepted, sent to review, failed, the accepted
    tracts' T0/T1 (mm) and axis (degrees) p95, and how many biopsies' state or tips changed from the baseline."""
    base = df[df["ablated"] == "none"].set_index(["seed", "biopsy"])
    out = []
    for label, g in df.groupby("ablated", sort=False):
        s, g = summary(g), g.set_index(["seed", "biopsy"])
        moved = (g["tract_state"] != base["tract_state"]) | ~np.isclose(
            g[["t0_mm", "t1_mm"]].fillna(-1), base[["t0_mm", "t1_mm"]].fillna(-1), atol=1e-3
        ).all(axis=1)
        out.append(
            {
                "element removed": label,
                "wrong accepted": s["tract_wrong_accepted"],
                "sent to review": s["tract_review"],
                "failed": s["tract_failed"],
                "T0 p95 (mm)": s["T0_p95_acc"],
                "T1 p95 (mm)": s["T1_p95_acc"],
                "axis p95 (deg)": s["axis_p95_acc"],
                "changed": int(moved.sum()),
            }
        )
    return pd.DataFrame(out)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--n", type=int, default=120, help="biopsies per seed")
    p.add_argument("--seeds", type=int, nargs="+", default=[1, 2])
    p.add_argument("--workers", type=int, default=2)
    p.add_argument("--out", default="benchmarks/out/registration_sweep.tsv")
    p.add_argument("--memory-every", type=int, default=4, help="measure each step's peak memory on every k-th biopsy")
    p.add_argument("--no-jpeg", action="store_true", help="slide level as rendered (no JPEG round trip)")
    p.add_argument("--cores", type=int, nargs="+", default=[1], help="cores per slide, cycled over the slides")
    p.add_argument("--marks", action="store_true", help="use the pathologist's dye marks the model drew (~3 in 8)")
    p.add_argument(
        "--us-format",
        choices=US_FORMATS,
        default="mixed",
        help="ultrasound as rendered (dicom), or through a PNG/JPEG screen export read by ingest; mixed: half exports",
    )
    p.add_argument("--strokes", type=float, nargs="+", default=[22.0], help="gun strokes (mm), one drawn per biopsy")
    p.add_argument("--config-stroke", action="store_true", help="the config's stroke for all, not each biopsy's")
    p.add_argument("--steps", nargs="+", choices=["orient", "tract"], default=["orient", "tract"], help="tract: always")
    p.add_argument(
        "--ablate", action="append", default=[], metavar="STEP.NAME", help="leave one element out, e.g. tract.edge_snr"
    )
    p.add_argument("--ablation", choices=["tract"], help="nothing removed, then each element of tract.ABLATABLE")
    p.add_argument("--no-fine", action="store_true", help="no finer slide level: fat and glass not told apart")
    p.add_argument("--no-length-check", action="store_true", help="the core/tract length check off (its cost)")
    a = p.parse_args()
    off = ablated(a.ablate)
    variants = [("none", off["tract"])]
    if a.ablation == "tract":
        variants += [(name, off["tract"] | {name}) for name in tract.ABLATABLE]
    jobs = [
        (
            s,
            f"V{i:04d}",
            i % a.memory_every == 0,
            not a.no_jpeg,
            a.cores[i % len(a.cores)],
            a.marks,
            a.us_format,
            tuple(a.strokes),
            not a.config_stroke,
            tuple(a.steps),
            off["orient"],
            tuple(variants),
            (not a.no_fine, not a.no_length_check),
        )
        for s in a.seeds
        for i in range(a.n)
    ]
    t0 = time.time()
    with ProcessPoolExecutor(a.workers) as ex:
        rows = []
        for k, r in enumerate(ex.map(register_slide, jobs, chunksize=2), 1):
            rows += r
            if k % 10 == 0:
                el = time.time() - t0
                print(
                    f"  {k}/{len(jobs)} slides, {len(rows)} biopsies, {el:.0f} s, ETA {el / k * (len(jobs) - k):.0f} s",
                    file=sys.stderr,
                    flush=True,
                )
    every = pd.DataFrame(rows)
    Path(a.out).parent.mkdir(parents=True, exist_ok=True)
    every.to_csv(a.out, sep="\t", index=False, float_format="%.4g")
    if a.ablation:
        print(
            f"Tract ablation on seeds {a.seeds}, {a.n} slides each, ultrasound {a.us_format}, strokes {a.strokes} mm "
            f"({'the config' if a.config_stroke else 'each biopsy'}'s given), {a.ablate or 'nothing'} left out "
            f"throughout:\n"
        )
        print(ablation_table(every).to_string(index=False, float_format=lambda v: f"{v:.3g}"))
        return
    df = every
    pd.set_option("display.width", 250, "display.max_columns", 30, "display.max_rows", 200)
    fmt = lambda d: d.to_string(float_format=lambda v: f"{v:.3g}")  # noqa: E731
    slide = "as rendered" if a.no_jpeg else "JPEG round trip"
    print(
        f"Varied cohort: {len(df)} biopsies, seeds {a.seeds}, slide level {slide}, ultrasound {a.us_format}, "
        f"strokes {a.strokes} mm ({'the config' if a.config_stroke else 'each biopsy'}'s given), steps {a.steps}, "
        f"left out {a.ablate or 'nothing'}, "
        f"{time.time() - t0:.0f} s\n"
    )
    print("OVERALL")
    print(fmt(pd.DataFrame([summary(df)])))
    for f in (
        "cores_on_slide",
        "core_by",
        "fragments",
        "fat",
        "fat_crossing",
        "dye_mark",
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
        "us_format",
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
