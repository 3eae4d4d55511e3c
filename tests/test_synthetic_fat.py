"""The forward model's fat: lobules that cross the core read as pale gaps at 16 um/px, as adipocyte nets at
2-4 um/px, and stay tissue in the truth."""

from __future__ import annotations

import numpy as np
import pytest

from workflow_scripts import synthetic
from workflow_scripts.synthetic.truth import FAT_STREAM, fat_crossings, fat_inside, sample_fat, slide_to_core

BAND = {  # one lobule across the core's full width, 1.2 mm long, its ends wavy
    "kind": "band",
    "u0_mm": 9.0,
    "length_mm": 1.2,
    "v_lo_mm": -0.6,
    "v_hi_mm": 0.6,
    "full_width": True,
    "ends": [[0.2, 0.5, 0.3], [0.25, 0.8, 2.0]],
}
TEXTURE = {"cell_um": 80.0, "membrane_um": 3.0, "membrane_od": 0.45, "interior_od": 0.01, "texture": 7}


def fat_core(varied: bool = False) -> synthetic.BiopsyTruth:
    """A core on a slide of its own whose only fat is ``BAND``."""
    (t,) = synthetic.slide_truths(11, "F001", ["B1"], varied=varied)
    t.fat = {"richness": "rich", **TEXTURE, "lobules": [BAND], "crossings_mm": []}
    t.fat["crossings_mm"] = fat_crossings(t, t.fat)
    return t


def region(t: synthetic.BiopsyTruth, u0: float, u1: float, level_um: float):
    """The slide around the core from u0 to u1 (mm) at ``level_um``: its max-channel optical density against
    the glass, and each pixel's core coordinates (mm)."""
    x, y = synthetic.truth.core_to_slide_px(t, np.array([u0, u0, u1, u1]), np.array([-1.0, 1.0, -1.0, 1.0]))
    f = t.slide_um_per_px / level_um
    x0, y0, x1, y1 = int(x.min() * f), int(y.min() * f), int(np.ceil(x.max() * f)), int(np.ceil(y.max() * f))
    rgb = synthetic.render_slide([t], y0, x0, y1 - y0, x1 - x0, level_um)
    yy, xx = np.mgrid[y0:y1, x0:x1].astype(float)
    u, v = slide_to_core(t, (xx + 0.5) * level_um, (yy + 0.5) * level_um)
    glass = np.array(t.nuisance.get("background", [242, 242, 242]), float)
    od = (-np.log(np.maximum(rgb, 1) / glass)).max(axis=-1)
    return od, u, v


def band_parts(u: np.ndarray, v: np.ndarray) -> dict[str, np.ndarray]:
    """Masks of the lobule's middle (clear of its wavy ends), the tissue on both sides and the glass beside."""
    a, b = BAND["u0_mm"], BAND["u0_mm"] + BAND["length_mm"]
    inner = np.abs(v) < 0.4
    return {
        "fat": inner & (u > a + 0.3) & (u < b - 0.3),
        "before": inner & (u > a - 0.7) & (u < a - 0.2),
        "after": inner & (u > b + 0.2) & (u < b + 0.7),
        "glass": (np.abs(v) > 0.8) & (u > a) & (u < b),
    }


@pytest.mark.parametrize("varied", [False, True])
def test_a_lobule_across_the_core_is_as_pale_as_glass_at_16um(varied):
    t = fat_core(varied)
    if varied:  # a nominal stain: the test is about fat, not faded slides
        t.nuisance.update(h_scale=1.0, e_scale=1.0, dense=[], vacuoles=[], gaps=[], folds=[], bubbles=[], pen=[])
    od, u, v = region(t, BAND["u0_mm"] - 1.0, BAND["u0_mm"] + BAND["length_mm"] + 1.0, 16.0)
    m = band_parts(u, v)
    assert m["fat"].sum() > 30 and m["before"].sum() > 30 and m["after"].sum() > 30
    assert np.mean(od[m["fat"]] < 0.15) > 0.9 and np.median(od[m["fat"]]) < 0.1  # found as no tissue
    assert np.median(od[m["fat"]]) > np.median(od[m["glass"]])  # faintly pink, not brighter than glass
    assert od[m["fat"]].std() < 0.01  # the area average: no net of cells at this pixel size
    for side in ("before", "after"):  # stained tissue on both sides
        assert np.mean(od[m[side]] > 0.15) > 0.9, side


