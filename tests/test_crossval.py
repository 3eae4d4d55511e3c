"""Cross-validation helpers: the fold ensemble and the per-fold table."""

import numpy as np
import pandas as pd
import PIL.Image
import pytest

from workflow_scripts import crossval
from workflow_scripts.errors import InputError


def test_ensemble_averages_the_folds_probabilities_and_thresholds_at_half(tmp_path):
    probs = [np.array([[0.2, 0.9], [0.6, 0.4]], np.float32), np.array([[0.4, 0.3], [0.6, 0.5]], np.float32)]
    dirs = []
    for k, p in enumerate(probs):
        (tmp_path / f"f{k}").mkdir()
        np.save(tmp_path / f"f{k}" / "P1_B1_prob.npy", p)
        dirs.append(tmp_path / f"f{k}")
    crossval.write_ensemble(dirs, ["P1_B1"], tmp_path / "ens")
    mean = np.load(tmp_path / "ens/P1_B1_prob.npy")
    np.testing.assert_allclose(mean, [[0.3, 0.6], [0.6, 0.45]], rtol=1e-6)
    label = np.asarray(PIL.Image.open(tmp_path / "ens/P1_B1.png"))
    assert label.tolist() == [[0, 1], [1, 0]]
    with pytest.raises(InputError) as e:
        crossval.write_ensemble(dirs, ["P2_B1"], tmp_path / "ens")
    assert "P2_B1_prob.npy" in e.value.what


def test_fold_table_selects_the_best_epoch_and_adds_mean_and_sd(tmp_path):
    histories = {}
    for k, dice in enumerate(([0.2, 0.5, 0.4], [0.3, 0.3, 0.7])):
        path = tmp_path / f"h{k}.tsv"
        pd.DataFrame({"epoch": [1, 2, 3], "val_dice": dice, "val_loss": [0.9, 0.8, 0.7]}).to_csv(path, sep="\t")
        histories[("unet", k)] = path
    t = crossval.fold_table(histories).set_index("fold")
    assert t.loc["0", "selected_epoch"] == 2 and t.loc["1", "selected_epoch"] == 3
    assert t.loc["mean", "val_dice"] == pytest.approx(0.6)
    assert t.loc["sd", "val_dice"] == pytest.approx(np.std([0.5, 0.7], ddof=1))


def test_infer_on_a_fold_folder_averages_the_folds_and_maps_their_spread(tmp_path):
    """tractmap-infer given results/cv/<model>: the mean of the fold models' probabilities (the ensemble the
    evaluation scores) and their per-pixel SD, each written beside the heatmap."""
    import json

    import torch
    from conftest import write_voc
    from test_train import tiny_model

    from workflow_scripts import infer, ingest, models, predict, synthetic, tract

    write_voc(tmp_path / "voc", {"train": [f"T{i}" for i in range(4)], "val": ["V0", "V1"]})
    cv = tmp_path / "cv/unet"
    for k in range(2):
        tiny_model(cv / f"fold{k}", tmp_path / "voc", seed=10 + k)  # two folds: two different models
    truth = synthetic.sample_truth(4242, "Q900", "B1")
    dicom = tmp_path / "new_prefire.dcm"
    synthetic.write_dicom(truth, dicom, synthetic.render_prefire(truth), np.random.default_rng(1))
    s = infer.infer(cv, dicom, tmp_path / "ens")
    assert s["models"] == [str(cv / "fold0/model.pt"), str(cv / "fold1/model.pt")]
    for f in ("new_prefire_heatmap.png", "new_prefire_uncertainty.png", "new_prefire_prob_sd.npy"):
        assert (tmp_path / "ens" / f).is_file() and f in s["outputs"]
    assert np.asarray(PIL.Image.open(tmp_path / "ens/new_prefire_uncertainty.png").convert("L")).std() > 10
    # each fold model alone, on the same crop (cut again from the recorded geometry)
    image, meta = ingest.read_ultrasound(dicom, frame="last")
    c = s["crop_settings"]
    crop, _ = tract.crop_strip(image, s, tuple(meta["mm_per_px"]), c["width_mm"], c["out_mm_per_px"], c["margin_mm"])
    singles = []
    for k in range(2):
        model, ck = models.load_checkpoint(cv / f"fold{k}/model.pt", torch.device("cpu"))
        singles.append(predict.probability(model, ck["norm"], crop, torch.device("cpu")))
    assert np.abs(singles[0] - singles[1]).max() > 1e-3  # the folds disagree somewhere
    np.testing.assert_allclose(np.load(tmp_path / "ens/new_prefire_prob_crop.npy"), np.mean(singles, 0), atol=1e-6)
    prob = np.load(tmp_path / "ens/new_prefire_prob.npy")
    sd = np.load(tmp_path / "ens/new_prefire_prob_sd.npy")
    inside = np.isfinite(sd)
    assert np.array_equal(inside, np.isfinite(prob)) and inside.any()
    # the SD of two maps is half their difference: mapped back onto the image (bilinear), it lies between 0 and
    # the largest half-difference on the crop, and is not zero
    half = np.abs(singles[0] - singles[1]) / 2
    assert sd[inside].min() >= 0 and sd[inside].max() <= half.max() + 1e-6 and sd[inside].max() > 0.5 * half.max()
    assert json.loads((tmp_path / "ens/new_prefire.json").read_text())["selected_epoch"] == [1, 1]
    # a fold trained on other crops cannot be averaged with the rest
    ck = torch.load(cv / "fold1/model.pt", weights_only=False)
    ck["crop"] = {**ck["crop"], "out_mm_per_px": 0.1}
    (cv / "fold2").mkdir()
    torch.save(ck, cv / "fold2/model.pt")
    with pytest.raises(InputError) as e:
        infer.infer(cv, dicom, tmp_path / "bad")
    assert "fold2/model.pt" in e.value.what and "results/cv/<model>" in e.value.hint
    with pytest.raises(InputError) as e:
        infer.infer(tmp_path / "voc", dicom, tmp_path / "none")
    assert "no fold models" in e.value.what
