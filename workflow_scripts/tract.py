"""Needle tract: detect the needle axis and tips, and crop the strip around T0 -> T1.

With both frames, the needle's advance is the signal: between pre- and post-fire
only the needle moved, so after aligning the two frames (phase correlation) the
difference image holds the segment T0 -> T1 and its reverberations, while skin,
ligaments, fascia, calcifications and scanner furniture cancel.  A Hough vote on
the difference, the shallowest of near-parallel lines (reverberations lie below
the shaft), and a trimmed weighted total-least-squares fit give the line; its
direction is then refitted on the upper edge of the post-fire echo (a saturated
shaft with its reverberations merged is wider than the fit's band, and a fit
inside it can settle tilted), with its residuals.  The needle goes in from the
skin, so it advances deeper.  T0 is where the difference first rises along that axis (bright
tissue just past the pre-fire tip makes it rise in two steps; the first is the
tip), T1 where the post-fire echo ends (half-way crossings, sub-pixel); where
bright pre-fire tissue dims the difference, the post-fire needle's ridge over
the tissue just above it says how far the needle runs.  Each of T0, T1 and the
axis gets a confidence (the two tips lying as far apart as the gun advances, at
most its stroke and a little short of it, supports either); a biopsy below
``min_confidence`` on any goes to review.  The stroke is the biopsy's
(biopsies.tsv ``stroke_mm``) or the config's default; it never moves a tip.

With one frame (inference, or a length override) the needle is the dominant
bright line: Hough vote, weighted TLS refinement, and the tip at the end of the
bright run away from the entry edge.
"""

from __future__ import annotations

import argparse
import json
import warnings
from pathlib import Path

import numpy as np
from scipy import ndimage, stats
from skimage import filters, measure, registration, transform
from skimage.io import imread, imsave

from workflow_scripts import geometry as geo
from workflow_scripts.errors import InputError, run_cli

SKIN_MM = 1.5  # the skin line: bright and straight, never the needle tip
NO_NEEDLE_HINT = "set tip_x/tip_y (pre-fire tip, DICOM frame pixels) and axis_deg in biopsies.tsv, or check the image"


def fit_axis(img: np.ndarray, skin_rows: int = 0, min_length_px: float = 40.0) -> tuple[np.ndarray, np.ndarray]:
    """A point on the needle and its unit direction (x, y), from pixels alone.

    The top ``skin_rows`` rows (the bright, straight skin line) are not searched.
    """
    g = filters.gaussian(img.astype(float) / 255.0, 2.0)
    bright = g > max(np.percentile(g, 99.5), 0.5 * (np.median(g) + g.max()))
    bright[:skin_rows] = False
    lab = measure.label(bright)
    # keep ridge-like components: long and thin (the needle), not speckle blobs or the skin
    keep = [
        r.label
        for r in measure.regionprops(lab)
        if r.axis_major_length >= 20 and r.axis_major_length > 3 * max(r.axis_minor_length, 1.0)
    ]
    cand = np.isin(lab, keep)
    if cand.sum() < min_length_px:
        raise InputError("no needle echo found in the image", NO_NEEDLE_HINT)
    h, theta, dist = transform.hough_line(cand, theta=np.linspace(-np.pi / 2, np.pi / 2, 720, endpoint=False))
    _, angles, dists = transform.hough_line_peaks(h, theta, dist, num_peaks=1)
    if len(angles) == 0 or h.max() < min_length_px:
        raise InputError(
            f"no straight needle echo found (longest line {h.max()} px < {min_length_px:.0f} px)", NO_NEEDLE_HINT
        )
    normal = np.array([np.cos(angles[0]), np.sin(angles[0])])
    point = dists[0] * normal
    direction = np.array([-normal[1], normal[0]])
    ys, xs = np.nonzero(bright)
    pts = np.stack([xs, ys], 1).astype(float)
    for band in (4.0, 2.5):  # refine: weighted TLS on bright pixels near the line
        d = (pts - point) @ np.array([-direction[1], direction[0]])
        near = pts[np.abs(d) < band]
        w = g[near[:, 1].astype(int), near[:, 0].astype(int)]
        point = (near * w[:, None]).sum(0) / w.sum()
        cov = np.cov((near - point).T, aweights=w)
        direction = np.linalg.eigh(cov)[1][:, -1]
    return point, direction / np.linalg.norm(direction)


