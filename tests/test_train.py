"""Training: loss values, augmentation alignment, weights errors, resume after a kill."""

import json
import math
import os
import signal
import subprocess
import sys
from pathlib import Path

import numpy as np
import PIL.Image
import pytest
import torch
from conftest import write_voc

from workflow_scripts import data, models, train
from workflow_scripts.errors import InputError

ROOT = Path(__file__).resolve().parents[1]


def logits_for(p1):
    """Two-class logits whose softmax gives class-1 probabilities p1."""
    p1 = torch.tensor(p1, dtype=torch.float64)
    return torch.stack([torch.log(1 - p1), torch.log(p1)]).unsqueeze(0)  # (1, 2, H, W)


def test_weighted_dice_known_value_and_void_ignored():
    target = torch.tensor([[[1, 1, 0, 255]]])
    logits = logits_for([[[0.8, 0.6, 0.3, 0.9]]][0])
    w = torch.tensor([0.3, 0.7], dtype=torch.float64)
    # by hand (eps = 1): cancer (2*1.4+1)/(1.7+2+1) = 3.8/4.7; background (2*0.7+1)/(1.3+1+1) = 2.4/3.3
    expected = 1 - (0.3 * 2.4 / 3.3 + 0.7 * 3.8 / 4.7)
    assert float(train.weighted_dice_loss(logits, target, w)) == pytest.approx(expected, abs=1e-6)
    other_void = logits_for([[0.8, 0.6, 0.3, 0.01]])
    assert float(train.weighted_dice_loss(other_void, target, w)) == pytest.approx(expected, abs=1e-6)


def test_perfect_prediction_has_zero_loss():
    target = torch.tensor([[[1, 0, 1, 0]]])
    logits = torch.tensor([[[[-50.0, 50, -50, 50]], [[50.0, -50, 50, -50]]]])
    assert float(train.weighted_dice_loss(logits, target, torch.tensor([0.3, 0.7]), eps=1e-9)) == pytest.approx(
        0, abs=1e-6
    )


def test_cancer_dice_ignores_void():
    pred = torch.tensor([[1, 1, 0, 1]])
    target = torch.tensor([[1, 0, 0, 255]])
    assert train.cancer_dice(pred, target) == pytest.approx(2 * 1 / (2 + 1))


def test_augmentation_keeps_image_and_mask_aligned():
    gen = torch.Generator().manual_seed(0)
    y = torch.zeros(6, 40, 96, dtype=torch.long)
    for k in range(6):
        y[k, 10:30, 15 + 5 * k : 50 + 5 * k] = 1
    y[:, :, 90:] = 255
    x = (y == 1).float().unsqueeze(1) * 10.0  # image brightness encodes the mask
    xa, ya = data.geometric(x, y, crop_w=80, max_deg=10, gen=gen)
    assert xa.shape == (6, 1, 40, 80) and ya.shape == (6, 40, 80)
    valid = ya != 255
    agree = ((xa[:, 0] > 5) == (ya == 1))[valid].float().mean()
    assert agree > 0.98
    assert (ya == 1).any() and (ya == 0).any()
    flipped = torch.Generator().manual_seed(1)
    # rotation 0 and no crop: each sample is either identical or mirrored, image and mask together
    xb, yb = data.geometric(x, y, crop_w=96, max_deg=0, gen=flipped)
    kinds = []
    for k in range(6):
        same = torch.equal(yb[k], y[k]) and torch.allclose(xb[k], x[k], atol=1e-4)
        mirrored = torch.equal(yb[k], y[k].flip(-1)) and torch.allclose(xb[k], x[k].flip(-1), atol=1e-4)
        assert same or mirrored, k
        kinds.append("mirrored" if mirrored else "same")
    assert set(kinds) == {"same", "mirrored"}, kinds  # the flip is drawn: an augmentation that never flips fails


CROP = {"throw_mm": 22.0, "width_mm": 2.0, "margin_mm": 0.5, "out_mm_per_px": 0.05}  # T0 at x 10, row 20


