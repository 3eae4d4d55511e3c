"""Needle detection in ultrasound frames: the needle's axis, its advance direction and its tips.

Two frames (the pipeline's case): between pre- and post-fire only the needle moved, so after
aligning the frames the difference image holds the advance T0 -> T1 while skin, ligaments,
fascia and scanner furniture cancel.  The stages, in order:

1. ``comparable_frames``: both frames non-blank, on one grid, aligned (phase correlation);
2. ``advance_image``: their smoothed difference, with the padded borders blanked;
3. ``check_order``: far more lost than gained echo means the frames are swapped (an error);
4. ``advance_line``: a Hough vote on the strong change, the shallowest of near-parallel lines;
5. ``refine_line``: a trimmed weighted total-least-squares fit on the difference's pixels;
6. ``find_tips``: profiles along that line give the advance direction, T0 and T1 with second estimates;
7. ``shaft_axis``: the direction refitted on the upper edge of the post-fire echo;
8. ``advance_direction``: the advance's own direction, from the difference alone.

What the evidence is worth (confidences, plausibility, review) is decided in ``tract``.

One frame (inference, or a length override): ``detect`` takes the dominant bright line
(``fit_axis``) and the tip at the end of its bright run away from the entry edge (``find_tip``).
Every length is a constant in mm, converted with the frame's mm per px.
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass

import numpy as np
from scipy import ndimage, stats
from skimage import filters, measure, registration, transform

from workflow_scripts import geometry as geo
from workflow_scripts.errors import InputError

NO_NEEDLE_HINT = "set tip_x/tip_y (pre-fire tip, DICOM frame pixels) and axis_deg in biopsies.tsv, or check the image"

# one frame: what counts as the needle's echo
SMOOTH_MM = 0.12  # smoothing before thresholding the bright echoes
RIDGE_MIN_MM = 1.2  # a bright component shorter than this is speckle, not a needle
NEEDLE_MIN_MM = 2.4  # the shortest straight needle echo accepted
TLS_BANDS_MM = (0.24, 0.15)  # the refinement's bands about the line, wide then narrow
TIP_CONTEXT_MM = 1.2  # needle before the tip and tissue beyond it that set its half-way level
TIP_BAND_MM = 0.12  # the profile along the line: averaged this far either side
TIP_SMOOTH_MM = 0.06  # and smoothed this much

# two frames
WORK_MM = 0.08  # working resolution of the line search
DIFF_SMOOTH_MM = 0.08  # smoothing of the difference image
MIN_ADVANCE_MM = 3.0  # a needle advance shorter than this is not one
FIT_BAND_MM = 0.4  # band about the Hough line whose difference pixels the fit uses
EDGE_BAND_MM = 0.3  # band about the edge line whose bright post-fire pixels refine it
PROFILE_HALF_WIDTH_MM = 0.05  # profiles along the axis: averaged this far across, and smoothed as much
RIDGE_OFFSET_MM = 0.6  # the tissue "just above" the needle, for its ridge over it
PREFIRE_BEHIND_MM = (1.5, 0.3)  # the pre-fire needle read this far behind T0 (mm): the varied model's shafts show >= 2
CLEAR_MM = 1.5  # the skin line (and the frame's border) this deep: bright and straight, never read as the needle
MIN_DESCENT_DEG = 3.0  # a needle steeper than this advances away from the probe; flatter, the echoes decide
# largest change gained over lost (99.8th percentiles) below which the frames are taken as swapped; on the demo and
# varied forward models, frames in order gave 1.7-3.4 and swapped ones 0.3-0.6
SWAPPED_RATIO = 0.8
STEP_PX = 0.25  # sampling step along the axis (sub-pixel; a sampling density, not a length)


def _zero(x: np.ndarray, axis: int | None = None) -> float:
    """Centre for a robust scale of residuals that are already about zero."""
    return 0.0


def robust_sigma(x: np.ndarray, about_zero: bool = False) -> float:
    """Normal-consistent median absolute deviation (about the median, or about zero for residuals)."""
    if about_zero:
        return float(stats.median_abs_deviation(x, axis=None, scale="normal", center=_zero))
    return float(stats.median_abs_deviation(x, axis=None, scale="normal"))


# ---------------------------------------------------------------- one frame


def _bright_ridges(img: np.ndarray, skin_rows: int, mm: float) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Smoothed image, its bright pixels, and those in long thin components (ridges, not speckle or skin)."""
    g = filters.gaussian(img.astype(float) / 255.0, SMOOTH_MM / mm)
    bright = g > max(np.percentile(g, 99.5), 0.5 * (np.median(g) + g.max()))
    bright[:skin_rows] = False
    lab = measure.label(bright)
    keep = [
        r.label
        for r in measure.regionprops(lab)
        if r.axis_major_length >= RIDGE_MIN_MM / mm and r.axis_major_length > 3 * max(r.axis_minor_length, 1.0)
    ]
    return g, bright, np.isin(lab, keep)


