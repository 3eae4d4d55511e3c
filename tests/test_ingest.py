"""Ingest: calibration from ultrasound regions, photometrics, frames, WSI pyramid, errors."""

import copy
import json
from pathlib import Path

import numpy as np
import pydicom
import pytest
import tifffile

from workflow_scripts import ingest, slide, synthetic
from workflow_scripts.errors import InputError
from workflow_scripts.transfer import parse_features, tumour_polygons


@pytest.fixture(scope="module")
def biopsy(tmp_path_factory):
    d = tmp_path_factory.mktemp("biopsy")
    out = {
        k: d / n
        for k, n in [
            ("prefire", "pre.dcm"),
            ("postfire", "post.dcm"),
            ("wsi", "wsi.ome.tif"),
            ("annotation", "a.geojson"),
            ("truth", "t.json"),
            ("truth_mask", "m.png"),
        ]
    }
    synthetic.generate_biopsy(5, "P001", "B1", out)
    return out, json.loads(out["truth"].read_text())


def dicom_variant(tmp_path, photometric, frames, seed=3):
    t = synthetic.sample_truth(seed, "P009", "B2")
    t.photometric, t.frames = photometric, frames
    rng = np.random.default_rng(0)
    regions = synthetic.render_prefire(t)
    path = tmp_path / f"{photometric}_{frames}.dcm"
    synthetic.write_dicom(t, path, regions, rng)
    return path, t, regions


def test_ultrasound_calibration_equals_truth(biopsy):
    out, truth = biopsy
    img, meta = ingest.read_ultrasound(out["prefire"])
    assert meta["mm_per_px"] == pytest.approx([truth["mm_per_px"]] * 2, rel=1e-9)
    assert img.shape == (truth["rows"], truth["cols"])
    assert meta["region_bounds_xyxy"][:2] == [truth["region_x0"], truth["region_y0"]]


@pytest.mark.parametrize("photometric", ["MONOCHROME2", "RGB", "YBR_FULL"])
def test_photometrics_give_the_same_grayscale(tmp_path, photometric):
    path, t, regions = dicom_variant(tmp_path, photometric, 1)
    assert pydicom.dcmread(path).PhotometricInterpretation == photometric
    img, meta = ingest.read_ultrasound(path)
    assert img.shape == (t.rows, t.cols)
    # YBR_FULL round trip through 8 bits loses a grey level at most
    assert np.abs(img.astype(int) - regions[-1].astype(int)).max() <= 2


def test_multiframe_uses_documented_frame(tmp_path):
    path, t, regions = dicom_variant(tmp_path, "MONOCHROME2", 3)
    last, meta = ingest.read_ultrasound(path, "last")
    first, _ = ingest.read_ultrasound(path, "first")
    assert meta["frames"] == 3 and meta["frame_used"] == 2
    assert np.array_equal(last, regions[2]) and np.array_equal(first, regions[0])
    with pytest.raises(InputError, match="frame 5 requested"):
        ingest.read_ultrasound(path, 5)


def broken(tmp_path, src, edit):
    ds = pydicom.dcmread(src)
    edit(ds)
    p = tmp_path / "broken.dcm"
    ds.save_as(p)
    return p


def test_no_tissue_region_is_a_clear_error(tmp_path, biopsy):
    def edit(ds):
        for r in ds.SequenceOfUltrasoundRegions:
            r.RegionDataType = 2

    with pytest.raises(InputError, match="2-D tissue region"):
        ingest.read_ultrasound(broken(tmp_path, biopsy[0]["prefire"], edit))
    with pytest.raises(InputError, match="no SequenceOfUltrasoundRegions"):
        ingest.read_ultrasound(
            broken(tmp_path, biopsy[0]["prefire"], lambda ds: delattr(ds, "SequenceOfUltrasoundRegions"))
        )


def test_region_out_of_bounds_and_missing_resolution(tmp_path, biopsy):
    def oob(ds):
        ds.SequenceOfUltrasoundRegions[0].RegionLocationMaxX1 = ds.Columns + 40

    with pytest.raises(InputError, match="outside the"):
        ingest.read_ultrasound(broken(tmp_path, biopsy[0]["prefire"], oob))

    def nores(ds):
        del ds.SequenceOfUltrasoundRegions[0].PhysicalDeltaX

    with pytest.raises(InputError, match="missing resolution"):
        ingest.read_ultrasound(broken(tmp_path, biopsy[0]["prefire"], nores))


def test_wsi_resolution_and_level_equal_truth(biopsy):
    out, truth = biopsy
    img, meta = slide.read_slide(out["wsi"], 16.0)
    assert meta["um_per_px"] == pytest.approx(truth["slide_um_per_px"])
    assert meta["level_shapes"][0] == truth["slide_shape"]
    assert meta["level_um_per_px"] <= 16.0 * 1.01 and meta["level"] > 0
    assert img.shape[:2] == tuple(meta["level_shapes"][meta["level"]])


