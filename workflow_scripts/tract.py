"""Needle tract: weigh the needle's detected advance, decide the tract's state, and crop the strip T0 -> T1.

Detection (axis, advance direction, T0, T1 and their second estimates) is :mod:`workflow_scripts.needle`.
This module decides what that evidence is worth:

- ``confidences``: each of T0, T1 and the axis gets a confidence from named terms: the two tips
  lying as far apart as the gun advances (at most its stroke and a little short of it) and the tip
  edge's contrast over the tissue noise; for the axis, the advance's own direction agreeing;
- ``tract``: a biopsy below ``min_confidence`` on any, or with a length the gun cannot give, or with
  no needle in the pre-fire frame, goes to review; overrides (tip, axis, length) win over detection.

Every confidence term and plausibility check has a name in :data:`ABLATABLE`; ``disabled`` leaves the
named ones out (``benchmarks/registration_sweep.py --ablation tract`` measures each).  The stroke is
the biopsy's (biopsies.tsv ``stroke_mm``) or the config's default; it never moves a tip.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np
from skimage.io import imread, imsave

from workflow_scripts import geometry as geo
from workflow_scripts import needle
from workflow_scripts.errors import InputError, run_cli

SKIN_MM = 1.5  # the skin line: bright and straight, never the needle tip
THROW_SHORTFALL = 0.03  # share of the throw the advance seen in the image plane may fall short of it
STROKE_OVERSHOOT_MM = 0.5  # a tract longer than the throw by more than this has a tip in the wrong place
STROKE_SHORT = 0.75  # a tract shorter than this share of the stroke has a tip in the wrong place
AGREE_MM = 1.0  # two estimates of a tip agree as exp(-distance / this)
AXIS_AGREE_DEG = 2.0  # the advance's own direction agrees with the axis as exp(-angle / this)
# the pre-fire frame's own needle echo behind T0 over its speckle (``needle.prefire_echo``) below which the
# pre-fire frame shows no needle, whatever the tract's length: with a needle 0.63-5.2 (1.17 and up but once), with
# none -1.9-2.2, 1.0 and up in 6 of 144 (benchmarks/prefire_needle.py, seeds 1000-1047, docs/registration.md)
PREFIRE_ECHO = 1.0

# the confidence terms and plausibility checks ``disabled`` can leave out; each changes what is accepted on the
# sweep's held-out seeds or on a failure a test keeps (docs/ablation_tract.md)
TERMS = (
    "stroke_support",  # T0, T1: the tips lie as far apart as the gun advances
    "edge_snr",  # T0, T1: the tip edge stands out of the tissue noise
    "axis_agreement",  # axis: the advance's own direction agrees
)
CHECKS = (
    "length_plausible",  # a length the gun cannot give goes to review
    "prefire_needle",  # no needle in the pre-fire frame: T0 from the stroke, to review
)
ABLATABLE = TERMS + CHECKS


def _within(s1: float, s0: float, throw_px: float) -> float:
    """The T1 the gun allows nearest ``s1``: from ``THROW_SHORTFALL`` short of the throw to the throw past T0.

    The stroke is mechanical, so the tip seen in the image plane never advances further; tilt out of the
    plane, deflection and the tissue's give shorten what is seen a little.
    """
    return float(np.clip(s1, s0 + (1 - THROW_SHORTFALL) * throw_px, s0 + throw_px))


def _check_names(disabled: frozenset[str]) -> None:
    """A ``ValueError`` naming any element of ``disabled`` that is not in :data:`ABLATABLE`."""
    unknown = sorted(set(disabled) - set(ABLATABLE))
    if unknown:
        raise ValueError(f"unknown tract element(s) {unknown}: choose from {', '.join(ABLATABLE)}")


def confidences(a: needle.Advance, mm: float, stroke_mm: float, disabled: frozenset[str] = frozenset()) -> dict:
    """Confidence (0-1) in T0, T1 and the axis from the advance's evidence; ``disabled`` terms count as 1.

    A tip's is the two tips lying as far apart as the gun advances (``exp(-distance / AGREE_MM)`` from
    the nearest T1 the stroke allows) times how clearly its edge stands out of the tissue noise; the
    axis's is the advance's own direction agreeing with it (``exp(-angle / AXIS_AGREE_DEG)``).  The
    tips' second estimates (``d0``, ``d1``, ``r1``) and the axis fit's precision and baseline were
    terms too; they changed nothing (docs/ablation_tract.md) and are reported in ``fit`` only."""

    def term(name: str, value: float) -> float:
        return 1.0 if name in disabled else value

    within = _within(a.s1, a.s0, stroke_mm / mm)
    stroke = term("stroke_support", 0.0 if np.isnan(within) else float(np.exp(-abs(a.s1 - within) * mm / AGREE_MM)))
    clear = [term("edge_snr", float(1 - np.exp(-max(x, 0.0)))) for x in a.snr]
    axis = term("axis_agreement", float(np.exp(-geo.lines_angle_deg(a.advance_axis, a.u) / AXIS_AGREE_DEG)))
    return {"t0": stroke * clear[0], "t1": stroke * clear[1], "axis": axis}


def two_frame(
    pre: np.ndarray,
    post: np.ndarray,
    mm_per_px: tuple[float, float],
    stroke_mm: float = float("nan"),
    disabled: frozenset[str] = frozenset(),
) -> dict:
    """Axis, T0 and T1 (pre-fire px) from the needle's advance between the two frames, with confidences.

    The frames may differ in size (exports trimmed to their tissue regions); ``stroke_mm``, the gun's
    stroke, only supports the tips' confidences (their distance fitting the gun), never moves them."""
    a = needle.two_frame_evidence(pre, post, mm_per_px)
    fit = {**a.fit, "t0_diff_px": float(a.s0 - a.d0), "t1_diff_px": float(a.s1 - a.d1), "snr": list(a.snr)}
    return {
        "t0": a.point + a.s0 * a.u,
        "t1": a.point + a.s1 * a.u,
        "direction": a.u,
        "shift_px": a.shift.tolist(),
        "confidence": confidences(a, float(np.mean(mm_per_px)), stroke_mm, disabled),
        "fit": fit,
        "prefire_shaft": a.prefire_shaft,
        "prefire_echo": a.prefire_echo,
    }


