"""Dye-tip orientation: which end of a core on a low-resolution WSI level the pathologist dyed.

The call is a pipeline of named stages, each a short function below:

1. **tissue and axis** (:func:`core_shape`, :func:`core_pixels`): the core's pixels (from
   :mod:`workflow_scripts.cores`), its long axis and extent, its two end quarters and its middle;
2. **the slide's stain model** (:func:`stain_model`, in :mod:`workflow_scripts.stain`): the H-E
   mixing line learnt from the core itself, and which pixels lie off it beyond the tissue's own
   scatter at their density;
3. **dye candidates**: first evidence (:func:`colour_candidates`): off the line beyond the tissue's
   scatter, and not flagged at both ends; second evidence (:func:`novelty_candidates`), asked
   when the first finds too little (dyes close to haematoxylin): a colour the middle lacks that is
   haematoxylin-ward of the tissue or denser than most of it;
4. **mass at each end** (:func:`end_evidence`, :mod:`workflow_scripts.dye`): the dye walked in
   from each tip, thick parts first (bubble rims are thin); the confidence is the contrast between
   the ends;
5. **decision and state** (:func:`automatic_call`, :data:`DOUBTS`, :func:`decide`): no dye or a
   confidence below ``min_confidence`` is an error; a call is ``accepted`` when its contrast
   reaches its evidence's bar and no doubt holds, else ``review``; a ``dye_end`` override, then the
   pathologist's dye marks, win over the automatic call.  ``p_correct`` is the call's probability of being
   right, fitted on synthetic training seeds and checked on held-out ones (:mod:`workflow_scripts.calibration`);
   it decides nothing.

Every stage and doubt has a name in :data:`ABLATABLE`; ``disabled`` leaves the named ones out
(``benchmarks/orient_ablation.py`` measures what each earns).  Lengths are in µm and converted with
the level's resolution; the thresholds a user may set are in config.yaml's ``orient`` section.
"""

from __future__ import annotations

import argparse
import json
from collections.abc import Callable
from dataclasses import dataclass
from functools import cache, partial
from pathlib import Path

import numpy as np
from scipy import ndimage
from skimage.io import imread, imsave

from workflow_scripts import calibration, dye
from workflow_scripts import geometry as geo
from workflow_scripts.cores import GAP_UM, axis_of, gaps, select, unaccounted
from workflow_scripts.errors import InputError, run_cli
from workflow_scripts.stain import (
    H_CHROMA,
    chromaticity,
    glass_colour,
    mixing_line,
    optical_density,
    scatter_at_density,
)

__all__ = ["optical_density", "glass_colour", "find_orientation", "orient_core", "canonical", "ABLATABLE"]

DIRECTIONS = {"left": (-1, 0), "right": (1, 0), "top": (0, -1), "bottom": (0, 1)}
DYE_HINT = "set dye_end (left/right/top/bottom, as the slide is displayed) in biopsies.tsv"
MIN_OD = 0.25  # summed optical density below which a pixel's colour is too faint to judge
SMOOTH_UM = 48.0  # colour is judged on optical density smoothed this much (Gaussian sigma)
MIDDLE_MIN_UM2 = 5120.0  # tissue area the core's middle needs to learn its stain from
CHROMA_FLOOR = 0.008  # least chromaticity distance from the H-E line that is dye, whatever the slide's own spread
LOG_OD_RADIUS = 0.12  # log optical density within which two colours' densities are alike (about 13 %)
NOVEL_SHARE = 0.005  # share of the middle's pixels near a colour below which the middle lacks that colour
MIN_SPAN = 0.08  # chromaticity run of the tissue along its H-E line below which the line is undetermined
DYE_MAX_WIDTHS = 2.0  # dye mass in from an end, in core widths, beyond which a novel colour is not taken for dye
LONE_SHARE = 0.005  # share of the core off the H-E line away from the dyed end above which a second population exists
ISOLATE_MARGIN_UM = 1500.0  # the level read around one core: its neighbours beyond are painted out
NEIGHBOUR_MARGIN_UM = 48.0  # a neighbouring core is painted out this far beyond its mask

# the evidence stages that can be left out (the doubts' names are DOUBTS' keys)
STAGES = ("density_scatter", "both_ends_tissue", "novelty_evidence")
STAGES += ("thick_first", "rim_contacts", "rings")


