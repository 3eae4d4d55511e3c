"""Training throughput (images/s) of tractmap's loop against a conventional baseline.

For each model, in one run on the current device:
  compute-only  tractmap's step on a batch already on the device; on CUDA: bf16 autocast, channels_last,
                torch.compile (one warm-up outside the timing; eager fallback, logged), fused AdamW,
                cudnn.benchmark, no host sync inside the loop
  tractmap      the full loop: batches drawn from a device-resident dataset, augmented on the device
  baseline      the plain fp32 loop: NCHW, eager, default AdamW, augmentation in a CPU DataLoader
                (torchvision transforms, pinned memory), copied per batch
Also per model: the loader's share of the full step (1 - tractmap / compute-only), the peak GPU
memory of the tractmap loop, and the issue's targets (--target-*, and >= 2.5x the baseline).
FLOPs per image = 6 x torchvision's listed GMACs at 520 px, scaled by area; MFU = achieved / --peak-tflops.
On a CPU it runs the same loops (tiny --size for a dry run); nothing there is compiled or fused.

Usage: python benchmarks/train_throughput.py --size 512 --batch 16 --steps 20 [--peak-tflops 989]
"""

from __future__ import annotations

import argparse
import time

import torch
from torchvision.models.segmentation import DeepLabV3_ResNet101_Weights, FCN_ResNet101_Weights

from workflow_scripts import data, models, train

GMACS_520 = {
    "fcn_resnet101": FCN_ResNet101_Weights.DEFAULT.meta["_ops"],
    "deeplabv3_resnet101": DeepLabV3_ResNet101_Weights.DEFAULT.meta["_ops"],
}


def sync(dev: torch.device) -> None:
    if dev.type == "cuda":
        torch.cuda.synchronize()


def timed(fn, steps: int, warmup: int, dev: torch.device) -> float:
    for _ in range(warmup):
        fn()
    sync(dev)
    t = time.perf_counter()
    for _ in range(steps):
        fn()
    sync(dev)
    return time.perf_counter() - t


class CpuAugmented(torch.utils.data.Dataset):
    """The conventional pipeline: per-sample augmentation on the CPU."""

    def __init__(self, x: torch.Tensor, y: torch.Tensor, size: int, deg: float):
        self.x, self.y, self.size, self.deg = x, y, size, deg

    def __len__(self) -> int:
        return len(self.x)

    def __getitem__(self, i: int):
        import torchvision.transforms.v2 as T
        from torchvision import tv_tensors

        img, mask = tv_tensors.Image(self.x[i]), tv_tensors.Mask(self.y[i])
        aug = T.Compose(
            [
                T.RandomCrop(self.size),
                T.RandomHorizontalFlip(),
                T.RandomRotation(self.deg, fill={tv_tensors.Image: 0, tv_tensors.Mask: 255}),
            ]
        )
        img, mask = aug(img, mask)
        return img.float() * (0.8 + 0.4 * torch.rand(1)), mask.long()