def find_tip(img: np.ndarray, point: np.ndarray, direction: np.ndarray) -> tuple[np.ndarray, np.ndarray, dict]:
    """Tip (x, y) and the advance direction: the end of the bright run away from the entry edge."""
    h, w = img.shape
    span = float(np.hypot(h, w))
    s = np.arange(-span, span, 0.5)
    xy = point[None] + s[:, None] * direction[None]
    inside = (xy[:, 0] >= 0) & (xy[:, 0] <= w - 1) & (xy[:, 1] >= 0) & (xy[:, 1] <= h - 1)
    s = s[inside]
    prof = ndimage.gaussian_filter1d(geo.profile(img, point, direction, s, half_width=2), 2.0)
    needle_level = np.percentile(prof, 95)
    tissue_level = np.median(img)
    thr = (needle_level + tissue_level) / 2
    above = prof > thr
    lab, n = ndimage.label(above)
    if n == 0:
        raise InputError("needle line found but no bright run along it", NO_NEEDLE_HINT)
    run = np.argmax(ndimage.sum(above, lab, range(1, n + 1))) + 1
    idx = np.flatnonzero(lab == run)
    i0, i1 = idx[0], idx[-1]
    # the entry end touches (or nearly touches) the image border: the tip is the other end
    gap_start, gap_end = s[i0] - s[0], s[-1] - s[i1]
    advance = 1.0 if gap_start < gap_end else -1.0
    i_tip = i1 if advance > 0 else i0
    # local half-way level between the needle just before the tip and tissue beyond it
    k = 40  # samples = 20 px
    before = prof[max(i_tip - k, 0) : i_tip] if advance > 0 else prof[i_tip + 1 : i_tip + k + 1]
    beyond = prof[i_tip + 1 : i_tip + k + 1] if advance > 0 else prof[max(i_tip - k, 0) : i_tip]
    if len(beyond) < 4:
        raise InputError("the needle runs to the image border: no tip visible", NO_NEEDLE_HINT)
    half = (np.median(before) + np.median(beyond)) / 2
    j = i_tip
    step = 1 if advance > 0 else -1
    while 0 <= j + step < len(prof) and prof[j + step] > half:
        j += step
    j2 = j + step
    frac = (prof[j] - half) / (prof[j] - prof[j2]) if prof[j] != prof[j2] else 0.0
    s_tip = s[j] + step * frac * (s[1] - s[0])
    run_len = abs(s[i1] - s[i0])
    return (
        point + s_tip * direction,
        direction * advance,
        {"run_px": float(run_len), "contrast": float(needle_level - tissue_level)},
    )


def detect(
    img: np.ndarray, skin_rows: int, axis_override_deg: float | None = None, tip_override: np.ndarray | None = None
) -> dict:
    """Needle axis and tip of one image; overrides replace the detected values."""
    if axis_override_deg is not None and tip_override is not None:
        a = np.deg2rad(axis_override_deg)
        return {"tip": tip_override, "direction": np.array([np.cos(a), np.sin(a)])}
    point, direction = fit_axis(img, skin_rows)
    tip, advance, info = find_tip(img, point, direction)
    if axis_override_deg is not None:
        a = np.deg2rad(axis_override_deg)
        advance = np.array([np.cos(a), np.sin(a)])
    if tip_override is not None:
        tip = tip_override
    return {"tip": tip, "direction": advance, **info}


WORK_MM = 0.08  # working resolution of the line search
MIN_DESCENT_DEG = 3.0  # a needle steeper than this advances away from the probe; flatter, the echoes decide
THROW_SHORTFALL = 0.03  # share of the throw the advance seen in the image plane may fall short of it
STROKE_OVERSHOOT_MM = 0.5  # a tract longer than the throw by more than this has a tip in the wrong place
# largest change gained over lost (99.8th percentiles) below which the frames are taken as swapped; on the demo and
# varied forward models, frames in order gave 1.7-3.4 and swapped ones 0.3-0.6
SWAPPED_RATIO = 0.8
# the pre-fire needle behind T0 as a share of the post-fire needle (``_tips``) below which the pre-fire frame shows
# no needle; in order 0.37-1.2, with no needle in the pre-fire frame -0.5-0.26 (demo and varied forward models)
PREFIRE_SHAFT = 0.3


def _align(pre: np.ndarray, post: np.ndarray, f: int) -> np.ndarray:
    """Shift (dx, dy) in full-resolution px that maps pre-fire positions into the post-fire frame."""
    a, b = (transform.downscale_local_mean(x.astype(float), (f, f)) for x in (pre, post))
    with warnings.catch_warnings():  # a blank frame: no shift, and the needle check below says what is wrong
        warnings.simplefilter("ignore")
        shift, _, _ = registration.phase_cross_correlation(a, b, upsample_factor=8, normalization=None)
    return -np.array([shift[1], shift[0]]) * f