@dataclass(frozen=True)
class CorePixels:
    """One core's pixels: their place along the axis (``t``, level px from the centroid), which are dense
    enough to judge (``solid``), the middle 60% (``middle``), the low half (``low``), the end quarters."""

    ys: np.ndarray
    xs: np.ndarray
    t: np.ndarray
    extent: tuple[float, float]
    width: float
    solid: np.ndarray
    middle: np.ndarray
    low: np.ndarray
    quarters: tuple[np.ndarray, np.ndarray]


@dataclass(frozen=True)
class StainModel:
    """The slide's stain model on one core: chromaticity and (chromaticity, log density) per pixel, the H-E
    line (point ``c``, direction ``d``), each pixel's distance off it, and which lie beyond the scatter."""

    chroma: np.ndarray
    feats: np.ndarray
    c: np.ndarray
    d: np.ndarray
    spread: float
    span: float
    off: np.ndarray
    beyond: np.ndarray
    radius: np.ndarray


@dataclass(frozen=True)
class Evidence:
    """The dye at each end (``mass``: level px in from the negative and positive ends) by one kind of evidence
    (``kind``: colour or novelty), the pixels it counts, whether those are thick parts, and the other kind's
    masses where it was asked (``check``)."""

    mass: tuple[float, float]
    flagged: np.ndarray
    thick: bool
    kind: str
    check: tuple[float, float] | None


def find_orientation(
    rgb: np.ndarray,
    mask: np.ndarray,
    *,
    level_um: float,
    min_dye_fraction: float,
    accept_confidence: float,
    accept_novelty: float,
    min_confidence: float,
    override: str | None = None,
    marks: list[list[float]] | None = None,
    disabled: frozenset[str] = frozenset(),
) -> dict:
    """Strip axis, extent and dyed end of the core ``mask`` on one pyramid level (``level_um`` µm per px;
    coordinates in that level's px).

    The automatic call (:func:`automatic_call`) ends ``accepted`` or ``review``, or raises an error;
    :func:`decide` then applies a ``dye_end`` override (which wins, and rescues a core whose automatic
    call fails) and the pathologist's dye ``marks`` (level px).  The thresholds are named as
    config.yaml's ``orient`` section: ``**config["orient"]``.
    """
    od = optical_density(rgb)
    shape = core_shape(mask, level_um)
    thresholds = {
        "min_dye_fraction": min_dye_fraction,
        "accept_confidence": accept_confidence,
        "accept_novelty": accept_novelty,
        "min_confidence": min_confidence,
    }
    try:
        found = automatic_call(od, mask, shape, level_um, disabled=disabled, **thresholds)
    except InputError as e:
        if not (override or marks):
            raise
        found = {"confidence": 0.0, "state": "failed", "review_reason": e.what, "dye_at_positive_end": None}
    return decide({**shape, **found}, override, mark_end(marks or [], shape))


def core_shape(mask: np.ndarray, level_um: float) -> dict:
    """The core's centroid, long axis, extent along it (from the centroid, px) and width, and the gaps
    between its fragments along the axis (level px from the centroid)."""
    ys, xs = np.nonzero(mask)
    pts = np.stack([xs, ys], 1).astype(float)
    centroid, axis, width = axis_of(pts)
    t = (pts - centroid) @ axis
    return {
        "centroid": centroid.tolist(),
        "axis": axis.tolist(),
        "extent": [float(t.min() - 0.5), float(t.max() + 0.5)],
        "width": width,
        "gaps_px": gaps(t, GAP_UM / level_um),
    }


def core_pixels(od: np.ndarray, mask: np.ndarray, shape: dict, level_um: float) -> CorePixels:
    """Stage 1, tissue and axis: the core's pixels placed along its axis, its middle and its end quarters.
    Too little dense tissue in the middle to learn the stain from is an error."""
    ys, xs = np.nonzero(mask)
    t = (np.stack([xs, ys], 1) - np.asarray(shape["centroid"])) @ np.asarray(shape["axis"])
    lo, hi = shape["extent"]
    solid = od[ys, xs].sum(axis=1) > MIN_OD
    middle = solid & (t > lo + 0.2 * (hi - lo)) & (t < hi - 0.2 * (hi - lo))
    if middle.sum() * level_um**2 < MIDDLE_MIN_UM2:
        raise InputError("too little tissue in the middle of the core to learn its stain", DYE_HINT)
    zone = 0.25 * (hi - lo)
    quarters = (t < lo + zone, t > hi - zone)
    return CorePixels(ys, xs, t, (lo, hi), shape["width"], solid, middle, t < 0.5 * (lo + hi), quarters)


