"""Dye-tip orientation: find the core on a low-resolution WSI level and its dyed end.

Everything adapts to the slide itself. Optical density is taken against the slide's own
background (so a tinted scan is fine). The core is the largest tissue component plus the
fragments in line with it (pen marks and bubbles beside it are not). The slide's H&E is
learnt from the whole core: in chromaticity (optical density divided by its sum) every
mixture of two stains lies on one straight line, so the core's pixels fit the H-E mixing
line by least trimmed squares (a dye, a minority at one end, is trimmed away however far
its colour), and dense tumour (more haematoxylin) lies on that same line. Dye is the
colour population *off* this line; where no end holds enough of it (blue and violet dyes
close to haematoxylin), the colour, with its density, that the core's middle lacks and
that is haematoxylin-ward of the tissue or denser than most of it (pale stroma at one
end is unlike the middle too, but is neither). For novelty, each half of the core is
compared with the middle's part in the *other* half: a dye bleeding in along one side,
or dense tissue next to the dye with its colour, is not taken for the tissue's own
colour. Off the line means beyond the middle's own scatter at that density (pale
tissue's colour is noisier); a colour off the line is novel (and shared with the other end)
only against the off-line pixels there, so tissue on the line close by cannot hide it.
A colour off the line that is flagged at both ends (stroma at either end, say) is tissue,
as a dye is at one end, and counts at neither.
The two ends are compared with each other: the dye mass in from each end (counting the
thick flagged parts first: a bubble's rim crossing an end is a thin arc; and of the thin
parts, none beside a line that runs on over the glass, as a rim does and a dye does not, and
none around a hole of its own, as a bubble's closed rim inside the core is),
and the confidence is their contrast. A call is only accepted when that contrast reaches
its evidence's threshold (stricter for the second kind: dense tumour at one end is also
unlike the middle, and the colours off the line, however few, must not lean to the other
end), the "dye" colour is not also found at the other end, a colour found
in thin parts only is more than the least dye, and, where the tissue spans too little of
the line to fix its direction, the second evidence does not point to the other end and,
if more than the dyed end is off the line, confirms the end.
"""

from __future__ import annotations

import argparse
import json
from collections.abc import Callable
from functools import cache, partial
from pathlib import Path

import numpy as np
from scipy import ndimage
from skimage.io import imread, imsave
from skimage.morphology import disk

from workflow_scripts import geometry as geo
from workflow_scripts.cores import GAP_PX, axis_of, gaps, select
from workflow_scripts.errors import InputError, run_cli

DIRECTIONS = {"left": (-1, 0), "right": (1, 0), "top": (0, -1), "bottom": (0, 1)}
DYE_HINT = "set dye_end (left/right/top/bottom, as the slide is displayed) in biopsies.tsv"
TISSUE_OD = 0.15  # largest channel's optical density above which a pixel absorbs (tissue, dye, rims, pen)
MIN_OD = 0.25  # summed optical density below which a pixel's colour is too faint to judge
CHROMA_FLOOR = 0.008  # least chromaticity distance from the H-E line that is dye, whatever the slide's own spread
MIN_SPAN = 0.08  # chromaticity run of the tissue along its H-E line below which the line is undetermined
SHARED_MAX = 0.3  # share of the dye's colours also found at the other end above which the call needs review
DYE_MAX_WIDTHS = 2.0  # dye mass in from an end, in core widths, beyond which a novel colour is not taken for dye
NOVEL_SHARE = 0.005  # share of the middle's pixels near a colour below which the middle lacks that colour
SCATTER_MARGIN = 1.5  # times the middle's 95th-percentile scatter at a density: a colour beyond it is off the line
END_SHARE = 0.02  # share of an end's tissue pixels that must have a colour for the colour to occur at that end
LONE_SHARE = 0.005  # share of the core off the H-E line away from the dyed end above which a second population exists
THICK_PX = 9  # disc radius (px of the ~16 um/px level) a flagged part must hold to count first: a rim is thinner
THIN_MASS = 1.5  # dye mass, in least dye masses, that a colour found in thin parts only (rims too) needs
RIM_REACH_PX = 6  # px an absorbing line outside the core must reach from it to be a rim (or pen), not a ragged edge
ISOLATE_MARGIN_UM = 1500.0  # the level read around one core: its neighbours beyond are painted out
LOG_OD_RADIUS = 0.12  # log optical density within which two colours' densities are alike (about 13 %)