def _tls(
    pts: np.ndarray, w: np.ndarray, point: np.ndarray, direction: np.ndarray, band: float
) -> tuple[np.ndarray, np.ndarray, dict]:
    """Weighted total least squares on points within ``band`` of a line, trimmed at 2.5 sigma; with its residuals."""
    for _ in range(3):
        normal = np.array([-direction[1], direction[0]])
        d = (pts - point) @ normal
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


def _top_edge(
    img: np.ndarray, point: np.ndarray, u: np.ndarray, s_hi: float, level: float, mm: float
) -> tuple[np.ndarray, dict] | None:
    """The needle's direction from the upper edge of its echo in one frame, up to ``s_hi`` along ``u``.

    A strong needle echo saturates into a band (the shaft and the reverberations merged below it)
    wider than any band a line fit looks in, and a fit inside it can settle tilted.  Its upper
    edge (towards the probe) is the needle's own surface: in cross-sections every 0.25 mm, the
    half-level crossing above the bright run on the line; a trimmed straight fit of those gives
    the direction (its residuals with it).  ``None`` when too few sections show the edge.
    """
    up = np.array([-u[1], u[0]])
    up = -up if up[1] > 0 else up  # towards the probe
    along = np.arange(-float(np.hypot(*img.shape)), s_hi, 0.25 / mm)
    across = np.arange(-1.5 / mm, 1.5 / mm, 0.5)
    xy = point + along[:, None, None] * u + across[None, :, None] * up
    grid = ndimage.map_coordinates(img, [xy[..., 1], xy[..., 0]], order=1, mode="constant", cval=np.nan)
    ok = ~np.isnan(grid).any(axis=1)
    along, grid = along[ok], grid[ok]
    zero = int(np.argmin(np.abs(across)))
    near = int(0.5 / mm / 0.5)  # samples within 0.5 mm of the line
    lo, hi = max(zero - near, 0), zero + near + 1
    top, keep = [], []
    for i, g in enumerate(grid):
        lab, _ = ndimage.label(g > level)
        cand = np.flatnonzero(lab[lo:hi]) + lo  # bright within 0.5 mm of the line
        if len(cand) == 0:
            continue
        idx = np.flatnonzero(lab == lab[cand[np.argmin(np.abs(cand - zero))]])  # the run nearest the line
        j = idx[-1]
        if j + 1 >= len(g) or idx[0] == 0:
            continue  # the run reaches the sampled band's edge: not a needle
        frac = (g[j] - level) / (g[j] - g[j + 1])
        top.append(across[j] + frac * 0.5)
        keep.append(along[i])
    if len(keep) < 12:
        return None
    a, v = np.array(keep), np.array(top)
    slope, icpt = stats.theilslopes(v, a)[:2]  # robust start: sections off the needle (tissue, skin) are outliers
    inl = np.ones(len(a), bool)
    for _ in range(3):
        res = v - (icpt + slope * a)
        mad = 1.4826 * float(np.median(np.abs(res[inl]))) + 1e-3
        inl = np.abs(res) < max(3 * mad, 0.5)
        if inl.sum() < 12:
            return None
        slope, icpt = np.polyfit(a[inl], v[inl], 1)
    rms = float(np.std(v[inl] - (icpt + slope * a[inl])))
    direction = (u + slope * up) / np.hypot(1.0, slope)
    sigma = rms / np.sqrt(inl.sum()) / max(float(np.ptp(a[inl])) / np.sqrt(12), 1.0)
    return direction, {"rms_px": rms, "sigma_deg": float(np.degrees(sigma)), "n": int(inl.sum())}


def _step(prof: np.ndarray, s: np.ndarray, lo: float, hi: float, step: float) -> tuple[float, float]:
    """Best single step (least squares) of a profile within [lo, hi].

    Returns the sub-pixel edge position and its height over the noise."""
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
    resid = np.concatenate([y[:k] - m_a, y[k:] - m_b])
    noise = 1.4826 * float(np.median(np.abs(resid))) + 1e-6
    half = (m_a + m_b) / 2
    # the half-level crossing nearest the split
    cross = np.flatnonzero(np.diff(np.sign(y - half)) != 0)
    if len(cross) == 0:
        return float(s[sel[k]]), abs(m_a - m_b) / noise
    j = cross[np.argmin(np.abs(cross - (k - 1)))]
    frac = (y[j] - half) / (y[j] - y[j + 1]) if y[j] != y[j + 1] else 0.0
    return float(s[sel[j]] + frac * step), float(abs(m_a - m_b) / noise)


