"""The slide's stain model: optical density against its own glass, and its own H&E mixing line.

Optical density is taken against the slide's background colour, so a tinted scan is fine.  In
chromaticity (optical density divided by its sum) every mixture of two stains lies on one straight
line, so the core's pixels fit the H-E mixing line by least trimmed squares: a dye, a minority at
one end, is trimmed away however far its colour, and dense tumour (more haematoxylin) lies on the
same line.  Ruifrok and Johnston's H and E vectors (``skimage.color.rgb_from_hed``) are only a weak
prior on the line's direction, which wins when the tissue's colours barely vary.  How far the
tissue's own colours stray from the line depends on their density (pale tissue's chromaticity is
noisier): :func:`scatter_at_density` measures it on the middle of the core.
"""

from __future__ import annotations

import numpy as np
from skimage.color import rgb_from_hed

TRIM = 0.3  # share of the core's pixels farthest from the line left out of each refit (dye is a minority at one end)
PRIOR_SPAN = 0.03  # chromaticity extent along the prior direction that the data must exceed to overrule it
SCATTER_MARGIN = 1.5  # times the middle's 95th-percentile scatter at a density: a colour beyond it is off the line
BAND_MIN_UM2 = 12800.0  # tissue area a density band of the middle needs for its scatter to be measured


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
    od += 1.0  # in place: a slide level is millions of pixels
    np.log(od, out=od)
    np.subtract(np.log(np.asarray(background, float) + 1.0), od, out=od)
    return np.clip(od, 0, None, out=od)


def chromaticity(od: np.ndarray) -> np.ndarray:
    """Optical density divided by its sum: (N, 2) of the first two components (the third is implied)."""
    return od[:, :2] / np.maximum(od.sum(axis=1, keepdims=True), 1e-9)


H_CHROMA, E_CHROMA = chromaticity(rgb_from_hed[:2])


def mixing_line(chroma: np.ndarray, iterations: int = 5) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """The slide's H-E mixing line in chromaticity (point, unit direction) and its inliers, from the whole core.

    A least-trimmed-squares line: from several starting directions, refit on the pixels nearest
    the line, and keep the line whose nearest pixels lie closest.  A dye (a minority at one end,
    however far its colour, with its blend into the tissue) cannot pull it, as it pulls a
    principal axis.  Regularised towards the Ruifrok H-E direction, which only decides when the
    tissue's colours barely vary.
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


def scatter_at_density(
    off: np.ndarray, log_od: np.ndarray, middle: np.ndarray, level_um: float, step: float = 0.25
) -> np.ndarray:
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
    least = BAND_MIN_UM2 / level_um**2
    q = np.array([np.percentile(om[km == b], 95) if (km == b).sum() >= least else np.nan for b in bands])
    bands, q = bands[np.isfinite(q)], np.minimum.accumulate(q[np.isfinite(q)])  # denser is never noisier
    if len(bands) == 0:
        return np.zeros_like(off)
    return SCATTER_MARGIN * q[np.clip(np.searchsorted(bands, k), 0, len(bands) - 1)]
