"""Train a torchvision segmentation model on the VOC dataset, resumably.

The recipe is the paper's: weighted Dice loss (optionally plus cross-entropy),
AdamW with cosine annealing, random horizontal flip, rotation and intensity
augmentation (plus the crop shift tractmap-infer's single-frame tract brings:
``train.shift_*``, see ``data.crop_shift``), and z-score normalisation from the train split only (or, with
``normalise: imagenet``, ImageNet's statistics; see ``data``).  The whole
(small) dataset lives on the device; augmentation runs there too, in batches.
The best epoch is chosen on validation Dice; the test split is never read.

A checkpoint of the last finished epoch is written atomically after every
epoch; a rerun with the same configuration and data resumes after it.

Data and augmentation live in ``data``, model construction in ``models``; this
module holds the loss, the loop, checkpoints and the command line.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import shutil
import signal
import time
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn.functional as F

from workflow_scripts import provenance
from workflow_scripts.data import (
    crop_shift,
    crop_widths,
    geometric,
    intensity,
    load_split,
    norm_params,
    normalise,
    shift_settings,
)
from workflow_scripts.errors import run_cli
from workflow_scripts.models import build_model, forward
from workflow_scripts.voc import VOID

# ------------------------------------------------------------------ loss and metric


def weighted_dice_loss(
    logits: torch.Tensor, target: torch.Tensor, weights: torch.Tensor, eps: float = 1.0
) -> torch.Tensor:
    """1 - class-weighted soft Dice over the batch; void pixels are ignored."""
    valid = (target != VOID).unsqueeze(1).to(logits.dtype)
    prob = logits.float().softmax(1) * valid
    onehot = (
        F.one_hot(target.clamp_max(logits.shape[1] - 1), logits.shape[1]).permute(0, 3, 1, 2).to(prob.dtype) * valid
    )
    inter = (prob * onehot).sum((0, 2, 3))
    denom = prob.sum((0, 2, 3)) + onehot.sum((0, 2, 3))
    dice = (2 * inter + eps) / (denom + eps)
    return 1 - (weights * dice).sum() / weights.sum()


def loss_fn(logits: torch.Tensor, target: torch.Tensor, weights: torch.Tensor, ce_weight: float) -> torch.Tensor:
    """Weighted Dice, plus cross-entropy when ``ce_weight`` > 0."""
    loss = weighted_dice_loss(logits, target, weights)
    if ce_weight > 0:
        loss = loss + ce_weight * F.cross_entropy(logits.float(), target, ignore_index=VOID)
    return loss


def cancer_dice(pred: torch.Tensor, target: torch.Tensor) -> float:
    """Pixel-aggregated Dice of class 1 over labelled pixels (NaN when both are empty)."""
    valid = target != VOID
    p, t = (pred == 1) & valid, (target == 1) & valid
    s = int(p.sum() + t.sum())
    return float(2 * (p & t).sum() / s) if s else float("nan")


def batches(n: int, size: int, gen: torch.Generator) -> list[torch.Tensor]:
    """A shuffled epoch of index batches, none of one sample (batch norm needs two).

    A last single sample joins the previous batch; a one-image train split is
    used twice per batch (the two copies are augmented differently).
    """
    out = list(torch.randperm(n, generator=gen).split(size))
    if len(out[-1]) < 2:
        last = out.pop()
        out.append(torch.cat([out.pop(), last]) if out else last.repeat(2))
    return out


def train_step(
    model: torch.nn.Module | Compiled,
    opt: torch.optim.Optimizer,
    x: torch.Tensor,
    y: torch.Tensor,
    weights: torch.Tensor,
    ce_weight: float,
    amp: bool,
) -> float:
    """One optimisation step on an (already augmented) batch; returns the loss."""
    outs = forward(model, x, amp)
    loss = loss_fn(outs["out"], y, weights, ce_weight)
    if "aux" in outs:
        loss = loss + 0.5 * loss_fn(outs["aux"], y, weights, ce_weight)
    opt.zero_grad(set_to_none=True)
    loss.backward()
    opt.step()
    return loss.detach()


# ------------------------------------------------------------------ GPU speed (CUDA only; CPU runs are untouched)


class Compiled:
    """``torch.compile`` of a model that falls back, once and with one log line, to the eager model when
    compiling fails (an unsupported op, no compiler); called like the model."""

    def __init__(self, model: torch.nn.Module, log=print, backend: str | object = "inductor"):
        self.eager, self.log = model, log
        self.fn = torch.compile(model, backend=backend)

    def fallback(self, err: Exception) -> None:
        self.log(f"torch.compile failed ({type(err).__name__}: {str(err)[:200]}); training without it")
        self.fn = self.eager

    def __call__(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        if self.fn is not self.eager:
            try:
                return self.fn(x)
            except Exception as e:  # noqa: BLE001 - any compile failure: the eager model computes the same
                self.fallback(e)
        return self.fn(x)

    def warm_up(self, x: torch.Tensor, amp: bool) -> None:
        """Compile forward and backward once on a batch, outside the loop; the model's weights and batch-norm
        statistics are left as they were."""
        if self.fn is self.eager:
            return
        saved = {k: v.clone() for k, v in self.eager.state_dict().items()}
        try:
            forward(self.fn, x, amp)["out"].float().mean().backward()
        except Exception as e:  # noqa: BLE001
            self.fallback(e)
        self.eager.load_state_dict(saved)
        self.eager.zero_grad(set_to_none=True)


def make_optimizer(model: torch.nn.Module, cfg: dict, dev: torch.device) -> torch.optim.Optimizer:
    """AdamW; on CUDA its fused kernel (one launch for all parameters), on the CPU PyTorch's default."""
    fused = {"fused": True} if dev.type == "cuda" else {}
    return torch.optim.AdamW(model.parameters(), lr=cfg["lr"], weight_decay=cfg["weight_decay"], **fused)