def _onset(
    prof: np.ndarray, s: np.ndarray, ref_lo: float, ref_hi: float, stop: float, min_len: float, step: float
) -> float:
    """First position after ``ref_hi`` where a profile rises above its level in [ref_lo, ref_hi] and stays there.

    The reference stretch is where nothing changed between the frames (the shaft in both,
    or tissue in both); the onset is where the change starts, however small, so that
    bright tissue just past a tip does not push the tip forward.
    """
    ref = prof[(s > ref_lo) & (s < ref_hi)]
    if len(ref) < 8:
        return float("nan")
    base = float(np.median(ref))
    noise = 1.4826 * float(np.median(np.abs(ref - base)))
    spread = (
        float(np.percentile(prof[(s > ref_hi) & (s < stop)], 90)) - base if ((s > ref_hi) & (s < stop)).any() else 0.0
    )
    thr = base + max(4 * noise, 0.1 * spread, 1.0)
    above = (prof > thr) & (s > ref_hi) & (s < stop)
    lab, n = ndimage.label(ndimage.binary_closing(above, iterations=max(1, int(0.15 / step * min_len))))
    for k in range(1, n + 1):
        idx = np.flatnonzero(lab == k)
        if (idx[-1] - idx[0]) * step >= min_len:
            return float(s[idx[0]])
    return float("nan")


def _echo_end(
    prof: np.ndarray, s: np.ndarray, start: float, guess: float, reach: float, bridge: float, step: float
) -> tuple[float, float]:
    """Where a needle echo that runs through ``start`` ends, sub-pixel, and the edge's SNR.

    The end is the first fall below half-way between the echo's level and the tissue just beyond ``guess``
    (so bright tissue past the tip does not lengthen it)."""
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
    noise = 1.4826 * float(np.median(np.abs(beyond - tissue))) + 1e-6
    return float(s[j] + frac * step), float((level - tissue) / noise)


def _first_rise(diff: np.ndarray, s: np.ndarray, s0: float, reach: float, gap: float, step: float) -> float:
    """T0 moved back to an earlier rise of the difference, if the stretch before ``s0`` already changed.

    Bright tissue just past the pre-fire tip makes the difference rise in two steps: a small one
    at the tip (needle now, bright tissue before) and a big one where that tissue ends.  The
    biggest step is the second; the tip is the first, if it is a clear rise above the unchanged level.
    Searched within ``reach`` before ``s0``, then (a step right at that limit) within 1.5 ``reach``.
    """
    for lo in (s0 - reach, s0 - 1.5 * reach):
        e, snr = _step(diff, s, lo, s0 - gap, step)
        if np.isnan(e) or snr < 4:
            continue
        before, between, after = (
            diff[(s > max(lo, e - reach / 2)) & (s < e)],
            diff[(s > e) & (s < s0)],
            diff[(s > s0) & (s < s0 + reach / 2)],
        )
        if len(before) < 8 or len(between) < 8 or len(after) < 8:
            continue
        noise = 1.4826 * float(np.median(np.abs(before - np.median(before)))) + 1e-6
        rise, level = float(np.median(between) - np.median(before)), float(np.median(between))
        # a real first step: clear of the noise, and a good part of the needle's own contrast (not the shaft's start)
        if rise > 4 * noise and level > 0.25 * float(np.median(after)):
            return e
    return s0


def _run_end(prof: np.ndarray, s: np.ndarray, start: float, stop: float, bridge: float) -> float:
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


