"""Properties of the dyed-end call over seeded random draws of the varied forward model.

Each property is checked on biopsies drawn by a seeded generator (``DRAW_SEED``); an assertion names the
draw that broke it, so the failure can be rerun alone.  The forward model's truth is read only to score
(where the dye really is); the call itself sees pixels only.

- mirroring a slide flips the call (the called end follows the mirrored dye);
- rotating it by any angle keeps the call;
- rendering it with the stain jittered within the forward model's documented range keeps the call;
- reading it at 8, 16 or 32 um/px gives the same call, with confidences within 0.1 (lengths are in um).
"""

import dataclasses

import numpy as np
import pytest
import yaml
from conftest import ROOT
from skimage.transform import downscale_local_mean, rotate

from workflow_scripts import cores, orient, stain, synthetic
from workflow_scripts import geometry as geo
from workflow_scripts.synthetic import truth as truthlib

CONFIG = yaml.safe_load((ROOT / "config.yaml").read_text())
CORES = {k: v for k, v in CONFIG["cores"].items() if k != "dye_class"}
DRAW_SEED = 2026
N_DRAWS = 4
RENDER_UM = 8.0  # the finest level read; coarser levels are area averages of it


def call(rgb: np.ndarray, level_um: float) -> dict:
    """The orientation step on a one-core slide level, as the pipeline runs it, with the shipped thresholds."""
    labels, found, _ = cores.find_cores(stain.optical_density(rgb), level_um, **CORES)
    return orient.orient_core(rgb, labels, cores.select(found, ""), level_um, None, **CONFIG["orient"])


def dyed_end_called(found: dict, level_um: float, dye_px: np.ndarray) -> bool:
    """Whether the call puts the true dye end (``dye_px``, level px) at the dyed end (canonical x > 0)."""
    can = orient.canonical(found, level_um, level_um)
    return bool(geo.apply(np.array(can["slide_px_to_canonical_um"]), [dye_px])[0][0] > 0)


def summary(found: dict, level_um: float, dye_px: np.ndarray) -> tuple[str, bool]:
    return found["state"], dyed_end_called(found, level_um, dye_px)


def render(t: truthlib.BiopsyTruth, level_um: float) -> tuple[np.ndarray, np.ndarray]:
    """The slide at ``level_um`` and its true dye end in that level's px (for scoring)."""
    shape = [int(n * t.slide_um_per_px / level_um) for n in t.slide_shape]
    rgb = synthetic.render_slide_tile(t, 0, 0, shape[0], shape[1], level_um)
    dye = np.array(synthetic.truth_record(t)["dye_end_slide_px"]) * t.slide_um_per_px / level_um
    return rgb, dye


def draw(k: int) -> tuple[str, truthlib.BiopsyTruth]:
    """The k-th drawn biopsy of the varied cohort (seeded), placed on its slide."""
    rng = np.random.default_rng([DRAW_SEED, k])
    seed, pid = int(rng.integers(1000, 100000)), f"D{int(rng.integers(0, 10000)):04d}"
    t = synthetic.sample_truth(seed, pid, "B1", varied=True)
    t.fat = {**t.fat, "richness": "none", "lobules": [], "crossings_mm": []}  # the call's invariances, on one core
    synthetic.place_on_slide(t, synthetic.biopsy_rng(seed + 1, pid, "B1"))
    return f"draw {k} (seed {seed}, {pid}, dye {t.dye})", t


@pytest.fixture(scope="module")
def drawn():
    """Each draw's name, truth, slide at RENDER_UM, dye end, and the call at 16 um/px."""
    out = []
    for k in range(N_DRAWS):
        name, t = draw(k)
        rgb, dye = render(t, RENDER_UM)
        rgb16 = downscale_local_mean(rgb, (2, 2, 1)).round().astype(np.uint8)
        out.append((name, t, rgb, dye, rgb16, call(rgb16, 16.0)))
    decided = [d for d in out if d[5]["state"] == "accepted" and dyed_end_called(d[5], 16.0, d[3] / 2)]
    assert len(decided) >= N_DRAWS - 1, [(d[0], d[5]["state"]) for d in out]  # properties need decided calls
    return out