def striped(b: int = 4, h: int = 48, w: int = 96) -> tuple[torch.Tensor, torch.Tensor]:
    """Labels with a different cancer block per sample (void below the 41-row strip) and an image that
    encodes them (cancer bright) over a ramp along x, so that every column differs."""
    y = torch.zeros(b, h, w, dtype=torch.long)
    for k in range(b):
        y[k, 12:30, 20 + 7 * k : 60 + 7 * k] = 1
    y[:, 41:] = 255
    x = (y == 1).float().unsqueeze(1) * 10.0 + torch.linspace(0, 1, w)
    return x, y


def test_recrop_along_the_axis_moves_image_and_label_together():
    x, y = striped()
    move = torch.tensor([[3.0, 0, 0, 0], [-4.0, 0, 0, 0], [0, 2.0, 0, 0], [0, 0, 0, -6.0]])
    fill = torch.tensor([-7.0])
    xs, ys = data.recrop(x, y, torch.full((4,), 96), move, data.tract_origin(CROP), fill)
    assert data.tract_origin(CROP) == (10.0, 20.0)
    # T0 3 px further along: the new crop starts 3 px later; what lies past the old strip is fill and void
    assert torch.allclose(xs[0, :, :, :93], x[0, :, :, 3:], atol=1e-4) and torch.equal(ys[0, :, :93], y[0, :, 3:])
    assert torch.all(xs[0, :, :, 93:] == -7) and torch.all(ys[0, :, 93:] == 255)
    assert torch.allclose(xs[1, :, :, 4:], x[1, :, :, :92], atol=1e-4) and torch.all(ys[1, :, :4] == 255)
    assert torch.equal(ys[2, :46], y[2, 2:]) and torch.all(ys[2, 46:] == 255)  # across: 2 rows down
    # 6 px (0.3 mm) shorter: the strip ends 6 px earlier; the rest is untouched
    assert torch.equal(ys[3, :, :90], y[3, :, :90]) and torch.all(ys[3, :, 90:] == 255)
    assert torch.all(xs[3, :, :, 90:] == -7) and torch.allclose(xs[3, :, :, :90], x[3, :, :, :90], atol=1e-4)


def test_recrop_turns_about_t0_and_keeps_image_and_label_aligned():
    x, y = striped()
    y[:, 20, 10] = 1  # T0's pixel
    x[:, 0, 20, 10] = 10.0
    move = torch.zeros(4, 4)
    move[:, 2] = torch.tensor([2.0, -2.0, 5.0, -5.0]).deg2rad()
    xs, ys = data.recrop(x, y, torch.full((4,), 96), move, data.tract_origin(CROP), torch.zeros(1))
    assert torch.all(ys[:, 20, 10] == 1)  # T0 stays where it was
    assert not torch.equal(ys, y)
    valid = ys != 255
    assert ((xs[:, 0] > 5) == (ys == 1))[valid].float().mean() > 0.98


def test_crop_shift_is_seeded_and_draws_nothing_when_off():
    x, y = striped()
    shift = {"shift_along_mm": 0.3, "shift_across_mm": 0.1, "shift_deg": 1.0, "shift_length_mm": 0.4}
    widths = torch.tensor([96, 90, 80, 96])
    runs = [
        data.crop_shift(x, y, widths, shift, CROP, torch.zeros(1), torch.Generator().manual_seed(5)) for _ in range(2)
    ]
    assert torch.equal(runs[0][0], runs[1][0]) and torch.equal(runs[0][1], runs[1][1])
    xs, ys = runs[0]
    assert not torch.equal(ys, y)
    valid = ys != 255
    assert ((xs[:, 0] > 5) == (ys == 1))[valid].float().mean() > 0.98
    assert torch.all(ys[2, :, 88:] == 255)  # a strip 80 px long, at most 8 px (0.4 mm) longer
    gen = torch.Generator().manual_seed(5)
    off = data.shift_settings({})
    assert off == dict.fromkeys(data.SHIFT_KEYS, 0.0)
    assert data.crop_shift(x, y, widths, off, CROP, torch.zeros(1), gen) == (x, y)
    assert torch.equal(gen.get_state(), torch.Generator().manual_seed(5).get_state())