@pytest.mark.parametrize("level_um", [2.0, 4.0])
def test_adipocyte_membranes_show_as_a_net_at_fine_levels(level_um):
    t = fat_core()
    a = BAND["u0_mm"] + 0.35
    od, u, v = region(t, a, a + 0.5, level_um)
    m = band_parts(u, v)
    fat, glass = od[m["fat"]], od[m["glass"]]
    walls = np.mean(fat > 0.15)
    assert 0.02 < walls < 0.35  # thin walls well above the tissue threshold, the cells' insides below it
    assert np.median(fat) < 0.05
    # fine-scale texture: the difference to the right-hand neighbour, which glass does not have
    step = np.abs(np.diff(od, axis=1))
    fat_step, glass_step = step[m["fat"][:, :-1] & m["fat"][:, 1:]], step[m["glass"][:, :-1] & m["glass"][:, 1:]]
    assert fat_step.std() > 0.03 and glass_step.std() < 0.003
    assert glass.std() < 0.005


def test_the_coarse_level_is_the_fine_levels_area_average():
    """The 16 um/px pixel shows what the 2 um/px pixels under it let through on average."""
    t = fat_core()
    a = BAND["u0_mm"] + 0.35
    fine, u, v = region(t, a, a + 0.5, 2.0)
    coarse, uc, vc = region(t, a, a + 0.5, 16.0)
    through_fine = np.exp(-fine[band_parts(u, v)["fat"]]).mean()
    through_coarse = np.exp(-coarse[band_parts(uc, vc)["fat"]]).mean()
    assert abs(through_fine - through_coarse) < 0.02
    assert through_coarse < 0.99  # and not glass


def test_fat_is_tissue_in_the_truth_label():
    t = fat_core()
    lab = synthetic.truth_label(t)
    uu = np.linspace(BAND["u0_mm"] + 0.3, BAND["u0_mm"] + BAND["length_mm"] - 0.3, 20)
    vv = np.linspace(-0.5, 0.5, 9)
    uu, vv = np.meshgrid(uu, vv)
    assert fat_inside(t.fat, uu, vv).all()
    x, y = synthetic.truth.core_to_us(t, uu, vv)
    values = lab[np.round(y / t.mm_per_px).astype(int), np.round(x / t.mm_per_px).astype(int)]
    assert (values > 0).all()  # core (benign or cancer), never outside it
    assert t.gaps_mm == [] and t.fat["crossings_mm"]  # the lobule is no gap
    ((c0, c1),) = t.fat["crossings_mm"]
    assert BAND["u0_mm"] < c0 < c1 < BAND["u0_mm"] + BAND["length_mm"]


def test_fat_draws_are_recorded_and_clustered_along_the_core():
    counts = {"none": 0, "some": 0, "rich": 0}
    crossing = 0
    for i in range(60):
        t = synthetic.sample_truth(5, f"F{i:03d}", "B1", varied=i % 2 == 0)
        fat = t.fat
        counts[fat["richness"]] += 1
        assert (fat["richness"] == "none") == (not fat["lobules"])
        for b in fat["lobules"]:
            assert 0.0 < b["u0_mm"] and b["u0_mm"] + b["length_mm"] < t.throw_mm - t.dye_length_mm
            assert b["full_width"] == (b["kind"] == "band")
            if b["full_width"]:  # each band is a crossing of its own (bands keep 0.8 mm of tissue apart)
                assert any(c0 >= b["u0_mm"] and c1 <= b["u0_mm"] + b["length_mm"] for c0, c1 in fat["crossings_mm"])
        crossing += bool(fat["crossings_mm"])
        # its own stream: the same draw again from it
        assert sample_fat(synthetic.biopsy_rng(5 + FAT_STREAM, f"F{i:03d}", "B1"), t) == fat
    assert all(n >= 8 for n in counts.values()), counts
    assert crossing >= 15


def test_the_region_reader_reads_a_finer_level_of_the_same_slide():
    t = fat_core()
    x, y = synthetic.truth.core_to_slide_px(t, np.array([BAND["u0_mm"] + 0.6]), np.array([0.0]))
    cx, cy = round(x[0] * t.slide_um_per_px / 16), round(y[0] * t.slide_um_per_px / 16)  # the lobule's middle
    rgb, um, origin = synthetic.region_reader([t], 16.0)(cx - 5, cy - 5, cx + 5, cy + 5)
    assert um == 4.0 and rgb.shape == (40, 40, 3) and rgb.dtype == np.uint8 and origin == (cx - 5, cy - 5)
    assert (rgb == synthetic.render_slide([t], (cy - 5) * 4, (cx - 5) * 4, 40, 40, 4.0)).all()
    od = (-np.log(np.maximum(rgb, 1) / 242.0)).max(axis=-1)
    assert 0.02 < np.mean(od > 0.15) < 0.35  # the adipocytes' walls
    coarse = synthetic.render_slide([t], cy - 2, cx - 2, 4, 4, 16.0)
    assert ((-np.log(np.maximum(coarse, 1) / 242.0)).max(axis=-1) < 0.15).all()  # where 16 um/px shows none