def _tips(pre: np.ndarray, post_a: np.ndarray, point: np.ndarray, direction: np.ndarray, mm: float) -> dict:
    """Along one axis: the advance direction, T0 and T1 (signed positions from ``point``) and their evidence.

    The profiles of both frames along the axis, and their difference, which is zero behind T0
    (the shaft in both frames), positive from T0 to T1 (needle against tissue) and zero beyond
    T1 (tissue in both).  T0 is the difference's onset; T1 is where the post-fire echo ends.
    Each has a second estimate (the pre-fire echo's end; the difference's fall) whose
    agreement, with the edge's contrast over the tissue noise, makes the confidence.
    """
    span = float(np.hypot(*pre.shape))
    step = 0.25
    s = np.arange(-span, span, step)
    xy = point[None] + s[:, None] * direction[None]
    inside = (xy[:, 0] >= 0) & (xy[:, 0] <= pre.shape[1] - 1) & (xy[:, 1] >= 0) & (xy[:, 1] <= pre.shape[0] - 1)
    s = s[inside]
    hw = max(1, int(round(0.05 / mm)))
    sm = 0.05 / mm / step

    def along(img: np.ndarray, offset: float = 0.0) -> np.ndarray:
        """The echo along the axis (or a parallel line ``offset`` px shallower).

        Averaged over a narrow band and smoothed by 0.05 mm."""
        up = np.array([-direction[1], direction[0]])
        up = -up if up[1] > 0 else up  # towards the probe: reverberations and shadow lie the other way
        return ndimage.gaussian_filter1d(geo.profile(img, point + offset * up, direction, s, half_width=hw), sm)

    r_pre, r_post = along(pre), along(post_a)
    r_ridge = r_post - along(post_a, 0.6 / mm)  # the post-fire needle over the tissue just above it
    r_pre_ridge = r_pre - along(pre, 0.6 / mm)  # the same in the pre-fire frame
    r_diff = r_post - r_pre
    noise = 1.4826 * float(np.median(np.abs(r_diff - np.median(r_diff)))) + 1e-6  # most of the line: no change
    top = np.percentile(r_diff, 99)
    run = r_diff > min(max(4 * noise, 0.1 * top), 0.3 * top)
    if not run.any():
        raise InputError("needle line found but no advance along it", NO_NEEDLE_HINT)
    # the advance: the longest run, bridging gaps of up to 3 mm (bright tissue in the pre-fire frame dims it)
    lab, n = ndimage.label(ndimage.binary_closing(run, iterations=int(1.5 / mm / step) + 1))
    r = np.argmax(ndimage.sum(run, lab, range(1, n + 1))) + 1
    idx = np.flatnonzero(lab == r)
    a0, a1 = s[idx[0]], s[idx[-1]]
    # the advance direction: the needle goes in from the skin, so it advances deeper.  Near the horizontal,
    # the shaft (bright in both frames) lies just behind T0, tissue just beyond T1; an end with no image
    # beyond it is where the needle entered
    both = np.minimum(r_pre, r_post)

    def outside(lo: float, hi: float) -> float:
        sel = (s > lo) & (s < hi)
        return float(np.median(both[sel])) if sel.sum() >= 4 else np.inf

    if abs(direction[1]) > np.sin(np.radians(MIN_DESCENT_DEG)):
        sign = float(np.sign(direction[1]))
    else:
        sign = 1.0 if outside(a0 - 1 / mm, a0) >= outside(a1, a1 + 1 / mm) else -1.0
    sd, pre_d, post_d, diff_d, ridge_d, pre_ridge_d = (
        (s, r_pre, r_post, r_diff, r_ridge, r_pre_ridge)
        if sign > 0
        else (-s[::-1], r_pre[::-1], r_post[::-1], r_diff[::-1], r_ridge[::-1], r_pre_ridge[::-1])
    )
    g0, g1 = (a0, a1) if sign > 0 else (-a1, -a0)
    inner = (sd > g0 + 1 / mm) & (sd < g1 - 1 / mm)
    if inner.sum() < 4:
        raise InputError(f"needle advance too short ({(g1 - g0) * mm:.1f} mm)", NO_NEEDLE_HINT)

    # T0 and T1: the steps of the difference (zero behind T0 where both frames show the shaft, and
    # beyond T1 where both show tissue), each searched within 3 mm of the advance run's ends
    w = 3 / mm
    c0 = _onset(diff_d, sd, g0 - 6 / mm, g0 - 2 / mm, (g0 + g1) / 2, 1 / mm, step)
    c0 = g0 if np.isnan(c0) else c0
    s0, snr0 = _step(diff_d, sd, c0 - 1 / mm, c0 + 1.5 / mm, step)
    s1, snr1 = _step(diff_d, sd, max(g1 - w, (g0 + g1) / 2), g1 + 2 / mm, step)
    if np.isnan(s0) or np.isnan(s1):
        raise InputError("needle tip not found along the needle line", NO_NEEDLE_HINT)
    s0 = _first_rise(diff_d, sd, s0, 4 / mm, 0.3 / mm, step)
    # T1 itself is where the post-fire echo ends (needle against the tissue beyond it): the difference's
    # fall can come early where the pre-fire tissue is bright.  T0's second estimate: where the pre-fire
    # shaft's echo first falls (bright tissue just past the tip does not lengthen it).
    # where the difference dims (bright pre-fire tissue), the post-fire needle still stands out over the
    # tissue just above it: if that ridge runs on well past the difference's fall, T1 is searched there
    ridge_end = _run_end(ridge_d, sd, s0 + 1 / mm, s1, 1 / mm)
    if ridge_end > s1 + 1.5 / mm:
        s1 = ridge_end
    p1, snr1 = _echo_end(post_d, sd, (s0 + s1) / 2, s1, 3 / mm, 0.1 / mm, step)
    s1, d1 = (s1, s1) if np.isnan(p1) else (p1, s1)
    d0, _ = _echo_end(pre_d, sd, s0 - 1 / mm, s0, 3 / mm, 0.1 / mm, step)
    if np.isnan(d0):
        d0, _ = _step(pre_d, sd, s0 - w, min(s0 + w, (s0 + s1) / 2), step)
    snr = [snr0, snr1]
    # the pre-fire needle behind T0, as a share of the post-fire needle ahead of it (about 1 with a needle in the
    # pre-fire frame, about 0 without: then T0 is where the post-fire needle starts): its echo over the tissue it
    # later advances into, times its echo over the tissue just above it
    behind, ahead = (sd > s0 - 1.5 / mm) & (sd < s0 - 0.3 / mm), (sd > s0 + 0.5 / mm) & (sd < s1 - 0.5 / mm)
    shaft = 0.0
    if behind.sum() >= 4 and ahead.sum() >= 4:
        tissue = float(np.median(pre_d[ahead]))
        over_tissue = (float(np.median(pre_d[behind])) - tissue) / max(float(np.median(post_d[ahead])) - tissue, 1e-6)
        over_above = float(np.median(pre_ridge_d[behind])) / max(float(np.median(ridge_d[ahead])), 1e-6)
        shaft = max(over_tissue, 0.0) * max(over_above, 0.0)
    return {
        "u": direction * sign,
        "s0": s0,
        "s1": s1,
        "d0": d0,
        "d1": d1,
        "r1": ridge_end,
        "snr": snr,
        "needle_post": float(np.median(post_d[inner])),
        "prefire_shaft": shaft,
    }