# ------------------------------------------------------------------ checkpoints


def atomic_save(obj: object, path: Path) -> None:
    """torch.save to a temporary file, then rename: readers never see a partial file."""
    tmp = path.with_name(path.name + ".tmp")
    torch.save(obj, tmp)
    os.replace(tmp, path)


def fingerprint(cfg: dict, train_ids: list[str], val_ids: list[str], *data: torch.Tensor) -> str:
    """What a checkpoint must match to be resumed: settings, image IDs and the pixels and labels themselves."""
    h = hashlib.sha256(json.dumps([cfg, train_ids, val_ids], sort_keys=True).encode())
    for t in data:
        h.update(t.numpy().tobytes())
    return h.hexdigest()[:16]


# ------------------------------------------------------------------ loop


@dataclass
class Data:
    """The device-ready train and val tensors of one run, with what the crop shift needs."""

    xt: torch.Tensor
    yt: torch.Tensor
    xv: torch.Tensor
    yv: torch.Tensor
    train_ids: list[str]
    val_ids: list[str]
    widths: torch.Tensor  # each train crop's own width (px), before padding
    fill: torch.Tensor  # the padding's grey 0, normalised
    norm: dict
    fingerprint: str


def load_data(cfg: dict, voc: Path, train_list: str, val_list: str, dev: torch.device) -> Data:
    """Both splits, normalised with the train split's statistics (or ImageNet's), on ``dev``."""
    xt, yt, train_ids = load_split(voc, train_list)
    xv, yv, val_ids = load_split(voc, val_list)
    fp = fingerprint(cfg, train_ids, val_ids, xt, yt, xv, yv)  # a corrected label must not resume an old run
    norm = norm_params(cfg["normalise"], xt, yt)
    return Data(
        normalise(xt, norm).to(dev),
        yt.long().to(dev),
        normalise(xv, norm).to(dev),
        yv.long().to(dev),
        train_ids,
        val_ids,
        crop_widths(voc, train_ids).to(dev),
        normalise(torch.zeros(1, 1, 1, 1), norm).flatten(),
        norm,
        fp,
    )


def setup_model(cfg: dict, dev: torch.device, log) -> tuple[torch.nn.Module, torch.nn.Module | Compiled]:
    """The model on ``dev``, and what the loop calls: on CUDA channels-last and (``compile``) compiled."""
    model = build_model(cfg["arch"], cfg["aux"], cfg.get("backbone_weights"), cfg.get("features")).to(dev)
    if dev.type != "cuda":
        return model, model
    model = model.to(memory_format=torch.channels_last)
    torch.backends.cudnn.benchmark = True  # fixed crop shapes: let cuDNN pick its fastest kernels once
    return model, Compiled(model, log) if cfg["compile"] else model


def resume(last: Path, fp: str, model, opt, sched, gen: torch.Generator, dev: torch.device, log) -> tuple:
    """(first epoch, history, best) after ``last`` when it belongs to this run (its state restored), else afresh."""
    if last.exists():
        ck = torch.load(last, map_location=dev, weights_only=False)
        if ck["fingerprint"] == fp:
            model.load_state_dict(ck["model"])
            opt.load_state_dict(ck["optimizer"])
            sched.load_state_dict(ck["scheduler"])
            gen.set_state(ck["generator"])
            torch.set_rng_state(ck["torch_rng"])
            log(f"resuming after epoch {ck['epoch']} from {last}")
            return ck["epoch"] + 1, ck["history"], ck["best"]
        log(f"ignoring {last}: it belongs to another configuration or dataset")
    return 1, [], {"val_dice": -1.0, "epoch": 0}


