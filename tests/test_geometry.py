"""Exact round trips through tractmap's affine and polygon transforms."""

import numpy as np
import pytest

from workflow_scripts import geometry as geo


def random_affine(rng):
    return geo.compose(
        geo.rotation(rng.uniform(-3, 3)),
        geo.scaling(rng.uniform(0.1, 5), rng.uniform(0.1, 5)),
        geo.translation(*rng.uniform(-100, 100, 2)),
    )


def test_affine_round_trip():
    rng = np.random.default_rng(0)
    pts = rng.uniform(-1000, 1000, (50, 2))
    for _ in range(20):
        m = random_affine(rng)
        np.testing.assert_allclose(geo.apply(geo.invert(m), geo.apply(m, pts)), pts, atol=1e-9)


def test_compose_order_is_left_to_right():
    m = geo.compose(geo.translation(1, 0), geo.scaling(2))
    np.testing.assert_allclose(geo.apply(m, [[0, 0]]), [[2, 0]])


@pytest.mark.parametrize("side", ["left", "right"])
@pytest.mark.parametrize("spacing", [(0.05, 0.05), (0.06, 0.04)])
def test_tract_frame_puts_t0_t1_on_the_middle_row(side, spacing):
    t0 = np.array([400.0, 120.0]) if side == "right" else np.array([80.0, 90.0])
    d = np.array([-np.cos(0.3), np.sin(0.3)]) if side == "right" else np.array([np.cos(0.4), np.sin(0.4)])
    t1 = t0 + 300 * d
    m, (rows, cols), (x0, x1) = geo.tract_crop_frame(t0, t1, spacing, width_mm=2.0, out_mm_per_px=0.05, margin_mm=0.5)
    cy = (rows - 1) / 2
    np.testing.assert_allclose(geo.apply(m, [[x0, cy], [x1, cy]]), [t0, t1], atol=1e-9)
    # the crop is horizontal and isotropic in millimetres
    mm = geo.apply(m, [[0, 0], [1, 0], [0, 1]]) * np.array(spacing)
    np.testing.assert_allclose(np.linalg.norm(mm[1] - mm[0]), 0.05, rtol=1e-9)
    np.testing.assert_allclose(np.linalg.norm(mm[2] - mm[0]), 0.05, rtol=1e-9)
    assert abs(np.dot(mm[1] - mm[0], mm[2] - mm[0])) < 1e-12
    assert cols == round((np.linalg.norm((t1 - t0) * spacing) + 1.0) / 0.05) + 1


def test_polygon_with_holes_round_trip():
    rng = np.random.default_rng(1)
    ext = np.array([[0, 0], [10, 0], [10, 10], [0, 10]], float)
    hole = np.array([[3, 3], [6, 3], [6, 6]], float)
    polys = [[ext, hole], [ext + 20]]
    m = random_affine(rng)
    back = geo.apply_polygons(geo.invert(m), geo.apply_polygons(m, polys))
    assert [len(p) for p in back] == [2, 1]
    for a, b in zip(sum(polys, []), sum(back, []), strict=True):
        np.testing.assert_allclose(a, b, atol=1e-9)


@pytest.mark.parametrize("dye_positive", [True, False])
def test_canonical_frame_puts_dye_end_right(dye_positive):
    centroid, angle, um = np.array([500.0, 300.0]), 0.7, 2.0
    axis = np.array([np.cos(angle), np.sin(angle)])
    dye_end = centroid + (200 if dye_positive else -200) * axis
    other_end = centroid - (200 if dye_positive else -200) * axis
    m = geo.canonical_frame(centroid, angle, dye_positive, um)
    (dx, dy), (ox, oy) = geo.apply(m, [dye_end, other_end])
    np.testing.assert_allclose([dx, dy, ox, oy], [400, 0, -400, 0], atol=1e-9)


def test_canonical_to_crop_maps_core_ends_to_tract_ends():
    m = geo.canonical_to_crop((-9000.0, 9500.0), (10.0, 450.0), 41, 0.05)
    np.testing.assert_allclose(
        geo.apply(m, [[-9000, 0], [9500, 0], [-9000, 500]]), [[10, 20], [450, 20], [10, 30]], atol=1e-9
    )


def test_warp_samples_through_the_affine():
    img = np.arange(100.0).reshape(10, 10)
    out = geo.warp(img, geo.translation(2, 3), (4, 4), order=0)
    np.testing.assert_array_equal(out, img[3:7, 2:6])


def test_angle_between_lines_ignores_which_way_each_points():
    a = np.array([1.0, 0.0])
    b = np.array([np.cos(np.radians(30)), np.sin(np.radians(30))])
    assert geo.lines_angle_deg(a, b) == pytest.approx(30.0)
    assert geo.lines_angle_deg(a, -b) == pytest.approx(30.0)
    assert geo.lines_angle_deg(b, b) == pytest.approx(0.0, abs=1e-6)
    assert geo.lines_angle_deg(a, np.array([0.0, 1.0])) == pytest.approx(90.0)