# what a low confidence in each part of the tract means and where a person looks (review reasons)
LOW_CONFIDENCE = {
    "t0": (
        "the pre-fire tip is faint, or not where the stroke puts it",
        "check the pre-fire frame's needle tip on the QC figure, or drag T0 in the review app (tip_x/tip_y in "
        "biopsies.tsv)",
    ),
    "t1": (
        "the post-fire tip is faint, or not where the stroke puts it",
        "check the post-fire frame's needle tip on the QC figure, or drag T1 in the review app "
        "(override_length_mm in biopsies.tsv)",
    ),
    "axis": (
        "the needle's advance and its post-fire shaft point different ways",
        "check the needle's line on the QC figure, or drag T0 and T1 in the review app (axis_deg in biopsies.tsv)",
    ),
}


def _number(x: float) -> str:
    """A confidence as a person reads it: two decimals, or the first digit of a small one (0.002, not 0.00)."""
    return f"{x:.2f}" if not 0 < abs(x) < 0.01 else f"{x:.1g}"


def confidence_reasons(res: dict, min_confidence: float, skip: frozenset[str] = frozenset()) -> list[str]:
    """A review reason for each of T0, T1 and the axis (but those in ``skip``) whose confidence in the tract
    result ``res`` is below ``min_confidence`` (or NaN): the number against the threshold, the evidence behind
    it and what to look at."""
    found = []
    for part, label in (("t0", "T0"), ("t1", "T1"), ("axis", "axis")):
        c = res["confidence"][part]
        if c >= min_confidence or part in skip:
            continue
        what, look = LOW_CONFIDENCE[part]
        if part == "axis":
            evidence = f"{-AXIS_AGREE_DEG * np.log(max(c, 1e-12)):.1f} deg apart" if c == c else "no direction"
        else:
            evidence = (
                f"its edge's SNR {res['fit']['snr'][0 if part == 't0' else 1]:.1f} over the tissue noise; tips "
                f"{res['sampled_length_mm']:.1f} mm apart, stroke {res['stroke_mm']:g} mm"
            )
        found.append(f"{label} confidence {_number(c)} < {min_confidence:g}: {what} ({evidence}); {look}")
    return found