def fit_axis(img: np.ndarray, skin_rows: int, mm: float) -> tuple[np.ndarray, np.ndarray]:
    """A point on the needle and its unit direction (x, y): the strongest straight line of bright ridges.

    Decides on the Hough vote of long thin bright components (the top ``skin_rows`` rows, the skin
    line, not searched), refined by weighted TLS on the bright pixels near the line."""
    g, bright, cand = _bright_ridges(img, skin_rows, mm)
    min_px = NEEDLE_MIN_MM / mm
    if cand.sum() < min_px:
        raise InputError("no needle echo found in the image", NO_NEEDLE_HINT)
    h, theta, dist = transform.hough_line(cand, theta=np.linspace(-np.pi / 2, np.pi / 2, 720, endpoint=False))
    _, angles, dists = transform.hough_line_peaks(h, theta, dist, num_peaks=1)
    if len(angles) == 0 or h.max() < min_px:
        raise InputError(
            f"no straight needle echo found (longest line {h.max() * mm:.1f} mm < {NEEDLE_MIN_MM} mm)", NO_NEEDLE_HINT
        )
    normal = np.array([np.cos(angles[0]), np.sin(angles[0])])
    point, direction = dists[0] * normal, np.array([-normal[1], normal[0]])
    ys, xs = np.nonzero(bright)
    pts = np.stack([xs, ys], 1).astype(float)
    for band in TLS_BANDS_MM:
        near = pts[np.abs((pts - point) @ np.array([-direction[1], direction[0]])) < band / mm]
        w = g[near[:, 1].astype(int), near[:, 0].astype(int)]
        point = (near * w[:, None]).sum(0) / w.sum()
        direction = np.linalg.eigh(np.cov((near - point).T, aweights=w))[1][:, -1]
    return point, direction / np.linalg.norm(direction)


def _line_samples(shape: tuple[int, ...], point: np.ndarray, direction: np.ndarray, step: float) -> np.ndarray:
    """Signed positions along point + s * direction, every ``step`` px, that lie inside an image of ``shape``."""
    s = np.arange(-float(np.hypot(*shape[:2])), float(np.hypot(*shape[:2])), step)
    xy = point[None] + s[:, None] * direction[None]
    inside = (xy[:, 0] >= 0) & (xy[:, 0] <= shape[1] - 1) & (xy[:, 1] >= 0) & (xy[:, 1] <= shape[0] - 1)
    return s[inside]


def find_tip(
    img: np.ndarray, point: np.ndarray, direction: np.ndarray, mm: float
) -> tuple[np.ndarray, np.ndarray, dict]:
    """Tip (x, y) and the advance direction: the end of the longest bright run away from the entry edge.

    The entry end is the one nearer the image border; the tip is the half-way crossing between the
    needle just before it and the tissue just beyond it (sub-pixel)."""
    s = _line_samples(img.shape, point, direction, 0.5)
    hw = max(1, int(round(TIP_BAND_MM / mm)))
    prof = ndimage.gaussian_filter1d(geo.profile(img, point, direction, s, half_width=hw), TIP_SMOOTH_MM / mm / 0.5)
    needle_level, tissue_level = np.percentile(prof, 95), np.median(img)
    above = prof > (needle_level + tissue_level) / 2
    lab, n = ndimage.label(above)
    if n == 0:
        raise InputError("needle line found but no bright run along it", NO_NEEDLE_HINT)
    idx = np.flatnonzero(lab == np.argmax(ndimage.sum(above, lab, range(1, n + 1))) + 1)
    i0, i1 = idx[0], idx[-1]
    advance = 1.0 if s[i0] - s[0] < s[-1] - s[i1] else -1.0
    i_tip, step, k = (i1 if advance > 0 else i0), int(advance), int(TIP_CONTEXT_MM / mm / 0.5)
    before = prof[max(i_tip - k, 0) : i_tip] if advance > 0 else prof[i_tip + 1 : i_tip + k + 1]
    beyond = prof[i_tip + 1 : i_tip + k + 1] if advance > 0 else prof[max(i_tip - k, 0) : i_tip]
    if len(beyond) < 4:
        raise InputError("the needle runs to the image border: no tip visible", NO_NEEDLE_HINT)
    half, j = (np.median(before) + np.median(beyond)) / 2, i_tip
    while 0 <= j + step < len(prof) and prof[j + step] > half:
        j += step
    frac = (prof[j] - half) / (prof[j] - prof[j + step]) if prof[j] != prof[j + step] else 0.0
    s_tip = s[j] + step * frac * (s[1] - s[0])
    info = {"run_px": float(abs(s[i1] - s[i0])), "contrast": float(needle_level - tissue_level)}
    return point + s_tip * direction, direction * advance, info


def detect(
    img: np.ndarray,
    skin_rows: int,
    mm: float,
    axis_override_deg: float | None = None,
    tip_override: np.ndarray | None = None,
) -> dict:
    """Needle tip and advance direction of one image; the overrides replace the detected values."""
    if axis_override_deg is not None and tip_override is not None:
        a = np.deg2rad(axis_override_deg)
        return {"tip": tip_override, "direction": np.array([np.cos(a), np.sin(a)])}
    point, direction = fit_axis(img, skin_rows, mm)
    tip, advance, info = find_tip(img, point, direction, mm)
    if axis_override_deg is not None:
        a = np.deg2rad(axis_override_deg)
        advance = np.array([np.cos(a), np.sin(a)])
    return {"tip": tip if tip_override is None else tip_override, "direction": advance, **info}


# ---------------------------------------------------------------- two frames: the advance


