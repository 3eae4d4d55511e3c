"""Fat or glass: what lies between two pieces of tissue in line, read at a fine pyramid level.

Breast cores are fat-rich.  At the orientation level (16 µm/px) a fat lobule that crosses a core's
width is as pale as the glass around it, so the stained tissue looks like separate pieces in line.
At 2-4 µm/px the two differ: a lobule is a net of adipocytes (empty cells 50-150 µm across, bounded
by thin membranes) inside the core's outline, and glass is empty.  The evidence, per stretch of
``BIN_UM`` along the core's axis:

- **membranes**: pixels of the fine level whose optical density (against the region's own glass)
  stands out of its noise;
- **cells**: the share of the core's band lying within ``CELL_UM`` (an adipocyte's radius) of a
  membrane: a lobule is covered, glass is not (a pen line or a bubble rim covers a narrow strip);
- **bounded by the outline**: the same share in the glass beside the core (its flanks) must stay low,
  so that a textured background or a dirty slide is not taken for fat.

A stretch is fat where its band is covered and its flanks are not; the rest is glass.  No finer level
than ``FINE_MAX_UM``: no evidence, and the stretch counts as glass (as the finder did before).
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
from scipy import ndimage

from workflow_scripts.stain import optical_density

FINE_UM = 4.0  # the fine level read: the coarsest at or below this many µm/px (membranes are 2-4 µm thick)
FINE_MAX_UM = 5.0  # a level coarser than this shows no membranes: no evidence
BIN_UM = 200.0  # the stretch is judged in bins of this length along the axis
CELL_UM = 80.0  # a pixel within this distance of a membrane lies in an adipocyte (cells 50-150 µm across)
MEMBRANE_OD = 0.04  # a membrane stands at least this far (max channel OD) above the region's glass ...
NOISE_K = 5.0  # ... and this many noise SDs (robust, of the flanks)
THICK_UM = 8.0  # dark parts thicker than about twice this are tissue, not membranes (2-4 µm)
BAND = 0.7  # the core's band: within this share of its half-width of its axis (its ragged edge left out)
FLANK = (1.4, 2.6)  # the flanks: between these multiples of the half-width from the axis, either side
FAT_COVER = 0.6  # a bin is fat when this share of its band lies in cells ...
FLANK_COVER = 0.25  # ... and at most this share of its flanks do
OPEN_MIN = 0.1  # a bin whose band is tissue but for less than this share is tissue (joined, as fat is)


def perpendicular(axis: np.ndarray) -> np.ndarray:
    """The unit normal of an axis."""
    return np.array([-axis[1], axis[0]])


# read(x0, y0, x1, y1) in level px -> RGB of (about) that box at a finer level, its µm/px, and the level px of
# its top-left corner (a box is clipped at the slide's edges)
Reader = Callable[[float, float, float, float], tuple[np.ndarray, float, tuple[float, float]]]


def region(c: np.ndarray, axis: np.ndarray, t0: float, t1: float, half_w: float) -> tuple[float, ...]:
    """The level-px box (x0, y0, x1, y1) around a stretch of the axis from ``t0`` to ``t1`` and its flanks."""
    n = perpendicular(axis)
    reach = FLANK[1] * half_w
    pts = [c + t * axis + s * reach * n for t in (t0, t1) for s in (-1, 1)]
    xy = np.array(pts)
    return (*np.floor(xy.min(axis=0)), *np.ceil(xy.max(axis=0)))


def cell_cover(rgb: np.ndarray, um: float, flank: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Per fine pixel: does it lie within ``CELL_UM`` of a membrane (a thin line standing out of the glass)?
    And is it tissue (dark and thick: the pieces' own ends, which are neither fat nor glass)?  The glass colour
    and its noise are learnt on the ``flank`` pixels."""
    glass = np.median(rgb[flank], axis=0) if flank.any() else np.percentile(rgb.reshape(-1, 3), 95, axis=0)
    od = optical_density(rgb, glass).max(axis=-1)
    ref = od[flank] if flank.any() else od.ravel()
    noise = 1.4826 * float(np.median(np.abs(ref - np.median(ref))))
    dark = od > max(MEMBRANE_OD, float(np.median(ref)) + NOISE_K * noise)
    # membranes are thin: what survives an opening wider than a membrane is tissue; a thin dark line close to
    # it (its edge, a compression artefact's ringing) is no membrane either, or tissue would 'cover' the glass
    k = max(1, round(THICK_UM / um))
    tissue = ndimage.binary_opening(dark, structure=np.ones((3, 3), bool), iterations=k)
    membrane = dark & ~ndimage.binary_dilation(tissue, iterations=3 * k)
    if not membrane.any():
        return membrane, tissue
    return ndimage.distance_transform_edt(~membrane) * um <= CELL_UM, tissue