def _within(s1: float, s0: float, throw_px: float) -> float:
    """The T1 the gun allows nearest ``s1``: from ``THROW_SHORTFALL`` short of the throw to the throw past T0.

    The stroke is mechanical, so the tip seen in the image plane never advances further; tilt out of the
    plane, deflection and the tissue's give shorten what is seen a little.
    """
    return float(np.clip(s1, s0 + (1 - THROW_SHORTFALL) * throw_px, s0 + throw_px))


def two_frame(
    pre: np.ndarray, post: np.ndarray, mm_per_px: tuple[float, float], stroke_mm: float = float("nan")
) -> dict:
    """Axis, T0 and T1 (pre-fire px) from the needle's advance between the two frames, with confidences.

    ``stroke_mm``, the gun's stroke, only supports the tips' confidences (their distance fitting the gun);
    it never moves them."""
    mm = float(np.mean(mm_per_px))
    for name, img in (("pre-fire", pre), ("post-fire", post)):
        if float(np.std(img)) < 1.0:
            raise InputError(f"no needle echo found in the {name} image: it is blank (one grey level)", NO_NEEDLE_HINT)
    f = max(1, int(round(WORK_MM / mm)))
    shift = _align(pre, post, f) if pre.shape == post.shape else np.zeros(2)
    # post-fire resampled into the pre-fire frame, then the difference at the working resolution
    post_a = ndimage.shift(post, (-shift[1], -shift[0]), output=float, order=1, mode="nearest")
    diff = ndimage.gaussian_filter(post_a - pre.astype(float), 0.08 / mm)
    # the frame's edges: the shifted post-fire frame is padded there, so an edge row or a scanner
    # border would read as a long straight "advance"; nothing there is compared
    edge = int(np.ceil(np.abs(shift).max() + 3 * 0.08 / mm)) + 2
    diff[:edge], diff[-edge:], diff[:, :edge], diff[:, -edge:] = 0.0, 0.0, 0.0, 0.0
    small = transform.downscale_local_mean(diff, (f, f))
    noise = 1.4826 * np.median(np.abs(small - np.median(small))) + 1e-6
    # the needle's advance is the biggest change, and a bright one: far more negative than positive change means
    # the needle is longer in the "pre-fire" frame
    gain, loss = float(np.percentile(small, 99.8)), float(np.percentile(-small, 99.8))
    if loss > 4 * noise and gain < SWAPPED_RATIO * loss:
        raise InputError(
            "the needle is longer in the pre-fire image than in the post-fire image (the frames look swapped)",
            "check that prefire and postfire are not swapped in biopsies.tsv, or set tip_x/tip_y and axis_deg",
        )
    strong = small > max(np.percentile(small, 99.0), 4 * noise)
    if strong.sum() < 10 / f:
        raise InputError("no needle advance found between the pre- and post-fire images", NO_NEEDLE_HINT)
    h, theta, dist = transform.hough_line(strong, theta=np.linspace(-np.pi / 2, np.pi / 2, 360, endpoint=False))
    votes, angles, dists = transform.hough_line_peaks(h, theta, dist, num_peaks=6, min_distance=3, min_angle=2)
    min_len = 3.0 / (mm * f)  # a needle advance shorter than 3 mm is not one
    ok = votes >= max(0.4 * votes.max(), min_len * 0.3)
    if not ok.any() or votes.max() < min_len * 0.3:
        raise InputError(
            f"no straight needle advance found (longest line {votes.max() * mm * f:.1f} mm)", NO_NEEDLE_HINT
        )
    # among lines parallel to the strongest, the shallowest: reverberations lie below the shaft
    best = int(np.argmax(votes))
    par = [k for k in np.flatnonzero(ok) if abs(np.sin(angles[k] - angles[best])) < np.sin(np.deg2rad(4))]
    cx = small.shape[1] / 2

    def depth(k: int) -> float:  # row of line k at the image's middle column
        c, sn = np.cos(angles[k]), np.sin(angles[k])
        return (dists[k] - cx * c) / sn if abs(sn) > 1e-6 else dists[k]

    k = min(par, key=depth)
    normal = np.array([np.cos(angles[k]), np.sin(angles[k])])
    point = dists[k] * normal * f + (f - 1) / 2
    direction = np.array([-normal[1], normal[0]])
    # refine at full resolution on the difference's positive pixels near the line
    band = 0.4 / mm
    ys, xs = np.nonzero(diff > 4 * noise)
    pts = np.stack([xs, ys], 1).astype(float)
    near = np.abs((pts - point) @ normal) < band
    if near.sum() < 10:
        raise InputError("needle advance too faint to fit a line", NO_NEEDLE_HINT)
    point, direction, fit = _tls(pts[near], diff[ys[near], xs[near]], point, direction, band)
    advance_axis = direction
    tip = _tips(pre, post_a, point, direction, mm)
    # final axis: the post-fire shaft (entry to T1: the longest baseline), from its upper edge
    u = tip["u"]
    half_post = (tip["needle_post"] + float(np.median(post_a))) / 2
    edge = _top_edge(post_a, point, u, tip["s1"] - 0.3 / mm, half_post, mm)
    if edge is not None:  # pivoting about the fit's centroid, which a tilt inside the band leaves on the needle
        direction, fit = edge
        # then the bright pixels about that line (thousands, not one edge point per section), if they agree
        ys, xs = np.nonzero(post_a > half_post)
        pts = np.stack([xs, ys], 1).astype(float)
        nrm = np.array([-direction[1], direction[0]])
        sel = (np.abs((pts - point) @ nrm) < 0.3 / mm) & ((pts - point) @ u < tip["s1"] - 0.3 / mm)
        if sel.sum() > 20:
            p2, d2, fit2 = _tls(pts[sel], post_a[ys[sel], xs[sel]] - half_post, point, direction, 0.3 / mm)
            if geo.lines_angle_deg(d2, direction) < 2 * fit["sigma_deg"] + 0.1:
                point, direction, fit = p2, d2, fit2
        tip = _tips(pre, post_a, point, direction, mm)
    u, s0, s1 = tip["u"], tip["s0"], tip["s1"]
    # the advance's own direction, independent of the post-fire frame: the upper edge of the difference up
    # to T1, at half its level between T0 and T1 (behind T0 the shaft cancels, so only the advance stands
    # out), else the difference's pixel fit, which may tilt a little inside a wide echo band
    inner = np.arange(s0 + 0.5 / mm, s1 - 0.5 / mm, 0.5)
    if len(inner) > 8:
        level = 0.5 * float(np.median(geo.profile(diff, point, u, inner, half_width=1)))
        advance_edge = _top_edge(diff, point, u, s1 - 0.3 / mm, level, mm)
        advance_axis = advance_axis if advance_edge is None else advance_edge[0]
    agree = lambda a, b: 0.0 if np.isnan(b) else float(np.exp(-abs(a - b) * mm / 1.0))  # noqa: E731  two estimates, 1 mm scale
    clear = lambda x: float(1 - np.exp(-max(x, 0.0)))  # noqa: E731  edge contrast over the tissue noise
    # the two tips found independently and as far apart as the gun advances: support for either
    stroke = agree(s1, _within(s1, s0, stroke_mm / mm))
    conf = {
        # T0's second estimate: the end of the pre-fire echo, or the tips' distance fitting the gun
        "t0": max(agree(s0, tip["d0"]), stroke) * clear(tip["snr"][0]),
        # T1's second estimate: the difference's fall, or where the post-fire needle stops standing out over
        # the tissue above it (bright pre-fire tissue moves the first, not the second), or the tips' distance
        "t1": max(agree(s1, tip["d1"]), agree(s1, tip["r1"]), stroke) * clear(tip["snr"][1]),
        # the fit's precision, a long enough baseline, and the advance's own direction agreeing (2 degree scale)
        "axis": float(np.exp(-fit["sigma_deg"] / 0.5))
        * float(np.clip((s1 - s0) * mm / 5.0, 0.0, 1.0))
        * float(np.exp(-geo.lines_angle_deg(advance_axis, u) / 2.0)),
    }
    return {
        "t0": point + s0 * u,
        "t1": point + s1 * u,
        "direction": u,
        "shift_px": shift.tolist(),
        "confidence": conf,
        "fit": {**fit, "t0_diff_px": float(s0 - tip["d0"]), "t1_diff_px": float(s1 - tip["d1"]), "snr": tip["snr"]},
        "prefire_shaft": tip["prefire_shaft"],
    }