@dataclass(frozen=True)
class Advance:
    """What the two frames show of the needle's advance, in pre-fire px; ``tract`` weighs it.

    ``point`` + s * ``u`` is the axis (``u``: the advance direction); ``s0``/``s1`` the tips; ``d0`` the
    pre-fire echo's end (T0's second estimate); ``d1`` the difference's fall and ``r1`` the end of the
    post-fire needle's ridge over the tissue above it (T1's); ``snr`` the two tip edges' contrast over
    the tissue noise; ``fit`` the axis fit's residuals; ``advance_axis`` the direction from the difference
    alone; ``prefire_shaft`` the pre-fire needle behind T0 as a share of the post-fire one (about 1 with a
    needle in the pre-fire frame, about 0 without); ``prefire_echo`` that needle's echo over the pre-fire
    frame's own speckle (:func:`prefire_echo`); ``shift`` the post-fire frame's offset (px)."""

    point: np.ndarray
    u: np.ndarray
    s0: float
    s1: float
    d0: float
    d1: float
    r1: float
    snr: list[float]
    fit: dict
    advance_axis: np.ndarray
    prefire_shaft: float
    prefire_echo: float
    shift: np.ndarray


def _on_grid(img: np.ndarray, shape: tuple[int, int]) -> tuple[np.ndarray, np.ndarray]:
    """``img`` cut or padded (edge values, bottom and right) to ``shape``, and where it has real pixels.

    Exported frames are trimmed to their tissue region independently, so the two can differ by a few rows."""
    out = np.zeros(shape, float)
    valid = np.zeros(shape, bool)
    h, w = min(shape[0], img.shape[0]), min(shape[1], img.shape[1])
    out[:h, :w], valid[:h, :w] = img[:h, :w], True
    out = np.pad(out[:h, :w], ((0, shape[0] - h), (0, shape[1] - w)), mode="edge")
    return out, valid


def comparable_frames(pre: np.ndarray, post: np.ndarray, mm: float) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """The post-fire frame resampled onto the pre-fire grid, where it has real pixels, and the shift (dx, dy).

    Decides the shift by phase correlation at the working resolution (only the needle moved between
    the frames); a blank frame (one grey level) is an error, since it cannot show a needle."""
    for name, img in (("pre-fire", pre), ("post-fire", post)):
        if float(np.std(img)) < 1.0:
            raise InputError(f"no needle echo found in the {name} image: it is blank (one grey level)", NO_NEEDLE_HINT)
    grid, valid = _on_grid(post, pre.shape)
    f = max(1, int(round(WORK_MM / mm)))
    a, b = (transform.downscale_local_mean(x.astype(float), (f, f)) for x in (pre, grid))
    with warnings.catch_warnings():  # a blank frame: no shift, and the needle check below says what is wrong
        warnings.simplefilter("ignore")
        shift, _, _ = registration.phase_cross_correlation(a, b, upsample_factor=8, normalization=None)
    shift = -np.array([shift[1], shift[0]]) * f
    post_a = ndimage.shift(grid, (-shift[1], -shift[0]), output=float, order=1, mode="nearest")
    if not valid.all():  # where the post-fire frame has pixels of its own, after the shift
        valid = ndimage.shift(valid.astype(float), (-shift[1], -shift[0]), order=0, mode="constant") > 0.5
    return post_a, valid, shift


def advance_image(pre: np.ndarray, post_a: np.ndarray, valid: np.ndarray, shift: np.ndarray, mm: float) -> np.ndarray:
    """The smoothed difference post - pre: the needle's advance, with nothing else that moved.

    The frame's edges and wherever the post-fire frame has no pixels of its own are blanked: padding
    there, or a scanner border, would read as a long straight "advance"."""
    diff = ndimage.gaussian_filter(post_a - pre.astype(float), DIFF_SMOOTH_MM / mm)
    edge = int(np.ceil(np.abs(shift).max() + 3 * DIFF_SMOOTH_MM / mm)) + 2
    diff[:edge], diff[-edge:], diff[:, :edge], diff[:, -edge:] = 0.0, 0.0, 0.0, 0.0
    if not valid.all():
        diff[~ndimage.binary_erosion(valid, iterations=edge, border_value=1)] = 0.0
    return diff


def check_order(small: np.ndarray, noise: float) -> None:
    """An error if the needle is longer in the pre-fire frame: far more echo lost than gained between the frames."""
    gain, loss = float(np.percentile(small, 99.8)), float(np.percentile(-small, 99.8))
    if loss > 4 * noise and gain < SWAPPED_RATIO * loss:
        raise InputError(
            "the needle is longer in the pre-fire image than in the post-fire image (the frames look swapped)",
            "check that prefire and postfire are not swapped in biopsies.tsv, or set tip_x/tip_y and axis_deg",
        )


