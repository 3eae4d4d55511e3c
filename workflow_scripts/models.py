"""Segmentation models: construction, ImageNet backbones, the forward pass and loading a checkpoint.

Training, prediction and inference all build and run models through here.  The
paper's two models come from torchvision; the U-Net baseline is MONAI's
``BasicUNet`` (MONAI is the medical-imaging library of the PyTorch ecosystem and
needs nothing beyond torch and numpy; its BasicUNet is the plain two-convolution
U-Net that nnU-Net also builds on).  Every model returns ``{"out": logits}``.
"""

from __future__ import annotations

from pathlib import Path

import torch
from torchvision.models import ResNet101_Weights, segmentation

from workflow_scripts.errors import InputError

TORCHVISION = {"fcn_resnet101": segmentation.fcn_resnet101, "deeplabv3_resnet101": segmentation.deeplabv3_resnet101}
ARCHITECTURES = (*TORCHVISION, "unet")
UNET_FEATURES = (32, 64, 128, 256, 512, 32)  # MONAI's BasicUNet default; config train.models.<name>.features


class LogitsAsDict(torch.nn.Module):
    """A network that returns logits, answering ``{"out": logits}`` like torchvision's segmentation models."""

    def __init__(self, net: torch.nn.Module):
        super().__init__()
        self.net = net

    def forward(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        return {"out": self.net(x)}


def unet(features: list[int] | None) -> torch.nn.Module:
    """MONAI's BasicUNet for 2-D, 3-channel input and two classes."""
    from monai.networks.nets import BasicUNet

    return LogitsAsDict(
        BasicUNet(spatial_dims=2, in_channels=3, out_channels=2, features=tuple(features or UNET_FEATURES))
    )


IMAGENET = "imagenet"  # train.backbone_weights: torchvision's ImageNet ResNet-101, as the paper's configs start from
IMAGENET_WEIGHTS = ResNet101_Weights.IMAGENET1K_V1


def imagenet_file() -> Path:
    """Where torchvision caches the ImageNet ResNet-101 weights ($TORCH_HOME/hub/checkpoints)."""
    return Path(torch.hub.get_dir()) / "checkpoints" / Path(IMAGENET_WEIGHTS.url).name


def backbone_state(backbone_weights: str) -> dict[str, torch.Tensor]:
    """A ResNet-101 state_dict: torchvision's ImageNet weights (cached, else downloaded) or a local file."""
    if backbone_weights == IMAGENET:
        path = imagenet_file()
        if not path.is_file():
            try:
                torch.hub.load_state_dict_from_url(IMAGENET_WEIGHTS.url, progress=False, check_hash=True)
            except Exception as e:  # noqa: BLE001 - no network, a proxy, a partial download: all mean "not here"
                raise InputError(
                    f"the ImageNet ResNet-101 weights are not cached and could not be downloaded ({type(e).__name__})",
                    f"download {IMAGENET_WEIGHTS.url} and put it at {path}, "
                    "or set train.backbone_weights to a local file or null",
                ) from None
    else:
        path = Path(backbone_weights)
        if not path.is_file():
            raise InputError(
                f"backbone weights file {path} does not exist",
                "set train.backbone_weights to imagenet, a local ResNet-101 state_dict (.pth), or "
                "null for random weights",
            )
    return torch.load(path, map_location="cpu", weights_only=True)


def build_model(
    arch: str, aux: bool = False, backbone_weights: str | None = None, features: list[int] | None = None
) -> torch.nn.Module:
    """A model with random weights, or (torchvision's) with an ImageNet ResNet-101 backbone (``imagenet`` or a
    local file)."""
    if arch not in ARCHITECTURES:
        raise InputError(f"unknown architecture {arch!r}", f"use one of {sorted(ARCHITECTURES)} in config train.models")
    if arch == "unet":
        if aux or backbone_weights:
            raise InputError(
                "the unet has no auxiliary head and no ResNet backbone to load weights into",
                "set aux: false and backbone_weights: null in its train.models entry",
            )
        return unet(features)
    model = TORCHVISION[arch](weights=None, weights_backbone=None, num_classes=2, aux_loss=aux)
    if backbone_weights:
        state = backbone_state(backbone_weights)
        missing, _ = model.backbone.load_state_dict(
            {k: v for k, v in state.items() if not k.startswith("fc.")}, strict=False
        )
        if missing:
            raise InputError(
                f"backbone weights {backbone_weights} lack {len(missing)} ResNet-101 tensors (e.g. {missing[0]})",
                "use torchvision's resnet101 state_dict",
            )
    return model


def forward(model: torch.nn.Module, x: torch.Tensor, amp: bool) -> dict[str, torch.Tensor]:
    with torch.autocast("cuda", dtype=torch.bfloat16, enabled=amp):
        return model(
            x.expand(-1, 3, -1, -1).contiguous(memory_format=torch.channels_last) if amp else x.expand(-1, 3, -1, -1)
        )


def load_checkpoint(path: Path, device: torch.device, normalise: str | None = None) -> tuple[torch.nn.Module, dict]:
    """A trained model.pt: the selected model (eval mode, on ``device``) and its metadata.

    ``ck["norm"]`` is the input normalisation the model was trained with (``kind`` zscore, as older
    checkpoints without one were); a ``normalise`` that names another kind is an error.
    """
    if not Path(path).is_file():
        raise InputError(
            f"model file {path} does not exist", "train it first (snakemake ... results/train/<model>/model.pt)"
        )
    ck = torch.load(path, map_location="cpu", weights_only=False)
    if not isinstance(ck, dict) or "model" not in ck or "norm" not in ck:
        raise InputError(f"{path} is not a tractmap model checkpoint", "use results/train/<model>/model.pt")
    ck["norm"] = {"kind": "zscore", **ck["norm"]}
    if normalise is not None and normalise != ck["norm"]["kind"]:
        raise InputError(
            f"{path} was trained with train.normalise {ck['norm']['kind']}, not {normalise}",
            "the model's own normalisation is applied from model.pt: leave the setting out, or retrain the model "
            f"with normalise: {normalise}",
        )
    model = build_model(ck["config"]["arch"], ck["config"]["aux"], None, ck["config"].get("features"))
    model.load_state_dict(ck["model"])
    return model.to(device).eval(), ck