def implausible_length(length_mm: float, stroke_mm: float) -> bool:
    """A sampled length the gun cannot give: past its stroke (by more than the tips' error), or a quarter short."""
    return length_mm > stroke_mm + STROKE_OVERSHOOT_MM or length_mm < 0.75 * stroke_mm


def tract(
    pre: np.ndarray,
    post: np.ndarray | None,
    mm_per_px: tuple[float, float],
    stroke_mm: float,
    overrides: dict,
    min_confidence: float | None = None,
    manual: str = "sheet",
) -> dict:
    """T0 (pre-fire tip), T1 (post-fire tip on the pre-fire axis) and the sampled length.

    ``stroke_mm``, the gun's stroke, checks the length and supports the tips' confidences; it
    never moves a tip.  With both frames and no override, both tips come from the needle's
    advance (``two_frame``); ``state`` is ``accepted`` when every confidence reaches
    ``min_confidence`` (config tract.min_confidence; read on this path only, so a call with overrides may omit it) and
    the length is plausible, else ``review``.  A pre-fire frame with no
    needle goes to review with T0 estimated as T1 less the stroke.  Overrides
    (``tip``, ``axis_deg``, ``length_mm``) win over detection: the state is then ``override``
    and each overridden part's source is ``manual``.  With ``length_mm`` T1 is T0 + that
    length along the axis and ``post`` is not read (inference on a new pre-fire image has none).
    """
    scale = np.array(mm_per_px)
    given = {k: overrides.get(k) is not None for k in ("tip", "axis_deg", "length_mm")}
    if post is not None and not any(given.values()):
        r = two_frame(pre, post, mm_per_px, stroke_mm)
        t0, conf, reason = r["t0"], r["confidence"], ""
        length = float(np.linalg.norm((r["t1"] - t0) * scale))
        if r["prefire_shaft"] < PREFIRE_SHAFT and length > stroke_mm + STROKE_OVERSHOOT_MM:
            # T0 fell back to where the post-fire needle starts: the gun's stroke back from T1 is the best guess
            t0 = r["t1"] - r["direction"] * stroke_mm / float(np.linalg.norm(r["direction"] * scale))
            conf, length = {**conf, "t0": 0.0}, float(stroke_mm)
            reason = (
                f"the pre-fire frame shows no needle: T0 estimated from the post-fire frame alone, T1 less the "
                f"{stroke_mm:g} mm stroke (the tip to confirm); check that this is the pre-fire frame"
            )
        flag = implausible_length(length, stroke_mm)
        ok = min(conf.values()) >= min_confidence and not flag and not reason
        return {
            "t0_px": t0.tolist(),
            "t1_px": r["t1"].tolist(),
            "axis_deg": geo.line_angle_deg(r["direction"] * scale),
            "sampled_length_mm": length,
            "stroke_mm": stroke_mm,
            "length_flag": flag,
            "confidence": conf,
            "fit": {**r["fit"], "prefire_shaft": r["prefire_shaft"]},
            "post_shift_px": r["shift_px"],
            "state": "accepted" if ok else "review",
            "source": {"t0": "auto", "axis": "auto", "t1": "auto"},
            **({"review_reason": reason} if reason else {}),
        }
    skin = int(SKIN_MM / scale[1])
    d0 = detect(pre, skin, overrides.get("axis_deg"), overrides.get("tip"))
    direction = d0["direction"]
    if given["length_mm"]:
        u = direction * scale
        t1 = d0["tip"] + direction * overrides["length_mm"] / np.linalg.norm(u)
    else:
        d1 = detect(post, skin, np.degrees(np.arctan2(direction[1], direction[0])) if given["axis_deg"] else None)
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
