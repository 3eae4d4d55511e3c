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
    doc = transfer.labelme_document(
        transfer.labelme_shapes(polys, voids), "crop.png", (tmp_path / "crop.png").read_bytes(), (41, 300)
    )
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
    ours = voc.convert(json.loads(path.read_text()), "X_B1", tmp_path / "voc", image_format="jpg")
    assert np.array_equal(ours, theirs)
    assert set(np.unique(ours)) == {0, 1, 255}
    assert (ours[20, 70] == 0) and (ours[20, 40] == 1) and (ours[2, 150] == 255)  # hole, tumour, void


@pytest.mark.slow
def test_real_transfer_output_loads_in_labelme(cohort_run):
    files = sorted((cohort_run / "results" / "labelme").glob("*/*.json"))
    assert files
    for f in files:
        lf = labelme.LabelFile(str(f))
        doc = json.loads(f.read_text())
        theirs, _ = shapes_to_label(
            (doc["imageHeight"], doc["imageWidth"]), lf.shapes, {"__ignore__": -1, "_background_": 0, "cancer": 1}
        )
        voc_png = cohort_run / "results" / "voc" / "SegmentationClass" / f"{f.parent.name}_{f.stem}.png"
        import PIL.Image

        ours = np.asarray(PIL.Image.open(voc_png))
        assert np.array_equal(ours, np.where(theirs == -1, 255, theirs))


def test_correction_saved_without_image_data_uses_the_crop(tmp_path):
    from workflow_scripts.errors import InputError

    path, crop = synthetic_document(tmp_path)
    doc = json.loads(path.read_text())
    with_data = voc.convert(doc, "A_B1", tmp_path / "a", image_format="jpg")
    doc["imageData"] = None  # Labelme's "Save With Image Data" unchecked
    without = voc.convert(doc, "B_B1", tmp_path / "b", image_format="jpg", crop=tmp_path / "crop.png")
    assert np.array_equal(with_data, without)
    with pytest.raises(InputError, match="no embedded imageData"):
        voc.convert(doc, "C_B1", tmp_path / "c", image_format="jpg")


# ---------------------------------------------------------------- Labelme's own examples (real files)

EXAMPLES = "examples/semantic_segmentation"


@pytest.fixture(scope="module")
def labelme_examples():
    from realfiles import fetch

    return fetch("labelme") / EXAMPLES


@pytest.mark.parametrize("stem", ["2011_000003", "2011_000006", "2011_000025"])
def test_labelmes_own_examples_convert_exactly_as_labelme2voc_did(labelme_examples, tmp_path, stem):
    """Real Labelme files, saved without image data: our VOC label equals the one Labelme's labelme2voc shipped."""
    import PIL.Image

    names = tuple((labelme_examples / "labels.txt").read_text().splitlines()[1:])  # after __ignore__
    src = labelme_examples / "data_annotated" / f"{stem}.json"
    doc = json.loads(src.read_text())
    assert not doc.get("imageData")  # the image comes from imagePath, next to the file
    label = voc.convert(doc, stem, tmp_path, image_format="jpg", class_names=names, base=src.parent)
    values = voc.label_values(names)
    now, _ = shapes_to_label(label.shape, doc["shapes"], {k: (-1 if v == voc.VOID else v) for k, v in values.items()})
    np.testing.assert_array_equal(label, np.where(now == -1, voc.VOID, now))  # the installed Labelme, exactly
    shipped = np.asarray(PIL.Image.open(labelme_examples / "data_dataset_voc/SegmentationClass" / f"{stem}.png"))
    assert (label == shipped).mean() > 0.9999  # the release's labelme2voc output (an older Labelme drew it)
    assert len(np.unique(label)) >= 3
    ours = np.asarray(PIL.Image.open(tmp_path / "JPEGImages" / f"{stem}.jpg").convert("L"))
    jpg = np.asarray(PIL.Image.open(src.parent / doc["imagePath"]).convert("L"))
    assert ours.shape == jpg.shape and np.abs(ours.astype(int) - jpg).mean() < 2


def test_labelme_primitives_that_enclose_no_pixels_are_a_clear_error(labelme_examples, tmp_path):
    import subprocess
    import sys

    src = labelme_examples.parent / "primitives/primitives.json"
    doc = json.loads(src.read_text())
    values = {s["label"]: 1 for s in doc["shapes"]}
    areas = [s for s in doc["shapes"] if s["shape_type"] in voc.AREAS]
    assert {s["shape_type"] for s in areas} == {"rectangle", "circle", "polygon"}
    label = voc.rasterize(areas, (doc["imageHeight"], doc["imageWidth"]), values)
    theirs, _ = shapes_to_label((doc["imageHeight"], doc["imageWidth"]), areas, values)
    np.testing.assert_array_equal(label, theirs)
    res = subprocess.run(
        [
            sys.executable,
            "-m",
            "workflow_scripts.voc",
            "image",
            f"--root={tmp_path}",
            "--image-id=x",
            "--image-format=jpg",
            "--participant=P001",
            "--biopsy=B1",
            str(src),
        ],
        capture_output=True,
        text=True,
    )
    assert res.returncode == 1 and "Traceback" not in res.stderr
    assert (
        "tractmap error: participant P001, biopsy B1" in res.stderr
        and "unknown label 'rectangle' (shape 1)" in res.stderr
    )