def smoothed_od(od: np.ndarray, core: CorePixels, level_um: float) -> np.ndarray:
    """Optical density at the core's pixels, smoothed over ``SMOOTH_UM``: compression noise and nuclei average
    out, a dye band stays (filtered over the core's bounding box only, with a margin the filter cannot see past)."""
    sigma = SMOOTH_UM / level_um
    ys, xs = core.ys, core.xs
    m = int(4 * sigma) + 2
    y0, x0 = max(ys.min() - m, 0), max(xs.min() - m, 0)
    box = od[y0 : ys.max() + m + 1, x0 : xs.max() + m + 1]
    return np.stack([ndimage.gaussian_filter(box[..., k], sigma)[ys - y0, xs - x0] for k in range(3)], -1)


def stain_model(od: np.ndarray, core: CorePixels, level_um: float, disabled: frozenset[str]) -> StainModel:
    """Stage 2, the slide's stain model: the H-E line learnt from the core's dense pixels, each pixel's distance
    off it, and which lie beyond the tissue's own scatter at their density (``density_scatter``; without it,
    beyond a fixed colour radius only)."""
    smooth = smoothed_od(od, core, level_um)
    chroma = chromaticity(smooth)
    c, d, inlier = mixing_line(chroma[core.solid])
    off = np.abs((chroma - c) @ np.array([-d[1], d[0]]))
    spread = float(np.percentile(off[core.solid][inlier], 95))  # the tissue's own scatter about its line
    along = (chroma[core.solid][inlier] - c) @ d
    span = float(np.percentile(along, 97.5) - np.percentile(along, 2.5))  # how far the tissue's colours run along it
    colour_radius = max(2.5 * spread, CHROMA_FLOOR)
    feats = np.column_stack([chroma, np.log(np.maximum(smooth.sum(axis=1), 1e-3))])  # colour and density
    scatter = 0.0
    if "density_scatter" not in disabled:
        scatter = scatter_at_density(off, feats[:, 2], core.middle, level_um)
    beyond = off > np.maximum(colour_radius, scatter)
    radius = np.array([colour_radius] * 2 + [LOG_OD_RADIUS])
    return StainModel(chroma, feats, c, d, spread, span, off, beyond, radius)


def novel(core: CorePixels, stain: StainModel, among: np.ndarray, level_um: float) -> np.ndarray:
    """Per pixel: a colour (with its density) that the middle's part in the *other* half lacks, among
    ``among`` of its pixels.  A dye bleeding in along one side from its end, or dense tissue beside the
    dye with its colour, must not make the dye's colour look like the tissue's."""
    out = np.zeros(len(core.t), bool)
    least = dye.PRESENT_MIN_UM2 / level_um**2
    for half, ref in ((core.low, core.middle & ~core.low), (~core.low, core.middle & core.low)):
        found = dye.present(
            stain.feats[half], stain.feats[ref & among], stain.radius, max(least, NOVEL_SHARE * ref.sum())
        )
        out[half] = ~found
    return out


def colour_candidates(core: CorePixels, stain: StainModel, level_um: float, disabled: frozenset[str]) -> np.ndarray:
    """Stage 3a, first evidence: dye is off the slide's H-E line, and not flagged at both ends
    (``both_ends_tissue``: a colour there is tissue, stroma at either end, say; a dye is at one end)."""
    flags = core.solid & stain.beyond
    if "both_ends_tissue" not in disabled:
        least = dye.PRESENT_MIN_UM2 / level_um**2
        flags &= ~dye.at_both_ends(flags, stain.feats, core.low, core.quarters, stain.radius, core.solid, least)
    return flags