def test_single_frame_label_follows_the_tissue_between_two_crops():
    """The benchmark's label carried from a two-frame crop onto a single-frame crop of the same frame marks
    the same tissue as that crop's own pixels."""
    sys.path.insert(0, str(ROOT / "benchmarks"))
    from single_frame_dice import carry_label

    from workflow_scripts import tract

    rr, cc = np.mgrid[0:300, 0:400]
    frame = np.where((cc - 180) ** 2 + (rr - 150) ** 2 < 14**2, 200, 40).astype(np.uint8)  # a bright disc
    mm, s = (0.1, 0.1), (2.0, 0.05, 0.5)  # width, resolution, margin
    two = {"t0_px": [100.0, 120.0], "t1_px": [300.0, 180.0]}
    one = {"t0_px": [102.0, 121.5], "t1_px": [306.0, 174.0]}  # 0.25 mm along, 3 deg turned, 0.6 mm longer
    crop2, frame2 = tract.crop_strip(frame, two, mm, *s)
    crop1, frame1 = tract.crop_strip(frame, one, mm, *s)
    carried = carry_label((crop2 > 120).astype(np.uint8), frame2, frame1)
    assert carried.shape == crop1.shape and (carried == 1).sum() > 200
    valid = carried != 255
    assert valid.mean() > 0.8 and ((crop1 > 120) == (carried == 1))[valid].mean() > 0.98
    assert not np.array_equal(crop1 > 120, crop2[:, : crop1.shape[1]] > 120)  # the crops do differ


@pytest.mark.parametrize("n, size", [(1, 8), (5, 2), (6, 2), (9, 8)])
def test_batches_cover_every_image_and_never_hold_one(n, size):
    b = train.batches(n, size, torch.Generator().manual_seed(0))
    assert all(len(x) >= 2 for x in b)
    assert set(torch.cat(b).tolist()) == set(range(n))
    assert len(torch.cat(b)) == max(n, 2)


def test_missing_weights_file_is_a_clear_error(tmp_path):
    with pytest.raises(InputError) as e:
        models.build_model("fcn_resnet101", False, str(tmp_path / "resnet101.pth"))
    assert "does not exist" in e.value.what and "backbone_weights" in e.value.hint


def test_local_backbone_weights_are_loaded(tmp_path):
    from torchvision.models import resnet101

    state = resnet101(weights=None).state_dict()
    state = {k: torch.full_like(v, 0.125) if v.is_floating_point() else v for k, v in state.items()}
    torch.save(state, tmp_path / "r101.pth")
    model = models.build_model("deeplabv3_resnet101", True, str(tmp_path / "r101.pth"))
    assert torch.all(model.backbone.conv1.weight == 0.125)


def test_imagenet_backbone_comes_from_torchvisions_cache(tmp_path, monkeypatch):
    """train.backbone_weights: imagenet reads the file torchvision caches; written here, so no network is used."""
    from torchvision.models import resnet101

    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch"))
    path = models.imagenet_file("resnet101")
    assert path.parent == tmp_path / "torch/hub/checkpoints" and path.name == "resnet101-63fe2227.pth"
    path.parent.mkdir(parents=True)
    state = {
        k: torch.full_like(v, 0.25) if v.is_floating_point() else v
        for k, v in resnet101(weights=None).state_dict().items()
    }
    torch.save(state, path)
    model = models.build_model("fcn_resnet101", False, "imagenet")
    assert torch.all(model.backbone.layer4[2].conv3.weight == 0.25)


def test_imagenet_backbone_without_cache_or_network_names_the_file_and_folder(tmp_path, monkeypatch):
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch"))
    for var in ("https_proxy", "HTTPS_PROXY", "http_proxy", "HTTP_PROXY"):
        monkeypatch.setenv(var, "http://127.0.0.1:9")  # a closed port: the download fails at once
    with pytest.raises(InputError) as e:
        models.build_model("fcn_resnet101", False, "imagenet")
    assert "not cached" in e.value.what
    assert "https://download.pytorch.org/models/resnet101-63fe2227.pth" in e.value.hint
    assert str(tmp_path / "torch/hub/checkpoints/resnet101-63fe2227.pth") in e.value.hint


