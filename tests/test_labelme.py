"""Compatibility: Labelme itself loads our JSON, and its conversion matches our VOC masks."""

import json
import os

import numpy as np
import pytest

os.environ.setdefault("QT_QPA_PLATFORM", "offscreen")
import labelme  # noqa: E402  a hard dependency: a missing install must fail, not skip
from labelme.utils import shapes_to_label  # noqa: E402

from workflow_scripts import transfer, voc  # noqa: E402


def synthetic_document(tmp_path):
    """A crop with a tumour that has a hole, a multipolygon part and void outside the core."""
    from skimage.io import imsave

    crop = (np.random.default_rng(0).uniform(0, 255, (41, 300))).astype(np.uint8)
    imsave(tmp_path / "crop.png", crop, check_contrast=False)
    ring = np.array([[30, 14], [120, 12], [125, 28], [28, 27], [30, 14]], float)
    hole = np.array([[60, 17], [80, 17], [80, 23], [60, 23], [60, 17]], float)
    part = np.array([[200, 15], [240, 16], [238, 26], [205, 25], [200, 15]], float)
    polys = [("cancer", "Tumor", [ring, hole]), ("cancer", "Tumor", [part])]
    voids = transfer.void_polygons((41, 300), (10.0, 290.0), (12.0, 28.0))
    doc = transfer.labelme_document(transfer.labelme_shapes(polys, voids), "crop.png", (tmp_path / "crop.png").read_bytes(), (41, 300))
    path = tmp_path / "doc.json"
    path.write_text(json.dumps(doc))
    return path, crop


def test_labelme_loads_our_file(tmp_path):
    path, crop = synthetic_document(tmp_path)
    lf = labelme.LabelFile(str(path))
    assert [s["label"] for s in lf.shapes][:3] == ["cancer", "_background_", "cancer"]
    assert lf.shapes[1]["group_id"] == lf.shapes[0]["group_id"]  # the hole belongs to its polygon
    assert "Tumor" in lf.shapes[0]["description"]
    img = labelme.utils.img_data_to_arr(lf.image_data)
    assert img.shape[:2] == crop.shape


def test_labelme_conversion_matches_ours(tmp_path):
    path, crop = synthetic_document(tmp_path)
    lf = labelme.LabelFile(str(path))
    names = {"__ignore__": -1, "_background_": 0, "cancer": 1}
    theirs, _ = shapes_to_label(crop.shape, lf.shapes, names)
    theirs = np.where(theirs == -1, 255, theirs).astype(np.uint8)  # labelme2voc saves -1 as 255
    ours = voc.convert(json.loads(path.read_text()), "X_B1", tmp_path / "voc")
    assert np.array_equal(ours, theirs)
    assert set(np.unique(ours)) == {0, 1, 255}
    assert (ours[20, 70] == 0) and (ours[20, 40] == 1) and (ours[2, 150] == 255)  # hole, tumour, void


def test_real_transfer_output_loads_in_labelme(cohort_run):
    files = sorted((cohort_run / "results" / "labelme").glob("*/*.json"))
    assert files
    for f in files:
        lf = labelme.LabelFile(str(f))
        doc = json.loads(f.read_text())
        theirs, _ = shapes_to_label((doc["imageHeight"], doc["imageWidth"]), lf.shapes, {"__ignore__": -1, "_background_": 0, "cancer": 1})
        voc_png = cohort_run / "results" / "voc" / "SegmentationClass" / f"{f.parent.name}_{f.stem}.png"
        import PIL.Image

        ours = np.asarray(PIL.Image.open(voc_png))
        assert np.array_equal(ours, np.where(theirs == -1, 255, theirs))


def test_correction_saved_without_image_data_uses_the_crop(tmp_path):
    from workflow_scripts.errors import InputError

    path, crop = synthetic_document(tmp_path)
    doc = json.loads(path.read_text())
    with_data = voc.convert(doc, "A_B1", tmp_path / "a")
    doc["imageData"] = None  # Labelme's "Save With Image Data" unchecked
    without = voc.convert(doc, "B_B1", tmp_path / "b", crop=tmp_path / "crop.png")
    assert np.array_equal(with_data, without)
    with pytest.raises(InputError, match="no embedded imageData"):
        voc.convert(doc, "C_B1", tmp_path / "c")