def novelty_candidates(core: CorePixels, stain: StainModel, level_um: float) -> np.ndarray:
    """Stage 3b, second evidence: a colour (with its density) the middle lacks that is haematoxylin-ward of the
    tissue or denser than most of it (a dye close to haematoxylin; pale stroma at one end is neither)."""
    toward_h = (stain.chroma - stain.c) @ stain.d * np.sign((H_CHROMA - stain.c) @ stain.d)
    density = stain.feats[:, 2]
    darker = (toward_h > np.median(toward_h[core.middle])) | (density > np.percentile(density[core.middle], 90))
    return core.solid & novel(core, stain, core.middle, level_um) & darker


def end_evidence(
    od: np.ndarray,
    mask: np.ndarray,
    core: CorePixels,
    stain: StainModel,
    scale: float,
    level_um: float,
    disabled: frozenset[str],
) -> Evidence:
    """Stage 4, the dye mass at each end: by the first evidence; by the second where the first finds less than
    ``scale`` at both ends (``novelty_evidence``).  Where the tissue spans too little of its line to fix its
    direction (one dominant tissue colour), the second is asked too, to check the first."""
    rims = cache(partial(dye.rim_contacts, od, mask, core.ys, core.xs, level_um))  # only the thin parts need them
    ends = partial(
        dye.dye_at_ends,
        ys=core.ys,
        xs=core.xs,
        t=core.t,
        extent=core.extent,
        scale=scale,
        rims=rims,
        level_um=level_um,
        disabled=disabled,
    )
    mass, flagged, thick = ends(colour_candidates(core, stain, level_um, disabled))
    if max(mass) < scale and "novelty_evidence" not in disabled:
        second = ends(novelty_candidates(core, stain, level_um))
        return Evidence(second[0], second[1], second[2], "novelty", mass)
    check = ends(novelty_candidates(core, stain, level_um))[0] if stain.span < MIN_SPAN else None
    return Evidence(mass, flagged, thick, "colour", check)


@dataclass(frozen=True)
class Call:
    """What the doubts weigh about a call: its ``confidence`` and the ``bar`` its evidence ``kind`` must reach,
    whether its dye is in ``thick`` parts, the dye mass at the called end (``dye_px``), the least dye
    (``scale``) and the core's ``width`` (level px); the other evidence's mass at the called end and the other
    (``here``, ``there``) where it was ``asked``; the share of the core off the H-E line away from the
    called end (``lone``)."""

    confidence: float
    bar: float
    kind: str
    thick: bool
    dye_px: float
    scale: float
    width: float
    asked: bool
    here: float
    there: float
    lone: float


def low_contrast(c: Call) -> str:
    """The ends differ too little for the evidence found (the second evidence's bar is higher: dense tumour at
    one end is unlike the middle too)."""
    return f"end contrast {c.confidence:.2f} < {c.bar}" if c.confidence < c.bar else ""


def open_line(c: Call) -> str:
    """A colour call on a line whose direction one tissue colour leaves open (a dye close to haematoxylin may
    lie on such a line), where the second evidence was asked: held when the colours the middle lacks lie at the
    other end, or when more than the dyed end is off the line (a second tissue population may be off it) and
    those colours do not confirm the end."""
    if c.kind != "colour" or not c.asked:
        return ""
    lead = "one tissue colour leaves the H-E line's direction open, "
    if c.there >= max(c.here, c.scale):
        return lead + "and the colours the middle lacks are at the other end"
    if c.lone > LONE_SHARE and dye.contrast(c.here, c.there, c.scale) < c.bar:
        return lead + "more than the dyed end is off it, and the colours the middle lacks do not confirm the end"
    return ""


def novel_too_deep(c: Call) -> str:
    """A novel colour deeper than a dye soaks in (a few core widths) is tissue whose mix the middle lacks."""
    return (
        "the novel colour runs deeper than a dye soaks in"
        if c.kind == "novelty" and c.dye_px > DYE_MAX_WIDTHS * c.width
        else ""
    )


def offline_other_end(c: Call) -> str:
    """A novelty call that the colours off the line (the stronger evidence, however little) place at the other end."""
    if c.kind == "novelty" and c.there > c.here:
        return "the colours off the H-E line, too few to call, are at the other end"
    return ""


DOUBTS: dict[str, Callable[[Call], str]] = {
    f.__name__: f
    for f in (
        low_contrast,
        open_line,
        novel_too_deep,
        offline_other_end,
    )
}
ABLATABLE = STAGES + tuple(DOUBTS)


