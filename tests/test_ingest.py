"""Ingest: calibration from ultrasound regions, photometrics, frames, WSI pyramid, errors."""

import copy
import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pydicom
import pytest
import tifffile
import yaml
from skimage import io as skimage_io

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
    img, meta = ingest.read_ultrasound(out["prefire"], frame="last")
    assert meta["mm_per_px"] == pytest.approx([truth["mm_per_px"]] * 2, rel=1e-9)
    assert img.shape == (truth["rows"], truth["cols"])
    assert meta["region_bounds_xyxy"][:2] == [truth["region_x0"], truth["region_y0"]]


@pytest.mark.parametrize("photometric", ["MONOCHROME2", "RGB", "YBR_FULL"])
def test_photometrics_give_the_same_grayscale(tmp_path, photometric):
    path, t, regions = dicom_variant(tmp_path, photometric, 1)
    assert pydicom.dcmread(path).PhotometricInterpretation == photometric
    img, meta = ingest.read_ultrasound(path, frame="last")
    assert img.shape == (t.rows, t.cols)
    # YBR_FULL round trip through 8 bits loses a grey level at most
    assert np.abs(img.astype(int) - regions[-1].astype(int)).max() <= 2


def test_multiframe_uses_documented_frame(tmp_path):
    path, t, regions = dicom_variant(tmp_path, "MONOCHROME2", 3)
    last, meta = ingest.read_ultrasound(path, frame="last")
    first, _ = ingest.read_ultrasound(path, frame="first")
    assert meta["frames"] == 3 and meta["frame_used"] == 2
    assert np.array_equal(last, regions[2]) and np.array_equal(first, regions[0])
    with pytest.raises(InputError, match="frame 5 requested"):
        ingest.read_ultrasound(path, frame=5)
    # no frame chosen: a single image is read, a cine is an error naming the setting (never a silent pick)
    single, _, _ = dicom_variant(tmp_path, "MONOCHROME2", 1)
    assert ingest.read_ultrasound(single, frame=None)[1]["frame_used"] == 0
    with pytest.raises(InputError, match="cine of 3 frames, and no frame chosen") as e:
        ingest.read_ultrasound(path, frame=None)
    assert "ingest.frame" in e.value.hint and "--frame" in e.value.hint


def test_infer_takes_its_frame_from_the_option_else_the_config(tmp_path):
    from workflow_scripts import infer

    cfg = tmp_path / "config.yaml"
    cfg.write_text(yaml.safe_dump({"ingest": {"frame": "first"}}))
    assert infer.frame_choice("2", cfg) == "2"
    assert infer.frame_choice(None, cfg) == "first"
    assert infer.frame_choice(None, None) is None
    with pytest.raises(InputError, match="not found"):
        infer.frame_choice(None, tmp_path / "missing.yaml")


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
        ingest.read_ultrasound(broken(tmp_path, biopsy[0]["prefire"], edit), frame="last")
    with pytest.raises(InputError, match="no SequenceOfUltrasoundRegions"):
        ingest.read_ultrasound(
            broken(tmp_path, biopsy[0]["prefire"], lambda ds: delattr(ds, "SequenceOfUltrasoundRegions")), frame="last"
        )


def test_region_out_of_bounds_and_missing_resolution(tmp_path, biopsy):
    def oob(ds):
        ds.SequenceOfUltrasoundRegions[0].RegionLocationMaxX1 = ds.Columns + 40

    with pytest.raises(InputError, match="outside the"):
        ingest.read_ultrasound(broken(tmp_path, biopsy[0]["prefire"], oob), frame="last")

    def nores(ds):
        del ds.SequenceOfUltrasoundRegions[0].PhysicalDeltaX

    with pytest.raises(InputError, match="missing resolution"):
        ingest.read_ultrasound(broken(tmp_path, biopsy[0]["prefire"], nores), frame="last")


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
    # a lone Feature is that feature's own outline, the first of the array's
    assert feats[0]["properties"]["classification"]["name"] == "Tumor" and counts["Feature"] == 1
    alone = tumour_polygons(parse_features(copy.deepcopy(feats[0])), {"Tumor": "cancer"})[0][0]
    np.testing.assert_allclose(alone[2][0], feats[0]["geometry"]["coordinates"][0])
    np.testing.assert_allclose(alone[2][0], polys[0][2][0])
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
        [
            "wsi",
            str(files["wsi"]),
            "--image",
            str(tmp_path / "w.png"),
            "--meta",
            str(tmp_path / "w.json"),
            "--thumb-um=16",
        ],
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