def glass_colour(rgb: np.ndarray) -> np.ndarray:
    """The slide's background colour: the median of its brightest 40% of pixels (from the 8-bit pixels:
    a slide level is millions of them)."""
    total = rgb[..., :3].sum(-1, dtype=np.int32)
    return np.median(rgb[..., :3][total >= np.percentile(total, 60)], axis=0)


def optical_density(rgb: np.ndarray, background: np.ndarray | None = None) -> np.ndarray:
    """Per-pixel optical density (H, W, 3) against the slide's background colour (its brightest mode)."""
    if background is None:
        background = glass_colour(rgb)
    od = rgb[..., :3].astype(float)
    od += 1.0  # in place, for the same reason
    np.log(od, out=od)
    np.subtract(np.log(np.asarray(background, float) + 1.0), od, out=od)
    return np.clip(od, 0, None, out=od)


def tissue_mask(od: np.ndarray, threshold: float = TISSUE_OD, max_gap_px: float = 60.0) -> np.ndarray:
    """The core: the largest absorbing component and the fragments in line with it."""
    mask = ndimage.binary_closing(od.max(axis=-1) > threshold, iterations=2)
    mask = ndimage.binary_opening(mask, structure=np.ones((7, 7), bool))  # drops thin rims (bubbles) touching the core
    lab, n = ndimage.label(mask)
    if n == 0:
        raise InputError(
            "no tissue found on the slide", "check that the WSI shows the core (not an empty or overexposed scan)"
        )
    sizes = ndimage.sum(mask, lab, range(1, n + 1))
    big = 1 + int(np.argmax(sizes))
    ys, xs = np.nonzero(lab == big)
    c, axis, width = axis_of(np.stack([xs, ys], 1).astype(float))
    keep = [big]
    for i in np.flatnonzero(sizes >= 0.01 * sizes.max()) + 1:
        if i == big:
            continue
        ys, xs = np.nonzero(lab == i)
        d = np.abs((np.stack([xs, ys], 1) - c) @ np.array([-axis[1], axis[0]]))
        if np.median(d) < max(0.75 * width, 3.0):  # in line with the core: a fragment, not a pen mark beside it
            keep.append(i)
    return np.isin(lab, keep)


def chromaticity(od: np.ndarray) -> np.ndarray:
    """Optical density divided by its sum: (N, 2) of the first two components (the third is implied)."""
    return od[:, :2] / np.maximum(od.sum(axis=1, keepdims=True), 1e-9)


# Ruifrok's H and E optical densities: only a weak prior on the direction of the slide's own mixing line,
# which wins when the tissue's colours barely vary (all benign, say) and the line is otherwise undetermined
RUIFROK_H, RUIFROK_E = np.array([0.65, 0.70, 0.29]), np.array([0.07, 0.99, 0.11])
H_CHROMA, E_CHROMA = chromaticity(RUIFROK_H[None])[0], chromaticity(RUIFROK_E[None])[0]
PRIOR_SPAN = 0.03  # chromaticity extent along the prior direction that the data must exceed to overrule it
SMOOTH_PX = 3.0  # colour is judged on optical density smoothed this much (px of the ~16 um/px level)


TRIM = 0.3  # share of the core's pixels farthest from the line left out of each refit (dye is a minority at one end)