def test_level_read_tile_by_tile_matches_the_whole_level(biopsy):
    img, meta = slide.read_slide(biopsy[0]["wsi"], 16.0)
    with tifffile.TiffFile(biopsy[0]["wsi"]) as tif:
        whole = tif.series[0].levels[meta["level"]].asarray()
    assert meta["reader"] == "tifffile" and meta["um_source"] == "OME PhysicalSizeX"
    np.testing.assert_array_equal(img, whole)


def test_a_slide_without_a_fine_enough_level_is_averaged_down_tile_by_tile(tmp_path):
    rng = np.random.default_rng(0)
    full = rng.integers(0, 256, (700, 900, 3), np.uint8)
    path = tmp_path / "flat.tif"
    tifffile.imwrite(
        path, full, tile=(128, 128), photometric="rgb", resolution=(1e4 / 0.5, 1e4 / 0.5), resolutionunit="CENTIMETER"
    )
    img, meta = slide.read_slide(path, 4.0)  # 8 x 8 blocks; the last row and column of blocks are partial
    assert meta["averaged"] == 8 and meta["level_um_per_px"] == pytest.approx(4.0) and img.shape == (88, 113, 3)
    ref = np.zeros((88, 113, 3))
    for i in range(88):
        for j in range(113):
            ref[i, j] = full[i * 8 : i * 8 + 8, j * 8 : j * 8 + 8].reshape(-1, 3).mean(axis=0)
    assert np.abs(img - ref).max() <= 0.5


def test_wsi_resolution_from_tiff_tags_and_svs(tmp_path):
    a = tmp_path / "tags.tif"
    tifffile.imwrite(a, np.zeros((64, 64, 3), np.uint8), resolution=(1e4 / 0.5, 1e4 / 0.5), resolutionunit="CENTIMETER")
    with tifffile.TiffFile(a) as tif:
        assert slide.tiff_um_per_px(tif) == (pytest.approx(0.5), "TIFF resolution tags")
    b = tmp_path / "svs.tif"
    tifffile.imwrite(
        b, np.zeros((64, 64, 3), np.uint8), description="Aperio Image Library v12|AppMag = 40|MPP = 0.2520"
    )
    with tifffile.TiffFile(b) as tif:
        assert slide.tiff_um_per_px(tif)[0] == pytest.approx(0.252)
    for dpi, why in (
        (None, "no resolution tags|without a physical unit"),
        (72, "72 dpi.*software default"),
        (1, "1 dpi"),
        (254, "outside the 0.05-20"),
    ):
        c = tmp_path / f"res{dpi}.tif"
        kw = {"resolution": (dpi, dpi), "resolutionunit": "INCH"} if dpi else {}
        tifffile.imwrite(c, np.zeros((64, 64, 3), np.uint8), **kw)
        with pytest.raises(InputError, match=why):
            slide.read_slide(c, 16.0)


def test_geojson_reader_accepts_all_three_qupath_shapes(biopsy):
    doc = json.loads(biopsy[0]["annotation"].read_text())
    feats = parse_features(doc)
    polys, _ = tumour_polygons(feats, {"Tumor": "cancer"})
    assert polys
    shapes = {
        "FeatureCollection": {"type": "FeatureCollection", "features": feats},
        "array": feats,
        "Feature": feats[0],
    }
    counts = {
        k: len(tumour_polygons(parse_features(copy.deepcopy(v)), {"Tumor": "cancer"})[0]) for k, v in shapes.items()
    }
    assert counts["FeatureCollection"] == counts["array"] == len(polys)
    assert counts["Feature"] >= 1
    with pytest.raises(InputError, match="not a QuPath GeoJSON"):
        parse_features({"type": "Topology"})


def test_ignored_objects_are_counted():
    poly = [[[0, 0], [1, 0], [1, 1], [0, 0]]]
    feats = [
        {
            "type": "Feature",
            "geometry": {"type": "Polygon", "coordinates": poly},
            "properties": {"objectType": "annotation", "classification": {"name": "Tumor"}},
        },
        {
            "type": "Feature",
            "geometry": {"type": "MultiPolygon", "coordinates": [poly, poly]},
            "properties": {"objectType": "annotation", "classification": {"name": "Tumor"}},
        },
        {
            "type": "Feature",
            "geometry": {"type": "Polygon", "coordinates": poly},
            "properties": {"objectType": "annotation", "classification": {"name": "Stroma"}},
        },
        {
            "type": "Feature",
            "geometry": {"type": "Polygon", "coordinates": poly},
            "properties": {"objectType": "detection", "classification": {"name": "Tumor"}},
        },
        {
            "type": "Feature",
            "geometry": {"type": "Polygon", "coordinates": poly},
            "properties": {"objectType": "annotation"},
        },
    ]
    kept, ignored = tumour_polygons(feats, {"Tumor": "cancer"})
    assert len(kept) == 3
    assert ignored == {"class Stroma": 1, "detections": 1, "class unclassified": 1}


