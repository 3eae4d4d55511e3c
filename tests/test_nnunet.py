"""The nnU-Net export, checked by nnU-Net v2's own dataset integrity check and its documented format."""

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import PIL.Image
import pytest
from conftest import ROOT, write_voc

from workflow_scripts import nnunet
from workflow_scripts.errors import InputError


def small_voc(root: Path) -> dict[str, list[str]]:
    """A VOC dataset of two participants per split, with void pixels (255) in every label."""
    splits = {"train": ["P01_B1", "P01_B2", "P02_B1"], "val": ["P03_B1", "P04_B1"], "test": ["P05_B1", "P06_B1"]}
    write_voc(root, splits, shape=(40, 64), void_rows=4, seed=1)
    return splits


def export_cli(voc: Path, out: Path) -> subprocess.CompletedProcess:
    lists = {s: voc / f"ImageSets/Segmentation/{s}.txt" for s in ("train", "val", "test")}
    cmd = [sys.executable, "-m", "workflow_scripts.nnunet", f"--voc={voc}", f"--out={out}", "--name=Tractmap"]
    cmd += [f"--{s}={p}" for s, p in lists.items()]
    return subprocess.run(cmd, capture_output=True, text=True, cwd=ROOT, timeout=120)


def test_export_passes_nnunets_integrity_check_and_keeps_our_split(tmp_path):
    splits = small_voc(tmp_path / "voc")
    out = tmp_path / "Dataset501_Tractmap"
    res = export_cli(tmp_path / "voc", out)
    assert res.returncode == 0, res.stderr
    # nnU-Net v2's own check: file names, channels, labels, shapes, geometry
    from nnunetv2.experiment_planning.verify_dataset_integrity import verify_dataset_integrity

    verify_dataset_integrity(str(out), num_processes=1)
    # the documented format, checked independently
    ds = json.loads((out / "dataset.json").read_text())
    assert ds["labels"] == {"background": 0, "cancer": 1, "ignore": 2} and ds["file_ending"] == ".png"
    assert ds["channel_names"] == {"0": "ultrasound"} and ds["numTraining"] == 5
    training = splits["train"] + splits["val"]
    assert sorted(p.name for p in (out / "imagesTr").iterdir()) == sorted(f"{c}_0000.png" for c in training)
    assert sorted(p.name for p in (out / "labelsTr").iterdir()) == sorted(f"{c}.png" for c in training)
    assert sorted(p.name for p in (out / "imagesTs").iterdir()) == sorted(f"{c}_0000.png" for c in splits["test"])
    assert json.loads((out / "splits_final.json").read_text()) == [{"train": splits["train"], "val": splits["val"]}]
    voc_label = np.asarray(PIL.Image.open(tmp_path / "voc/SegmentationClass/P01_B1.png"))
    label = np.asarray(PIL.Image.open(out / "labelsTr/P01_B1.png"))
    assert np.array_equal(label == 2, voc_label == 255) and np.array_equal(label == 1, voc_label == 1)
    image = np.asarray(PIL.Image.open(out / "imagesTr/P01_B1_0000.png"))
    assert image.ndim == 2 and image.shape == voc_label.shape  # one grayscale channel
    # a rerun replaces the folder: no stale cases survive
    (out / "imagesTr/stale_0000.png").write_bytes(b"x")
    assert export_cli(tmp_path / "voc", out).returncode == 0 and not (out / "imagesTr/stale_0000.png").exists()


def test_unknown_label_values_are_refused():
    with pytest.raises(InputError) as e:
        nnunet.nnunet_label(np.array([[0, 1, 7]], np.uint8))
    assert "[7]" in e.value.what and "voc_image" in e.value.hint


@pytest.mark.parametrize("image_format", ["jpg", "png"])
def test_exported_images_are_the_lossless_crop_never_a_decoded_jpeg(tmp_path, image_format):
    """voc.image_format sets only JPEGImages/; the nnU-Net images (and training's) are the crop's own pixels."""
    import base64
    import io

    from workflow_scripts import data, voc

    rng = np.random.default_rng(7)
    crops = {}
    for case in ("P01_B1", "P02_B1"):
        crops[case] = rng.integers(0, 256, (24, 40), dtype=np.uint8)  # noise: JPEG cannot keep it
        buf = io.BytesIO()
        PIL.Image.fromarray(crops[case]).save(buf, format="PNG")
        doc = {
            "shapes": [{"label": "cancer", "points": [[5, 5], [30, 5], [30, 18], [5, 18]], "shape_type": "polygon"}],
            "imageData": base64.b64encode(buf.getvalue()).decode(),
            "imageHeight": 24,
            "imageWidth": 40,
        }
        voc.convert(doc, case, tmp_path / "voc", image_format=image_format)
    exported = np.asarray(PIL.Image.open(tmp_path / f"voc/JPEGImages/P01_B1.{image_format}").convert("L"))
    assert np.array_equal(exported, crops["P01_B1"]) == (image_format == "png")
    assert not (tmp_path / "voc/JPEGImages" / f"P01_B1.{'png' if image_format == 'jpg' else 'jpg'}").exists()
    out = tmp_path / "Dataset501_Tractmap"
    splits = {"train": ["P01_B1"], "val": [], "test": ["P02_B1"]}
    nnunet.export(tmp_path / "voc", out, splits, [{"train": ["P01_B1"], "val": []}], "Tractmap")
    assert np.array_equal(np.asarray(PIL.Image.open(out / "imagesTr/P01_B1_0000.png")), crops["P01_B1"])
    assert np.array_equal(np.asarray(PIL.Image.open(out / "imagesTs/P02_B1_0000.png")), crops["P02_B1"])
    # training reads the same lossless pixels
    (tmp_path / "voc/ImageSets/Segmentation").mkdir(parents=True)
    (tmp_path / "voc/ImageSets/Segmentation/train.txt").write_text("P01_B1\n")
    x, _, _ = data.load_split(tmp_path / "voc", "train")
    assert np.array_equal(x[0, 0].numpy(), crops["P01_B1"])
