"""Training data: a VOC split as device-ready tensors, the input normalisation, and augmentation.

The whole (small) dataset lives on the device; augmentation runs there too, in
batches: first the crop shift (the crop tractmap-infer would cut: T0 moved along
and across the tract, the axis turned about T0, the length changed; see
``crop_shift``), then one random geometry (width crop, horizontal flip, rotation)
for image and mask, and a random gain and offset of the intensities.

Normalisation (``train.normalise``), recorded in model.pt and applied from there by
predict and tractmap-infer: ``zscore`` subtracts the train split's mean and divides by
its SD (one grey channel, which the models see repeated to three); ``imagenet`` repeats
the grey channel to three and scales each by ImageNet's mean and std, the statistics a
pretrained backbone was trained with.
"""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import PIL.Image
import torch
import torch.nn.functional as F

from workflow_scripts.errors import InputError
from workflow_scripts.voc import VOID, read_image


def load_split(root: Path, split: str, multiple: int = 8) -> tuple[torch.Tensor, torch.Tensor, list[str]]:
    """Images (N, 1, H, W) uint8 and labels (N, H, W) uint8 of one split, padded (void) to a common size."""
    ids = (root / "ImageSets" / "Segmentation" / f"{split}.txt").read_text().split()
    if not ids:
        raise InputError(f"the {split} split has no images", "add participants, or set their split in participants.tsv")
    imgs = [read_image(root, i) for i in ids]
    labs = [np.asarray(PIL.Image.open(root / "SegmentationClass" / f"{i}.png")) for i in ids]
    h = max(a.shape[0] for a in imgs)
    w = max(a.shape[1] for a in imgs)
    h, w = -(-h // multiple) * multiple, -(-w // multiple) * multiple
    x = np.zeros((len(ids), 1, h, w), np.uint8)
    y = np.full((len(ids), h, w), VOID, np.uint8)
    for k, (a, b) in enumerate(zip(imgs, labs, strict=True)):
        x[k, 0, : a.shape[0], : a.shape[1]] = a
        y[k, : b.shape[0], : b.shape[1]] = b
    return torch.from_numpy(x), torch.from_numpy(y), ids


def crop_widths(root: Path, ids: list[str]) -> torch.Tensor:
    """Each crop's own width in px (before ``load_split``'s padding): where its strip ends."""
    return torch.tensor([PIL.Image.open(root / "SegmentationClass" / f"{i}.png").size[0] for i in ids])


def norm_stats(x: torch.Tensor, y: torch.Tensor) -> tuple[float, float]:
    """Mean and SD of the labelled (non-void) pixels: the z-score statistics."""
    v = x[:, 0][y != VOID].float()
    return float(v.mean()), float(v.std().clamp_min(1e-6))


NORMALISE = ("zscore", "imagenet")
IMAGENET_MEAN = (0.485, 0.456, 0.406)  # torchvision's ImageNet statistics (RGB, intensities 0-1)
IMAGENET_STD = (0.229, 0.224, 0.225)


def norm_params(kind: str, x: torch.Tensor, y: torch.Tensor) -> dict:
    """The normalisation recorded in model.pt: its kind and per-channel mean and SD in grey levels (0-255)."""
    if kind == "zscore":
        mean, std = norm_stats(x, y)
        return {"kind": kind, "mean": mean, "std": std}
    if kind == "imagenet":
        return {"kind": kind, "mean": [255 * m for m in IMAGENET_MEAN], "std": [255 * s for s in IMAGENET_STD]}
    raise InputError(f"unknown normalisation {kind!r}", f"set train.normalise to one of {', '.join(NORMALISE)}")


def normalise(x: torch.Tensor, norm: dict) -> torch.Tensor:
    """Grey images (N, 1, H, W) as model input: (N, 1, H, W) z-scored, or (N, 3, H, W) ImageNet-scaled."""
    mean = torch.tensor(norm["mean"], dtype=torch.float32, device=x.device).reshape(1, -1, 1, 1)
    std = torch.tensor(norm["std"], dtype=torch.float32, device=x.device).reshape(1, -1, 1, 1)
    return (x.float() - mean) / std


# ------------------------------------------------------------------ augmentation


def geometric(
    x: torch.Tensor, y: torch.Tensor, crop_w: int, max_deg: float, gen: torch.Generator
) -> tuple[torch.Tensor, torch.Tensor]:
    """Random width crop, horizontal flip and rotation: one geometry for image and mask.

    x: (B, C, H, W) float; y: (B, H, W) long with VOID (also where rotation leaves the image).
    """
    b, _, h, w = x.shape
    dev = x.device
    if crop_w < w:
        x0 = torch.randint(0, w - crop_w + 1, (b,), generator=gen).tolist()
        x = torch.stack([x[i, :, :, s : s + crop_w] for i, s in enumerate(x0)])
        y = torch.stack([y[i, :, s : s + crop_w] for i, s in enumerate(x0)])
        w = crop_w
    flip = torch.rand(b, generator=gen) < 0.5
    ang = (torch.rand(b, generator=gen) * 2 - 1) * math.radians(max_deg)
    cos, sin, sx = torch.cos(ang), torch.sin(ang), torch.where(flip, -1.0, 1.0)
    aspect = w / h  # rotate in pixel space, not in normalised coordinates
    theta = torch.zeros(b, 2, 3)
    theta[:, 0, 0], theta[:, 0, 1] = cos * sx, -sin / aspect
    theta[:, 1, 0], theta[:, 1, 1] = sin * aspect * sx, cos
    grid = F.affine_grid(theta.to(dev, x.dtype), [b, 1, h, w], align_corners=False)
    x = F.grid_sample(x, grid, mode="bilinear", padding_mode="zeros", align_corners=False)
    inside = F.grid_sample(torch.ones_like(x[:, :1]), grid, mode="nearest", padding_mode="zeros", align_corners=False)
    y = (
        F.grid_sample(y.unsqueeze(1).to(x.dtype), grid, mode="nearest", padding_mode="zeros", align_corners=False)
        .squeeze(1)
        .long()
    )
    y[inside.squeeze(1) < 0.5] = VOID
    return x, y


SHIFT_KEYS = ("shift_along_mm", "shift_across_mm", "shift_deg", "shift_length_mm")


def shift_settings(cfg: dict) -> dict[str, float]:
    """The crop-shift augmentation's half-ranges (config train.shift_*; 0, i.e. off, where a config predates them)."""
    return {k: float(cfg.get(k, 0.0)) for k in SHIFT_KEYS}


def tract_origin(crop: dict) -> tuple[float, float]:
    """T0's (x, y) in a training crop's pixels: ``margin_mm`` in from the left, on the middle row."""
    rows = int(round(crop["width_mm"] / crop["out_mm_per_px"])) | 1  # as geometry.tract_crop_frame
    return crop["margin_mm"] / crop["out_mm_per_px"], (rows - 1) / 2


def recrop(
    x: torch.Tensor,
    y: torch.Tensor,
    widths: torch.Tensor,
    move: torch.Tensor,
    origin: tuple[float, float],
    fill: torch.Tensor,
) -> tuple[torch.Tensor, torch.Tensor]:
    """The strips cut with T0 moved and the axis turned, as ``tract.crop_strip`` would cut them.

    ``move`` (B, 4), in crop px and radians: T0's shift along and across the axis, the axis turn about T0,
    and the length change. A new crop pixel (u, v) is read at T0 + shift + R(turn) (u - x0, v - y0) of the
    old one; what lies beyond the old strip or the new strip's end is ``fill`` (C,) and void.
    """
    b, c, h, w = x.shape
    x0, y0 = origin
    da, dc, turn, dl = (move[:, k].to(x.device, x.dtype).reshape(b, 1, 1) for k in range(4))
    v, u = torch.meshgrid(
        torch.arange(h, device=x.device, dtype=x.dtype) - y0,
        torch.arange(w, device=x.device, dtype=x.dtype) - x0,
        indexing="ij",
    )
    src_x = x0 + da + torch.cos(turn) * u - torch.sin(turn) * v
    src_y = y0 + dc + torch.sin(turn) * u + torch.cos(turn) * v
    grid = torch.stack([(2 * src_x + 1) / w - 1, (2 * src_y + 1) / h - 1], -1)  # align_corners=False
    fill = fill.to(x.device, x.dtype).reshape(1, -1, 1, 1)
    out = F.grid_sample(x - fill, grid, mode="bilinear", padding_mode="zeros", align_corners=False) + fill
    lab = F.grid_sample(y.unsqueeze(1).to(x.dtype), grid, mode="nearest", padding_mode="border", align_corners=False)
    lab = lab.squeeze(1).round().long()
    strip = widths.to(x.device, x.dtype).reshape(b, 1, 1)
    inside = (src_x > -0.5) & (src_x < torch.clamp(strip, max=w) - 0.5) & (src_y > -0.5) & (src_y < h - 0.5)
    inside &= (u + x0) < strip + dl  # the new strip's own length
    lab[~inside] = VOID
    return torch.where(inside.unsqueeze(1), out, fill), lab


def crop_shift(
    x: torch.Tensor,
    y: torch.Tensor,
    widths: torch.Tensor,
    shift: dict[str, float],
    crop: dict,
    fill: torch.Tensor,
    gen: torch.Generator,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Random crop shift: each strip re-cut as tractmap-infer's single-frame tract might place it.

    T0 along and across the axis, the axis angle and the length are each drawn uniformly within
    +-``shift`` (config train.shift_*, the p95s benchmarks/crop_shift.py measured); image and label move
    together. No draw is made when every range is 0, so the other augmentation stays as it was.
    """
    if not any(shift.values()):
        return x, y
    res = crop["out_mm_per_px"]
    along, across = shift["shift_along_mm"] / res, shift["shift_across_mm"] / res
    half = torch.tensor([along, across, math.radians(shift["shift_deg"]), shift["shift_length_mm"] / res])
    move = (torch.rand(x.shape[0], 4, generator=gen) * 2 - 1) * half
    return recrop(x, y, widths, move, tract_origin(crop), fill)


def intensity(x: torch.Tensor, gen: torch.Generator) -> torch.Tensor:
    """Random gain (0.8-1.2) and offset (+-0.1 SD) per image."""
    b = x.shape[0]
    gain = (0.8 + 0.4 * torch.rand(b, 1, 1, 1, generator=gen)).to(x.device, x.dtype)
    bias = (0.2 * torch.rand(b, 1, 1, 1, generator=gen) - 0.1).to(x.device, x.dtype)
    return x * gain + bias
