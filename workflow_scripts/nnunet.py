"""nnU-Net export: the VOC dataset in nnU-Net v2's raw format, with our participant splits.

nnU-Net is the field's reference segmentation method.  This writes, under
``<out>/Dataset<ID>_<name>/``:

* ``imagesTr/<case>_0000.png`` and ``labelsTr/<case>.png`` for the train and
  validation images, ``imagesTs/<case>_0000.png`` for the test images (grayscale
  PNG, read by nnU-Net's ``NaturalImage2DIO``), copied from the VOC's lossless
  PNGImages/, never from a decoded JPEG;
* labels 0 background, 1 cancer and 2 ``ignore`` (our void, 255): nnU-Net leaves
  pixels of its ``ignore`` label out of the loss, as our training does;
* ``dataset.json`` (channel names, labels, numTraining, file ending);
* ``splits_final.json``: one ``{"train": [...], "val": [...]}`` entry per fold, so
  that ``nnUNetv2_train <ID> 2d <fold>`` trains on exactly our participant split
  (our cross-validation folds when ``split.folds`` is on, else fold 0 is our
  train/val split).
  nnU-Net reads it from ``$nnUNet_preprocessed/Dataset<ID>_<name>/``: copy it there
  after ``nnUNetv2_plan_and_preprocess``.
"""

from __future__ import annotations

import argparse
import json
import shutil
from pathlib import Path

import numpy as np
import PIL.Image

from workflow_scripts.errors import InputError, run_cli
from workflow_scripts.voc import VOID, read_image

LABELS = {"background": 0, "cancer": 1, "ignore": 2}  # nnU-Net wants the ignore label last and consecutive


def dataset_json(n_training: int, name: str) -> dict:
    """nnU-Net v2's dataset.json for grayscale PNG crops with an ignore label."""
    return {
        "name": name,
        "description": "Ultrasound crops along core-needle-biopsy tracts with cancer labels from histology (tractmap)",
        "channel_names": {"0": "ultrasound"},
        "labels": LABELS,
        "numTraining": n_training,
        "file_ending": ".png",
        "overwrite_image_reader_writer": "NaturalImage2DIO",
    }


def nnunet_label(voc_label: np.ndarray) -> np.ndarray:
    """A VOC label (0, 1, 255 void) as nnU-Net's (0, 1, 2 ignore)."""
    if not np.isin(voc_label, (0, 1, VOID)).all():
        bad = sorted(set(np.unique(voc_label).tolist()) - {0, 1, VOID})
        raise InputError(f"label values {bad} are not 0, 1 or 255", "rerun the voc_image rule for this image")
    return np.where(voc_label == VOID, LABELS["ignore"], voc_label).astype(np.uint8)


def export(voc: Path, out: Path, splits: dict[str, list[str]], folds: list[dict[str, list[str]]], name: str) -> int:
    """Write the raw dataset and splits_final.json into ``out``; returns the number of training cases."""
    if out.exists():
        shutil.rmtree(out)
    for sub in ("imagesTr", "labelsTr", "imagesTs"):
        (out / sub).mkdir(parents=True)
    training = splits["train"] + splits["val"]
    for case in training + splits["test"]:
        folder = "imagesTs" if case in splits["test"] else "imagesTr"
        PIL.Image.fromarray(read_image(voc, case)).save(out / folder / f"{case}_0000.png")  # lossless, never a JPEG
        if folder == "imagesTr":
            label = nnunet_label(np.asarray(PIL.Image.open(voc / "SegmentationClass" / f"{case}.png")))
            PIL.Image.fromarray(label).save(out / "labelsTr" / f"{case}.png")
    (out / "dataset.json").write_text(json.dumps(dataset_json(len(training), name), indent=1))
    (out / "splits_final.json").write_text(json.dumps(folds, indent=1))
    return len(training)


def parser() -> argparse.ArgumentParser:
    """The command line; every setting that config.yaml carries is a required option the rule passes."""
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--voc", required=True, help="the VOC dataset root")
    p.add_argument("--out", required=True, help="Dataset<ID>_<name> folder to write")
    p.add_argument("--name", required=True, help="the dataset's name (config nnunet.name)")
    for split in ("train", "val", "test"):
        p.add_argument(f"--{split}", required=True, help=f"ImageSets/Segmentation/{split}.txt")
    p.add_argument("--folds", nargs="*", default=[], help="cross-validation lists: fold0_train, fold0_val, ...")
    return p


def main(argv: list[str] | None = None) -> None:
    a = parser().parse_args(argv)

    def go() -> None:
        splits = {s: Path(getattr(a, s)).read_text().split() for s in ("train", "val", "test")}
        lists = [Path(f).read_text().split() for f in a.folds if f]
        # our cross-validation folds, or else one fold: our train/val split
        folds = [{"train": t, "val": v} for t, v in zip(lists[::2], lists[1::2], strict=True)] or [
            {"train": splits["train"], "val": splits["val"]}
        ]
        n = export(Path(a.voc), Path(a.out), splits, folds, a.name)
        print(f"nnU-Net raw dataset {a.out}: {n} training cases, {len(splits['test'])} test cases, {len(folds)} fold")

    run_cli(go, file=a.voc)


if __name__ == "__main__":
    main()