# ---------------------------------------------------------------- exports and us_mm_per_px (issue 28, part 3)


@pytest.fixture(scope="module")
def scene():
    """A rendered saved frame (truth region) and its truth."""
    t = synthetic.sample_truth(3, "P009", "B2")
    return t, synthetic.render_prefire(t)[-1]


def export(tmp_path, scene, fmt, quality=90, ruler_mm=1.0):
    t, region = scene
    path = tmp_path / ("frame.jpg" if fmt == "jpeg" else f"frame.{fmt}")
    synthetic.write_export(t, path, region, np.random.default_rng(0), fmt, quality, ruler_mm)
    return path


def same_region(img, meta, t):
    """The reader trimmed the screen furniture to exactly the rendered tissue region."""
    assert img.shape == (t.rows, t.cols)
    assert meta["region_bounds_xyxy"] == [t.region_x0, t.region_y0, t.region_x0 + t.cols - 1, t.region_y0 + t.rows - 1]


@pytest.mark.parametrize("fmt, tolerance", [("png", 0), ("jpeg", 4.0)])
def test_png_and_jpeg_exports_read_with_the_sheet_spacing(tmp_path, scene, fmt, tolerance):
    t, region = scene
    path = export(tmp_path, scene, fmt)
    img, meta = ingest.read_ultrasound(path, frame="last", mm_per_px=(0.05, 0.06))
    same_region(img, meta, t)
    assert meta["format"] == fmt and meta["photometric"] == "RGB"  # a colour screen export, grey as an RGB DICOM
    assert meta["mm_per_px"] == [0.05, 0.06] and meta["calibration_source"] == "biopsies.tsv us_mm_per_px"
    assert np.abs(img.astype(float) - region).mean() <= tolerance  # JPEG: close; PNG: the very pixels
    # the format comes from the content, not the name
    moved = tmp_path / "frame.dcm"
    moved.write_bytes(path.read_bytes())
    assert ingest.read_ultrasound(moved, frame="last", mm_per_px=(0.05, 0.05))[1]["format"] == fmt


def test_tiff_export_rgba_and_16_bit(tmp_path, scene):
    t, region = scene
    frame = np.zeros((t.frame_rows, t.frame_cols, 4), np.uint8)
    frame[t.region_y0 : t.region_y0 + t.rows, t.region_x0 : t.region_x0 + t.cols, :3] = region[..., None]
    frame[..., 3] = 128  # alpha: dropped, not blended
    tifffile.imwrite(tmp_path / "rgba.tif", frame, photometric="rgb", extrasamples=["unassalpha"])
    img, meta = ingest.read_ultrasound(tmp_path / "rgba.tif", frame="last", mm_per_px=(0.05, 0.05))
    same_region(img, meta, t)
    assert meta["format"] == "tiff" and np.array_equal(img, region)
    deep = frame[..., 0].astype(np.uint16) * 257  # 16-bit grey: scaled to 8 bits by its maximum, as DICOM is
    tifffile.imwrite(tmp_path / "grey16.tif", deep)
    img, _ = ingest.read_ultrasound(tmp_path / "grey16.tif", frame="last", mm_per_px=(0.05, 0.05))
    expected = np.round(region.astype(float) * 257 * 255 / deep.max())
    assert np.abs(img - expected).max() <= 1


def test_export_identities_never_reach_the_outputs(tmp_path, scene):
    t, _ = scene
    for fmt in ("png", "jpeg"):
        path = export(tmp_path, scene, fmt)
        assert t.canaries["PatientID"].encode() in path.read_bytes()  # the export carries it (text chunk / EXIF)
        cmd = [sys.executable, "-m", "workflow_scripts.ingest", "ultrasound", f"--image={tmp_path / 'o.png'}"]
        cmd += [f"--meta={tmp_path / 'o.json'}", "--frame=last", "--us-mm-per-px=0.05 0.06", "--", str(path)]
        res = subprocess.run(cmd, capture_output=True, text=True, cwd=Path(__file__).resolve().parents[1])
        assert res.returncode == 0, res.stderr
        meta = json.loads((tmp_path / "o.json").read_text())
        assert meta["mm_per_px"] == [0.05, 0.06] and meta["format"] == fmt
        for out in (tmp_path / "o.json", tmp_path / "o.png"):
            data = out.read_bytes()
            assert not any(v.encode() in data for v in t.canaries.values()), out
        assert not any(v in res.stdout + res.stderr for v in t.canaries.values())


