"""A trained model's Dice on the crops it was trained on and on the crops tractmap-infer cuts.

Training and the evaluation score two-frame crops (the tract from the pre- and post-fire frames);
``tractmap-infer`` cuts its crop from the pre-fire frame alone, T1 one throw (the model's
``crop.throw_mm``) beyond the tip it finds.  For each image of a VOC split this predicts both crops
with the same model: the VOC image as it is, and the single-frame crop of the biopsy's ingested
pre-fire frame, whose label is the VOC label carried through the two crops' frames (nearest
neighbour; void outside the two-frame crop).  It prints the cancer Dice both ways: pooled over the
pixels, and the mean and median over the images found by both (NaN where an image has no cancer
in truth or prediction), and the images the single-frame finder could not locate.

    python benchmarks/single_frame_dice.py results results/train/unet/model.pt [--split test] [--tsv out.tsv]
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np
import PIL.Image
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from workflow_scripts import evaluate, infer, models, predict, tract, voc  # noqa: E402
from workflow_scripts import geometry as geo  # noqa: E402
from workflow_scripts.errors import InputError  # noqa: E402


def carry_label(label: np.ndarray, two_frame: dict, one_frame: dict) -> np.ndarray:
    """The two-frame crop's ``label`` on the single-frame crop's pixels (void where the former has none)."""
    one_to_two = geo.compose(
        np.array(one_frame["crop_to_original"]), geo.invert(np.array(two_frame["crop_to_original"]))
    )
    out = geo.warp(label.astype(float), one_to_two, tuple(one_frame["crop_shape"]), order=0, cval=voc.VOID)
    return out.astype(np.uint8)


def single_frame(results: Path, image_id: str, crop: dict) -> tuple[np.ndarray, dict]:
    """The crop tractmap-infer cuts from the biopsy's ingested pre-fire frame, and its frame."""
    participant, biopsy = image_id.split("_", 1)
    ing = results / "ingest" / participant / biopsy
    image = np.asarray(PIL.Image.open(ing / "prefire.png").convert("L"))
    meta = json.loads((ing / "prefire.json").read_text())
    one = infer.locate(image, meta, crop, None, None)
    return tract.crop_strip(
        image, one, tuple(meta["mm_per_px"]), crop["width_mm"], crop["out_mm_per_px"], crop["margin_mm"]
    )


def score(model: torch.nn.Module, norm: dict, image: np.ndarray, label: np.ndarray, dev: torch.device) -> np.ndarray:
    """The confusion counts [[TN, FP], [FN, TP]] of the model's prediction of ``image`` against ``label``."""
    pred = (predict.probability(model, norm, image, dev) >= 0.5).astype(np.uint8)
    return evaluate.confusion(label, pred)


def both_ways(results: Path, model_path: Path, split: str, dev: torch.device) -> tuple[list[dict], list[str]]:
    """Per image of ``split``: the confusion counts on the two-frame and on the single-frame crop."""
    model, ck = models.load_checkpoint(model_path, dev)
    crop = infer.crop_settings(ck, model_path, None)
    root = results / "voc"
    ids = (root / "ImageSets" / "Segmentation" / f"{split}.txt").read_text().split()
    rows, missed = [], []
    for image_id in ids:
        label = np.asarray(PIL.Image.open(root / "SegmentationClass" / f"{image_id}.png"))
        participant, biopsy = image_id.split("_", 1)
        two = json.loads((results / "tract" / participant / f"{biopsy}.json").read_text())
        try:
            crop1, frame1 = single_frame(results, image_id, crop)
        except InputError as e:
            missed.append(f"{image_id}: {e.what}")
            continue
        with torch.no_grad():
            cm2 = score(model, ck["norm"], voc.read_image(root, image_id), label, dev)
            cm1 = score(model, ck["norm"], crop1, carry_label(label, two, frame1), dev)
        rows.append({"image": image_id, "two_frame": cm2, "single_frame": cm1})
    return rows, missed


def report(rows: list[dict], missed: list[str]) -> None:
    """Print pooled, mean and median cancer Dice both ways."""
    print(f"{len(rows)} images scored both ways; single-frame tract not found in {len(missed)}")
    for m in missed:
        print("  ", m)
    for way in ("two_frame", "single_frame"):
        pooled = evaluate.image_metrics(sum(r[way] for r in rows))["dice"]
        per = np.array([evaluate.image_metrics(r[way])["dice"] for r in rows])
        print(
            f"{way:12s} Dice pooled {pooled:.4f}  mean {np.nanmean(per):.4f}  median {np.nanmedian(per):.4f}  "
            f"(defined in {np.isfinite(per).sum()} images)"
        )


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("results", type=Path, help="a finished run's results folder (voc/, tract/, ingest/)")
    p.add_argument("model", type=Path, help="a model.pt")
    p.add_argument("--split", default="test")
    p.add_argument("--threads", type=int, default=0)
    p.add_argument("--tsv", type=Path, help="write per-image Dice both ways here")
    a = p.parse_args()
    if a.threads:
        torch.set_num_threads(a.threads)
    dev = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    rows, missed = both_ways(a.results, a.model, a.split, dev)
    if not rows:
        raise SystemExit(f"no image of the {a.split} split could be scored both ways")
    report(rows, missed)
    if a.tsv:
        import pandas as pd

        dice = [{k: evaluate.image_metrics(r[k])["dice"] for k in ("two_frame", "single_frame")} for r in rows]
        pd.DataFrame([{"image": r["image"], **d} for r, d in zip(rows, dice, strict=True)]).to_csv(
            a.tsv, sep="\t", index=False, float_format="%.4f"
        )


if __name__ == "__main__":
    main()