def advance_line(small: np.ndarray, noise: float, f: int, mm: float) -> tuple[np.ndarray, np.ndarray]:
    """A point and direction (full-resolution px) of the advance: the Hough line of the strongest change.

    Among lines near-parallel to the strongest (within 4 degrees) the shallowest wins: reverberations
    lie below the shaft.  No strong change, or no line as long as ``MIN_ADVANCE_MM``, is an error."""
    strong = small > max(np.percentile(small, 99.0), 4 * noise)
    if strong.sum() < 10 / f:
        raise InputError("no needle advance found between the pre- and post-fire images", NO_NEEDLE_HINT)
    h, theta, dist = transform.hough_line(strong, theta=np.linspace(-np.pi / 2, np.pi / 2, 360, endpoint=False))
    votes, angles, dists = transform.hough_line_peaks(h, theta, dist, num_peaks=6, min_distance=3, min_angle=2)
    min_len = MIN_ADVANCE_MM / (mm * f)
    ok = votes >= max(0.4 * votes.max(), min_len * 0.3)
    if not ok.any() or votes.max() < min_len * 0.3:
        raise InputError(
            f"no straight needle advance found (longest line {votes.max() * mm * f:.1f} mm)", NO_NEEDLE_HINT
        )
    best, cx = int(np.argmax(votes)), small.shape[1] / 2
    par = [k for k in np.flatnonzero(ok) if abs(np.sin(angles[k] - angles[best])) < np.sin(np.deg2rad(4))]

    def depth(k: int) -> float:  # row of line k at the image's middle column
        c, sn = np.cos(angles[k]), np.sin(angles[k])
        return (dists[k] - cx * c) / sn if abs(sn) > 1e-6 else dists[k]

    k = min(par, key=depth)
    normal = np.array([np.cos(angles[k]), np.sin(angles[k])])
    return dists[k] * normal * f + (f - 1) / 2, np.array([-normal[1], normal[0]])


def tls_fit(
    pts: np.ndarray, w: np.ndarray, point: np.ndarray, direction: np.ndarray, band: float
) -> tuple[np.ndarray, np.ndarray, dict]:
    """Weighted total least squares on points within ``band`` of a line, trimmed at 2.5 sigma; with its residuals.

    The direction's standard error (``sigma_deg``) comes from the residual spread over the points' spread
    along the line and their effective number."""
    for _ in range(3):
        d = (pts - point) @ np.array([-direction[1], direction[0]])
        keep = np.abs(d) < band
        if keep.sum() < 10:
            break
        q, ww = pts[keep], w[keep]
        point = (q * ww[:, None]).sum(0) / ww.sum()
        evals, evecs = np.linalg.eigh(np.cov((q - point).T, aweights=ww))
        direction = evecs[:, -1]
        rms = float(np.sqrt(max(evals[0], 1e-12)))
        band = max(2.5 * rms, 1.0)
    n_eff = float(ww.sum() ** 2 / (ww**2).sum())
    sigma_deg = float(np.degrees(np.sqrt(max(evals[0], 1e-12) / max(evals[1], 1e-12) / n_eff)))
    return point, direction / np.linalg.norm(direction), {"rms_px": rms, "sigma_deg": sigma_deg, "n": int(keep.sum())}


def refine_line(
    diff: np.ndarray, noise: float, point: np.ndarray, direction: np.ndarray, mm: float
) -> tuple[np.ndarray, np.ndarray, dict]:
    """The advance line at full resolution: a TLS fit on the difference's positive pixels near the Hough line."""
    ys, xs = np.nonzero(diff > 4 * noise)
    pts = np.stack([xs, ys], 1).astype(float)
    near = np.abs((pts - point) @ np.array([-direction[1], direction[0]])) < FIT_BAND_MM / mm
    if near.sum() < 10:
        raise InputError("needle advance too faint to fit a line", NO_NEEDLE_HINT)
    return tls_fit(pts[near], diff[ys[near], xs[near]], point, direction, FIT_BAND_MM / mm)


# ---------------------------------------------------------------- two frames: edges along the axis


def step_edge(prof: np.ndarray, s: np.ndarray, lo: float, hi: float, step: float) -> tuple[float, float]:
    """Best single step (least squares) of a profile within [lo, hi]: its sub-pixel edge and height over the noise.

    The edge is the half-level crossing nearest the split."""
    sel = np.flatnonzero((s >= lo) & (s <= hi))
    if len(sel) < 8:
        return float("nan"), 0.0
    y = prof[sel]
    n = np.arange(1, len(y))
    c1, c2 = np.cumsum(y)[:-1], np.cumsum(y**2)[:-1]
    t1, t2 = y.sum(), (y**2).sum()
    sse = (c2 - c1**2 / n) + ((t2 - c2) - (t1 - c1) ** 2 / (len(y) - n))
    k = int(np.argmin(sse[2:-2])) + 2
    m_a, m_b = y[:k].mean(), y[k:].mean()
    noise = robust_sigma(np.concatenate([y[:k] - m_a, y[k:] - m_b]), about_zero=True) + 1e-6
    half = (m_a + m_b) / 2
    cross = np.flatnonzero(np.diff(np.sign(y - half)) != 0)
    if len(cross) == 0:
        return float(s[sel[k]]), abs(m_a - m_b) / noise
    j = cross[np.argmin(np.abs(cross - (k - 1)))]
    frac = (y[j] - half) / (y[j] - y[j + 1]) if y[j] != y[j + 1] else 0.0
    return float(s[sel[j]] + frac * step), float(abs(m_a - m_b) / noise)


def onset(
    prof: np.ndarray, s: np.ndarray, ref_lo: float, ref_hi: float, stop: float, min_len: float, step: float
) -> float:
    """First position after ``ref_hi`` where a profile rises above its level in [ref_lo, ref_hi] and stays there.

    The reference stretch is where nothing changed between the frames (the shaft in both, or tissue in
    both); the onset is where the change starts, however small, so that bright tissue just past a tip
    does not push the tip forward."""
    ref = prof[(s > ref_lo) & (s < ref_hi)]
    if len(ref) < 8:
        return float("nan")
    base, noise = float(np.median(ref)), robust_sigma(ref)
    ahead = (s > ref_hi) & (s < stop)
    spread = float(np.percentile(prof[ahead], 90)) - base if ahead.any() else 0.0
    above = (prof > base + max(4 * noise, 0.1 * spread, 1.0)) & ahead
    lab, n = ndimage.label(ndimage.binary_closing(above, iterations=max(1, int(0.15 / step * min_len))))
    for k in range(1, n + 1):
        idx = np.flatnonzero(lab == k)
        if (idx[-1] - idx[0]) * step >= min_len:
            return float(s[idx[0]])
    return float("nan")