def test_dicom_without_calibration_takes_the_column(tmp_path, biopsy):
    out, truth = biopsy
    path = broken(tmp_path, out["prefire"], lambda ds: delattr(ds, "SequenceOfUltrasoundRegions"))
    with pytest.raises(InputError, match="no SequenceOfUltrasoundRegions") as e:
        ingest.read_ultrasound(path, frame="last")
    assert "add us_mm_per_px" in e.value.hint
    img, meta = ingest.read_ultrasound(path, frame="last", mm_per_px=(0.07, 0.07))
    assert meta["format"] == "dicom" and meta["calibration_source"] == "biopsies.tsv us_mm_per_px"
    assert meta["mm_per_px"] == [0.07, 0.07] and "calibration_conflict" not in meta
    # the scanner screen's furniture is trimmed to the image, as for an export
    assert meta["region_bounds_xyxy"][:2] == [truth["region_x0"], truth["region_y0"]]
    assert img.shape == (truth["rows"], truth["cols"])


def test_missing_spacing_names_the_column_and_suggests_the_ruler(tmp_path, scene):
    t, _ = scene
    with pytest.raises(InputError, match="PNG export carries no pixel spacing") as e:
        ingest.read_ultrasound(export(tmp_path, scene, "png"), frame="last")
    period = 1.0 / t.mm_per_px  # the rendered ruler: a tick every 1 mm
    assert "add us_mm_per_px (mm per pixel, from the scanner's depth setting) to biopsies.tsv" in e.value.hint
    assert f"ticks every {period:.1f} px" in e.value.hint
    assert f"{t.mm_per_px:.4g} mm/px if they are 1 mm apart" in e.value.hint
    assert f"{5 * t.mm_per_px:.4g} mm/px if they are 5 mm apart" in e.value.hint
    assert "does not use this guess" in e.value.hint
    # a JPEG at quality 75 still shows the ruler; at a coarser spacing too
    jpg = export(tmp_path, scene, "jpeg", quality=75, ruler_mm=2.0)
    gray, _ = ingest.read_export(jpg, "jpeg", "last")
    assert ingest.ruler_period(gray)["period_px"] == pytest.approx(2 * period, abs=0.1)
    # without a ruler (the bare image) the hint says so, and no number is guessed
    skimage_io.imsave(tmp_path / "bare.png", scene[1], check_contrast=False)
    with pytest.raises(InputError) as e:
        ingest.read_ultrasound(tmp_path / "bare.png", frame="last")
    assert "add us_mm_per_px" in e.value.hint and "no depth ruler" in e.value.hint and "mm/px if" not in e.value.hint


@pytest.mark.parametrize("text", ["0.0001", "2", "0.05,0.06,0.07", "-0.05", "abc"])
def test_bad_spacing_text_is_an_input_error(text):
    with pytest.raises(InputError, match="us_mm_per_px"):
        ingest.parse_spacing(text)


def test_spacing_text():
    assert ingest.parse_spacing("0.05") == (0.05, 0.05)
    assert ingest.parse_spacing("0.05,0.06") == ingest.parse_spacing(" 0.05 0.06 ") == (0.05, 0.06)
    assert ingest.parse_spacing("") is None