def mixing_line(chroma: np.ndarray, iterations: int = 5) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """The slide's H-E mixing line in chromaticity (point, unit direction) and its inliers, from the whole core.

    A least-trimmed-squares line: from several starting directions, refit on the pixels
    nearest the line, and keep the line whose nearest pixels lie closest.  A dye (a minority
    at one end, however far its colour, with its blend into the tissue) cannot pull it, as it
    pulls a principal axis.  Regularised towards the Ruifrok H-E direction, which only decides
    when the tissue's colours barely vary.  Every H&E mixture, dense tumour included, lies on
    this one line.
    """
    prior = (H_CHROMA - E_CHROMA) / np.linalg.norm(H_CHROMA - E_CHROMA)
    fits = []
    for d in [prior] + [np.array([np.cos(a), np.sin(a)]) for a in np.radians(np.arange(0, 180, 30))]:
        c = np.median(chroma, axis=0)
        for i in range(iterations + 1):
            off = np.abs((chroma - c) @ np.array([-d[1], d[0]]))
            keep = off <= np.quantile(off, 1.0 - TRIM)
            if i == iterations:
                break
            c = np.median(chroma[keep], axis=0)
            cov = np.cov((chroma[keep] - c).T) + PRIOR_SPAN**2 * np.outer(prior, prior)
            d = np.linalg.eigh(cov)[1][:, -1]
        fits.append((float(np.mean(off[keep] ** 2)), c, d, keep))
    _, c, d, keep = min(fits, key=lambda f: f[0])
    return c, d, keep


def end_dye_mass(dyed: np.ndarray, t: np.ndarray, lo: float, hi: float, bin_px: float = 3.0) -> tuple[float, float]:
    """Dye in from each end: summed dyed fraction of the end bins, walking inwards while bins stay dyed."""
    edges = np.arange(lo, hi + bin_px, bin_px)
    idx = np.clip(np.digitize(t, edges) - 1, 0, len(edges) - 2)
    n = np.bincount(idx, minlength=len(edges) - 1)
    frac = np.bincount(idx, weights=dyed.astype(float), minlength=len(edges) - 1) / np.maximum(n, 1)
    frac[n < 3] = np.nan  # gaps between fragments: skip, do not stop

    def walk(f: np.ndarray) -> float:
        total, weak, started = 0.0, 0, False
        for v in f:
            if np.isnan(v):
                continue
            if v < 0.15:  # the rounded, eroded tip may start undyed for a few bins; inside, two weak bins end the dye
                weak += 1
                if weak > (2 if started else 5):
                    break
                continue
            weak, started = 0, True
            total += v
        return total * bin_px

    return walk(frac), walk(frac[::-1])


def find_orientation(
    rgb: np.ndarray,
    *,
    min_dye_fraction: float,
    accept_confidence: float,
    accept_novelty: float,
    min_confidence: float,
    override: str | None = None,
    mask: np.ndarray | None = None,
    marks: list[list[float]] | None = None,
) -> dict:
    """Strip axis, extent and dyed end on one pyramid level (coordinates in that level's px).

    ``mask`` is the core's pixels (from :func:`workflow_scripts.cores.find_cores`; by default the
    largest core and the fragments in line with it).  The automatic call (:func:`automatic_call`)
    ends ``accepted`` or ``review``, or raises an error; ``decide`` then applies a ``dye_end``
    override (which wins, and rescues a core whose automatic call fails) and the pathologist's dye
    ``marks`` (level px: first-class evidence; where they disagree with an accepted automatic call,
    the biopsy goes to review).  The thresholds are keyword-only and named as config.yaml's
    ``orient`` section: ``**config["orient"]``.
    """
    od = optical_density(rgb)
    mask = tissue_mask(od) if mask is None else mask
    shape = core_shape(mask)
    try:
        found = automatic_call(
            od,
            mask,
            shape,
            min_dye_fraction=min_dye_fraction,
            accept_confidence=accept_confidence,
            accept_novelty=accept_novelty,
            min_confidence=min_confidence,
        )
    except InputError as e:
        if not (override or marks):
            raise
        found = {"confidence": 0.0, "state": "failed", "review_reason": e.what, "dye_at_positive_end": None}
    return decide({**shape, **found}, override, mark_end(marks or [], shape))


def core_shape(mask: np.ndarray) -> dict:
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
        "gaps_px": gaps(t, GAP_PX),
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
    auto = {k: found.get(k) for k in ("state", "dye_at_positive_end", "review_reason", "confidence")}
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