def run_meta(cfg: dict, d: Data, dev: torch.device) -> dict:
    """What model.pt records besides the weights."""
    return {
        "config": cfg,
        "seed": cfg["seed"],
        "versions": provenance.versions(("torch", "torchvision", "numpy", "tractmap")),
        "norm": d.norm,  # train.normalise and its statistics: predict and tractmap-infer apply it from here
        "crop": cfg["crop"],  # the tract settings the training crops were cut with
        "train_ids": d.train_ids,
        "val_ids": d.val_ids,
        "device": str(dev),
        "amp_bf16": dev.type == "cuda",
    }


def log_environment(cfg: dict, d: Data, dev: torch.device, log) -> None:
    """One line on the device and data (and the SLURM job and its GPUs, under SLURM)."""
    if "SLURM_JOB_ID" in os.environ:
        gpus = {k: v for k, v in os.environ.items() if "GPU" in k and k.startswith("SLURM")}
        log(
            f"SLURM job {os.environ['SLURM_JOB_ID']}, "
            f"CUDA_VISIBLE_DEVICES={os.environ.get('CUDA_VISIBLE_DEVICES', '')}, {gpus}"
        )
    log(f"device {dev}, {len(d.train_ids)} train / {len(d.val_ids)} val images, seed {cfg['seed']}")


def train_one_epoch(net, opt, d: Data, cfg: dict, weights: torch.Tensor, gen: torch.Generator, amp: bool) -> float:
    """One pass over the train split in shuffled, augmented batches; returns the mean loss."""
    shift, losses = shift_settings(cfg), []
    for idx in batches(len(d.train_ids), cfg["batch_size"], gen):
        idx = idx.to(d.xt.device)
        x, y = crop_shift(d.xt[idx], d.yt[idx], d.widths[idx], shift, cfg["crop"], d.fill, gen)
        x, y = geometric(x, y, cfg["crop_width"], cfg["rotation_deg"], gen)
        losses.append(train_step(net, opt, intensity(x, gen), y, weights, cfg["ce_weight"], amp))
    return float(torch.stack(losses).mean())


@torch.no_grad()
def evaluate(net, d: Data, bs: int, weights: torch.Tensor, ce_weight: float, amp: bool) -> tuple[float, float]:
    """Validation loss and cancer Dice over the whole val split."""
    logits = torch.cat([forward(net, d.xv[i : i + bs], amp)["out"].float() for i in range(0, len(d.val_ids), bs)])
    return float(loss_fn(logits, d.yv, weights, ce_weight)), cancer_dice(logits.argmax(1), d.yv)


def save_epoch(state_dir: Path, model, opt, sched, gen: torch.Generator, row: dict, ck: dict, improved: bool) -> None:
    """best.pt when the epoch improved on validation Dice; last.pt, the resume state, always."""
    if improved:
        atomic_save(
            {"model": model.state_dict(), **ck["meta"], "epoch": row["epoch"], "val_dice": row["val_dice"]},
            state_dir / "best.pt",
        )
    atomic_save(
        {
            "model": model.state_dict(),
            "optimizer": opt.state_dict(),
            "scheduler": sched.state_dict(),
            "generator": gen.get_state(),
            "torch_rng": torch.get_rng_state(),
            "epoch": row["epoch"],
            "history": ck["history"],
            "best": ck["best"],
            "fingerprint": ck["fingerprint"],
            **ck["meta"],
        },
        state_dir / "last.pt",
    )


def epoch_line(row: dict, epochs: int, eta: float) -> str:
    """The log line of one finished epoch."""
    return (
        f"epoch {row['epoch']}/{epochs} train_loss {row['train_loss']:.4f} val_loss {row['val_loss']:.4f} "
        f"val_dice {row['val_dice']:.4f} lr {row['lr']:.2e} {row['images_per_s']:.1f} img/s ETA "
        f"{time.strftime('%H:%M:%S', time.gmtime(eta))}"
    )


