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