def automatic_call(
    od: np.ndarray,
    mask: np.ndarray,
    shape: dict,
    *,
    min_dye_fraction: float,
    accept_confidence: float,
    accept_novelty: float,
    min_confidence: float,
) -> dict:
    """The dyed end from the pixels alone: ``dye_at_positive_end``, ``confidence``, the evidence, and
    ``state`` ``accepted`` (confidence >= accept_confidence for a dye off the H-E line, >= accept_novelty
    for one found only as a colour the middle lacks) or ``review`` (below; or a doubt).  No dye at either
    end, or a confidence below ``min_confidence``, is an error.  ``min_dye_fraction`` is the dye at
    the dyed end, as a fraction of the core's width times its length (in px).
    """
    ys, xs = np.nonzero(mask)
    centroid, axis, width = np.asarray(shape["centroid"]), np.asarray(shape["axis"]), shape["width"]
    t = (np.stack([xs, ys], 1) - centroid) @ axis
    lo, hi = shape["extent"]
    solid = od[ys, xs].sum(axis=1) > MIN_OD
    # colour from optical density smoothed over ~2 px: compression noise and nuclei average out, a dye band stays
    # (smoothed over the core's bounding box only, with a margin the filter cannot see past)
    m = int(4 * SMOOTH_PX) + 2
    y0, x0 = max(ys.min() - m, 0), max(xs.min() - m, 0)
    box = od[y0 : ys.max() + m + 1, x0 : xs.max() + m + 1]
    smooth = np.stack([ndimage.gaussian_filter(box[..., k], SMOOTH_PX)[ys - y0, xs - x0] for k in range(3)], -1)
    middle = solid & (t > lo + 0.2 * (hi - lo)) & (t < hi - 0.2 * (hi - lo))
    if middle.sum() < 20:
        raise InputError("too little tissue in the middle of the core to learn its stain", DYE_HINT)
    chroma = chromaticity(smooth)
    c, d, inlier = mixing_line(chroma[solid])
    off = np.abs((chroma - c) @ np.array([-d[1], d[0]]))
    spread = float(np.percentile(off[solid][inlier], 95))  # the tissue's own scatter about its line
    along = (chroma[solid][inlier] - c) @ d
    span = float(np.percentile(along, 97.5) - np.percentile(along, 2.5))  # how far the tissue's colours run along it
    scale = max(width * min_dye_fraction, 1.0)  # dye mass (px along the axis) that counts as a dyed end
    # 1. chromatic dye: off the slide's own H-E line, and a colour (with its density) the middle of the core
    #    lacks (tissue off the line, e.g. a third stain population, is found in the middle too); thin rims
    #    (bubbles, folds' edges) removed by an opening
    colour_radius = max(2.5 * spread, CHROMA_FLOOR)
    feats = np.column_stack([chroma, np.log(np.maximum(smooth.sum(axis=1), 1e-3))])  # colour and density
    radius = np.array([colour_radius] * 2 + [LOG_OD_RADIUS])
    beyond = off > np.maximum(colour_radius, _scatter_at_density(off, feats[:, 2], middle))
    mid_t, zone = 0.5 * (lo + hi), 0.25 * (hi - lo)
    halves = ((t < mid_t, middle & (t >= mid_t)), (t >= mid_t, middle & (t < mid_t)))
    quarters = (t < lo + zone, t > hi - zone)  # each end's quarter of the core

    def novel(among: np.ndarray) -> np.ndarray:
        """Per pixel: a colour (with its density) that the middle's part in the *other* half lacks, among
        ``among`` of its pixels.  A dye bleeding in along one side from its end, or dense tissue beside the
        dye with its colour, must not make the dye's colour look like the tissue's."""
        out = np.zeros(len(t), bool)
        for half, ref in halves:
            out[half] = ~_present(feats[half], feats[ref & among], radius, NOVEL_SHARE * ref.sum())
        return out

    rims = cache(partial(_rim_contacts, od, mask, ys, xs))  # only the thin parts' count needs them
    ends = partial(_dye_at_ends, ys=ys, xs=xs, t=t, extent=(lo, hi), scale=scale, rims=rims)
    # a colour off the line is novel against the middle's own off-line pixels: a tissue population off the
    # line is off it in the middle too, while tissue on the line nearby must not hide a dye just off it;
    # and a colour flagged at both ends is tissue there (stroma at either end, say): a dye is at one end
    flags = solid & beyond & novel(beyond)
    (m_neg, m_pos), flagged, thick = ends(flags & ~_at_both_ends(flags, feats, t < mid_t, quarters, radius, solid))
    evidence = "colour"

    def unlike_middle() -> tuple[tuple[float, float], np.ndarray, bool]:
        """Dye by the second evidence: a colour the middle lacks, haematoxylin-ward or dense."""
        toward_h = (chroma - c) @ d * np.sign((H_CHROMA - c) @ d)
        # a near-H dye is haematoxylin-ward of the tissue, or denser than most of it; pale stroma is neither
        darker = (toward_h > np.median(toward_h[middle])) | (feats[:, 2] > np.percentile(feats[middle, 2], 90))
        return ends(solid & novel(middle) & darker)

    check = None  # the other evidence's dye mass at each end, where it is asked
    if max(m_pos, m_neg) < scale:
        # 2. no dye off the H-E line (a dye close to haematoxylin, say): colours (with their density)
        #    that the middle of the core does not have.  Dense tumour only at one end is unlike the
        #    middle too, so this evidence is held to a stricter bar (see the state below), and the
        #    colours off the line, too few to call, are kept to check it
        check = (m_neg, m_pos)
        (m_neg, m_pos), flagged, thick = unlike_middle()
        evidence = "novelty"
    elif span < MIN_SPAN:
        # one tissue colour leaves the line's direction open, so "off the line" may be a second tissue
        # population, and a dye close to haematoxylin may lie on it: the second evidence is asked too
        check = unlike_middle()[0]
    conf = _contrast(m_pos, m_neg, scale)
    res = {
        "dye_mass_px": [m_neg, m_pos],
        "dye_fraction": [m_neg / (hi - lo), m_pos / (hi - lo)],
        "confidence": float(conf),
        "evidence": evidence,
        "dye_parts": "thick" if thick else "thin",
        "stain_line": {"point": c.tolist(), "direction": d.tolist(), "spread": spread, "span": span},
    }
    if max(m_pos, m_neg) < scale:
        raise InputError(
            f"no dye found at either end of the core (dye {m_neg:.1f} / {m_pos:.1f} px in from the ends, "
            f"need {scale:.1f}: min_dye_fraction {min_dye_fraction} of the core width)",
            DYE_HINT,
        )
    if conf < min_confidence:
        raise InputError(
            f"dyed end is ambiguous (confidence {conf:.2f} < {min_confidence}; "
            f"dye {m_neg:.1f} / {m_pos:.1f} px in from the ends)",
            DYE_HINT,
        )
    pos = bool(m_pos > m_neg)
    other, win = quarters if pos else quarters[::-1]
    # as found: colour and density; a colour off the line against the other end's own off-line pixels (as above)
    found_there = other & solid & beyond if evidence == "colour" else other & solid
    shared = _shared_colour(feats[win & flagged], feats[found_there], radius, (other & solid).sum())
    res["shared_with_other_end"] = shared
    # a colour at both ends is tissue (stroma, say), not dye: such a decision is never accepted alone.
    # A line whose direction the tissue barely determines (one dominant tissue colour) may leave a second
    # tissue population off it, and a dye close to haematoxylin on it: a colour decision on such a line is
    # not accepted if the colours the middle lacks lie at the other end, nor, where more than the dyed end
    # is off the line, unless they confirm the end.  A colour found in thin parts only needs more than the
    # least dye (a rim that does not run on over the glass is thin too).  A colour found only as unlike the
    # middle (dense tumour at one end is, too) needs a clearer contrast between the ends, and one deeper than
    # a dye soaks in (a few core widths) is tissue whose mix the middle lacks, and one the colours off the
    # line (the stronger evidence, however little of it) place at the other end is not accepted.
    colour, dye_px = evidence == "colour", max(m_pos, m_neg)
    bar = accept_confidence if colour else accept_novelty
    opened, here, there = colour and check is not None, 0.0, 0.0
    if check is not None:  # the other evidence's dye mass at the called end and at the other
        here, there = (check[1], check[0]) if pos else check
    doubts = [
        (conf < bar, f"end contrast {conf:.2f} < {bar}"),
        (
            opened and there >= max(here, scale),
            "one tissue colour leaves the H-E line's direction open, and the colours the middle lacks are at the "
            "other end",
        ),
        (
            opened
            and there < max(here, scale)
            and (beyond & solid & ~win).sum() > LONE_SHARE * solid.sum()
            and _contrast(here, there, scale) < bar,
            "one tissue colour leaves the H-E line's direction open, more than the dyed end is off it, and the "
            "colours the middle lacks do not confirm the end",
        ),
        (colour and not thick and dye_px < THIN_MASS * scale, "a small dye found in thin parts only (rims are thin)"),
        (not colour and dye_px > DYE_MAX_WIDTHS * width, "the novel colour runs deeper than a dye soaks in"),
        (not colour and there > here, "the colours off the H-E line, too few to call, are at the other end"),
        (shared >= SHARED_MAX, f"{shared:.0%} of the dye's colour is also at the other end"),
    ]
    res["review_reason"] = "; ".join(why for doubt, why in doubts if doubt)
    state = "review" if res["review_reason"] else "accepted"
    return {**res, "dye_at_positive_end": pos, "state": state}