def weigh(core: CorePixels, stain: StainModel, ev: Evidence, scale: float, bar: float) -> Call:
    """What the doubts weigh: the call's features (see :class:`Call`)."""
    m_neg, m_pos = ev.mass
    pos = m_pos > m_neg
    here, there = (0.0, 0.0) if ev.check is None else ((ev.check[1], ev.check[0]) if pos else ev.check)
    win = core.quarters[1] if pos else core.quarters[0]
    lone = float((stain.beyond & core.solid & ~win).sum() / core.solid.sum())
    confidence = dye.contrast(m_pos, m_neg, scale)
    return Call(
        confidence,
        bar,
        ev.kind,
        ev.thick,
        max(ev.mass),
        scale,
        core.width,
        ev.check is not None,
        here,
        there,
        lone,
    )


def automatic_call(
    od: np.ndarray,
    mask: np.ndarray,
    shape: dict,
    level_um: float,
    *,
    min_dye_fraction: float,
    accept_confidence: float,
    accept_novelty: float,
    min_confidence: float,
    disabled: frozenset[str] = frozenset(),
) -> dict:
    """Stage 5, the dyed end from the pixels alone: ``dye_at_positive_end``, ``confidence``, the evidence, the
    calibrated probability it is right (``p_correct``, :mod:`workflow_scripts.calibration`: reported, not decisive),
    and ``state`` ``accepted`` (the contrast reaches ``accept_confidence``, or ``accept_novelty`` for the second
    evidence, and no doubt in :data:`DOUBTS` holds) or ``review``.  No dye at either end (less than
    ``min_dye_fraction`` of the core's width), or a confidence below ``min_confidence``, is an error."""
    core = core_pixels(od, mask, shape, level_um)
    stain = stain_model(od, core, level_um, disabled)
    scale = max(core.width * min_dye_fraction, 1.0)  # dye mass (px along the axis) that counts as a dyed end
    ev = end_evidence(od, mask, core, stain, scale, level_um, disabled)
    (m_neg, m_pos), (lo, hi) = ev.mass, core.extent
    if max(ev.mass) < scale:
        raise InputError(
            f"no dye found at either end of the core (dye {m_neg:.1f} / {m_pos:.1f} px in from the ends, "
            f"need {scale:.1f}: min_dye_fraction {min_dye_fraction} of the core width)",
            DYE_HINT,
        )
    call = weigh(core, stain, ev, scale, accept_confidence if ev.kind == "colour" else accept_novelty)
    if call.confidence < min_confidence:
        raise InputError(
            f"dyed end is ambiguous (confidence {call.confidence:.2f} < {min_confidence}; "
            f"dye {m_neg:.1f} / {m_pos:.1f} px in from the ends)",
            DYE_HINT,
        )
    reason = "; ".join(why for name, doubt in DOUBTS.items() if name not in disabled and (why := doubt(call)))
    features = {k: (float(v) if not isinstance(v, str) else v) for k, v in vars(call).items()}
    return {
        "dye_mass_px": [m_neg, m_pos],
        "dye_fraction": [m_neg / (hi - lo), m_pos / (hi - lo)],
        "confidence": float(call.confidence),
        "evidence": ev.kind,
        "dye_parts": "thick" if ev.thick else "thin",
        "stain_line": {
            "point": stain.c.tolist(),
            "direction": stain.d.tolist(),
            "spread": stain.spread,
            "span": stain.span,
        },
        "features": features,
        "p_correct": calibration.p_correct({**features, "doubted": bool(reason)}),  # reported, not decisive
        "review_reason": reason,
        "dye_at_positive_end": bool(m_pos > m_neg),
        "state": "review" if reason else "accepted",
    }


def mark_end(marks: list[list[float]], shape: dict) -> str | None:
    """Where the pathologist's dye marks (level px) lie on the core: ``positive`` / ``negative`` (an end's
    quarter), ``both``, ``middle`` (none at an end), or None without marks."""
    if not marks:
        return None
    lo, hi = shape["extent"]
    f = ((np.asarray(marks, float) - shape["centroid"]) @ np.asarray(shape["axis"]) - lo) / (hi - lo)
    ends = {"negative" for v in f if v < 0.25} | {"positive" for v in f if v > 0.75}
    return ends.pop() if len(ends) == 1 else ("both" if ends else "middle")