def test_a_calibration_conflict_goes_to_review_naming_both(tmp_path, biopsy):
    from workflow_scripts import review, state, tract

    out, truth = biopsy
    dicom_mm = truth["mm_per_px"]
    _, near = ingest.read_ultrasound(out["prefire"], frame="last", mm_per_px=(dicom_mm * 1.01,) * 2)
    assert "calibration_conflict" not in near  # within 2%: the column is used, and no conflict
    assert near["mm_per_px"] == [dicom_mm * 1.01] * 2 and near["calibration_source"] == "biopsies.tsv us_mm_per_px"
    _, own = ingest.read_ultrasound(out["prefire"], frame="last")
    assert own["calibration_source"] == "dicom SequenceOfUltrasoundRegions" and "calibration_conflict" not in own
    sheet = round(dicom_mm * 1.2, 4)
    d = tmp_path / "run"
    d.mkdir()
    for phase in ("prefire", "postfire"):
        img, meta = ingest.read_ultrasound(out[phase], frame="last", mm_per_px=(sheet, sheet))
        assert meta["mm_per_px"] == [sheet, sheet]  # the column, which the user set explicitly, is used
        assert meta["calibration_conflict"] == f"DICOM {dicom_mm:.4g} mm/px vs us_mm_per_px {sheet:.4g} mm/px " + (
            "(us_mm_per_px used)"
        )
        skimage_io.imsave(d / f"{phase}.png", img, check_contrast=False)
        (d / f"{phase}.json").write_text(json.dumps(meta))
    args = [f"--{k}={d / f}" for k, f in [("pre", "prefire.png"), ("pre-meta", "prefire.json")]]
    args += [f"--{k}={d / f}" for k, f in [("post", "postfire.png"), ("post-meta", "postfire.json")]]
    # the gun's stroke at the sheet's scale, so that only the conflict can hold the tract
    args += [
        f"--out={d / 't.json'}",
        f"--crop={d / 'c.png'}",
        f"--default-stroke-mm={truth['throw_mm'] * sheet / dicom_mm}",
    ]
    args += ["--width-mm=2", "--margin-mm=0.5", "--out-mm-per-px=0.05"]
    tract.main([*args, "--min-confidence=0"])
    res = json.loads((d / "t.json").read_text())
    assert res["state"] == "accepted"  # the tract's own call; the conflict is data that holds the biopsy
    assert any(
        f"DICOM {dicom_mm:.4g} mm/px vs us_mm_per_px {sheet:.4g} mm/px" in c for c in res["calibration_conflicts"]
    )
    st = {"participant_id": "P001", "biopsy_id": "B1", **state.biopsy_state({"state": "accepted"}, res)}
    assert st["state"] == "review" and st["steps"]["tract"] == "review"
    rows = review.entries(st, {"state": "accepted"}, res, meta["region_bounds_xyxy"], "qc.png")
    assert len(rows) == 1 and f"vs us_mm_per_px {sheet:.4g} mm/px" in rows[0]["reason"]
    for phase in ("prefire", "postfire"):  # the same tract without the conflict is accepted
        m = json.loads((d / f"{phase}.json").read_text())
        del m["calibration_conflict"]
        (d / f"{phase}.json").write_text(json.dumps(m))
    tract.main([*args, "--min-confidence=0"])
    res = json.loads((d / "t.json").read_text())
    assert res["state"] == "accepted" and "review_reason" not in res and res["calibration_conflicts"] == []
    assert state.biopsy_state({"state": "accepted"}, res)["state"] == "accepted"


def test_demo_exports_carry_the_spacing_the_dicoms_are_rendered_at(tmp_path, biopsy):
    out, truth = biopsy  # rendered with seed 5
    _, sheet = synthetic.cohort_sheets(1, 11, "demo/data", exports=1.0, render_seed=5)
    row = sheet.set_index(["participant_id", "biopsy_id"]).loc[("P001", "B1")]
    assert row["prefire"].endswith((".png", ".jpg")) and row["postfire"].rsplit(".")[-1] == row["prefire"][-3:]
    assert float(row["us_mm_per_px"]) == pytest.approx(truth["mm_per_px"], rel=1e-5)
    synthetic.export_dicom(out["prefire"], tmp_path / "pre.png", "png")
    img, meta = ingest.read_ultrasound(
        tmp_path / "pre.png", frame="last", mm_per_px=ingest.parse_spacing(row["us_mm_per_px"])
    )
    ref, ref_meta = ingest.read_ultrasound(out["prefire"], frame="last")
    assert meta["region_bounds_xyxy"] == ref_meta["region_bounds_xyxy"] and np.array_equal(img, ref)
    assert meta["mm_per_px"] == pytest.approx(ref_meta["mm_per_px"], rel=1e-5)
    # the default sheet is as it was: DICOMs only, no spacing column
    _, plain = synthetic.cohort_sheets(3, 11, "demo/data")
    assert "us_mm_per_px" not in plain and plain["prefire"].str.endswith(".dcm").all()


def test_a_broken_export_or_unknown_file_is_a_clear_error(tmp_path, scene):
    png = export(tmp_path, scene, "png")
    cut = tmp_path / "cut.png"
    cut.write_bytes(png.read_bytes()[:200])  # the PNG signature, then nothing readable
    with pytest.raises(InputError, match="not a readable PNG image"):
        ingest.read_ultrasound(cut, frame="last", mm_per_px=(0.05, 0.05))
    text = tmp_path / "notes.txt"
    text.write_text("not an image")
    with pytest.raises(InputError, match="neither a readable DICOM file nor a PNG/JPEG/TIFF image"):
        ingest.read_ultrasound(text, frame="last", mm_per_px=(0.05, 0.05))
