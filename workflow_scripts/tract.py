"""Needle tract: detect the needle axis and tips, and crop the strip around T0 -> T1.

The needle is a bright, straight, specular echo.  We ridge-filter the image,
vote for the dominant line with a Hough transform, refine it by a weighted
total-least-squares fit, and find the tip where the intensity along the axis
drops from needle to tissue level (half-way crossing, sub-pixel).
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np
from scipy import ndimage
from skimage import filters, measure, transform
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
    keep = [r.label for r in measure.regionprops(lab) if r.axis_major_length >= 20 and r.axis_major_length > 3 * max(r.axis_minor_length, 1.0)]
    cand = np.isin(lab, keep)
    if cand.sum() < min_length_px:
        raise InputError("no needle echo found in the image", NO_NEEDLE_HINT)
    h, theta, dist = transform.hough_line(cand, theta=np.linspace(-np.pi / 2, np.pi / 2, 720, endpoint=False))
    _, angles, dists = transform.hough_line_peaks(h, theta, dist, num_peaks=1)
    if len(angles) == 0 or h.max() < min_length_px:
        raise InputError(f"no straight needle echo found (longest line {h.max()} px < {min_length_px:.0f} px)", NO_NEEDLE_HINT)
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
    return point + s_tip * direction, direction * advance, {"run_px": float(run_len), "contrast": float(needle_level - tissue_level)}


def detect(img: np.ndarray, skin_rows: int, axis_override_deg: float | None = None, tip_override: np.ndarray | None = None) -> dict:
    """Needle axis and tip of one image; overrides replace the detected values."""
    if axis_override_deg is not None and tip_override is not None:
        a = np.deg2rad(axis_override_deg)
        return {"tip": tip_override, "direction": np.array([np.cos(a), np.sin(a)]), "source": "override"}
    point, direction = fit_axis(img, skin_rows)
    tip, advance, info = find_tip(img, point, direction)
    if axis_override_deg is not None:
        a = np.deg2rad(axis_override_deg)
        advance = np.array([np.cos(a), np.sin(a)])
    if tip_override is not None:
        tip = tip_override
    return {"tip": tip, "direction": advance, "source": "auto", **info}


def tract(
    pre: np.ndarray, post: np.ndarray | None, mm_per_px: tuple[float, float], throw_mm: float, overrides: dict
) -> dict:
    """T0 (pre-fire tip), T1 (post-fire tip on the pre-fire axis) and the sampled length.

    With ``overrides["throw_mm"]`` T1 is T0 + throw along the axis and ``post`` is not read
    (inference on a new pre-fire image has none).
    """
    scale = np.array(mm_per_px)
    skin = int(SKIN_MM / scale[1])
    d0 = detect(pre, skin, overrides.get("axis_deg"), overrides.get("tip"))
    direction = d0["direction"]
    if overrides.get("throw_mm") is not None:
        u = direction * scale
        t1 = d0["tip"] + direction * overrides["throw_mm"] / np.linalg.norm(u)
        source1 = "override"
    else:
        d1 = detect(post, skin, np.degrees(np.arctan2(direction[1], direction[0])) if d0["source"] == "override" else None)
        if float(d1["direction"] @ direction) < 0.9:
            raise InputError(
                f"pre- and post-fire needles disagree ({geo.line_angle_deg(direction):.1f} vs {geo.line_angle_deg(d1['direction']):.1f} deg)",
                "set axis_deg and throw_mm in biopsies.tsv, or check that pre/post-fire are of the same biopsy",
            )
        t1 = d0["tip"] + ((d1["tip"] - d0["tip"]) @ direction) * direction  # project onto the pre-fire axis
        source1 = "auto"
    length = float(np.linalg.norm((t1 - d0["tip"]) * scale))
    return {
        "t0_px": d0["tip"].tolist(), "t1_px": t1.tolist(),
        "axis_deg": geo.line_angle_deg(direction * scale), "sampled_length_mm": length,
        "throw_mm": throw_mm, "length_flag": abs(length - throw_mm) > 0.25 * throw_mm,
        "source": {"t0": d0["source"], "t1": source1},
    }


def pixel_overrides(tip: list[float] | None, axis_deg: float | None, origin: list[float], mm_per_px: tuple[float, float]) -> dict:
    """Manual tip (DICOM frame px) and physical axis angle -> tissue-region px and pixel-space angle."""
    return {"tip": None if tip is None else np.asarray(tip, float) - np.asarray(origin, float),
            "axis_deg": None if axis_deg is None else geo.pixel_angle_deg(axis_deg, mm_per_px)}


def crop_strip(pre: np.ndarray, res: dict, mm_per_px: tuple[float, float], width_mm: float, out_mm_per_px: float,
               margin_mm: float) -> tuple[np.ndarray, dict]:
    """The uint8 crop strip along T0 -> T1 and its frame (crop-to-original affine, shape, tract columns)."""
    m, shape, xs = geo.tract_crop_frame(np.array(res["t0_px"]), np.array(res["t1_px"]), mm_per_px, width_mm, out_mm_per_px, margin_mm)
    crop = geo.warp(pre.astype(float), m, shape, order=1)
    frame = {"crop_to_original": m.tolist(), "crop_shape": list(shape), "tract_x_px": list(xs),
             "out_mm_per_px": out_mm_per_px, "width_mm": width_mm, "mm_per_px": list(mm_per_px)}
    return np.clip(np.round(crop), 0, 255).astype(np.uint8), frame


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description="detect the needle tract and crop it")
    for k in ("pre", "pre-meta", "post", "post-meta", "out", "crop"):
        p.add_argument(f"--{k}", required=True)
    p.add_argument("--throw-mm", type=float, default=22.0)
    p.add_argument("--width-mm", type=float, default=2.0)
    p.add_argument("--margin-mm", type=float, default=0.5)
    p.add_argument("--out-mm-per-px", type=float, default=0.05)
    p.add_argument("--tip", type=float, nargs=2, help="override: pre-fire tip, DICOM frame px")
    p.add_argument("--axis-deg", type=float, help="override: needle advance direction")
    p.add_argument("--override-throw-mm", type=float, help="override: sampled length")
    p.add_argument("--participant")
    p.add_argument("--biopsy")
    a = p.parse_args(argv)

    def go() -> None:
        pre, post = imread(a.pre), imread(a.post)
        meta = json.loads(Path(a.pre_meta).read_text())
        mm = tuple(meta["mm_per_px"])
        ov = pixel_overrides(a.tip, a.axis_deg, meta["region_bounds_xyxy"][:2], mm)
        res = tract(pre, post, mm, a.throw_mm, {**ov, "throw_mm": a.override_throw_mm})
        crop, frame = crop_strip(pre, res, mm, a.width_mm, a.out_mm_per_px, a.margin_mm)
        imsave(a.crop, crop, check_contrast=False)
        res.update(frame)
        Path(a.out).write_text(json.dumps(res, indent=1))
        flag = "  (FLAG: far from the configured throw)" if res["length_flag"] else ""
        print(f"tract {res['sampled_length_mm']:.2f} mm at {res['axis_deg']:.1f} deg{flag}")

    run_cli(go, a.participant, a.biopsy, a.pre)


if __name__ == "__main__":
    main()