def _contrast(a: float, b: float, scale: float) -> float:
    """How much more dye one end holds than the other: (a - b) / (a + b + scale), from 0 to 1 for a >= b."""
    return abs(a - b) / (a + b + scale)


def _scatter_at_density(off: np.ndarray, log_od: np.ndarray, middle: np.ndarray, step: float = 0.25) -> np.ndarray:
    """Per pixel: how far the middle's own colours stray from the H-E line at that pixel's density.

    Chromaticity is optical density over its sum, so its noise grows as the tissue gets fainter:
    pale tissue strays off the line by several times the dense tissue's scatter.  The middle's
    95th percentile per density band (times ``SCATTER_MARGIN``), carried to the faintest and
    densest bands the middle lacks, and never more than in a fainter band (a sparse band of a
    dye's bleed, or of bubble rims, in the middle must not hide that dye).
    """
    k = np.floor(log_od / step).astype(np.int64)
    km, om = k[middle], off[middle]
    bands = np.unique(km)
    q = np.array([np.percentile(om[km == b], 95) if (km == b).sum() >= 50 else np.nan for b in bands])
    bands, q = bands[np.isfinite(q)], np.minimum.accumulate(q[np.isfinite(q)])  # denser is never noisier
    if len(bands) == 0:
        return np.zeros_like(off)
    return SCATTER_MARGIN * q[np.clip(np.searchsorted(bands, k), 0, len(bands) - 1)]