def echo_end(
    prof: np.ndarray, s: np.ndarray, start: float, guess: float, reach: float, bridge: float, step: float
) -> tuple[float, float]:
    """Where a needle echo that runs through ``start`` ends, sub-pixel, and the edge's SNR.

    The end is the first fall (longer than ``bridge``) below half-way between the echo's level and the
    tissue just beyond ``guess``, so bright tissue past the tip does not lengthen it."""
    inside = prof[(s > start) & (s < guess)]
    beyond = prof[(s > guess) & (s < guess + reach)]
    if len(inside) < 4 or len(beyond) < 4:
        return float("nan"), 0.0
    level, tissue = float(np.median(inside)), float(np.median(beyond))
    half = (level + tissue) / 2
    i = int(np.searchsorted(s, start))
    gap, n_bridge = 0, max(1, int(bridge / step))
    while i + 1 < len(prof) and s[i] < guess + reach:
        gap = gap + 1 if prof[i + 1] <= half else 0
        if gap > n_bridge:
            break
        i += 1
    j = i - gap  # last sample above half
    if j + 1 >= len(prof) or s[j] >= guess + reach:
        return float("nan"), 0.0
    frac = (prof[j] - half) / (prof[j] - prof[j + 1]) if prof[j] != prof[j + 1] else 0.0
    return float(s[j] + frac * step), float((level - tissue) / (robust_sigma(beyond) + 1e-6))


def first_rise(diff: np.ndarray, s: np.ndarray, s0: float, reach: float, gap: float, step: float) -> float:
    """T0 moved back to an earlier rise of the difference, if the stretch before ``s0`` already changed.

    Bright tissue just past the pre-fire tip makes the difference rise in two steps: a small one at the
    tip (needle now, bright tissue before) and a big one where that tissue ends.  The tip is the first,
    if it is a clear rise above the unchanged level and a good part of the needle's own contrast.
    Searched within ``reach`` before ``s0``, then (a step right at that limit) within 1.5 ``reach``."""
    for lo in (s0 - reach, s0 - 1.5 * reach):
        e, snr = step_edge(diff, s, lo, s0 - gap, step)
        if np.isnan(e) or snr < 4:
            continue
        before = diff[(s > max(lo, e - reach / 2)) & (s < e)]
        between, after = diff[(s > e) & (s < s0)], diff[(s > s0) & (s < s0 + reach / 2)]
        if len(before) < 8 or len(between) < 8 or len(after) < 8:
            continue
        rise, level = float(np.median(between) - np.median(before)), float(np.median(between))
        if rise > 4 * (robust_sigma(before) + 1e-6) and level > 0.25 * float(np.median(after)):
            return e
    return s0


def run_end(prof: np.ndarray, s: np.ndarray, start: float, stop: float, bridge: float) -> float:
    """End of the run of a profile above half its level in [start, stop], bridging dips shorter than ``bridge``."""
    ref = prof[(s > start) & (s < stop)]
    if len(ref) < 8:
        return float("nan")
    high = prof > 0.5 * float(np.median(ref))
    i = int(np.searchsorted(s, start))
    last, gap_start = i, None
    while i < len(prof):
        if high[i]:
            last, gap_start = i, None
        elif gap_start is None:
            gap_start = s[i]
        elif s[i] - gap_start > bridge:
            break
        i += 1
    return float(s[last])


# ---------------------------------------------------------------- two frames: tips along the axis


@dataclass(frozen=True)
class Profiles:
    """Echo profiles along the axis at positions ``s`` (px): each frame, the post-fire (``ridge``) and pre-fire
    (``pre_ridge``) needle over the tissue just above it, the difference post - pre, and where the ridges are
    ``clear`` of the skin line and the frame's border (both the line and the tissue above it)."""

    s: np.ndarray
    pre: np.ndarray
    post: np.ndarray
    ridge: np.ndarray
    pre_ridge: np.ndarray
    diff: np.ndarray
    clear: np.ndarray

    def forward(self, sign: float) -> Profiles:
        """The same profiles with ``s`` increasing in the advance direction (``sign``: +1 or -1 along the axis)."""
        if sign > 0:
            return self
        flip = {k: getattr(self, k)[::-1] for k in ("pre", "post", "ridge", "pre_ridge", "diff", "clear")}
        return Profiles(s=-self.s[::-1], **flip)