def train(cfg: dict, voc: Path, state_dir: Path, log=print, train_list: str = "train", val_list: str = "val") -> dict:
    """Train one model; returns the summary. Resumes from ``state_dir/last.pt`` when it matches."""
    torch.manual_seed(cfg["seed"])
    dev = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    amp = dev.type == "cuda"
    d = load_data(cfg, voc, train_list, val_list, dev)
    model, net = setup_model(cfg, dev, log)
    opt = make_optimizer(model, cfg, dev)
    sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=cfg["epochs"])
    weights = torch.tensor(cfg["class_weights"], dtype=torch.float32, device=dev)
    gen = torch.Generator().manual_seed(cfg["seed"])
    state_dir.mkdir(parents=True, exist_ok=True)
    start, history, best = resume(state_dir / "last.pt", d.fingerprint, model, opt, sched, gen, dev, log)
    meta = run_meta(cfg, d, dev)
    log_environment(cfg, d, dev, log)
    bs, t_start = cfg["batch_size"], time.time()
    if isinstance(net, Compiled) and start <= cfg["epochs"]:
        model.train()
        net.warm_up(geometric(d.xt[:bs], d.yt[:bs], cfg["crop_width"], 0.0, torch.Generator())[0], amp)
    for epoch in range(start, cfg["epochs"] + 1):
        t0 = time.time()
        model.train()
        train_loss = train_one_epoch(net, opt, d, cfg, weights, gen, amp)
        sched.step()
        model.eval()
        val_loss, val_dice = evaluate(net, d, bs, weights, cfg["ce_weight"], amp)
        secs = time.time() - t0
        row = {
            "epoch": epoch,
            "train_loss": train_loss,
            "val_loss": val_loss,
            "val_dice": val_dice,
            "lr": opt.param_groups[0]["lr"],
            "images_per_s": len(d.train_ids) / secs,
            "seconds": secs,
        }
        history.append(row)
        improved = val_dice > best["val_dice"]
        if improved:
            best = {"val_dice": val_dice, "val_loss": val_loss, "epoch": epoch}
        ck = {"meta": meta, "history": history, "best": best, "fingerprint": d.fingerprint}
        save_epoch(state_dir, model, opt, sched, gen, row, ck, improved)
        log(epoch_line(row, cfg["epochs"], (time.time() - t_start) / (epoch - start + 1) * (cfg["epochs"] - epoch)))
    return {"best": best, "history": history, **meta}


def plot_curves(history: list[dict], path: Path, title: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    ep = [h["epoch"] for h in history]
    fig, (a, b) = plt.subplots(1, 2, figsize=(9, 3.2), constrained_layout=True)
    a.plot(ep, [h["train_loss"] for h in history], label="train loss")
    a.plot(ep, [h["val_loss"] for h in history], label="val loss")
    a.set_xlabel("epoch")
    a.legend()
    b.plot(ep, [h["val_dice"] for h in history], "g", label="val Dice (cancer)")
    b.set_xlabel("epoch")
    b.set_ylim(0, 1)
    b.legend()
    fig.suptitle(title)
    fig.savefig(path, dpi=90)
    plt.close(fig)


def parser() -> argparse.ArgumentParser:
    """The command line; every setting that config.yaml carries is a required option the rule passes."""
    p = argparse.ArgumentParser(description="train one segmentation model")
    p.add_argument("--voc", required=True)
    p.add_argument("--config", required=True, help="JSON of the model's training settings")
    p.add_argument("--model-out", required=True)
    p.add_argument("--history", required=True)
    p.add_argument("--curves", required=True)
    p.add_argument("--state-dir", required=True)
    p.add_argument(
        "--train-list", required=True, help="the VOC list trained on: train (fold<k>_train in cross-validation)"
    )
    p.add_argument("--val-list", required=True, help="the VOC list that selects the epoch: val (fold<k>_val)")
    p.add_argument("--threads", type=int, required=True, help="torch threads: the rule's threads (0: torch's choice)")
    return p


def main(argv: list[str] | None = None) -> None:
    a = parser().parse_args(argv)
    if a.threads:
        torch.set_num_threads(a.threads)
    # preemption (SLURM sends SIGTERM): stop now; last.pt holds the last finished epoch
    signal.signal(
        signal.SIGTERM,
        lambda *_: (print("SIGTERM: stopping; rerun resumes from the last checkpoint", flush=True), os._exit(143)),
    )

    def go() -> None:
        cfg = json.loads(a.config)
        res = train(cfg, Path(a.voc), Path(a.state_dir), lambda m: print(m, flush=True), a.train_list, a.val_list)
        import pandas as pd

        pd.DataFrame(res["history"]).to_csv(a.history, sep="\t", index=False, float_format="%.5g")
        plot_curves(
            res["history"],
            Path(a.curves),
            f"{cfg['arch']} (best val Dice {res['best']['val_dice']:.3f} at epoch {res['best']['epoch']})",
        )
        best = torch.load(Path(a.state_dir) / "best.pt", map_location="cpu", weights_only=False)
        atomic_save({**best, "selected_on": "validation Dice", "history": res["history"]}, Path(a.model_out))
        # the resume state (weights + AdamW moments, ~5x model.pt) is only needed until model.pt exists
        shutil.rmtree(a.state_dir)
        print(f"selected epoch {res['best']['epoch']} on validation: Dice {res['best']['val_dice']:.4f}")

    run_cli(go, file=a.voc)


if __name__ == "__main__":
    main()