def length_reason(length_mm: float, stroke_mm: float) -> str:
    """The review reason for a sampled length the gun cannot give (:func:`implausible_length`)."""
    return (
        f"sampled length {length_mm:.1f} mm is one a {stroke_mm:g} mm stroke cannot give (more than "
        f"{stroke_mm + STROKE_OVERSHOOT_MM:g} or less than {STROKE_SHORT * stroke_mm:g} mm): a tip is in the wrong "
        "place, or the gun was set to another stroke; check both tips on the QC figure, set stroke_mm in "
        "biopsies.tsv if the gun's stroke differs, or drag T0 and T1 in the review app"
    )


def implausible_length(length_mm: float, stroke_mm: float) -> bool:
    """A sampled length the gun cannot give: past its stroke (by more than the tips' error), or a quarter short."""
    return length_mm > stroke_mm + STROKE_OVERSHOOT_MM or length_mm < STROKE_SHORT * stroke_mm


def no_prefire_needle(r: dict) -> bool:
    """Whether the pre-fire frame shows no needle: its own echo behind T0 (``two_frame``'s ``prefire_echo``) stays
    in its speckle.  Decided on that evidence alone, not on the tract's length: a post-fire needle seen only about
    a stroke long (its shaft out of the plane, or entering the frame near T0) gives a plausible length too."""
    return not r["prefire_echo"] >= PREFIRE_ECHO


def _prefire_fallback(r: dict, stroke_mm: float, scale: np.ndarray) -> tuple[np.ndarray, str]:
    """T0 as T1 less the stroke, and the review reason, for a pre-fire frame that shows no needle (the difference
    then starts where the post-fire needle starts, not at the pre-fire tip)."""
    t0 = r["t1"] - r["direction"] * stroke_mm / float(np.linalg.norm(r["direction"] * scale))
    reason = (
        f"the pre-fire frame shows no needle (its echo behind T0 is {r['prefire_echo']:.1f} of its speckle, under "
        f"{PREFIRE_ECHO:g}): T0 estimated from the post-fire frame alone, T1 less the {stroke_mm:g} mm stroke (the "
        "tip to confirm); check that this is the pre-fire frame"
    )
    return t0, reason


def auto_tract(
    pre: np.ndarray,
    post: np.ndarray,
    mm_per_px: tuple[float, float],
    stroke_mm: float,
    min_confidence: float,
    disabled: frozenset[str] = frozenset(),
) -> dict:
    """The tract from both frames with no override, and its state: ``accepted`` when every confidence reaches
    ``min_confidence``, the length is one the gun can give and the pre-fire frame shows the needle, else
    ``review`` with a ``review_reason`` that says which of these held it and what to look at."""
    scale = np.array(mm_per_px)
    r = two_frame(pre, post, mm_per_px, stroke_mm, disabled)
    t0, conf, reasons = r["t0"], r["confidence"], []
    length = float(np.linalg.norm((r["t1"] - t0) * scale))
    if no_prefire_needle(r) and "prefire_needle" not in disabled:
        t0, reason = _prefire_fallback(r, stroke_mm, scale)
        conf, length, reasons = {**conf, "t0": 0.0}, float(stroke_mm), [reason]
    flag = implausible_length(length, stroke_mm)
    res = {
        "t0_px": t0.tolist(),
        "t1_px": r["t1"].tolist(),
        "axis_deg": geo.line_angle_deg(r["direction"] * scale),
        "sampled_length_mm": length,
        "stroke_mm": stroke_mm,
        "length_flag": flag,
        "confidence": conf,
        "fit": {**r["fit"], "prefire_shaft": r["prefire_shaft"], "prefire_echo": r["prefire_echo"]},
        "post_shift_px": r["shift_px"],
        "source": {"t0": "auto", "axis": "auto", "t1": "auto"},
    }
    reasons += confidence_reasons(res, min_confidence, frozenset({"t0"} if reasons else ()))
    reasons += [length_reason(length, stroke_mm)] if flag and "length_plausible" not in disabled else []
    return {
        **res,
        "state": "review" if reasons else "accepted",
        **({"review_reason": "; ".join(reasons)} if reasons else {}),
    }