def test_unet_resnet_trains_and_round_trips_through_model_pt(tmp_path):
    torch.manual_seed(0)
    model = models.build_model("unet_resnet")  # random weights: nothing read from the cache
    x, y = torch.randn(2, 3, 41, 72), torch.randint(0, 2, (2, 41, 72))  # sides not multiples of 32
    out = model(x)["out"]
    assert out.shape == (2, 2, 41, 72)
    train.loss_fn(out, y, torch.tensor([0.3, 0.7]), 0.0).backward()
    grads = [p.grad for p in model.net.encoder.parameters()]
    assert all(g is not None for g in grads) and any(float(g.abs().sum()) > 0 for g in grads)
    ck = {"model": model.state_dict(), "norm": {"kind": "imagenet", "mean": [0.0] * 3, "std": [1.0] * 3}}
    torch.save({**ck, "config": {"arch": "unet_resnet", "aux": False}}, tmp_path / "model.pt")
    loaded, meta = models.load_checkpoint(tmp_path / "model.pt", torch.device("cpu"))
    model.eval()
    with torch.no_grad():
        assert torch.equal(loaded(x)["out"], model(x)["out"]) and meta["norm"]["kind"] == "imagenet"


def test_unet_resnet_reads_imagenet_weights_from_the_cache_or_says_how_to_fetch_them(tmp_path, monkeypatch):
    from torchvision.models import resnet34

    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch"))
    path = tmp_path / "torch/hub/checkpoints/resnet34-b627a593.pth"
    with pytest.raises(InputError) as e:
        models.build_model("unet_resnet", False, "imagenet")
    assert str(path) in e.value.what and "not cached" in e.value.what
    assert "python -m workflow_scripts.models --fetch resnet34" in e.value.hint and str(path) in e.value.hint
    path.parent.mkdir(parents=True)
    state = resnet34(weights=None).state_dict()
    torch.save({k: torch.full_like(v, 0.25) if v.is_floating_point() else v for k, v in state.items()}, path)
    assert models.imagenet_file("resnet34") == path
    model = models.build_model("unet_resnet", False, "imagenet")
    assert torch.all(model.net.encoder.layer4[2].conv2.weight == 0.25)
    torch.save({k: v for k, v in state.items() if not k.startswith("layer4")}, tmp_path / "part.pth")
    n = sum(k.startswith("layer4") for k in state)
    with pytest.raises(InputError, match=f"lack {n} ResNet-34 tensors"):
        models.build_model("unet_resnet", False, str(tmp_path / "part.pth"))


RECIPE = {  # CPU-tiny training settings shared by the tests that train
    "batch_size": 2,
    "crop_width": 32,
    "rotation_deg": 5,
    **{"shift_along_mm": 0.06, "shift_across_mm": 0.16, "shift_deg": 3.65, "shift_length_mm": 0.58},  # config's
    "lr": 1e-3,
    "weight_decay": 1e-4,
    "class_weights": [0.3, 0.7],
    "ce_weight": 0.0,
    "compile": True,  # read on CUDA only
    "crop": {"throw_mm": 22.0, "width_mm": 2.0, "margin_mm": 0.5, "out_mm_per_px": 0.05},
}


def tiny_voc(root: Path) -> None:
    write_voc(root, {"train": [f"T{i}" for i in range(4)], "val": ["V0", "V1"]})


def test_same_seed_same_weights(tmp_path):
    """A tiny run is reproducible on the CPU: the seed fixes initialisation, shuffling and every augmentation
    draw (the crop shift included)."""
    tiny_voc(tmp_path / "voc")
    cfg = {**RECIPE, "arch": "unet", "aux": False, "features": [4, 4, 8, 8, 16, 4], "epochs": 2, "normalise": "zscore"}
    runs = []
    for k, seed in enumerate((3, 3, 4)):
        res = train.train({**cfg, "seed": seed}, tmp_path / "voc", tmp_path / f"s{k}", log=lambda m: None)
        best = torch.load(tmp_path / f"s{k}" / "best.pt", weights_only=False)["model"]
        runs.append(([h["train_loss"] for h in res["history"]], best))
    assert runs[0][0] == runs[1][0] and all(torch.equal(v, runs[1][1][k]) for k, v in runs[0][1].items())
    assert runs[0][0] != runs[2][0]


