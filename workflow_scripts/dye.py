"""Dye evidence on one core: which pixels may be dye, and how much dye lies in from each end.

The pieces the orientation call (:mod:`workflow_scripts.orient`) is built from.  A colour
"occurs" among reference pixels when enough of them lie near it in colour and density
(:func:`present`); a dye's colour does not occur in the middle of the core, a tissue colour
does.  The dye mass at each end is walked in from the tip (:func:`end_dye_mass`).  Bubble rims
and pen lines that cross the core are the dye's look-alikes: they are thin (:data:`THICK_UM`),
run on over the glass (:func:`rim_contacts`) or close around a hole (:func:`rings`).  Every
length is in µm and converted with the level's resolution (``level_um``: µm per level px).
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
from scipy import ndimage
from skimage.morphology import disk

from workflow_scripts.cores import TISSUE_OD

END_SHARE = 0.02  # share of an end's tissue pixels that must have a colour for the colour to occur at that end
THICK_UM = 144.0  # disc radius a flagged part must hold to count first: a bubble's rim is thinner
OPEN_UM = 80.0  # flagged parts are opened by a square this wide: rims, edges and single pixels go
RIM_REACH_UM = 96.0  # an absorbing line outside the core must reach this far from it to be a rim (or pen)
RIM_TOUCH_UM = 32.0  # ... and come this close to the core
RIM_NEAR_UM = 48.0  # core pixels this close to such a line touch it
BIN_UM = 48.0  # the dye's walk in from an end goes in bins this long along the axis
BIN_MIN_UM2 = 768.0  # tissue area a bin needs to count (less: a gap between fragments, skipped)
PRESENT_MIN_UM2 = 2560.0  # least tissue area of a colour for it to occur anywhere
DYED_BIN = 0.15  # share of a bin's pixels flagged for the bin to count as dyed


def px(um: float, level_um: float) -> int:
    """A length in µm as a whole number of level px (half up), at least 1."""
    return max(1, int(np.floor(um / level_um + 0.5)))


def contrast(a: float, b: float, scale: float) -> float:
    """How much more dye one end holds than the other: (a - b) / (a + b + scale), from 0 to 1 for a >= b."""
    return abs(a - b) / (a + b + scale)


def present(x: np.ndarray, ref: np.ndarray, radius: np.ndarray, min_count: float) -> np.ndarray:
    """Per row of ``x``: do at least ``min_count`` rows of ``ref`` lie within about ``radius`` (per feature)?

    Tissue colours, however many populations the slide has, occur in the middle of the core;
    a dye's colour (and density) does not, even one close to haematoxylin.  A histogram of
    ``ref`` in cells of ``radius``, looked up in each row's cell and its neighbours.
    """
    if len(x) == 0 or len(ref) == 0:
        return np.zeros(len(x), bool)
    lo = np.minimum(x.min(axis=0), ref.min(axis=0)) - radius
    kx = np.floor((x - lo) / radius).astype(np.int64) + 1
    kr = np.floor((ref - lo) / radius).astype(np.int64) + 1
    hist = np.zeros(np.maximum(kx.max(axis=0), kr.max(axis=0)) + 2, np.int64)
    np.add.at(hist, tuple(kr.T), 1)
    common = hist >= min_count
    near = ndimage.maximum_filter(common.astype(np.uint8), size=3) > 0
    return near[tuple(kx.T)]


def at_both_ends(
    flags: np.ndarray,
    feats: np.ndarray,
    first: np.ndarray,
    quarters: tuple[np.ndarray, np.ndarray],
    radius: np.ndarray,
    solid: np.ndarray,
    least: float,
) -> np.ndarray:
    """Flagged pixels whose colour (with its density) is flagged at the other end too: tissue, as a dye is at one.

    Each half's flags (``first``: the half at the low end) are held against the far quarter's: a colour
    occurs there when ``END_SHARE`` of that quarter's tissue pixels (and ``least``) have it.
    """
    out = np.zeros_like(flags)
    for half, there in ((first, quarters[1]), (~first, quarters[0])):
        here = flags & half
        out[here] = present(feats[here], feats[flags & there], radius, max(least, END_SHARE * (there & solid).sum()))
    return out


def end_dye_mass(dyed: np.ndarray, t: np.ndarray, lo: float, hi: float, level_um: float) -> tuple[float, float]:
    """Dye in from each end (level px along the axis): the summed dyed share of the end bins, walking inwards
    while bins stay dyed; bins with too little tissue (gaps between fragments) are skipped, not stopped at."""
    bin_px = BIN_UM / level_um
    edges = np.arange(lo, hi + bin_px, bin_px)
    idx = np.clip(np.digitize(t, edges) - 1, 0, len(edges) - 2)
    n = np.bincount(idx, minlength=len(edges) - 1)
    frac = np.bincount(idx, weights=dyed.astype(float), minlength=len(edges) - 1) / np.maximum(n, 1)
    frac[n < BIN_MIN_UM2 / level_um**2] = np.nan

    def walk(f: np.ndarray) -> float:
        total, weak, started = 0.0, 0, False
        for v in f:
            if np.isnan(v):
                continue
            if v < DYED_BIN:  # the rounded, eroded tip may start undyed for a few bins; inside, two weak bins end it
                weak += 1
                if weak > (2 if started else 5):
                    break
                continue
            weak, started = 0, True
            total += v
        return total * bin_px

    return walk(frac), walk(frac[::-1])


def rim_contacts(od: np.ndarray, mask: np.ndarray, ys: np.ndarray, xs: np.ndarray, level_um: float) -> np.ndarray:
    """The core's pixels (in its bounding box) beside an absorbing line that runs on outside the core.

    A bubble's rim (or a pen line) crosses the glass as well as the tissue; a dye stops at the
    tissue's edge.  Outside means beyond the core's mask, and running on means reaching
    ``RIM_REACH_UM`` from it (the mask's own ragged edge does not).
    """
    reach_px = RIM_REACH_UM / level_um
    y0, x0, y1, x1 = ys.min(), xs.min(), ys.max() + 1, xs.max() + 1
    m = int(np.ceil(reach_px)) + 4
    b0, a0 = max(y0 - m, 0), max(x0 - m, 0)
    core = mask[b0 : y1 + m, a0 : x1 + m]
    outside = (od[b0 : y1 + m, a0 : x1 + m].max(axis=-1) > TISSUE_OD) & ~core
    lab, n = ndimage.label(outside, structure=np.ones((3, 3), bool))
    if n == 0:
        return np.zeros((y1 - y0, x1 - x0), bool)
    dist = ndimage.distance_transform_edt(~core)
    reach = ndimage.maximum(dist, lab, range(1, n + 1))
    touch = ndimage.minimum(dist, lab, range(1, n + 1))
    rims = np.isin(lab, 1 + np.flatnonzero((reach >= reach_px) & (touch <= RIM_TOUCH_UM / level_um)))
    near = ndimage.binary_dilation(rims, iterations=px(RIM_NEAR_UM, level_um)) & core
    return near[y0 - b0 : y1 - b0, x0 - a0 : x1 - a0]


def rings(parts: np.ndarray, labels: np.ndarray) -> np.ndarray:
    """Labels of the parts whose centroid lies in a hole of theirs: a closed rim (a bubble inside the core)."""
    ids = np.unique(labels[parts])
    if len(ids) == 0:
        return ids
    holes = ndimage.binary_fill_holes(parts) & ~parts
    cy, cx = np.round(np.array(ndimage.center_of_mass(parts, labels, ids))).astype(int).T
    return ids[holes[cy, cx]]


def dye_at_ends(
    flags: np.ndarray,
    ys: np.ndarray,
    xs: np.ndarray,
    t: np.ndarray,
    extent: tuple[float, float],
    scale: float,
    rims: Callable[[], np.ndarray],
    level_um: float,
    disabled: frozenset[str] = frozenset(),
) -> tuple[tuple[float, float], np.ndarray, bool]:
    """Dye mass in from each end, the flags it counts, and whether they are the thick parts only.

    A bubble's dark rim crossing the core survives a small opening as an arc, and at the wrong end
    it competes with the dye; a dye band is thicker than that.  So the parts that hold a disc of
    ``THICK_UM`` count first (``thick_first``), and all the opened parts only if no end then has
    ``scale``: a small dye (a thin band at the tip) is still seen, unless it touches a line running
    on outside the core (``rims()``, in the core's bounding box: ``rim_contacts``) or closes around
    a hole of its own (``rings``).  ``disabled``: those named steps left out (for ablation).
    """
    y0, x0 = ys.min(), xs.min()
    img = np.zeros((ys.max() - y0 + 1, xs.max() - x0 + 1), bool)  # the core's bounding box: it holds every flag
    img[ys - y0, xs - x0] = flags
    size = px(OPEN_UM, level_um)
    solid = ndimage.binary_opening(img, structure=np.ones((size, size), bool))  # rims, edges, single pixels removed
    labels, _ = ndimage.label(solid)
    if "thick_first" not in disabled:
        kept = np.unique(labels[ndimage.binary_erosion(solid, structure=disk(px(THICK_UM, level_um)).astype(bool))])
        thick = np.isin(labels, kept[kept > 0])[ys - y0, xs - x0]
        mass = end_dye_mass(thick, t, *extent, level_um)
        if max(mass) >= scale:
            return mass, thick, True
    if "rim_contacts" not in disabled:
        solid &= ~np.isin(labels, np.unique(labels[rims() & solid]))
    if "rings" not in disabled:
        solid &= ~np.isin(labels, rings(solid, labels))
    solid = solid[ys - y0, xs - x0]
    return end_dye_mass(solid, t, *extent, level_um), solid, False