def fat_bins(
    read: Reader | None, c: np.ndarray, axis: np.ndarray, t0: float, t1: float, half_w: float, level_um: float
) -> tuple[list[list[float]], dict]:
    """The stretches (level px along ``axis`` from ``c``) of [t0, t1] that are fat, and the evidence:
    per bin, the band's and the flanks' cell cover, and the fine level's µm/px (None: no fine level)."""
    if read is None or t1 <= t0:
        return [], {"fine_um": None}
    margin = 3 * THICK_UM / level_um + 1  # the pieces' ends read whole: thick, so not taken for membranes
    x0, y0, x1, y1 = region(c, axis, t0 - margin, t1 + margin, half_w)
    rgb, um, (ox, oy) = read(x0, y0, x1, y1)
    if um > FINE_MAX_UM or rgb.size == 0:
        return [], {"fine_um": um}
    f = level_um / um  # fine px per level px
    yy, xx = np.mgrid[: rgb.shape[0], : rgb.shape[1]]
    px = np.stack([ox + (xx + 0.5) / f, oy + (yy + 0.5) / f], -1) - c  # level px from the centre
    t, s = px @ axis, np.abs(px @ perpendicular(axis))
    along = (t >= t0) & (t <= t1)
    band, flank = along & (s <= BAND * half_w), along & (s >= FLANK[0] * half_w) & (s <= FLANK[1] * half_w)
    cover, tissue = cell_cover(rgb[..., :3], um, flank)
    n_bins = max(1, int(round((t1 - t0) * level_um / BIN_UM)))
    edges = np.linspace(t0, t1, n_bins + 1)
    which = np.clip(np.searchsorted(edges, t, side="right") - 1, 0, n_bins - 1)
    share = lambda m: ndimage.mean(cover, np.where(m, which, -1), range(n_bins))  # noqa: E731
    open_band = band & ~tissue  # the band less the pieces' own (oblique, ragged) ends: fat or glass
    in_band, in_flank = np.nan_to_num(share(open_band)), np.nan_to_num(share(flank))
    solid = ndimage.mean(tissue, np.where(band, which, -1), range(n_bins)) >= 1 - OPEN_MIN  # a bin of tissue
    fat = solid | ((in_band >= FAT_COVER) & (in_flank <= FLANK_COVER))
    runs, start = [], None
    for i, v in enumerate([*fat, False]):
        if v and start is None:
            start = i
        elif not v and start is not None:
            runs.append([float(edges[start]), float(edges[i])])
            start = None
    evidence = {
        "fine_um": um,
        "band_cover": np.round(in_band, 2).tolist(),
        "flank_cover": np.round(in_flank, 2).tolist(),
    }
    return runs, evidence


def fine_level(level_um: list[float]) -> int | None:
    """The pyramid level read for the evidence: the coarsest at or below ``FINE_UM`` µm/px (10% over it
    allowed: 0.2527 µm/px scans give 4.04 µm/px levels), else the finest at or below ``FINE_MAX_UM``; None
    when no level shows membranes."""
    ok = [i for i, u in enumerate(level_um) if u <= FINE_UM * 1.1]
    if ok:
        return max(ok, key=lambda i: level_um[i])
    near = [i for i, u in enumerate(level_um) if u <= FINE_MAX_UM]
    return min(near, key=lambda i: level_um[i]) if near else None