def run_until(cmd, epoch_line, sig):
    """Start training; send ``sig`` once the log shows ``epoch_line``."""
    proc = subprocess.Popen(
        cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env={**os.environ, "PYTHONPATH": str(ROOT)}
    )
    lines = []
    for line in proc.stdout:
        lines.append(line)
        if line.startswith(epoch_line):
            proc.send_signal(sig)
            break
    proc.wait(timeout=120)
    return proc.returncode, lines


def test_killed_training_resumes_at_the_next_epoch(tmp_path):
    tiny_voc(tmp_path / "voc")
    cfg = {**RECIPE, "arch": "fcn_resnet101", "aux": False, "epochs": 4, "seed": 3, "normalise": "zscore"}
    out = tmp_path / "out"
    out.mkdir()
    cmd = [
        sys.executable,
        "-m",
        "workflow_scripts.train",
        "--voc",
        str(tmp_path / "voc"),
        "--config",
        json.dumps(cfg),
        "--model-out",
        str(out / "model.pt"),
        "--history",
        str(out / "h.tsv"),
        "--curves",
        str(out / "c.png"),
        "--state-dir",
        str(out / "state"),
        "--train-list",
        "train",
        "--val-list",
        "val",
        "--threads",
        "2",
    ]
    rc, _ = run_until(cmd, "epoch 1/4", signal.SIGKILL)
    assert rc == -signal.SIGKILL and not (out / "model.pt").exists()
    rc, lines = run_until(cmd, "epoch 2/4", signal.SIGTERM)  # a preemption
    assert "resuming after epoch 1" in "".join(lines) and rc == 143
    assert not any(line.startswith("epoch 1/4") for line in lines)
    res = subprocess.run(cmd, capture_output=True, text=True, env={**os.environ, "PYTHONPATH": str(ROOT)}, timeout=300)
    assert res.returncode == 0, res.stdout + res.stderr
    assert "resuming after epoch 2" in res.stdout
    epochs = [line.split()[1] for line in res.stdout.splitlines() if line.startswith("epoch ")]
    assert epochs == ["3/4", "4/4"]
    model = torch.load(out / "model.pt", weights_only=False)
    assert [h["epoch"] for h in model["history"]] == [1, 2, 3, 4]
    assert model["seed"] == 3 and "torch" in model["versions"] and model["selected_on"] == "validation Dice"
    assert model["epoch"] == max(model["history"], key=lambda h: h["val_dice"])["epoch"]
    assert math.isfinite(model["norm"]["std"]) and model["train_ids"] == [f"T{i}" for i in range(4)]
    assert model["norm"]["kind"] == "zscore"
    assert not (out / "state").exists(), "resume state must be dropped once model.pt exists"


def test_checkpoint_is_not_resumed_after_a_label_changes():
    x = torch.zeros(2, 1, 4, 4, dtype=torch.uint8)
    y = torch.zeros(2, 4, 4, dtype=torch.uint8)
    y2 = y.clone()
    y2[0, 1, 1] = 1
    cfg = {"seed": 1}
    assert train.fingerprint(cfg, ["a", "b"], ["c"], x, y) == train.fingerprint(cfg, ["a", "b"], ["c"], x, y.clone())
    assert train.fingerprint(cfg, ["a", "b"], ["c"], x, y) != train.fingerprint(cfg, ["a", "b"], ["c"], x, y2)


