"""Cross-validation: the fold ensemble's test predictions and the per-fold validation table.

With ``split.folds: K`` the non-test participants are split into K folds by
participant (``split.folds``).  One model per fold and architecture is trained on
the other folds and selected on its own fold, as the single-split models are.

* ``ensemble``: the fold models' cancer probabilities on the test split, averaged
  image by image; the label is the average >= 0.5.  Written like a model's
  predictions, so evaluation treats the ensemble as one more model.
* ``table``: per model and fold, the selected epoch and its validation Dice (on
  that fold's participants), with the mean and SD over the folds.
"""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np
import pandas as pd

from workflow_scripts import voc
from workflow_scripts.errors import InputError, run_cli


def average_probabilities(fold_dirs: list[Path], image_ids: list[str]) -> dict[str, np.ndarray]:
    """Image ID -> the mean of the folds' probability maps."""
    out = {}
    for image_id in image_ids:
        maps = []
        for d in fold_dirs:
            path = d / f"{image_id}_prob.npy"
            if not path.is_file():
                raise InputError(f"no prediction {path}", "rerun the predict_fold rule of this fold")
            maps.append(np.load(path))
        if len({m.shape for m in maps}) != 1:
            raise InputError(f"the folds' predictions of {image_id} differ in size", "rerun the predict_fold rules")
        out[image_id] = np.mean(maps, axis=0).astype(np.float32)
    return out


def write_ensemble(fold_dirs: list[Path], image_ids: list[str], out: Path) -> None:
    """The ensemble's ``<id>_prob.npy`` and ``<id>.png`` (probability >= 0.5), as predict writes them."""
    out.mkdir(parents=True, exist_ok=True)
    for image_id, prob in average_probabilities(fold_dirs, image_ids).items():
        np.save(out / f"{image_id}_prob.npy", prob)
        voc.save_palette_png((prob >= 0.5).astype(np.uint8), out / f"{image_id}.png")


def fold_table(histories: dict[tuple[str, int], Path]) -> pd.DataFrame:
    """Per model and fold: the selected epoch (best validation Dice, first of ties) and its validation
    Dice and loss; then a mean and an SD row per model."""
    rows = []
    for (model, fold), path in histories.items():
        h = pd.read_csv(path, sep="\t")
        best = h.loc[h["val_dice"].idxmax()]
        rows.append(
            {
                "model": model,
                "fold": str(fold),
                "selected_epoch": int(best["epoch"]),
                "val_dice": float(best["val_dice"]),
                "val_loss": float(best["val_loss"]),
            }
        )
    table = pd.DataFrame(rows)
    summary = []
    for model, df in table.groupby("model", sort=False):
        for stat in ("mean", "sd"):
            vals = df[["val_dice", "val_loss"]].agg("mean" if stat == "mean" else lambda s: s.std(ddof=1))
            summary.append({"model": model, "fold": stat, "selected_epoch": np.nan, **vals.to_dict()})
    return pd.concat([table, pd.DataFrame(summary)], ignore_index=True)


def parser() -> argparse.ArgumentParser:
    """The command line; every setting that config.yaml carries is a required option the rule passes."""
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    sub = p.add_subparsers(dest="cmd", required=True)
    e = sub.add_parser("ensemble", help="average the fold models' test predictions")
    e.add_argument("folds", nargs="+", help="the fold models' prediction folders")
    e.add_argument("--ids", required=True, help="ImageSets/Segmentation/test.txt")
    e.add_argument("--out", required=True)
    t = sub.add_parser("table", help="per-fold validation Dice, mean and SD")
    t.add_argument("histories", nargs="+", help="model=fold=history.tsv triples")
    t.add_argument("--out", required=True)
    return p


def main(argv: list[str] | None = None) -> None:
    a = parser().parse_args(argv)

    def go() -> None:
        if a.cmd == "ensemble":
            ids = Path(a.ids).read_text().split()
            write_ensemble([Path(d) for d in a.folds], ids, Path(a.out))
            print(f"ensemble of {len(a.folds)} folds: {len(ids)} test images")
        else:
            triples = [h.split("=", 2) for h in a.histories]
            table = fold_table({(m, int(f)): Path(h) for m, f, h in triples})
            table.to_csv(a.out, sep="\t", index=False, float_format="%.6g")
            print(table.to_string(index=False))

    run_cli(go, file=a.out)


if __name__ == "__main__":
    main()