def axis_profiles(pre: np.ndarray, post_a: np.ndarray, point: np.ndarray, direction: np.ndarray, mm: float) -> Profiles:
    """Both frames' echoes along the axis, averaged over a narrow band and smoothed by ``PROFILE_HALF_WIDTH_MM``."""
    s = _line_samples(pre.shape, point, direction, STEP_PX)
    hw, sm = max(1, int(round(PROFILE_HALF_WIDTH_MM / mm))), PROFILE_HALF_WIDTH_MM / mm / STEP_PX
    up = np.array([-direction[1], direction[0]])
    up = -up if up[1] > 0 else up  # towards the probe: reverberations and shadow lie the other way

    def along(img: np.ndarray, offset_mm: float = 0.0) -> np.ndarray:
        return ndimage.gaussian_filter1d(geo.profile(img, point + offset_mm / mm * up, direction, s, half_width=hw), sm)

    r_pre, r_post = along(pre), along(post_a)
    ends = [point + s[:, None] * direction + k * RIDGE_OFFSET_MM / mm * up for k in (0, 1)]
    m = CLEAR_MM / mm
    clear = np.all([(e >= m).all(1) & (e <= np.array(pre.shape[1::-1]) - 1 - m).all(1) for e in ends], axis=0)
    return Profiles(
        s=s,
        pre=r_pre,
        post=r_post,
        ridge=r_post - along(post_a, RIDGE_OFFSET_MM),
        pre_ridge=r_pre - along(pre, RIDGE_OFFSET_MM),
        diff=r_post - r_pre,
        clear=clear,
    )


def advance_run(p: Profiles, mm: float) -> tuple[float, float]:
    """The advance's extent along the axis: the longest run of clear change, bridging gaps of up to 3 mm
    (bright tissue in the pre-fire frame dims the difference)."""
    noise = robust_sigma(p.diff) + 1e-6  # most of the line: no change
    top = np.percentile(p.diff, 99)
    run = p.diff > min(max(4 * noise, 0.1 * top), 0.3 * top)
    if not run.any():
        raise InputError("needle line found but no advance along it", NO_NEEDLE_HINT)
    lab, n = ndimage.label(ndimage.binary_closing(run, iterations=int(1.5 / mm / STEP_PX) + 1))
    idx = np.flatnonzero(lab == np.argmax(ndimage.sum(run, lab, range(1, n + 1))) + 1)
    return float(p.s[idx[0]]), float(p.s[idx[-1]])


def advance_sign(p: Profiles, direction: np.ndarray, a0: float, a1: float, mm: float) -> float:
    """+1 if the needle advances along ``direction``, else -1.

    The needle goes in from the skin, so a steep one advances deeper.  Near the horizontal, the shaft
    (bright in both frames) lies just behind T0 and tissue just beyond T1; an end with no image beyond
    it is where the needle entered."""
    if abs(direction[1]) > np.sin(np.radians(MIN_DESCENT_DEG)):
        return float(np.sign(direction[1]))
    both = np.minimum(p.pre, p.post)

    def outside(lo: float, hi: float) -> float:
        sel = (p.s > lo) & (p.s < hi)
        return float(np.median(both[sel])) if sel.sum() >= 4 else np.inf

    return 1.0 if outside(a0 - 1 / mm, a0) >= outside(a1, a1 + 1 / mm) else -1.0


def tip_steps(p: Profiles, g0: float, g1: float, mm: float) -> tuple[float, float, float, float]:
    """T0 and T1 as the steps of the difference (zero behind T0, where both frames show the shaft, and beyond
    T1, where both show tissue) near the advance run's ends [g0, g1], with their SNRs; T0 moved back to the
    difference's first rise."""
    c0 = onset(p.diff, p.s, g0 - 6 / mm, g0 - 2 / mm, (g0 + g1) / 2, 1 / mm, STEP_PX)
    c0 = g0 if np.isnan(c0) else c0
    s0, snr0 = step_edge(p.diff, p.s, c0 - 1 / mm, c0 + 1.5 / mm, STEP_PX)
    s1, snr1 = step_edge(p.diff, p.s, max(g1 - 3 / mm, (g0 + g1) / 2), g1 + 2 / mm, STEP_PX)
    if np.isnan(s0) or np.isnan(s1):
        raise InputError("needle tip not found along the needle line", NO_NEEDLE_HINT)
    return first_rise(p.diff, p.s, s0, 4 / mm, 0.3 / mm, STEP_PX), snr0, s1, snr1


def t1_on_echo(p: Profiles, s0: float, s1: float, mm: float) -> tuple[float, float, float, float]:
    """T1 where the post-fire echo ends (needle against the tissue beyond it), with the difference's fall
    ``d1`` and the post-fire ridge's end ``r1`` as second estimates, and its SNR.

    The difference's fall comes early where the pre-fire tissue is bright; there the post-fire needle
    still stands out over the tissue just above it, so if that ridge runs on well past the fall, T1 is
    searched there."""
    r1 = run_end(p.ridge, p.s, s0 + 1 / mm, s1, 1 / mm)
    if r1 > s1 + 1.5 / mm:
        s1 = r1
    e1, snr_e = echo_end(p.post, p.s, (s0 + s1) / 2, s1, 3 / mm, 0.1 / mm, STEP_PX)
    return (s1, s1, r1, snr_e) if np.isnan(e1) else (e1, s1, r1, snr_e)


def t0_on_echo(p: Profiles, s0: float, s1: float, mm: float) -> float:
    """T0's second estimate: where the pre-fire shaft's echo first falls (else the pre-fire profile's step)."""
    d0, _ = echo_end(p.pre, p.s, s0 - 1 / mm, s0, 3 / mm, 0.1 / mm, STEP_PX)
    if np.isnan(d0):
        d0, _ = step_edge(p.pre, p.s, s0 - 3 / mm, min(s0 + 3 / mm, (s0 + s1) / 2), STEP_PX)
    return d0