def _shared_colour(dye: np.ndarray, other: np.ndarray, radius: float | np.ndarray, n_end: int) -> float:
    """Share of the dye pixels whose colour also occurs (within about ``radius``) at the other end.

    ``other`` holds the other end's candidate pixels; a colour occurs there when ``END_SHARE`` of
    the end's ``n_end`` tissue pixels have it.
    """
    if len(dye) == 0:
        return 0.0
    r = np.broadcast_to(np.asarray(radius, float), (dye.shape[1],))
    return float(_present(dye, other, r, END_SHARE * n_end).mean())


def _at_both_ends(
    flags: np.ndarray,
    feats: np.ndarray,
    first: np.ndarray,
    quarters: tuple[np.ndarray, np.ndarray],
    radius: np.ndarray,
    solid: np.ndarray,
) -> np.ndarray:
    """Flagged pixels whose colour (with its density) is flagged at the other end too: tissue, as a dye is at one.

    Each half's flags (``first``: the half at the low end) are held against the far quarter's: a colour
    occurs there when ``END_SHARE`` of that quarter's tissue pixels have it (as for ``_shared_colour``).
    """
    out = np.zeros_like(flags)
    for half, there in ((first, quarters[1]), (~first, quarters[0])):
        here = flags & half
        out[here] = _present(feats[here], feats[flags & there], radius, END_SHARE * (there & solid).sum())
    return out


