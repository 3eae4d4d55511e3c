"""The slide reader on real public slides: OpenSlide's test slides and imagecodecs' test TIFFs.

Files come from the projects' pinned source releases (tests/realfiles.py), cached
outside the repo.  Each case checks pixels or calibration against the other
library's own reading, or a clean, actionable error.
"""

from __future__ import annotations

import subprocess
import sys

import numpy as np
import openslide
import pytest
import tifffile
from realfiles import fetch

from workflow_scripts import slide
from workflow_scripts.errors import InputError


@pytest.fixture(scope="module")
def openslide_files():
    return fetch("openslide-python") / "tests/fixtures"


@pytest.fixture(scope="module")
def codec_files():
    return fetch("imagecodecs") / "tests/data/tiff"


def openslide_reference(path, level=0):
    """OpenSlide's own RGBA read of a level, composited on white."""
    with openslide.OpenSlide(str(path)) as s:
        rgba = np.asarray(s.read_region((0, 0), level, s.level_dimensions[level])).astype(float)
    a = rgba[..., 3:] / 255
    return np.round(rgba[..., :3] * a + 255 * (1 - a))


@pytest.mark.parametrize("name, vendor", [("small.svs", "aperio"), ("😐.svs", "aperio"), ("boxes_0.dcm", "dicom")])
def test_vendor_slides_through_openslide_with_their_calibration(openslide_files, name, vendor):
    img, meta = slide.read_slide(openslide_files / name, 0.499)
    assert (meta["reader"], meta["format"]) == ("openslide", vendor)
    assert meta["um_per_px"] == pytest.approx(0.499) and meta["um_source"] == f"{vendor} openslide.mpp-x"
    assert meta["averaged"] == 1 and meta["level_um_per_px"] == pytest.approx(0.499)
    np.testing.assert_array_equal(img, openslide_reference(openslide_files / name))
    # averaged 2x2 on the way down: the block means of the full-resolution pixels
    half, meta2 = slide.read_slide(openslide_files / name, 1.0)
    ref = openslide_reference(openslide_files / name).reshape(8, 2, 8, 2, 3).mean(axis=(1, 3))
    assert meta2["averaged"] == 2 and np.abs(half - ref).max() <= 0.5


def test_a_72_dpi_tiff_has_no_known_pixel_size_until_the_sheet_gives_one(openslide_files):
    path = openslide_files / "boxes.tiff"  # a generic tiled TIFF whose resolution tags are image software's 72 dpi
    with openslide.OpenSlide(str(path)) as s:
        assert float(s.properties["openslide.mpp-x"]) > 300  # what a naive reader would take
    with pytest.raises(InputError, match="72 dpi.*software default") as e:
        slide.read_slide(path, 16.0)
    assert "wsi_um_per_px" in e.value.hint
    img, meta = slide.read_slide(path, 1.0, sheet_um=0.5)
    assert meta["um_source"] == "biopsies.tsv wsi_um_per_px" and meta["level_shapes"][:2] == [[250, 300], [125, 150]]
    assert meta["level"] == 1 and meta["level_um_per_px"] == pytest.approx(1.0)
    with tifffile.TiffFile(path) as tif:
        np.testing.assert_array_equal(img, tif.series[0].levels[1].asarray()[..., :3])
    with pytest.raises(InputError, match="outside"):
        slide.read_slide(path, 1.0, sheet_um=254.0)


@pytest.mark.parametrize(
    "name, message",
    [
        ("unreadable.svs", "could not be decoded .*Bogus marker length"),
        ("unopenable.tiff", "pixel size is unknown"),
        ("boxes.png", "not a slide format"),
    ],
)
def test_damaged_or_foreign_files_give_a_clean_error(openslide_files, name, message):
    with pytest.raises(InputError, match=message):
        slide.read_slide(openslide_files / name, 16.0)


def test_unknown_tiff_compression_is_named(openslide_files):
    with pytest.raises(InputError, match="compression 52479"):
        slide.read_slide(openslide_files / "unopenable.tiff", 16.0, sheet_um=0.5)


def codec_cases():
    return [
        "rgb.tiled.u1.tif",
        "rgb.separate.tiled.u1.tif",
        "rgb.separate.u1.tif",
        "rgba.separate.tiled.u1.tif",
        "rgb.tiled.jpeg.u1.tif",
        "rgb.tiled.jpeg.u2.tif",
        "rgb.tiled.jpeg2000.u1.tif",
        "rgb.tiled.jpegxl.u1.tif",
        "rgb.tiled.jpegxr.u1.tif",
        "rgb.tiled.lerc.u1.tif",
        "rgb.tiled.lzma.u1.tif",
        "rgb.tiled.lzw.u1.tif",
        "rgb.tiled.png.u1.tif",
        "rgb.tiled.webp.u1.tif",
        "rgb.tiled.zstd.u1.tif",
        "rgb.u1.tif",
        "rgba.u1.tif",
        "rgb_u2_tiled_jpegll.tif",
        "rgb_u1_jpeg.tif",
    ]


@pytest.mark.parametrize("name", codec_cases())
def test_tiffs_of_every_codec_and_layout_read_exactly(codec_files, name):
    """Planar-separate, alpha, 12-bit and every imagecodecs codec: the first plane, as tifffile decodes it."""
    path = codec_files / name
    img, meta = slide.read_slide(path, 0.5, sheet_um=0.5)
    with tifffile.TiffFile(path) as tif:
        page = tif.pages[0]
        ref = page.asarray()
        if page.planarconfig == 2:
            ref = np.moveaxis(ref, 0, -1)
        ref = ref[..., :3].astype(float)
        if ref.dtype != np.uint8 and page.bitspersample > 8:
            ref = np.round(ref * 255 / ((1 << page.bitspersample) - 1))
    assert meta["reader"] == "tifffile" and img.shape == ref.shape
    np.testing.assert_array_equal(img, ref)
    assert len(np.unique(img.reshape(-1, 3), axis=0)) > 50  # real colour content, not one channel copied


def test_stacks_that_are_not_one_image_are_refused(tmp_path):
    path = tmp_path / "z.ome.tif"
    tifffile.imwrite(path, np.zeros((5, 64, 64), np.uint8), metadata={"axes": "ZYX", "PhysicalSizeX": 0.5})
    with pytest.raises(InputError, match="axes ZYX.*Z=5"):
        slide.read_slide(path, 16.0)


@pytest.mark.parametrize(
    "name, extra, needle",
    [
        ("unreadable.svs", [], "could not be decoded"),
        ("boxes.tiff", [], "software default"),
        ("boxes.png", [], "not a slide format"),
    ],
)
def test_ingest_cli_on_a_bad_slide_prints_one_line_and_no_traceback(openslide_files, tmp_path, name, extra, needle):
    res = subprocess.run(
        [
            sys.executable,
            "-m",
            "workflow_scripts.ingest",
            "wsi",
            f"--image={tmp_path / 'w.png'}",
            f"--meta={tmp_path / 'w.json'}",
            "--thumb-um=16",
            "--participant=P001",
            "--biopsy=HX01_B1",
            *extra,
            "--",
            str(openslide_files / name),
        ],
        capture_output=True,
        text=True,
    )
    assert res.returncode == 1 and "Traceback" not in res.stderr, res.stderr
    assert f"tractmap error: participant P001, biopsy HX01_B1, file {openslide_files / name}" in res.stderr
    assert needle in res.stderr and "hint:" in res.stderr
    assert not (tmp_path / "w.png").exists() and not (tmp_path / "w.json").exists()