def decide(found: dict, override: str | None, mark: str | None) -> dict:
    """The recorded call: a ``dye_end`` override wins; else a pathologist's dye mark at one end, held for
    review where it contradicts an accepted automatic call; else the automatic call.  ``auto`` keeps
    the automatic call as it was."""
    auto = {k: found.get(k) for k in ("state", "dye_at_positive_end", "review_reason", "confidence", "p_correct")}
    if override:
        pos = bool(np.asarray(found["axis"]) @ DIRECTIONS[override] > 0)
        return {
            **found,
            "auto": auto,
            "dye_at_positive_end": pos,
            "source": "override",
            "state": "override",
            "review_reason": "",
            "mark": mark,
        }
    if mark is None:
        return {**found, "source": "auto", "mark": None}
    if mark in ("both", "middle"):
        why = "dye marks at both ends" if mark == "both" else "a dye mark away from both ends"
        state = "review" if found["state"] != "failed" else "failed"
        if state == "failed":
            raise InputError(f"{why} of the core, and {found['review_reason']}", DYE_HINT)
        return {
            **found,
            "auto": auto,
            "source": "auto",
            "state": "review",
            "mark": mark,
            "review_reason": "; ".join(r for r in (found.get("review_reason"), f"QuPath: {why}") if r),
        }
    pos = mark == "positive"
    if found["state"] == "accepted" and found["dye_at_positive_end"] != pos:
        return {
            **found,
            "auto": auto,
            "dye_at_positive_end": pos,
            "source": "annotation",
            "state": "review",
            "mark": mark,
            "review_reason": f"the QuPath dye mark is at the other end from the accepted "
            f"automatic call (confidence {found['confidence']:.2f})",
        }
    return {
        **found,
        "auto": auto,
        "dye_at_positive_end": pos,
        "source": "annotation",
        "state": "accepted",
        "mark": mark,
        "review_reason": "",
    }


def canonical(found: dict, level_um: float, slide_um: float) -> dict:
    """Slide full-res px -> canonical um transform, the core's canonical extent and its gaps (canonical um)."""
    scale = level_um / slide_um  # level px -> full-res px
    centroid = np.array(found["centroid"]) * scale + 0.5 * (scale - 1)  # pixel centres
    angle = float(np.arctan2(found["axis"][1], found["axis"][0]))
    m = geo.canonical_frame(centroid, angle, found["dye_at_positive_end"], slide_um)
    sign = 1.0 if found["dye_at_positive_end"] else -1.0
    to_x = lambda a, b: sorted([sign * a * level_um, sign * b * level_um])  # noqa: E731
    return {
        "slide_px_to_canonical_um": m.tolist(),
        "core_x_um": to_x(*found["extent"]),
        "core_width_um": found["width"] * level_um,
        "core_gaps_x_um": sorted(to_x(a, b) for a, b in found.get("gaps_px", [])),
    }


def isolate(
    rgb: np.ndarray, labels: np.ndarray, position: int, level_um: float
) -> tuple[np.ndarray, np.ndarray, tuple]:
    """The level around one core (its bounding box and ``ISOLATE_MARGIN_UM``), every other core painted over
    with the slide's background: (crop, the core's mask in it, the crop's (x, y) offset)."""
    margin_px = int(np.ceil(ISOLATE_MARGIN_UM / level_um))
    ys, xs = np.nonzero(labels == position)
    y0, x0 = max(ys.min() - margin_px, 0), max(xs.min() - margin_px, 0)
    y1, x1 = ys.max() + margin_px + 1, xs.max() + margin_px + 1
    crop, lab = rgb[y0:y1, x0:x1, :3].copy(), labels[y0:y1, x0:x1]
    grown = ndimage.binary_dilation((lab > 0) & (lab != position), iterations=dye.px(NEIGHBOUR_MARGIN_UM, level_um))
    crop[grown & (lab != position)] = glass_colour(rgb).astype(np.uint8)
    return crop, lab == position, (x0, y0)