def test_unet_baseline_segments_odd_sizes_and_refuses_a_backbone():
    model = models.build_model("unet", features=[4, 4, 8, 8, 16, 4])
    out = model(torch.randn(2, 3, 40, 72))  # crop heights are not multiples of 16
    assert set(out) == {"out"} and out["out"].shape == (2, 2, 40, 72)
    loss = train.loss_fn(out["out"], torch.randint(0, 2, (2, 40, 72)), torch.tensor([0.3, 0.7]), 0.0)
    loss.backward()
    assert all(p.grad is not None for p in model.parameters())
    with pytest.raises(InputError) as e:
        models.build_model("unet", backbone_weights="imagenet")
    assert "backbone_weights: null" in e.value.hint


# ------------------------------------------------------------------ normalisation

TINY_UNET = {**RECIPE, "arch": "unet", "aux": False, "features": [4, 4, 8, 8, 16, 4], "epochs": 1}


def tiny_model(out: Path, voc: Path, normalise: str = "zscore", seed: int = 1) -> Path:
    """A real model.pt of a tiny U-Net, trained one epoch by train's own command line (in this process)."""
    cfg = {**TINY_UNET, "normalise": normalise, "seed": seed}
    out.mkdir(parents=True)
    handler = signal.getsignal(signal.SIGTERM)  # train.main installs its preemption handler
    try:
        train.main(
            [f"--voc={voc}", f"--config={json.dumps(cfg)}", f"--model-out={out / 'model.pt'}"]
            + [f"--history={out / 'history.tsv'}", f"--curves={out / 'curves.png'}", f"--state-dir={out / 'state'}"]
            + ["--train-list=train", "--val-list=val", "--threads=0"]
        )
    finally:
        signal.signal(signal.SIGTERM, handler)
    return out / "model.pt"


def test_normalisations_have_their_known_values():
    x = torch.tensor([[[[0, 100], [200, 255]]]], dtype=torch.uint8)
    y = torch.tensor([[[0, 1], [1, 255]]], dtype=torch.uint8)  # 255 is void: left out of the z-score statistics
    z = data.norm_params("zscore", x, y)
    assert z == {"kind": "zscore", "mean": pytest.approx(100.0), "std": pytest.approx(100.0)}
    assert data.normalise(x, z).flatten().tolist() == pytest.approx([-1, 0, 1, 1.55])
    im = data.norm_params("imagenet", x, y)
    out = data.normalise(x, im)
    assert out.shape == (1, 3, 2, 2)  # the grey channel repeated to three, each scaled by ImageNet's mean and std
    for c, (m, s) in enumerate(zip(data.IMAGENET_MEAN, data.IMAGENET_STD, strict=True)):
        assert out[0, c].flatten().tolist() == pytest.approx([(v / 255 - m) / s for v in (0, 100, 200, 255)])
    with pytest.raises(InputError) as e:
        data.norm_params("minmax", x, y)
    assert "train.normalise" in e.value.hint