def override_tract(
    pre: np.ndarray,
    post: np.ndarray | None,
    mm_per_px: tuple[float, float],
    stroke_mm: float,
    overrides: dict,
    manual: str,
) -> dict:
    """The tract with overrides (``tip``, ``axis_deg``, ``length_mm``) winning over one-frame detection; the state
    is ``override``.  With ``length_mm`` T1 is T0 + that length along the axis and ``post`` is not read; else
    T1 is the post-fire tip projected onto the pre-fire axis, and the two needles must agree in direction."""
    scale = np.array(mm_per_px)
    given = {k: overrides.get(k) is not None for k in ("tip", "axis_deg", "length_mm")}
    skin, mm = int(SKIN_MM / scale[1]), float(np.mean(mm_per_px))
    d0 = needle.detect(pre, skin, mm, overrides.get("axis_deg"), overrides.get("tip"))
    direction = d0["direction"]
    if given["length_mm"]:
        t1 = d0["tip"] + direction * overrides["length_mm"] / np.linalg.norm(direction * scale)
    else:
        axis = np.degrees(np.arctan2(direction[1], direction[0])) if given["axis_deg"] else None
        d1 = needle.detect(post, skin, mm, axis)
        if float(d1["direction"] @ direction) < 0.9:
            raise InputError(
                f"pre- and post-fire needles disagree ({geo.line_angle_deg(direction):.1f} vs "
                f"{geo.line_angle_deg(d1['direction']):.1f} deg)",
                "set axis_deg and override_length_mm in biopsies.tsv, or check that pre/post-fire are of the same "
                "biopsy",
            )
        t1 = d0["tip"] + ((d1["tip"] - d0["tip"]) @ direction) * direction  # project onto the pre-fire axis
    length = float(np.linalg.norm((t1 - d0["tip"]) * scale))
    source = {part: manual if given[k] else "auto" for part, k in (("t0", "tip"), ("axis", "axis_deg"))}
    return {
        "t0_px": d0["tip"].tolist(),
        "t1_px": t1.tolist(),
        "axis_deg": geo.line_angle_deg(direction * scale),
        "sampled_length_mm": length,
        "stroke_mm": stroke_mm,
        "length_flag": implausible_length(length, stroke_mm),
        "state": "override",
        "source": {**source, "t1": manual if given["length_mm"] else "auto"},
    }


def tract(
    pre: np.ndarray,
    post: np.ndarray | None,
    mm_per_px: tuple[float, float],
    stroke_mm: float,
    overrides: dict,
    min_confidence: float | None = None,
    manual: str = "sheet",
    disabled: frozenset[str] = frozenset(),
) -> dict:
    """T0 (pre-fire tip), T1 (post-fire tip on the pre-fire axis) and the sampled length.

    ``stroke_mm``, the gun's stroke, checks the length and supports the tips' confidences; it never
    moves a tip.  With both frames and no override, both tips come from the needle's advance
    (``auto_tract``: ``min_confidence``, config tract.min_confidence, is read on this path only, so a call
    with overrides may omit it); any override (``tip``, ``axis_deg``, ``length_mm``) makes it ``override_tract``,
    each overridden part's source ``manual``.  ``disabled``: elements of :data:`ABLATABLE` left out.
    """
    _check_names(disabled)
    if post is not None and all(overrides.get(k) is None for k in ("tip", "axis_deg", "length_mm")):
        if min_confidence is None:
            raise ValueError("tract without overrides needs min_confidence (config tract.min_confidence)")
        return auto_tract(pre, post, mm_per_px, stroke_mm, min_confidence, disabled)
    return override_tract(pre, post, mm_per_px, stroke_mm, overrides, manual)


def calibration_reasons(*metas: dict) -> list[str]:
    """Review reasons from the ingest metadata: each distinct DICOM-vs-us_mm_per_px calibration conflict."""
    found = [m["calibration_conflict"] for m in metas if m.get("calibration_conflict")]
    return [f"ultrasound calibration: {c}" for c in dict.fromkeys(found)]


def pixel_overrides(
    tip: list[float] | None, axis_deg: float | None, origin: list[float], mm_per_px: tuple[float, float]
) -> dict:
    """Manual tip (DICOM frame px) and physical axis angle -> tissue-region px and pixel-space angle."""
    return {
        "tip": None if tip is None else np.asarray(tip, float) - np.asarray(origin, float),
        "axis_deg": None if axis_deg is None else geo.pixel_angle_deg(axis_deg, mm_per_px),
    }