def _rim_contacts(od: np.ndarray, mask: np.ndarray, ys: np.ndarray, xs: np.ndarray) -> np.ndarray:
    """The core's pixels (in its bounding box) beside an absorbing line that runs on outside the core.

    A bubble's rim (or a pen line) crosses the glass as well as the tissue; a dye stops at the
    tissue's edge.  Outside means beyond the core's mask, and running on means reaching
    ``RIM_REACH_PX`` from it (the mask's own ragged edge does not).
    """
    y0, x0, y1, x1 = ys.min(), xs.min(), ys.max() + 1, xs.max() + 1
    m = RIM_REACH_PX + 4
    b0, a0 = max(y0 - m, 0), max(x0 - m, 0)
    core = mask[b0 : y1 + m, a0 : x1 + m]
    outside = (od[b0 : y1 + m, a0 : x1 + m].max(axis=-1) > TISSUE_OD) & ~core
    lab, n = ndimage.label(outside, structure=np.ones((3, 3), bool))
    if n == 0:
        return np.zeros((y1 - y0, x1 - x0), bool)
    dist = ndimage.distance_transform_edt(~core)
    reach = ndimage.maximum(dist, lab, range(1, n + 1))
    touch = ndimage.minimum(dist, lab, range(1, n + 1))
    rims = np.isin(lab, 1 + np.flatnonzero((reach >= RIM_REACH_PX) & (touch <= 2)))
    near = ndimage.binary_dilation(rims, iterations=3) & core
    return near[y0 - b0 : y1 - b0, x0 - a0 : x1 - a0]


def _dye_at_ends(
    flags: np.ndarray,
    ys: np.ndarray,
    xs: np.ndarray,
    t: np.ndarray,
    extent: tuple[float, float],
    scale: float,
    rims: Callable[[], np.ndarray],
) -> tuple[tuple[float, float], np.ndarray, bool]:
    """Dye mass in from each end, the flags it counts, and whether they are the thick parts only.

    A bubble's dark rim crossing the core survives a small opening as an arc, and at the
    wrong end it competes with the dye; a dye band is thicker than that.  So the parts that
    hold a disc of ``THICK_PX`` count first, and all solid parts only if no end then has
    ``scale``: a small dye (a thin band at the tip) is still seen, unless it touches a line
    running on outside the core (``rims()``, in the core's bounding box).
    """
    y0, x0 = ys.min(), xs.min()
    img = np.zeros((ys.max() - y0 + 1, xs.max() - x0 + 1), bool)  # the core's bounding box: it holds every flag
    img[ys - y0, xs - x0] = flags
    solid = ndimage.binary_opening(img, structure=np.ones((5, 5), bool))  # rims, edges, single pixels removed
    labels, _ = ndimage.label(solid)
    cores = np.unique(labels[ndimage.binary_erosion(solid, structure=disk(THICK_PX).astype(bool))])
    thick = np.isin(labels, cores[cores > 0])[ys - y0, xs - x0]
    mass = end_dye_mass(thick, t, *extent)
    if max(mass) >= scale:
        return mass, thick, True
    solid &= ~np.isin(labels, np.unique(labels[rims() & solid]))
    solid &= ~np.isin(labels, _rings(solid, labels))
    solid = solid[ys - y0, xs - x0]
    return end_dye_mass(solid, t, *extent), solid, False


def _rings(parts: np.ndarray, labels: np.ndarray) -> np.ndarray:
    """Labels of the parts whose centroid lies in a hole of theirs: a closed rim (a bubble inside the core)."""
    ids = np.unique(labels[parts])
    if len(ids) == 0:
        return ids
    holes = ndimage.binary_fill_holes(parts) & ~parts
    cy, cx = np.round(np.array(ndimage.center_of_mass(parts, labels, ids))).astype(int).T
    return ids[holes[cy, cx]]


def _present(x: np.ndarray, ref: np.ndarray, radius: np.ndarray, min_count: float) -> np.ndarray:
    """Per row of ``x``: do at least ``min_count`` (and 10) rows of ``ref`` lie within about ``radius`` (per feature)?

    Tissue colours, however many populations the slide has, occur in the middle of the core;
    a dye's colour (and density) does not, even one close to haematoxylin.
    """
    if len(x) == 0 or len(ref) == 0:
        return np.zeros(len(x), bool)
    lo = np.minimum(x.min(axis=0), ref.min(axis=0)) - radius
    kx = np.floor((x - lo) / radius).astype(np.int64) + 1
    kr = np.floor((ref - lo) / radius).astype(np.int64) + 1
    hist = np.zeros(np.maximum(kx.max(axis=0), kr.max(axis=0)) + 2, np.int64)
    np.add.at(hist, tuple(kr.T), 1)
    common = hist >= max(10, min_count)
    near = ndimage.maximum_filter(common.astype(np.uint8), size=3) > 0
    return near[tuple(kx.T)]


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


