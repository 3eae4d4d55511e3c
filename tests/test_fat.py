"""Fat-rich cores: a fat lobule across a core's width does not split it, glass between fragments does.

The slides here are drawn by hand at 4 µm/px (a bent core, H&E-like tissue, adipocytes as a membrane net) and
averaged down to the orientation level (16 µm/px), where a lobule is as pale as glass; the finder reads the
4 µm/px drawing back as the slide's finer level.  The forward model's fat is checked by the registration
sweep and tests/test_synthetic_fat.py; these tests pin the finder's rules on a geometry known exactly."""

import json

import numpy as np
import pytest
import yaml
from conftest import ROOT
from scipy import ndimage

from workflow_scripts import cores, fat, stain, state, transfer

CORES = {k: v for k, v in yaml.safe_load((ROOT / "config.yaml").read_text())["cores"].items() if k != "dye_class"}
FINE, LEVEL = 4.0, 16.0
GLASS = np.array([240.0, 238.0, 242.0])


def draw(stretches: list[tuple[float, float, str]], length_mm: float = 18.0, bend_mm: float = 0.8, seed: int = 0):
    """A slide at 4 µm/px with one core (1.2 mm wide, bent by ``bend_mm`` over its length, 20° from x) whose
    stretches (start mm, length mm, 'fat' | 'glass') are fat lobules or lost tissue; and its core mask."""
    rng = np.random.default_rng(seed)
    h, w = int(9000 / FINE), int(26000 / FINE)
    yy, xx = np.mgrid[:h, :w].astype(float) * FINE / 1000  # mm
    a = np.radians(20)
    u = (xx - 3.0) * np.cos(a) + (yy - 2.0) * np.sin(a)
    v = -(xx - 3.0) * np.sin(a) + (yy - 2.0) * np.cos(a)
    v = v - bend_mm * (2 * u / length_mm - 1) ** 2  # a bent core
    core = (u >= 0) & (u <= length_mm) & (np.abs(v) <= 0.6 + 0.03 * np.sin(u * 7))
    fatty, lost = np.zeros_like(core), np.zeros_like(core)
    for u0, n, kind in stretches:
        edge = u0 + 0.08 * np.sin(v * 9 + u0)  # wavy boundaries across the core
        (fatty if kind == "fat" else lost)[core & (u >= edge) & (u <= edge + n)] = True
    od = np.zeros((h, w, 3))
    tissue = core & ~fatty & ~lost
    hema, eosin = np.array([0.65, 0.70, 0.29]), np.array([0.07, 0.99, 0.11])
    noise = rng.normal(0, 0.15, (h, w))
    od[tissue] = (0.35 + 0.2 * noise[tissue])[:, None] * hema + 0.6 * eosin
    # adipocytes: cells around jittered centres 90 µm apart, their borders (3 µm) a faint eosin membrane
    cells = np.zeros((h, w), bool)
    step = int(90 / FINE)
    cy, cx = np.mgrid[step // 2 : h : step, step // 2 : w : step]
    cy = np.clip(cy + rng.integers(-step // 3, step // 3 + 1, cy.shape), 0, h - 1)
    cx = np.clip(cx + rng.integers(-step // 3, step // 3 + 1, cx.shape), 0, w - 1)
    cells[cy, cx] = True
    _, (iy, ix) = ndimage.distance_transform_edt(~cells, return_indices=True)
    owner = iy * w + ix
    border = (owner != np.roll(owner, 1, 0)) | (owner != np.roll(owner, 1, 1))
    od[fatty & border] = 0.25 * eosin
    rgb = GLASS * np.exp(-od) + rng.normal(0, 1.5, (h, w, 3))
    return np.clip(rgb, 0, 255).astype(np.uint8), core & ~lost


def level(rgb: np.ndarray) -> np.ndarray:
    """The 4 µm/px drawing averaged down to the orientation level, as a pyramid level is."""
    f = int(LEVEL / FINE)
    h, w = (rgb.shape[0] // f) * f, (rgb.shape[1] // f) * f
    return rgb[:h, :w].reshape(h // f, f, w // f, f, -1).mean(axis=(1, 3)).round().astype(np.uint8)


def reader(rgb: np.ndarray) -> fat.Reader:
    """The drawing read back by region as the slide's fine level (boxes in level px)."""
    f = LEVEL / FINE

    def read(x0, y0, x1, y1):
        ix0, iy0 = max(int(x0 * f), 0), max(int(y0 * f), 0)
        return rgb[iy0 : int(np.ceil(y1 * f)), ix0 : int(np.ceil(x1 * f))], FINE, (ix0 / f, iy0 / f)

    return read


def find(rgb: np.ndarray, fine: bool = True):
    thumb = level(rgb)
    return cores.find_cores(stain.optical_density(thumb), LEVEL, **CORES, read=reader(rgb) if fine else None)


LOBULES = [(4.0, 2.4, "fat"), (9.0, 0.8, "fat"), (13.0, 0.6, "glass")]


def test_the_lobules_of_a_bent_fat_rich_core_are_pale_at_the_orientation_level():
    """The premise: at 16 µm/px each lobule's stretch is below the tissue threshold, so the core is in pieces."""
    rgb, _ = draw(LOBULES)
    od = stain.optical_density(level(rgb)).max(axis=-1)
    pieces = ndimage.label(od > cores.TISSUE_OD)[1]
    assert pieces >= 4, pieces
    assert len(find(rgb, fine=False)[1]) == 2  # without the finer level: the 2.4 mm lobule splits it


@pytest.mark.parametrize("seed", [0, 1])
def test_a_fat_rich_core_is_one_core_its_fat_tissue_and_its_glass_gap_void(seed):
    rgb, mask = draw(LOBULES, seed=seed)
    labels, found, pieces = find(rgb)
    assert len(found) == 1, cores.listing(found)
    k = found[0]
    assert k["fragments"] == 2  # apart across glass once; the pieces apart across fat are one fragment
    assert abs(k["length_mm"] - 18.0) < 0.4
    assert abs(k["fat_mm"] - 3.2) < 0.5  # the two lobules (2.4 + 0.8 mm), not the glass
    assert len(k["gaps_mm"]) == 1 and abs(k["gaps_mm"][0] - 0.6) < 0.25  # the glass gap stays a gap
    assert [p["role"] for p in pieces].count("core") == 1 and [p["role"] for p in pieces].count("fragment") == 3
    assert json.loads(json.dumps({"cores": found, "pieces": pieces}))["pieces"] == pieces  # as cores.json holds them
    # the lobules are labelled as the core's tissue: the label covers the whole core but the glass gap
    truth = level(np.where(mask[..., None], 0, 255).astype(np.uint8))[..., 0] < 128
    cover = (labels == 1)[truth].mean()
    assert cover > 0.93, cover


def test_glass_as_long_as_a_lobule_splits_the_core():
    """The same 2.4 mm stretch, empty: two cores (glass longer than cores.max_gap_mm is not bridged)."""
    rgb, _ = draw([(4.0, 2.4, "glass")])
    _, found, pieces = find(rgb)
    assert len(found) == 2, cores.listing(found)
    assert all(p["role"] == "core" for p in pieces if p["area_mm2"] > 1)


def test_a_crumb_beyond_a_glass_gap_is_left_over_in_line_with_the_core():
    """A 0.8 mm piece 2.5 mm of glass past the core's end: not joined, not a core (round), listed as a left-over
    in line with the core's end (a longer one is a core of its own: more cores than the sheet names)."""
    rgb, _ = draw([(15.4, 2.5, "glass")], length_mm=18.7)
    _, found, pieces = find(rgb)
    assert len(found) == 1, cores.listing(found)
    (left,) = [p for p in pieces if p["role"] == "leftover" and p["length_mm"] > 0.5]
    assert left["in_line_with"]["core"] == 1 and abs(left["in_line_with"]["gap_mm"] - 2.5) < 0.3
    assert abs(left["length_mm"] - 0.8) < 0.3 and "round" in left["why"]


# ------------------------------------------------------------------ the tissue adds up: holds, with reasons

FOUND = {"core_position": 1, "axis": [1.0, 0.0], "centroid": [500.0, 300.0], "dye_at_positive_end": True}
SLIDE_CORES = [{"position": 1, "length_mm": 12.0, "centre_px": [500.0, 300.0], "in_line_with": None}]


def leftover(length_mm: float, x: float, core: int | None = 1) -> dict:
    """A left-over piece centred at (x, 300) level px, in line with ``core`` (None: with none)."""
    near = {"core": core, "gap_mm": 0.8, "core_end_px": [x - 50.0, 300.0]} if core else None
    return {
        "piece": 7,
        "role": "leftover",
        "length_mm": length_mm,
        "centre_px": [x, 300.0],
        "bbox_px": [x - 40, 280.0, x + 40, 320.0],
        "in_line_with": near,
    }


@pytest.mark.parametrize(
    "dye_positive, x, end",
    [(True, 1200.0, "dyed (distal)"), (False, 1200.0, "undyed (proximal)"), (True, -200.0, "undyed (proximal)")],
)
def test_a_long_piece_left_over_in_line_holds_the_biopsy_naming_the_piece_and_the_end(dye_positive, x, end):
    found = {**FOUND, "dye_at_positive_end": dye_positive}
    (why,) = cores.unaccounted([leftover(4.1, x)], SLIDE_CORES, found)
    assert why.startswith(f"a 4.1 mm piece of tissue in line with the {end} end of this core") and "piece 7" in why
    assert cores.unaccounted([leftover(0.8, x)], SLIDE_CORES, found) == []  # a crumb: no hold
    other = [*SLIDE_CORES, {"position": 2, "length_mm": 9.0, "centre_px": [500.0, 900.0], "in_line_with": None}]
    assert cores.unaccounted([leftover(4.1, x, core=2)], other, found) == []  # another core's


def test_a_core_in_line_with_this_one_or_more_cores_than_rows_holds_the_label_until_a_review():
    split = {"position": 2, "length_mm": 4.8, "centre_px": [1300.0, 300.0], "in_line_with": {"core": 1, "gap_mm": 2.1}}
    (why,) = cores.unaccounted([], [*SLIDE_CORES, split], FOUND)
    assert why.startswith("another core (core 2) in line with the dyed (distal) end of this core, 2.1 mm beyond it")
    assert cores.unaccounted([], [*SLIDE_CORES, {**split, "in_line_with": None}], FOUND) == []  # side by side
    (rows,) = state.too_many_cores({"cores_on_slide": 2}, rows=1)
    assert "2 cores but biopsies.tsv has 1 row(s)" in rows and state.too_many_cores({"cores_on_slide": 2}, 2) == []
    assert state.biopsy_state({"state": "accepted", "cores_on_slide": 2}, {"state": "accepted"}, rows=1)["state"] == (
        "review"
    )
    o, t = {"state": "accepted", "tissue_doubts": [why]}, {"state": "accepted"}
    held = state.biopsy_state(o, t, "auto", {"review_reasons": []})
    assert held["state"] == "review" and held["reasons"]["transfer"] == why
    # an override in biopsies.tsv (set without the review page) does not clear it; a review decision does
    assert state.biopsy_state({**o, "state": "override"}, t, "sheet", {})["state"] == "review"
    assert state.biopsy_state({**o, "state": "override"}, t, "review (ana)", {})["state"] == "override"


def test_a_tumour_outline_reaching_onto_a_left_over_piece_in_line_is_never_dropped_silently():
    scale = 4.0  # level-0 px per level px
    ring = lambda x0, x1: [np.array([[x0, 290], [x1, 290], [x1, 310], [x0, 310]], float) * scale]  # noqa: E731
    on_piece = [("cancer", "Tumor", ring(1180, 1190))]
    (why,) = transfer.on_leftover(on_piece, [leftover(4.1, 1200.0)], 1, scale)
    assert why.startswith("1 tumour outline(s) reach onto a 4.1 mm piece") and "piece 7" in why
    assert transfer.on_leftover(on_piece, [leftover(4.1, 1200.0, core=2)], 1, scale) == []  # in line with another
    assert transfer.on_leftover([("cancer", "Tumor", ring(400, 600))], [leftover(4.1, 1200.0)], 1, scale) == []


@pytest.mark.parametrize("core_mm, tract_mm, held", [(11.3, 19.2, True), (16.5, 19.2, False), (21.0, 19.2, True)])
def test_a_core_length_the_tract_cannot_give_holds_the_label_with_both_lengths(core_mm, tract_mm, held):
    why = transfer.shrinkage_reason(core_mm, tract_mm, (0.6, 1.05))
    assert bool(why) == held
    if held:
        assert f"({core_mm:.1f} mm)" in why and f"({tract_mm:.1f} mm)" in why


@pytest.mark.parametrize("gap_um", [120, 200])
def test_the_pieces_own_tissue_is_no_membrane_so_short_glass_stays_glass(gap_um):
    """Two blocks of tissue with clean glass between (4 µm/px): the blocks' dense edges must not count as
    adipocyte membranes, or every pixel within a cell's radius of them, all of a short gap, reads as fat."""
    rng = np.random.default_rng(0)
    h, w = 200, 400  # fine px: 0.8 x 1.6 mm
    rgb = np.tile(GLASS, (h, w, 1)) + rng.normal(0, 1.5, (h, w, 3))
    g0, g1 = 200 - gap_um // 8, 200 + gap_um // 8  # the gap, centred
    band = slice(70, 130)  # the core's width: 0.24 mm
    rgb[band, :g0] = rgb[band, :g0] * np.exp(-0.6 * np.array([0.2, 1.0, 0.3]))
    rgb[band, g1:] = rgb[band, g1:] * np.exp(-0.6 * np.array([0.2, 1.0, 0.3]))
    rgb = np.clip(rgb, 0, 255).astype(np.uint8)
    read = reader(rgb)  # fine 4 µm/px, level 16 µm/px: level box (x0, y0, x1, y1) -> fine pixels
    c, axis = np.array([0.0, 25.0]), np.array([1.0, 0.0])  # the core's axis along the middle row (level px)
    runs, ev = fat.fat_bins(read, c, axis, g0 / 4, g1 / 4, 7.5, LEVEL)
    assert runs == [] and max(ev["band_cover"]) < fat.FAT_COVER, ev