def prefire_shaft(p: Profiles, s0: float, s1: float, mm: float) -> float:
    """The pre-fire needle behind T0 as a share of the post-fire needle ahead of it: its echo over the tissue
    it later advances into, times its echo over the tissue just above it (about 1 with a needle in the
    pre-fire frame, about 0 without)."""
    behind, ahead = (p.s > s0 - 1.5 / mm) & (p.s < s0 - 0.3 / mm), (p.s > s0 + 0.5 / mm) & (p.s < s1 - 0.5 / mm)
    if behind.sum() < 4 or ahead.sum() < 4:
        return 0.0
    tissue = float(np.median(p.pre[ahead]))
    over_tissue = (float(np.median(p.pre[behind])) - tissue) / max(float(np.median(p.post[ahead])) - tissue, 1e-6)
    over_above = float(np.median(p.pre_ridge[behind])) / max(float(np.median(p.ridge[ahead])), 1e-6)
    return max(over_tissue, 0.0) * max(over_above, 0.0)


def prefire_echo(p: Profiles, s0: float, s1: float, mm: float) -> float:
    """The pre-fire frame's own needle echo just behind T0, in units of its speckle: the needle's line over the
    tissue just above it (``pre_ridge``), against that ridge's spread where the pre-fire frame shows tissue (the
    advance, T0 to T1), both clear of the skin line and the frame's border.  Several with a needle in the
    pre-fire frame, about 0 without one; 0 where the frame holds too little behind T0.  Nothing in it is
    relative to the post-fire needle."""
    behind = (p.s > s0 - PREFIRE_BEHIND_MM[0] / mm) & (p.s < s0 - PREFIRE_BEHIND_MM[1] / mm) & p.clear
    ahead = (p.s > s0 + 0.5 / mm) & (p.s < s1 - 0.5 / mm) & p.clear
    if behind.sum() < 4 or ahead.sum() < 8:
        return 0.0
    return float(np.median(p.pre_ridge[behind])) / (robust_sigma(p.pre_ridge[ahead]) + 1e-6)


def find_tips(pre: np.ndarray, post_a: np.ndarray, point: np.ndarray, direction: np.ndarray, mm: float) -> dict:
    """Along one axis: the advance direction ``u``, T0 and T1 (``s0``, ``s1``: signed positions from ``point``)
    and their evidence (second estimates ``d0``, ``d1``, ``r1``, the edges' ``snr``, the post-fire needle's
    level ``needle_post``, ``prefire_shaft`` and ``prefire_echo``)."""
    p = axis_profiles(pre, post_a, point, direction, mm)
    a0, a1 = advance_run(p, mm)
    sign = advance_sign(p, direction, a0, a1, mm)
    p, (g0, g1) = p.forward(sign), ((a0, a1) if sign > 0 else (-a1, -a0))
    inner = (p.s > g0 + 1 / mm) & (p.s < g1 - 1 / mm)
    if inner.sum() < 4:
        raise InputError(f"needle advance too short ({(g1 - g0) * mm:.1f} mm)", NO_NEEDLE_HINT)
    s0, snr0, s1, snr1 = tip_steps(p, g0, g1, mm)
    s1, d1, r1, snr1 = t1_on_echo(p, s0, s1, mm)
    return {
        "u": direction * sign,
        "s0": s0,
        "s1": s1,
        "d0": t0_on_echo(p, s0, s1, mm),
        "d1": d1,
        "r1": r1,
        "snr": [snr0, snr1],
        "needle_post": float(np.median(p.post[inner])),
        "prefire_shaft": prefire_shaft(p, s0, s1, mm),
        "prefire_echo": prefire_echo(p, s0, s1, mm),
    }


# ---------------------------------------------------------------- two frames: the axis


def _edge_points(img: np.ndarray, point: np.ndarray, u: np.ndarray, s_hi: float, level: float, mm: float) -> tuple:
    """Along the line up to ``s_hi``, every 0.25 mm: the half-level crossing above the bright run nearest the line
    (within 0.5 mm), as (positions along, offsets towards the probe, the unit vector towards the probe)."""
    up = np.array([-u[1], u[0]])
    up = -up if up[1] > 0 else up
    along = np.arange(-float(np.hypot(*img.shape)), s_hi, 0.25 / mm)
    across = np.arange(-1.5 / mm, 1.5 / mm, 0.5)
    xy = point + along[:, None, None] * u + across[None, :, None] * up
    grid = ndimage.map_coordinates(img, [xy[..., 1], xy[..., 0]], order=1, mode="constant", cval=np.nan)
    ok = ~np.isnan(grid).any(axis=1)
    along, grid = along[ok], grid[ok]
    zero = int(np.argmin(np.abs(across)))
    near = int(0.5 / mm / 0.5)
    lo, hi = max(zero - near, 0), zero + near + 1
    top, keep = [], []
    for i, g in enumerate(grid):
        lab, _ = ndimage.label(g > level)
        cand = np.flatnonzero(lab[lo:hi]) + lo
        if len(cand) == 0:
            continue
        idx = np.flatnonzero(lab == lab[cand[np.argmin(np.abs(cand - zero))]])
        j = idx[-1]
        if j + 1 >= len(g) or idx[0] == 0:
            continue  # the run reaches the sampled band's edge: not a needle
        top.append(across[j] + (g[j] - level) / (g[j] - g[j + 1]) * 0.5)
        keep.append(along[i])
    return np.array(keep), np.array(top), up