def test_mirroring_a_slide_flips_the_call(drawn):
    for name, _, _, dye, rgb16, base in drawn:
        mirrored = call(rgb16[:, ::-1], 16.0)
        dye_m = np.array([rgb16.shape[1] - 1 - dye[0] / 2, dye[1] / 2])
        assert summary(mirrored, 16.0, dye_m) == summary(base, 16.0, dye / 2), name
        assert abs(mirrored["confidence"] - base["confidence"]) < 0.05, name


def rotated(rgb: np.ndarray, point: np.ndarray, angle: float) -> tuple[np.ndarray, np.ndarray]:
    """The slide turned by ``angle`` degrees (counter-clockwise as displayed) on a larger canvas of its own
    glass colour, and where ``point`` (x, y px) lands."""
    h, w = rgb.shape[:2]
    out = rotate(rgb, angle, resize=True, order=1, preserve_range=True)
    outside = rotate(np.ones((h, w)), angle, resize=True, order=0) < 0.5
    out[outside] = stain.glass_colour(rgb)
    a = np.deg2rad(angle)
    turn = np.array([[np.cos(a), np.sin(a)], [-np.sin(a), np.cos(a)]])
    centre_in, centre_out = (np.array([w, h]) - 1) / 2, (np.array(out.shape[1::-1]) - 1) / 2
    return out.round().astype(np.uint8), centre_out + turn @ (point - centre_in)


def test_rotating_a_slide_by_any_angle_keeps_the_call(drawn):
    angles = np.random.default_rng([DRAW_SEED, 99]).uniform(0, 360, len(drawn))
    for (name, _, _, dye, rgb16, base), angle in zip(drawn, angles, strict=True):
        turned, dye_r = rotated(rgb16, dye / 2, float(angle))
        found = call(turned, 16.0)
        assert summary(found, 16.0, dye_r) == summary(base, 16.0, dye / 2), f"{name}, {angle:.0f} deg"
        assert abs(found["confidence"] - base["confidence"]) < 0.05, f"{name}, {angle:.0f} deg"


def jittered(t: truthlib.BiopsyTruth, rng: np.random.Generator) -> truthlib.BiopsyTruth:
    """The same biopsy stained more or less strongly: haematoxylin and eosin amounts scaled by up to 25% (kept
    inside the forward model's own ranges, h_scale 0.45-1.6 and e_scale 0.4-1.5) and their colours moved by
    about 0.02 OD per channel."""
    n = dict(t.nuisance)
    n["h_scale"] = float(np.clip(n["h_scale"] * rng.uniform(0.8, 1.25), 0.45, 1.6))
    n["e_scale"] = float(np.clip(n["e_scale"] * rng.uniform(0.8, 1.25), 0.4, 1.5))
    n["h_vec"] = np.abs(np.array(n["h_vec"]) + rng.normal(0, 0.02, 3)).tolist()
    n["e_vec"] = np.abs(np.array(n["e_vec"]) + rng.normal(0, 0.02, 3)).tolist()
    return dataclasses.replace(t, nuisance=n)


def test_jittering_the_stain_within_its_range_keeps_the_call(drawn):
    rng = np.random.default_rng([DRAW_SEED, 7])
    for name, t, _, _, _, base in drawn:
        t2 = jittered(t, rng)
        rgb, dye = render(t2, 16.0)
        found = call(rgb, 16.0)
        stains = {k: t2.nuisance[k] for k in ("h_scale", "e_scale")}
        assert summary(found, 16.0, dye) == summary(base, 16.0, dye), f"{name}, {stains}"
        assert abs(found["confidence"] - base["confidence"]) < 0.1, f"{name}, {stains}"


def test_the_call_does_not_depend_on_the_level_read(drawn):
    for name, _, rgb, dye, _, _ in drawn:
        calls = {}
        for factor in (1, 2, 4):
            level = RENDER_UM * factor
            rgb_k = rgb if factor == 1 else downscale_local_mean(rgb, (factor, factor, 1)).round().astype(np.uint8)
            found = call(rgb_k, level)
            calls[level] = (*summary(found, level, dye / factor), found["confidence"])
        assert len({c[:2] for c in calls.values()}) == 1, f"{name}: {calls}"
        confidences = [c[2] for c in calls.values()]
        assert max(confidences) - min(confidences) <= 0.1, f"{name}: {calls}"