def test_a_model_runs_only_with_the_normalisation_it_was_trained_with(tmp_path, capsys):
    """The normalisation is read from model.pt and applied by predict; naming the other one is an error."""
    from workflow_scripts import predict

    tiny_voc(tmp_path / "voc")
    path = tiny_model(tmp_path / "imagenet", tmp_path / "voc", "imagenet")
    model, ck = models.load_checkpoint(path, torch.device("cpu"))
    assert ck["norm"]["kind"] == "imagenet" and ck["config"]["normalise"] == "imagenet"
    with pytest.raises(InputError) as e:
        models.load_checkpoint(path, torch.device("cpu"), "zscore")
    assert "trained with train.normalise imagenet, not zscore" in e.value.what
    assert "leave the setting out" in e.value.hint
    # predict applies the ImageNet scaling from model.pt: the same as feeding the scaled three channels by hand
    image = (torch.arange(24 * 48) % 251).reshape(24, 48).to(torch.uint8).numpy()
    prob = predict.probability(model, ck["norm"], image, torch.device("cpu"))
    mean = torch.tensor(data.IMAGENET_MEAN).reshape(1, 3, 1, 1)
    std = torch.tensor(data.IMAGENET_STD).reshape(1, 3, 1, 1)

    def imagenet_by_hand(image: np.ndarray) -> np.ndarray:
        x = (torch.from_numpy(image).float()[None, None] / 255 - mean) / std
        with torch.no_grad():
            return model(x)["out"].softmax(1)[0, 1].numpy()

    by_hand = imagenet_by_hand(image)
    assert prob == pytest.approx(by_hand, abs=1e-5)
    zscored = (torch.from_numpy(image).float()[None, None] - 128) / 64  # a z-score of the same image
    with torch.no_grad():
        other = model(zscored.expand(-1, 3, -1, -1))["out"].softmax(1)[0, 1].numpy()
    assert abs(prob - other).max() > 1e-3  # the check above is not vacuous: the scaling matters
    # the predict command line with the model's configured setting runs; with the other, it stops and says why
    args = [f"--model={path}", f"--voc={tmp_path / 'voc'}", "--split=val", "--threads=0"]
    predict.main([*args, f"--out={tmp_path / 'p1'}", "--normalise=imagenet"])
    for v in ("V0", "V1"):  # what it wrote is the model on each lossless val image, scaled as by hand above
        expected = imagenet_by_hand(np.asarray(PIL.Image.open(tmp_path / f"voc/PNGImages/{v}.png")))
        assert np.load(tmp_path / f"p1/{v}_prob.npy") == pytest.approx(expected, abs=1e-5), v
        label = np.asarray(PIL.Image.open(tmp_path / f"p1/{v}.png"))
        assert np.array_equal(label, (expected >= 0.5).astype(np.uint8)), v
    capsys.readouterr()
    with pytest.raises(SystemExit) as e:
        predict.main([*args, f"--out={tmp_path / 'p2'}", "--normalise=zscore"])
    err = capsys.readouterr().err
    assert e.value.code == 1 and "Traceback" not in err and "not zscore" in err and str(path) in err, err
    assert not (tmp_path / "p2").exists()


# ------------------------------------------------------------------ GPU speed paths


def test_compile_falls_back_to_the_eager_model_with_one_log_line():
    """A backend that cannot compile: the wrapper logs once, then computes exactly what the model computes, and
    its warm-up leaves weights and batch-norm statistics as they were."""

    def broken_backend(gm, example_inputs):
        raise RuntimeError("no compiler here")

    torch.manual_seed(0)
    layers = [torch.nn.Conv2d(3, 4, 3, padding=1), torch.nn.BatchNorm2d(4), torch.nn.ReLU(), torch.nn.Conv2d(4, 2, 1)]
    model = models.LogitsAsDict(torch.nn.Sequential(*layers))  # small: tracing it takes a moment, not a minute
    before = {k: v.clone() for k, v in model.state_dict().items()}
    logged = []
    net = train.Compiled(model, logged.append, backend=broken_backend)
    x = torch.randn(2, 1, 8, 12)
    net.warm_up(x, amp=False)
    assert len(logged) == 1 and "torch.compile failed (" in logged[0] and "no compiler here" in logged[0]
    assert all(torch.equal(v, before[k]) for k, v in model.state_dict().items())
    model.eval()
    assert torch.equal(models.forward(net, x, False)["out"], models.forward(model, x, False)["out"])
    assert len(logged) == 1  # no second attempt
    # compiled with a working backend (eager: graph capture without code generation), the same numbers
    ok = train.Compiled(model, logged.append, backend="eager")
    assert torch.allclose(models.forward(ok, x, False)["out"], models.forward(model, x, False)["out"], atol=1e-6)
    assert ok.fn is not ok.eager and len(logged) == 1


def test_the_optimizer_is_fused_on_cuda_only():
    model = torch.nn.Linear(2, 2)
    opt = train.make_optimizer(model, {"lr": 1e-3, "weight_decay": 0.0}, torch.device("cpu"))
    assert not opt.defaults.get("fused")  # CPU runs stay as they were
    # for a CUDA run, the fused kernel (built here on CPU parameters, which PyTorch's fused AdamW accepts too)
    cuda = train.make_optimizer(model, {"lr": 1e-3, "weight_decay": 0.0}, torch.device("cuda"))
    assert cuda.defaults["fused"] is True and isinstance(cuda, torch.optim.AdamW)
