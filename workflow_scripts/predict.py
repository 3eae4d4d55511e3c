"""Predict: a trained model's cancer probability for each image of a VOC split.

Writes, per image, ``<id>_prob.npy`` (float32 probability of cancer, the image's
size) and ``<id>.png`` (palette label: 0 background, 1 cancer).
"""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np
import torch

from workflow_scripts import data, models, voc
from workflow_scripts.errors import run_cli


@torch.no_grad()
def probability(
    model: torch.nn.Module, norm: dict, image: np.ndarray, device: torch.device, multiple: int = 8
) -> np.ndarray:
    """Cancer probability (H, W) of one grayscale uint8 image, normalised as the model was trained (``norm``)."""
    h, w = image.shape
    hp, wp = -(-h // multiple) * multiple, -(-w // multiple) * multiple
    x = np.zeros((1, 1, hp, wp), np.float32)
    x[0, 0, :h, :w] = image
    x = data.normalise(torch.from_numpy(x).to(device), norm)
    logits = models.forward(model, x, amp=device.type == "cuda")["out"].float()
    return torch.softmax(logits, 1)[0, 1, :h, :w].cpu().numpy()


def predict_split(
    model_path: Path, root: Path, split: str, out: Path, device: torch.device, normalise: str | None = None
) -> int:
    """Write probability maps and labels of every image in ``split``; returns the image count.

    ``normalise``, when given, must be the normalisation the model was trained with."""
    model, ck = models.load_checkpoint(model_path, device, normalise)
    ids = (root / "ImageSets" / "Segmentation" / f"{split}.txt").read_text().split()
    out.mkdir(parents=True, exist_ok=True)
    for image_id in ids:
        img = voc.read_image(root, image_id)
        prob = probability(model, ck["norm"], img, device)
        np.save(out / f"{image_id}_prob.npy", prob.astype(np.float32))
        voc.save_palette_png((prob >= 0.5).astype(np.uint8), out / f"{image_id}.png")
    return len(ids)


def parser() -> argparse.ArgumentParser:
    """The command line; every setting that config.yaml carries is a required option the rule passes."""
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--model", required=True)
    p.add_argument("--voc", required=True)
    p.add_argument("--split", required=True)
    p.add_argument("--out", required=True)
    p.add_argument(
        "--normalise",
        choices=data.NORMALISE,
        help="the model's configured train.normalise: an error if model.pt was trained with another",
    )
    p.add_argument("--threads", type=int, required=True, help="torch threads: the rule's threads (0: torch's choice)")
    return p


def main(argv: list[str] | None = None) -> None:
    a = parser().parse_args(argv)
    if a.threads:
        torch.set_num_threads(a.threads)

    def go() -> None:
        dev = torch.device("cuda" if torch.cuda.is_available() else "cpu")
        n = predict_split(Path(a.model), Path(a.voc), a.split, Path(a.out), dev, a.normalise)
        print(f"predicted {n} {a.split} images with {a.model} on {dev}")

    run_cli(go, file=a.model)


if __name__ == "__main__":
    main()
