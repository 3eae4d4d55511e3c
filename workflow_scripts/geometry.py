"""All of tractmap's geometry: 2-D affine transforms and the frames they connect.

Conventions: points are ``(x, y)`` = (column, row) at pixel centres; affines are
3x3 homogeneous matrices acting on column vectors; a transform named
``a_to_b`` maps coordinates in frame *a* to frame *b*.
"""

from __future__ import annotations

import numpy as np

# The config `tract` settings that fix where a crop is cut and at what resolution. A model is valid only
# for crops cut as its training crops were: model.pt records them and tractmap-infer uses them.
CROP_SETTINGS = ("throw_mm", "width_mm", "margin_mm", "out_mm_per_px")

Affine = np.ndarray


def translation(tx: float, ty: float) -> Affine:
    """Affine that adds (tx, ty)."""
    return np.array([[1.0, 0.0, tx], [0.0, 1.0, ty], [0.0, 0.0, 1.0]])


def scaling(sx: float, sy: float | None = None) -> Affine:
    """Affine that scales x by sx and y by sy (default sx)."""
    return np.diag([sx, sx if sy is None else sy, 1.0])


def rotation(theta: float) -> Affine:
    """Counter-clockwise rotation by ``theta`` radians in (x, y) coordinates."""
    c, s = np.cos(theta), np.sin(theta)
    return np.array([[c, -s, 0.0], [s, c, 0.0], [0.0, 0.0, 1.0]])


def compose(*mats: Affine) -> Affine:
    """Compose transforms applied left to right: compose(A, B) maps by A, then B."""
    out = np.eye(3)
    for m in mats:
        out = np.asarray(m, float) @ out
    return out


def invert(m: Affine) -> Affine:
    """Inverse of an affine."""
    return np.linalg.inv(np.asarray(m, float))


def apply(m: Affine, pts: np.ndarray) -> np.ndarray:
    """Apply an affine to an (N, 2) array of points."""
    p = np.asarray(pts, float).reshape(-1, 2)
    return p @ np.asarray(m)[:2, :2].T + np.asarray(m)[:2, 2]


def apply_polygons(m: Affine, polygons: list[list[np.ndarray]]) -> list[list[np.ndarray]]:
    """Apply an affine to polygons given as [exterior, hole, hole, ...] rings."""
    return [[apply(m, ring) for ring in poly] for poly in polygons]


def tract_crop_frame(
    t0_px: np.ndarray,
    t1_px: np.ndarray,
    mm_per_px: tuple[float, float],
    width_mm: float,
    out_mm_per_px: float,
    margin_mm: float,
) -> tuple[Affine, tuple[int, int], tuple[float, float]]:
    """Frame of the crop strip around the tract T0 -> T1.

    Returns the crop-to-original affine (crop px -> original px), the crop shape
    (rows, cols) and the crop x positions of T0 and T1.  In the crop the tract is
    horizontal, runs left to right from T0 to T1 and lies on the middle row.
    """
    sx, sy = mm_per_px
    t0_mm = np.array([t0_px[0] * sx, t0_px[1] * sy])
    t1_mm = np.array([t1_px[0] * sx, t1_px[1] * sy])
    length = float(np.linalg.norm(t1_mm - t0_mm))
    theta = float(np.arctan2(*(t1_mm - t0_mm)[::-1]))
    cols = int(round((length + 2 * margin_mm) / out_mm_per_px)) + 1
    rows = int(round(width_mm / out_mm_per_px)) | 1  # odd: the tract sits on a pixel row
    centre_row = (rows - 1) / 2
    crop_to_orig = compose(
        translation(-margin_mm / out_mm_per_px, -centre_row),
        scaling(out_mm_per_px),  # crop px -> mm in the tract frame, T0 at origin
        rotation(theta),
        translation(*t0_mm),
        scaling(1 / sx, 1 / sy),
    )
    x0 = margin_mm / out_mm_per_px
    return crop_to_orig, (rows, cols), (x0, x0 + length / out_mm_per_px)


def canonical_frame(centroid: np.ndarray, axis_angle: float, dye_at_positive_end: bool, um_per_px: float) -> Affine:
    """Slide full-resolution px -> canonical um: core along x, centred, dye end to the right."""
    flip = 0.0 if dye_at_positive_end else np.pi
    return compose(
        scaling(um_per_px),
        translation(-centroid[0] * um_per_px, -centroid[1] * um_per_px),
        rotation(-axis_angle + flip),
    )


def canonical_to_crop(
    core_x_um: tuple[float, float], tract_x_px: tuple[float, float], crop_rows: int, out_mm_per_px: float
) -> Affine:
    """Canonical um -> crop px: core length onto tract length, across by physical width."""
    (c0, c1), (x0, x1) = core_x_um, tract_x_px
    sx = (x1 - x0) / (c1 - c0)
    sy = 1.0 / (1000.0 * out_mm_per_px)
    return compose(translation(-c0, 0.0), scaling(sx, sy), translation(x0, (crop_rows - 1) / 2))


def line_angle_deg(direction: np.ndarray) -> float:
    """Angle of a direction vector in degrees, x right / y down."""
    return float(np.degrees(np.arctan2(direction[1], direction[0])))


def lines_angle_deg(a: np.ndarray, b: np.ndarray) -> float:
    """Angle in degrees (0-90) between two lines given by unit direction vectors, whichever way each points."""
    return float(np.degrees(np.arccos(min(1.0, abs(float(np.dot(a, b)))))))


def pixel_angle_deg(physical_deg: float, mm_per_px: tuple[float, float]) -> float:
    """A physical direction (degrees in mm space) as a direction in pixel space (anisotropic pixels)."""
    r = np.deg2rad(physical_deg)
    return line_angle_deg(np.array([np.cos(r) / mm_per_px[0], np.sin(r) / mm_per_px[1]]))


def warp(image: np.ndarray, out_to_in: Affine, shape: tuple[int, int], order: int = 1, cval: float = 0.0) -> np.ndarray:
    """Resample ``image`` onto a grid of ``shape`` whose px map to input px by ``out_to_in``."""
    from scipy import ndimage

    rows, cols = np.mgrid[0 : shape[0], 0 : shape[1]]
    xy = apply(out_to_in, np.stack([cols.ravel(), rows.ravel()], 1))
    coords = np.stack([xy[:, 1].reshape(shape), xy[:, 0].reshape(shape)])
    if image.ndim == 2:
        return ndimage.map_coordinates(image, coords, order=order, cval=cval, mode="constant")
    return np.stack(
        [ndimage.map_coordinates(image[..., c], coords, order=order, cval=cval) for c in range(image.shape[-1])], -1
    )


def profile(
    image: np.ndarray, origin: np.ndarray, direction: np.ndarray, s: np.ndarray, half_width: int = 2
) -> np.ndarray:
    """Mean intensity along origin + s*direction, averaged over +-half_width px across."""
    from scipy import ndimage

    d = np.asarray(direction, float) / np.linalg.norm(direction)
    n = np.array([-d[1], d[0]])
    acc = np.zeros_like(s, dtype=float)
    for k in range(-half_width, half_width + 1):
        pts = origin[None, :] + s[:, None] * d[None, :] + k * n[None, :]
        acc += ndimage.map_coordinates(image, [pts[:, 1], pts[:, 0]], output=float, order=1, mode="nearest")
    return acc / (2 * half_width + 1)