def run_measured(module: str, args: list[str]) -> int:
    """Run ``python -m module args`` in a fresh interpreter; return its peak resident memory in bytes.

    VmHWM belongs to the new process image, unlike ru_maxrss, which Linux carries
    over from the forked parent (here the whole pytest process) across exec.
    """
    import os
    import subprocess
    import sys

    code = "\n".join(
        [
            "import runpy, sys",
            "sys.argv = sys.argv[1:]",
            "try:",
            "    runpy.run_module(sys.argv[0], run_name='__main__', alter_sys=True)",
            "finally:",
            "    print([x for x in open('/proc/self/status') if x.startswith('VmHWM')][0], file=sys.stderr)",
        ]
    )
    res = subprocess.run(
        [sys.executable, "-c", code, module, *args],
        capture_output=True,
        text=True,
        env={**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[1])},
    )
    assert res.returncode == 0, res.stderr
    kib = int(res.stderr.strip().splitlines()[-1].split()[1])
    return kib * 1024


def test_wsi_ingest_memory_on_the_largest_demo_slide(tmp_path):
    import yaml

    root = Path(__file__).resolve().parents[1]
    pid, bid = yaml.safe_load((root / "config.yaml").read_text())["demo"]["large_slide"].split("/")
    files = {k: tmp_path / k for k in ("wsi", "annotation")}
    gen = ["slide", "--seed", "2026", "--participant", pid, "--slide-biopsies", bid, "--large-slide"]
    run_measured("workflow_scripts.synthetic", gen + sum([[f"--{k}", str(v)] for k, v in files.items()], []))
    with tifffile.TiffFile(files["wsi"]) as tif:
        full = tif.series[0].levels[0].shape
    assert max(full) >= 40_000
    raw_gb = full[0] * full[1] * 3 / 1e9
    peak = run_measured(
        "workflow_scripts.ingest",
        ["wsi", str(files["wsi"]), "--image", str(tmp_path / "w.png"), "--meta", str(tmp_path / "w.json")],
    )
    assert 20e6 < peak < 1e9, f"peak {peak / 1e6:.0f} MB for a {raw_gb:.1f} GB full-resolution plane"


def test_qupath_02_03_04_dialects_and_invalid_geometry():
    square = [[[0, 0], [10, 0], [10, 10], [0, 10], [0, 0]]]
    bowtie = [[[0, 0], [10, 10], [10, 0], [0, 10], [0, 0]]]  # self-intersecting
    line = [[[0, 0], [5, 5], [0, 0]]]  # a 2-point "polygon"
    tumor = {"name": "Tumor", "colorRGB": -3670016}
    feats = [
        {
            "type": "Feature",
            "id": "PathAnnotationObject",
            "geometry": {"type": "Polygon", "coordinates": square},
            "properties": {"classification": tumor},
        },
        {
            "type": "Feature",
            "id": "PathDetectionObject",
            "geometry": {"type": "Polygon", "coordinates": square},
            "properties": {"classification": tumor},
        },
        {
            "type": "Feature",
            "id": "PathCellObject",
            "geometry": {"type": "Polygon", "coordinates": square},
            "properties": {"classification": tumor},
        },
        {
            "type": "Feature",
            "geometry": {"type": "Polygon", "coordinates": square},
            "properties": {"object_type": "detection", "classification": tumor},
        },
        {
            "type": "Feature",
            "geometry": {"type": "Polygon", "coordinates": bowtie},
            "properties": {"object_type": "annotation", "classification": tumor},
        },
        {
            "type": "Feature",
            "geometry": {"type": "Polygon", "coordinates": line},
            "properties": {"objectType": "annotation", "classification": "Tumor"},
        },
        {
            "type": "Feature",
            "geometry": {"type": "LineString", "coordinates": [[0, 0], [3, 3]]},
            "properties": {"objectType": "annotation", "classification": tumor},
        },
    ]
    kept, counts = tumour_polygons(feats, {"Tumor": "cancer"})
    assert counts == {
        "detections": 2,
        "cells": 1,
        "invalid polygons repaired": 1,
        "degenerate polygons dropped": 1,
        "geometry LineString": 1,
    }
    from shapely.geometry import Polygon as P

    assert len(kept) == 3  # the 0.2 annotation and the bow-tie's two valid triangles
    assert all(P(rings[0], rings[1:]).is_valid for _, _, rings in kept)
    assert sum(P(r[0]).area for _, _, r in kept[1:]) == pytest.approx(50.0)