def orient_core(
    rgb: np.ndarray,
    labels: np.ndarray,
    core: dict,
    level_um: float,
    override: str | None,
    disabled: frozenset[str] = frozenset(),
    **thresholds: float,
) -> dict:
    """The orientation of one core of a slide level (level px), its neighbours painted out, its dye marks used;
    ``disabled``: the stages and doubts left out (:data:`ABLATABLE`)."""
    crop, mask, (x0, y0) = isolate(rgb, labels, core["position"], level_um)
    marks = [[x - x0, y - y0] for x, y in core.get("dye_marks_px", [])]
    found = find_orientation(
        crop, mask, level_um=level_um, **thresholds, override=override, marks=marks, disabled=disabled
    )
    found["centroid"] = [found["centroid"][0] + x0, found["centroid"][1] + y0]
    return {**found, "core_position": core["position"], "core_names": core.get("names", [])}


def parser() -> argparse.ArgumentParser:
    """The orient step's options: the thresholds are config.yaml's ``orient`` section, passed by the rule."""
    p = argparse.ArgumentParser(description="find the dyed end of the core on a WSI level")
    p.add_argument("--thumb", required=True)
    p.add_argument("--meta", required=True)
    p.add_argument("--out", required=True)
    p.add_argument("--oriented", required=True, help="PNG of the level in the canonical frame")
    p.add_argument("--cores", required=True, help="the slide's cores (workflow_scripts.cores)")
    p.add_argument("--labels", required=True, help="the slide's core label image")
    p.add_argument("--core", required=True, help="biopsies.tsv core: a name or a position ('' with one core)")
    p.add_argument("--dye-end", required=True, help="biopsies.tsv dye_end override ('' for none)")
    p.add_argument("--accept-confidence", type=float, required=True, help="at or above: accepted; below: needs review")
    p.add_argument("--accept-novelty", type=float, required=True, help="the same, for a dye found as a novel colour")
    p.add_argument("--min-confidence", type=float, required=True, help="below: an error")
    p.add_argument("--min-dye-fraction", type=float, required=True)
    p.add_argument("--participant")
    p.add_argument("--biopsy")
    return p


def oriented_level(rgb: np.ndarray, res: dict, meta: dict) -> np.ndarray:
    """The level turned into the canonical frame (dyed end right), cropped around the core, for QC."""
    lvl = geo.compose(  # canonical um -> level px
        geo.invert(np.array(res["slide_px_to_canonical_um"])),
        geo.scaling(meta["um_per_px"] / meta["level_um_per_px"]),
    )
    x0, x1 = res["core_x_um"]
    pad, h = 0.05 * (x1 - x0), res["core_width_um"] * 3
    px = meta["level_um_per_px"]
    out_to_canon = geo.compose(geo.scaling(px), geo.translation(x0 - pad, -h / 2))
    shape = (int(h / px), int((x1 - x0 + 2 * pad) / px))
    return geo.warp(rgb, geo.compose(out_to_canon, lvl), shape, cval=242).astype(np.uint8)


def main(argv: list[str] | None = None) -> None:
    a = parser().parse_args(argv)

    def go() -> None:
        rgb, labels = imread(a.thumb), imread(a.labels)
        meta, doc = json.loads(Path(a.meta).read_text()), json.loads(Path(a.cores).read_text())
        cores = doc["cores"]
        mine = select(cores, a.core)
        found = orient_core(
            rgb,
            labels,
            mine,
            meta["level_um_per_px"],
            a.dye_end or None,
            min_dye_fraction=a.min_dye_fraction,
            accept_confidence=a.accept_confidence,
            accept_novelty=a.accept_novelty,
            min_confidence=a.min_confidence,
        )
        res = {
            **found,
            # the slide's tissue that does not add up for this core: state.py holds the biopsy on it
            "tissue_doubts": unaccounted(doc.get("pieces", []), cores, found),
            "cores_on_slide": len(cores),
            **canonical(found, meta["level_um_per_px"], meta["um_per_px"]),
            "slide": Path(a.thumb).parent.name,
        }
        Path(a.out).write_text(json.dumps(res, indent=1))
        imsave(a.oriented, oriented_level(rgb, res, meta), check_contrast=False)
        x0, x1 = res["core_x_um"]
        print(
            f"core {res['core_position']} of {len(cores)}: dye end found ({res['source']}, {res['state']}), "
            f"confidence {res['confidence']:.2f}, core {(x1 - x0) / 1000:.2f} mm"
        )

    run_cli(go, a.participant, a.biopsy, a.thumb)


if __name__ == "__main__":
    main()
