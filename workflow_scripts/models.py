"""Segmentation models: construction, ImageNet backbones, the forward pass and loading a checkpoint.

Training, prediction and inference all build and run models through here.  The
paper's two models come from torchvision; the U-Net baseline is MONAI's
``BasicUNet`` (MONAI is the medical-imaging library of the PyTorch ecosystem and
needs nothing beyond torch and numpy; its BasicUNet is the plain two-convolution
U-Net that nnU-Net also builds on), randomly initialised; ``unet_resnet`` is
segmentation-models-pytorch's U-Net on a ResNet-34 encoder that can start from
torchvision's ImageNet weights, so that the U-Net is not the only model without
pretraining.  Every model returns ``{"out": logits}``.

ImageNet weights are read from the torch hub cache ($TORCH_HOME/hub/checkpoints); on a
machine with internet, ``python -m workflow_scripts.models --fetch resnet34 resnet101``
puts them there (copy that folder to an offline machine).
"""

from __future__ import annotations

import argparse
from pathlib import Path

import torch
import torch.nn.functional as F
from torchvision.models import ResNet34_Weights, ResNet101_Weights, segmentation

from workflow_scripts.errors import InputError

TORCHVISION = {"fcn_resnet101": segmentation.fcn_resnet101, "deeplabv3_resnet101": segmentation.deeplabv3_resnet101}
ARCHITECTURES = (*TORCHVISION, "unet", "unet_resnet")
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


class PaddedTo(torch.nn.Module):
    """A network whose input sides must be multiples of ``multiple``: pads (zeros, right and bottom) and crops
    the logits back, so that any crop size can be given."""

    def __init__(self, net: torch.nn.Module, multiple: int = 32):
        super().__init__()
        self.net, self.multiple = net, multiple

    def forward(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        h, w = x.shape[-2:]
        x = F.pad(x, (0, -w % self.multiple, 0, -h % self.multiple))
        return {"out": self.net(x)[..., :h, :w]}


def unet_resnet() -> torch.nn.Module:
    """segmentation-models-pytorch's U-Net on a ResNet-34 encoder (random weights), 3-channel input, two classes."""
    import segmentation_models_pytorch as smp

    return PaddedTo(smp.Unet("resnet34", encoder_weights=None, in_channels=3, classes=2))


IMAGENET = "imagenet"  # backbone_weights: torchvision's ImageNet ResNet (-101, the paper's; -34 for unet_resnet)
IMAGENET_WEIGHTS = ResNet101_Weights.IMAGENET1K_V1
RESNETS = {"resnet101": ResNet101_Weights.IMAGENET1K_V1, "resnet34": ResNet34_Weights.IMAGENET1K_V1}
FETCH_HINT = (
    "on a machine with internet run `python -m workflow_scripts.models --fetch {name}` (it writes {path}) and "
    "copy that file to the same place here ($TORCH_HOME/hub/checkpoints; docs/training.md), "
    "or set backbone_weights to a local file or null"
)


def imagenet_file(name: str) -> Path:
    """Where torchvision caches a ResNet's ImageNet weights ($TORCH_HOME/hub/checkpoints)."""
    return Path(torch.hub.get_dir()) / "checkpoints" / Path(RESNETS[name].url).name


def fetch(name: str) -> Path:
    """Download a ResNet's ImageNet weights into the torch hub cache (hash checked); returns the file."""
    torch.hub.load_state_dict_from_url(RESNETS[name].url, progress=True, check_hash=True)
    return imagenet_file(name)


def backbone_state(backbone_weights: str) -> dict[str, torch.Tensor]:
    """A ResNet-101 state_dict: torchvision's ImageNet weights (cached, else downloaded) or a local file."""
    if backbone_weights == IMAGENET:
        path = imagenet_file("resnet101")
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


def encoder_state(backbone_weights: str) -> dict[str, torch.Tensor]:
    """A ResNet-34 state_dict for unet_resnet: ImageNet's from the torch hub cache (never downloaded: the
    training machines are offline) or a local file."""
    path = imagenet_file("resnet34") if backbone_weights == IMAGENET else Path(backbone_weights)
    if not path.is_file():
        what = "the ImageNet ResNet-34 weights are not cached" if backbone_weights == IMAGENET else "no such file"
        raise InputError(f"unet_resnet encoder weights {path}: {what}", FETCH_HINT.format(name="resnet34", path=path))
    return torch.load(path, map_location="cpu", weights_only=True)


def load_encoder(model: torch.nn.Module, backbone_weights: str) -> None:
    """Load ResNet-34 weights into unet_resnet's encoder; a file that is not a ResNet-34 is an error."""
    state = {k: v for k, v in encoder_state(backbone_weights).items() if not k.startswith("fc.")}
    encoder = model.net.encoder
    missing = sorted(set(encoder.state_dict()) - set(state))
    if missing:
        raise InputError(
            f"unet_resnet encoder weights {backbone_weights} lack {len(missing)} ResNet-34 tensors (e.g. {missing[0]})",
            "use torchvision's resnet34 state_dict (python -m workflow_scripts.models --fetch resnet34)",
        )
    encoder.load_state_dict(state)


def build_model(
    arch: str, aux: bool = False, backbone_weights: str | None = None, features: list[int] | None = None
) -> torch.nn.Module:
    """A model with random weights, or with an ImageNet ResNet backbone (``imagenet`` or a local file): ResNet-101
    for torchvision's, ResNet-34 for unet_resnet."""
    if arch not in ARCHITECTURES:
        raise InputError(f"unknown architecture {arch!r}", f"use one of {sorted(ARCHITECTURES)} in config train.models")
    if arch == "unet":
        if aux or backbone_weights:
            raise InputError(
                "the unet has no auxiliary head and no ResNet backbone to load weights into",
                "set aux: false and backbone_weights: null in its train.models entry",
            )
        return unet(features)
    if arch == "unet_resnet":
        if aux:
            raise InputError("unet_resnet has no auxiliary head", "set aux: false in its train.models entry")
        model = unet_resnet()
        if backbone_weights:
            load_encoder(model, backbone_weights)
        return model
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


def parser() -> argparse.ArgumentParser:
    """``python -m workflow_scripts.models --fetch NAME``: the backbones whose weights to fetch."""
    p = argparse.ArgumentParser(description="fetch ImageNet backbone weights into the torch hub cache (needs internet)")
    p.add_argument("--fetch", nargs="+", choices=sorted(RESNETS), required=True)
    return p


def main(argv: list[str] | None = None) -> None:
    for name in parser().parse_args(argv).fetch:
        print(f"{name}: {fetch(name)}")


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


if __name__ == "__main__":
    main()