def upper_edge(
    img: np.ndarray, point: np.ndarray, u: np.ndarray, s_hi: float, level: float, mm: float
) -> tuple[np.ndarray, dict] | None:
    """The needle's direction from the upper edge of its echo in one frame, up to ``s_hi`` along ``u``.

    A strong echo saturates into a band (shaft and reverberations merged below it) wider than a line
    fit looks in, and a fit inside it can settle tilted; its upper edge is the needle's own surface.
    A robust straight fit of the edge (Theil-Sen start, then trimmed at 3 MAD) gives the direction
    and its residuals; ``None`` when fewer than 12 sections show the edge."""
    a, v, up = _edge_points(img, point, u, s_hi, level, mm)
    if len(a) < 12:
        return None
    slope, icpt = stats.theilslopes(v, a)[:2]  # robust start: sections off the needle (tissue, skin) are outliers
    inl = np.ones(len(a), bool)
    for _ in range(3):
        res = v - (icpt + slope * a)
        inl = np.abs(res) < max(3 * (robust_sigma(res[inl], about_zero=True) + 1e-3), 0.5)
        if inl.sum() < 12:
            return None
        slope, icpt = np.polyfit(a[inl], v[inl], 1)
    rms = float(np.std(v[inl] - (icpt + slope * a[inl])))
    sigma = rms / np.sqrt(inl.sum()) / max(float(np.ptp(a[inl])) / np.sqrt(12), 1.0)
    direction = (u + slope * up) / np.hypot(1.0, slope)
    return direction, {"rms_px": rms, "sigma_deg": float(np.degrees(sigma)), "n": int(inl.sum())}


def shaft_axis(
    post_a: np.ndarray, point: np.ndarray, u: np.ndarray, s1: float, level: float, mm: float
) -> tuple[np.ndarray, np.ndarray, dict] | None:
    """The axis from the post-fire shaft (entry to T1: the longest baseline): its upper edge, pivoting about the
    fit's centroid (which a tilt inside the band leaves on the needle), then the bright pixels about that line
    (thousands, not one edge point per section) if they agree within twice the edge's error.  ``None``: no edge."""
    edge = upper_edge(post_a, point, u, s1 - EDGE_BAND_MM / mm, level, mm)
    if edge is None:
        return None
    direction, fit = edge
    ys, xs = np.nonzero(post_a > level)
    pts = np.stack([xs, ys], 1).astype(float)
    nrm = np.array([-direction[1], direction[0]])
    sel = (np.abs((pts - point) @ nrm) < EDGE_BAND_MM / mm) & ((pts - point) @ u < s1 - EDGE_BAND_MM / mm)
    if sel.sum() > 20:
        p2, d2, fit2 = tls_fit(pts[sel], post_a[ys[sel], xs[sel]] - level, point, direction, EDGE_BAND_MM / mm)
        if geo.lines_angle_deg(d2, direction) < 2 * fit["sigma_deg"] + 0.1:
            return p2, d2, fit2
    return point, direction, fit


def advance_direction(
    diff: np.ndarray, point: np.ndarray, u: np.ndarray, s0: float, s1: float, fallback: np.ndarray, mm: float
) -> np.ndarray:
    """The advance's own direction, independent of the post-fire frame: the upper edge of the difference up to
    T1 at half its level between T0 and T1 (behind T0 the shaft cancels, so only the advance stands out),
    else ``fallback`` (the difference's pixel fit, which may tilt a little inside a wide echo band)."""
    inner = np.arange(s0 + 0.5 / mm, s1 - 0.5 / mm, 0.5)
    if len(inner) <= 8:
        return fallback
    level = 0.5 * float(np.median(geo.profile(diff, point, u, inner, half_width=1)))
    edge = upper_edge(diff, point, u, s1 - EDGE_BAND_MM / mm, level, mm)
    return fallback if edge is None else edge[0]


def two_frame_evidence(pre: np.ndarray, post: np.ndarray, mm_per_px: tuple[float, float]) -> Advance:
    """The needle's advance between a pre-fire and a post-fire frame: axis, tips and their evidence (stages 1-8)."""
    mm = float(np.mean(mm_per_px))
    post_a, valid, shift = comparable_frames(pre, post, mm)
    diff = advance_image(pre, post_a, valid, shift, mm)
    f = max(1, int(round(WORK_MM / mm)))
    small = transform.downscale_local_mean(diff, (f, f))
    noise = robust_sigma(small) + 1e-6
    check_order(small, noise)
    point, direction = advance_line(small, noise, f, mm)
    point, direction, fit = refine_line(diff, noise, point, direction, mm)
    fallback = direction
    tip = find_tips(pre, post_a, point, direction, mm)
    level = (tip["needle_post"] + float(np.median(post_a))) / 2
    shaft = shaft_axis(post_a, point, tip["u"], tip["s1"], level, mm)
    if shaft is not None:
        point, direction, fit = shaft
        tip = find_tips(pre, post_a, point, direction, mm)
    u, s0, s1 = tip["u"], tip["s0"], tip["s1"]
    return Advance(
        point=point,
        u=u,
        s0=s0,
        s1=s1,
        d0=tip["d0"],
        d1=tip["d1"],
        r1=tip["r1"],
        snr=tip["snr"],
        fit=fit,
        advance_axis=advance_direction(diff, point, u, s0, s1, fallback, mm),
        prefire_shaft=tip["prefire_shaft"],
        prefire_echo=tip["prefire_echo"],
        shift=shift,
    )