def measure(
    name: str, a: argparse.Namespace, dev: torch.device, x_cpu: torch.Tensor, y_cpu: torch.Tensor
) -> dict[str, float]:
    """Images/s of the three loops for one model."""
    amp = dev.type == "cuda"
    s = a.size
    gen = torch.Generator().manual_seed(0)
    weights = torch.tensor([0.3, 0.7], device=dev)
    rates = {}
    # tractmap: compute only, then the full loop with on-device augmentation
    model = models.build_model(name, False, None).to(dev)
    net = model
    if amp:
        model = model.to(memory_format=torch.channels_last)
        torch.backends.cudnn.benchmark = True
        net = train.Compiled(model, print) if a.compile else model
        torch.cuda.reset_peak_memory_stats()
    opt = train.make_optimizer(model, {"lr": 1e-4, "weight_decay": 1e-4}, dev)
    xd, yd = x_cpu.to(dev), y_cpu.to(dev)
    xb, yb = xd[: a.batch, :, :s, :s].contiguous(), yd[: a.batch, :s, :s].contiguous()
    if isinstance(net, train.Compiled):
        t = time.perf_counter()
        net.warm_up(xb, amp)
        sync(dev)
        print(f"{name:22s} torch.compile warm-up {time.perf_counter() - t:.1f} s")
    rates["compute-only"] = (
        a.batch * a.steps / timed(lambda: train.train_step(net, opt, xb, yb, weights, 0.0, amp), a.steps, a.warmup, dev)
    )

    def full_step():
        idx = torch.randint(0, a.images, (a.batch,), generator=gen).to(dev)
        xa, ya = data.geometric(xd[idx], yd[idx], s, 10.0, gen)
        train.train_step(net, opt, data.intensity(xa[..., :s, :], gen), ya[:, :s], weights, 0.0, amp)

    rates["tractmap"] = a.batch * a.steps / timed(full_step, a.steps, a.warmup, dev)
    rates["peak_gib"] = torch.cuda.max_memory_allocated() / 2**30 if amp else float("nan")
    # conventional baseline: fp32, NCHW, CPU DataLoader augmentation
    base = models.build_model(name, False, None).to(dev)
    bopt = torch.optim.AdamW(base.parameters(), 1e-4)
    loader = torch.utils.data.DataLoader(
        CpuAugmented(x_cpu, y_cpu, s, 10.0),
        batch_size=a.batch,
        shuffle=True,
        drop_last=True,
        num_workers=a.workers,
        pin_memory=amp,
        persistent_workers=a.workers > 0,
    )
    it = iter(loader)

    def base_step():
        nonlocal it
        try:
            xc, yc = next(it)
        except StopIteration:
            it = iter(loader)
            xc, yc = next(it)
        train.train_step(base, bopt, xc.to(dev, non_blocking=True), yc.to(dev, non_blocking=True), weights, 0.0, False)

    rates["baseline"] = a.batch * a.steps / timed(base_step, a.steps, a.warmup, dev)
    return rates


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--size", type=int, default=512)
    p.add_argument("--batch", type=int, default=16)
    p.add_argument("--steps", type=int, default=20)
    p.add_argument("--warmup", type=int, default=5)
    p.add_argument("--images", type=int, default=64, help="size of the synthetic device-resident dataset")
    p.add_argument("--peak-tflops", type=float, default=989.0, help="device peak (H100 SXM bf16 dense: 989)")
    p.add_argument("--workers", type=int, default=4)
    p.add_argument("--models", nargs="+", default=list(GMACS_520))
    p.add_argument("--no-compile", dest="compile", action="store_false", help="CUDA: time without torch.compile")
    p.add_argument("--target-fcn", type=float, default=230.0, help="fcn_resnet101 target, img/s (issue 31)")
    p.add_argument("--target-deeplab", type=float, default=200.0, help="deeplabv3_resnet101 target, img/s")
    a = p.parse_args()
    dev = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    amp = dev.type == "cuda"
    gen = torch.Generator().manual_seed(0)
    s = a.size
    x_cpu = torch.randn(a.images, 1, s + 32, s + 32, generator=gen)
    y_cpu = (torch.rand(a.images, s + 32, s + 32, generator=gen) > 0.5).long()
    print(
        f"device {dev} ({torch.cuda.get_device_name() if amp else 'cpu'}), torch {torch.__version__}, "
        f"{s}x{s}, batch {a.batch}"
    )
    targets = {"fcn_resnet101": a.target_fcn, "deeplabv3_resnet101": a.target_deeplab}
    for name in a.models:
        flops_img = 6 * GMACS_520[name] * 1e9 * (s * s) / (520 * 520)
        rates = measure(name, a, dev, x_cpu, y_cpu)
        peak = rates.pop("peak_gib")
        for k, r in rates.items():
            mfu = f"  MFU {r * flops_img / (a.peak_tflops * 1e12):.1%}" if amp else ""
            print(f"{name:22s} {k:13s} {r:8.2f} img/s{mfu}")
        speedup = rates["tractmap"] / rates["baseline"]
        print(
            f"{name:22s} loader share {1 - rates['tractmap'] / rates['compute-only']:.1%}; "
            f"tractmap / baseline {speedup:.2f}x; peak memory {peak:.1f} GiB"
        )
        ok = rates["tractmap"] >= targets[name] and speedup >= 2.5
        if amp:  # the targets are a GPU's
            print(
                f"{name:22s} target >= {targets[name]:.0f} img/s and >= 2.5x the baseline "
                f"(at 512 px, batch 16, on an H100/H200): {'met' if ok else 'NOT met'}"
            )


if __name__ == "__main__":
    main()