def isolate(rgb: np.ndarray, labels: np.ndarray, position: int, margin_px: int) -> tuple[np.ndarray, np.ndarray, tuple]:
    """The level around one core (its bounding box and a margin), every other core painted over with the
    slide's background: (crop, the core's mask in it, the crop's (x, y) offset)."""
    ys, xs = np.nonzero(labels == position)
    y0, x0 = max(ys.min() - margin_px, 0), max(xs.min() - margin_px, 0)
    y1, x1 = ys.max() + margin_px + 1, xs.max() + margin_px + 1
    crop, lab = rgb[y0:y1, x0:x1, :3].copy(), labels[y0:y1, x0:x1]
    others = ndimage.binary_dilation((lab > 0) & (lab != position), iterations=3) & (lab != position)
    crop[others] = glass_colour(rgb).astype(np.uint8)
    return crop, lab == position, (x0, y0)


def orient_core(
    rgb: np.ndarray, labels: np.ndarray, core: dict, level_um: float, override: str | None, **thresholds: float
) -> dict:
    """The orientation of one core of a slide level (level px), its neighbours painted out, its dye marks used."""
    crop, mask, (x0, y0) = isolate(rgb, labels, core["position"], int(np.ceil(ISOLATE_MARGIN_UM / level_um)))
    marks = [[x - x0, y - y0] for x, y in core.get("dye_marks_px", [])]
    found = find_orientation(crop, **thresholds, override=override, mask=mask, marks=marks)
    found["centroid"] = [found["centroid"][0] + x0, found["centroid"][1] + y0]
    return {**found, "core_position": core["position"], "core_names": core.get("names", [])}


def main(argv: list[str] | None = None) -> None:
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
    a = p.parse_args(argv)

    def go() -> None:
        rgb, labels = imread(a.thumb), imread(a.labels)
        meta, cores = json.loads(Path(a.meta).read_text()), json.loads(Path(a.cores).read_text())["cores"]
        found = orient_core(
            rgb,
            labels,
            select(cores, a.core),
            meta["level_um_per_px"],
            a.dye_end or None,
            min_dye_fraction=a.min_dye_fraction,
            accept_confidence=a.accept_confidence,
            accept_novelty=a.accept_novelty,
            min_confidence=a.min_confidence,
        )
        res = {
            **found,
            **canonical(found, meta["level_um_per_px"], meta["um_per_px"]),
            "slide": Path(a.thumb).parent.name,
        }
        Path(a.out).write_text(json.dumps(res, indent=1))
        # the level in the canonical frame, for QC: canonical um -> level px
        lvl = geo.compose(
            geo.invert(np.array(res["slide_px_to_canonical_um"])),
            geo.scaling(meta["um_per_px"] / meta["level_um_per_px"]),
        )
        x0, x1 = res["core_x_um"]
        pad, h = 0.05 * (x1 - x0), res["core_width_um"] * 3
        px = meta["level_um_per_px"]
        out_to_canon = geo.compose(geo.scaling(px), geo.translation(x0 - pad, -h / 2))
        shape = (int(h / px), int((x1 - x0 + 2 * pad) / px))
        imsave(
            a.oriented,
            geo.warp(rgb, geo.compose(out_to_canon, lvl), shape, cval=242).astype(np.uint8),
            check_contrast=False,
        )
        print(
            f"core {res['core_position']} of {len(cores)}: dye end found ({res['source']}, {res['state']}), "
            f"confidence {res['confidence']:.2f}, core {(x1 - x0) / 1000:.2f} mm"
        )

    run_cli(go, a.participant, a.biopsy, a.thumb)


if __name__ == "__main__":
    main()