def crop_strip(
    pre: np.ndarray, res: dict, mm_per_px: tuple[float, float], width_mm: float, out_mm_per_px: float, margin_mm: float
) -> tuple[np.ndarray, dict]:
    """The uint8 crop strip along T0 -> T1 and its frame (crop-to-original affine, shape, tract columns)."""
    m, shape, xs = geo.tract_crop_frame(
        np.array(res["t0_px"]), np.array(res["t1_px"]), mm_per_px, width_mm, out_mm_per_px, margin_mm
    )
    crop = geo.warp(pre.astype(float), m, shape, order=1)
    frame = {
        "crop_to_original": m.tolist(),
        "crop_shape": list(shape),
        "tract_x_px": list(xs),
        "out_mm_per_px": out_mm_per_px,
        "width_mm": width_mm,
        "mm_per_px": list(mm_per_px),
    }
    return np.clip(np.round(crop), 0, 255).astype(np.uint8), frame


def parser() -> argparse.ArgumentParser:
    """The command line; every setting that config.yaml carries is a required option the rule passes."""
    p = argparse.ArgumentParser(description="detect the needle tract and crop it")
    for k in ("pre", "pre-meta", "post", "post-meta", "out", "crop"):
        p.add_argument(f"--{k}", required=True)
    p.add_argument("--default-stroke-mm", type=float, required=True, help="the gun's stroke (config tract.throw_mm)")
    p.add_argument("--stroke-mm", type=float, help="this biopsy's gun stroke (biopsies.tsv stroke_mm); wins")
    # settings that config.yaml carries have no second default here: the rule always passes them
    p.add_argument("--width-mm", type=float, required=True, help="config tract.width_mm")
    p.add_argument("--margin-mm", type=float, required=True, help="config tract.margin_mm")
    p.add_argument("--out-mm-per-px", type=float, required=True, help="config tract.out_mm_per_px")
    p.add_argument("--min-confidence", type=float, required=True, help="config tract.min_confidence: below, review")
    p.add_argument("--tip", type=float, nargs=2, help="override: pre-fire tip, DICOM frame px")
    p.add_argument("--axis-deg", type=float, help="override: needle advance direction")
    p.add_argument("--override-length-mm", type=float, help="override: sampled length (T1 = T0 + this)")
    p.add_argument("--participant")
    p.add_argument("--biopsy")
    return p


def main(argv: list[str] | None = None) -> None:
    a = parser().parse_args(argv)

    def go() -> None:
        pre, post = imread(a.pre), imread(a.post)
        meta = json.loads(Path(a.pre_meta).read_text())
        mm = tuple(meta["mm_per_px"])
        ov = pixel_overrides(a.tip, a.axis_deg, meta["region_bounds_xyxy"][:2], mm)
        sheet = a.stroke_mm is not None
        stroke = a.stroke_mm if sheet else a.default_stroke_mm
        res = tract(pre, post, mm, stroke, {**ov, "length_mm": a.override_length_mm}, a.min_confidence)
        res.update(
            stroke_source="biopsies.tsv stroke_mm" if sheet else "config tract.throw_mm",
            override_length_mm=a.override_length_mm,
            length_source="biopsies.tsv override_length_mm" if a.override_length_mm is not None else "auto",
        )
        # the sheet's spacing won over a DICOM's that disagrees: recorded as data; state.py holds the biopsy
        res["calibration_conflicts"] = calibration_reasons(meta, json.loads(Path(a.post_meta).read_text()))
        crop, frame = crop_strip(pre, res, mm, a.width_mm, a.out_mm_per_px, a.margin_mm)
        imsave(a.crop, crop, check_contrast=False)
        res.update(frame)
        Path(a.out).write_text(json.dumps(res, indent=1))
        flag = f"  (FLAG: a length a {stroke:g} mm stroke cannot give)" if res["length_flag"] else ""
        print(f"tract {res['sampled_length_mm']:.2f} mm at {res['axis_deg']:.1f} deg{flag}; {res['state']}")

    run_cli(go, a.participant, a.biopsy, a.pre)


if __name__ == "__main__":
    main()
