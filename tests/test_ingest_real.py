"""Ingest on real third-party DICOM files: the test files that ship inside the pydicom wheel.

These files are not ultrasound: each test copies one, keeps its pixel data and transfer syntax exactly as
encoded, and adds an ultrasound tissue region so that ingest calibrates it.
"""

from pathlib import Path

import numpy as np
import pydicom
import pytest
from conftest import ingest_ultrasound
from pydicom.data import get_testdata_file
from pydicom.pixels import apply_color_lut, pixel_array
from pydicom.sequence import Sequence

from workflow_scripts import ingest
from workflow_scripts.errors import InputError


def real(name: str) -> Path:
    path = get_testdata_file(name, download=False)
    assert path, f"{name} is not in this pydicom wheel"
    return Path(path)


def as_ultrasound(src: Path, dst: Path, max_x: int | None = None) -> Path:
    """A copy of a real file with a calibrated tissue region over the whole image (pixels untouched)."""
    ds = pydicom.dcmread(src)
    r = pydicom.Dataset()
    r.RegionSpatialFormat, r.RegionDataType, r.RegionFlags = 1, 1, 0
    r.RegionLocationMinX0, r.RegionLocationMinY0 = 0, 0
    r.RegionLocationMaxX1 = ds.Columns - 1 if max_x is None else max_x
    r.RegionLocationMaxY1 = ds.Rows - 1
    r.PhysicalUnitsXDirection = r.PhysicalUnitsYDirection = 3
    r.PhysicalDeltaX = r.PhysicalDeltaY = 0.005
    ds.SequenceOfUltrasoundRegions = Sequence([r])
    ds.save_as(dst)
    return dst


def luma(rgb: np.ndarray) -> np.ndarray:
    return np.clip(np.round(rgb[..., :3].astype(float) @ np.array([0.299, 0.587, 0.114])), 0, 255)


def test_palette_color_goes_through_its_lut(tmp_path):
    src = real("examples_palette.dcm")
    ds = pydicom.dcmread(src)
    assert ds.PhotometricInterpretation == "PALETTE COLOR"
    gray, meta = ingest.read_ultrasound(as_ultrasound(src, tmp_path / "p.dcm"), frame="last")
    rgb = apply_color_lut(ds.pixel_array, ds).astype(float)
    expected = luma(rgb / 257.0 if rgb.max() > 255 else rgb)
    assert np.abs(gray.astype(float) - expected).max() <= 1.0
    idx = ds.pixel_array
    assert np.abs(gray.astype(int) - idx.astype(int)).max() > 100  # not the raw palette indices (244 is dark here)
    assert meta["photometric"] == "PALETTE COLOR"


@pytest.mark.parametrize(
    "compressed, reference",
    [
        ("MR_small_jpeg_ls_lossless.dcm", "MR_small.dcm"),
        ("MR_small_jp2klossless.dcm", "MR_small.dcm"),
        ("MR_small_RLE.dcm", "MR_small.dcm"),
        ("SC_rgb_rle.dcm", "SC_rgb_rle.dcm"),
        ("JPEG2000.dcm", None),
        ("SC_rgb_jpeg_dcmtk.dcm", None),
        ("JPEGLSNearLossless_08.dcm", None),
    ],
)
def test_compressed_transfer_syntaxes_decode(tmp_path, compressed, reference):
    gray, meta = ingest.read_ultrasound(as_ultrasound(real(compressed), tmp_path / "c.dcm"), frame="last")
    ds = pydicom.dcmread(real(compressed))
    assert ds.file_meta.TransferSyntaxUID.is_compressed
    assert gray.shape == (ds.Rows, ds.Columns) and gray.std() > 1
    if reference:
        ref, _ = ingest.read_ultrasound(as_ultrasound(real(reference), tmp_path / "r.dcm"), frame="last")
        np.testing.assert_array_equal(gray, ref)  # lossless: the same pixels as the uncompressed file


def test_cine_decodes_only_the_frame_used(tmp_path):
    src = as_ultrasound(real("SC_rgb_rle_2frame.dcm"), tmp_path / "cine.dcm")
    first, m0 = ingest.read_ultrasound(src, frame="first")
    last, m1 = ingest.read_ultrasound(src, frame="last")
    every = pixel_array(pydicom.dcmread(src))
    assert (m0["frame_used"], m1["frame_used"], m1["frames"]) == (0, 1, 2)
    np.testing.assert_array_equal(last, luma(every[1]).astype(np.uint8))
    assert not np.array_equal(first, last)


def test_inclusive_region_bound_is_clamped_and_noted(tmp_path):
    ds = pydicom.dcmread(real("MR_small.dcm"))
    gray, meta = ingest.read_ultrasound(
        as_ultrasound(real("MR_small.dcm"), tmp_path / "b.dcm", max_x=ds.Columns), frame="last"
    )
    assert gray.shape == (ds.Rows, ds.Columns) and meta["bounds_clamped"] is True
    with pytest.raises(InputError, match="outside the"):
        ingest.read_ultrasound(
            as_ultrasound(real("MR_small.dcm"), tmp_path / "far.dcm", max_x=ds.Columns + 10), frame="last"
        )


def test_truncated_file_is_one_clear_line(tmp_path):
    src = as_ultrasound(real("MR_small.dcm"), tmp_path / "t.dcm")
    data = src.read_bytes()
    src.write_bytes(data[: len(data) - 3000])  # pixel data cut short
    res = ingest_ultrasound(src, tmp_path)
    assert res.returncode == 1
    assert "tractmap error: participant P001, biopsy B1, file" in res.stderr and "hint:" in res.stderr
    assert not (tmp_path / "o.png").exists() and not (tmp_path / "o.json").exists()
