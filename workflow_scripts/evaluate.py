"""Evaluate: per-image metrics with participant-level bootstrap CIs, pixel confusion matrices, Table 2, Figures 4-5.

Metric conventions (binary, cancer positive; void pixels excluded):

* pixel accuracy (TP+TN)/N, Dice 2TP/(2TP+FP+FN), precision TP/(TP+FP),
  recall TP/(TP+FN), specificity TN/(TN+FP), mean IoU over the two classes.
* A metric whose denominator is zero is undefined for that image (NaN): e.g.
  Dice and precision when neither truth nor prediction has cancer, recall when
  the truth has none.  mIoU averages the classes present in truth or prediction.
* Primary analysis: each metric is averaged, and models are compared, over the
  images where it is defined for *every* model, so that all models are judged on
  the same images (a model that predicts nothing is not "more precise").
  ``n_defined`` reports how many images count.
* Sensitivity analysis (``table2_sensitivity.tsv``): explicit conventions instead:
  Dice = 1 when truth and prediction are both empty; precision = 0 when the truth
  has cancer and nothing is predicted.
* 95% CIs (``evaluate.ci``): ``cluster_t``, a t interval with G - 1 degrees of
  freedom (G participants) around the cluster-jackknife standard error, cut to
  [0, 1], which covers close to its nominal level with few participants; or ``bootstrap``, the
  percentile bootstrap over participants (seeded), which under-covers below ~30.
* Pixel-level recall and specificity (the paper's): ratios of confusion counts
  summed over all pixels of all images, with the same participant-level CIs.
* Model comparisons (``stats.paired_test``), participant level: the exact paired
  permutation test is the pre-specified primary P; the paper's Shapiro-Wilk -> t /
  Wilcoxon P stands beside it; both with n and Holm-corrected.
"""

from __future__ import annotations

import argparse
from itertools import combinations
from pathlib import Path

import numpy as np
import pandas as pd
import PIL.Image
from scipy import stats as sps

from workflow_scripts import stats
from workflow_scripts.errors import InputError, run_cli
from workflow_scripts.voc import VOID, read_image

METRICS = ("pixel_accuracy", "dice", "miou", "precision", "recall", "specificity")
LABELS = {
    "pixel_accuracy": "PA",
    "dice": "DSC",
    "miou": "mIoU",
    "precision": "Precision",
    "recall": "Recall",
    "specificity": "Specificity",
}
# pixel-level metrics: name -> (numerator, denominator) confusion counts summed over every pixel
PIXEL_METRICS = {"recall_pixel": ("tp", ("tp", "fn")), "specificity_pixel": ("tn", ("tn", "fp"))}
LABELS.update({"recall_pixel": "Recall, pixel-level", "specificity_pixel": "Specificity, pixel-level"})
CI_METHODS = ("cluster_t", "bootstrap")
HOLM = ("pairs", "pairs_and_metrics")  # what Holm corrects over


def confusion(truth: np.ndarray, pred: np.ndarray, void: int = VOID) -> np.ndarray:
    """Pixel counts [[TN, FP], [FN, TP]] (rows truth, columns prediction), void pixels excluded."""
    keep = truth != void
    t, p = truth[keep] == 1, pred[keep] == 1
    return np.array([[np.sum(~t & ~p), np.sum(~t & p)], [np.sum(t & ~p), np.sum(t & p)]], dtype=np.int64)


def _ratio(a: float, b: float) -> float:
    return float(a) / float(b) if b else float("nan")


def image_metrics(cm: np.ndarray) -> dict[str, float]:
    """The six metrics of one confusion matrix; NaN where undefined (see module docstring)."""
    (tn, fp), (fn, tp) = cm
    ious = [_ratio(tn, tn + fp + fn), _ratio(tp, tp + fp + fn)]
    defined = [v for v in ious if not np.isnan(v)]
    return {
        "pixel_accuracy": _ratio(tp + tn, cm.sum()),
        "dice": _ratio(2 * tp, 2 * tp + fp + fn),
        "miou": float(np.mean(defined)) if defined else float("nan"),
        "precision": _ratio(tp, tp + fp),
        "recall": _ratio(tp, tp + fn),
        "specificity": _ratio(tn, tn + fp),
    }


def participant_of(image_id: str) -> str:
    """VOC image IDs are <participant>_<biopsy>; IDs themselves hold no underscore."""
    return image_id.split("_", 1)[0]


def score_images(voc: Path, pred_dir: Path, ids: list[str]) -> pd.DataFrame:
    """One row per image: participant, confusion counts and metrics."""
    rows = []
    for image_id in ids:
        truth = np.asarray(PIL.Image.open(voc / "SegmentationClass" / f"{image_id}.png"))
        path = pred_dir / f"{image_id}.png"
        if not path.is_file():
            raise InputError(
                f"no prediction {path} for image {image_id}", "rerun the predict rule for this model and split"
            )
        pred = np.asarray(PIL.Image.open(path))
        if pred.shape != truth.shape:
            raise InputError(f"prediction {path} is {pred.shape}, label is {truth.shape}", "rerun the predict rule")
        cm = confusion(truth, pred)
        rows.append(
            {
                "image_id": image_id,
                "participant_id": participant_of(image_id),
                "tn": cm[0, 0],
                "fp": cm[0, 1],
                "fn": cm[1, 0],
                "tp": cm[1, 1],
                **image_metrics(cm),
            }
        )
    return pd.DataFrame(rows)


def cluster_bootstrap(
    values: np.ndarray,
    clusters: np.ndarray,
    n_boot: int,
    seed: int,
    level: float = 0.95,
    den: np.ndarray | None = None,
) -> tuple[float, float, float, int]:
    """Image-level NaN-mean (or, with ``den``, the ratio sum(values)/sum(den)) and its percentile CI
    from resampling participants with replacement.

    Each participant contributes (sum, count) of its defined values, so a resample's
    mean is sum/count over the drawn participants.  Returns (mean, low, high, n_defined).
    """
    values = np.asarray(values, float)
    ok = ~np.isnan(values)
    if not ok.any():
        return float("nan"), float("nan"), float("nan"), 0
    ids, inv = np.unique(np.asarray(clusters)[ok], return_inverse=True)
    sums = np.bincount(inv, weights=values[ok])
    counts = np.bincount(inv, weights=None if den is None else np.asarray(den, float)[ok]).astype(float)
    point = float(sums.sum() / counts.sum())
    if len(ids) < 2:
        return point, float("nan"), float("nan"), int(ok.sum())
    res = sps.bootstrap(
        (sums, counts),
        lambda s, c, axis=-1: s.sum(axis) / c.sum(axis),
        paired=True,
        vectorized=True,
        n_resamples=n_boot,
        confidence_level=level,
        method="percentile",
        rng=np.random.default_rng(seed),
    )
    return point, float(res.confidence_interval.low), float(res.confidence_interval.high), int(ok.sum())


def cluster_t_interval(
    num: np.ndarray, den: np.ndarray, clusters: np.ndarray, level: float = 0.95
) -> tuple[float, float, float]:
    """Ratio sum(num)/sum(den) over images and its t interval over participants (clusters).

    The standard error is the cluster jackknife's (leave one participant out), the
    interval uses Student's t with G - 1 degrees of freedom.  With ``den`` = 1 per image
    the ratio is the image-level mean.  Returns (estimate, low, high).
    """
    ids, inv = np.unique(np.asarray(clusters), return_inverse=True)
    s = np.bincount(inv, weights=np.asarray(num, float))
    c = np.bincount(inv, weights=np.asarray(den, float))
    point = float(s.sum() / c.sum()) if c.sum() > 0 else float("nan")
    g = len(ids)
    if g < 2 or np.isnan(point):
        return point, float("nan"), float("nan")
    with np.errstate(invalid="ignore", divide="ignore"):
        loo = (s.sum() - s) / (c.sum() - c)  # the estimate without each participant
    loo = loo[np.isfinite(loo)]
    se = float(np.sqrt((g - 1) / g * np.sum((loo - loo.mean()) ** 2)))
    half = float(sps.t.ppf(0.5 + level / 2, g - 1)) * se
    return point, point - half, point + half


def common_images(per_image: pd.DataFrame, metric: str) -> pd.DataFrame:
    """The rows of the images where ``metric`` is defined for every model."""
    defined = per_image[metric].notna().groupby(per_image["image_id"]).all()
    return per_image[per_image["image_id"].isin(defined[defined].index)]


def with_conventions(per_image: pd.DataFrame) -> pd.DataFrame:
    """The sensitivity analysis' metrics: Dice = 1 when both masks are empty, precision = 0 when the
    truth has cancer and nothing is predicted."""
    out = per_image.copy()
    both_empty = (out.tp + out.fp + out.fn) == 0
    missed = ((out.tp + out.fn) > 0) & ((out.tp + out.fp) == 0)
    out.loc[both_empty, "dice"] = 1.0
    out.loc[missed, "precision"] = 0.0
    return out


def interval(
    num: np.ndarray, den: np.ndarray, clusters: np.ndarray, method: str, n_boot: int, seed: int
) -> tuple[float, float, float]:
    """The configured 95% CI of a ratio over images (see the module docstring); every metric is a
    proportion, so a t interval is cut to [0, 1]."""
    if method == "cluster_t":
        mean, lo, hi = cluster_t_interval(num, den, clusters)
        return mean, max(lo, 0.0), min(hi, 1.0)
    mean, lo, hi, _ = cluster_bootstrap(num, clusters, n_boot, seed, den=den)
    return mean, lo, hi


def summarise(per_image: pd.DataFrame, ci: str, n_boot: int, seed: int) -> pd.DataFrame:
    """Per model and metric: image-level mean over the images where the metric is defined for every model,
    its 95% CI, the counts; then the pixel-level recall and specificity."""
    rows = []
    for m in (*METRICS, *PIXEL_METRICS):
        if m in PIXEL_METRICS:
            used = per_image[(per_image[list(PIXEL_METRICS[m][1])].sum(axis=1) > 0)]
        else:
            used = common_images(per_image, m)
        for model, df in per_image.groupby("model", sort=False):
            d = used[used.model == model]
            if m in PIXEL_METRICS:
                num, den = d[PIXEL_METRICS[m][0]].to_numpy(float), d[list(PIXEL_METRICS[m][1])].sum(axis=1)
            else:
                num, den = d[m].to_numpy(float), np.ones(len(d))
            if len(d):
                mean, lo, hi = interval(num, np.asarray(den, float), d["participant_id"].to_numpy(), ci, n_boot, seed)
            else:
                mean = lo = hi = float("nan")
            rows.append(
                {
                    "model": model,
                    "metric": m,
                    "mean": mean,
                    "ci_low": lo,
                    "ci_high": hi,
                    "n_images": len(df),
                    "n_defined": len(d),
                    "n_participants": d["participant_id"].nunique(),
                    "ci": ci,
                    "bootstrap": n_boot if ci == "bootstrap" else 0,
                    "seed": seed,
                }
            )
    return pd.DataFrame(rows)


def pixel_confusion(per_image: pd.DataFrame) -> pd.DataFrame:
    """Per model: confusion counts summed over all pixels of all images, with pixel-level recall and specificity."""
    sums = per_image.groupby("model", sort=False)[["tn", "fp", "fn", "tp"]].sum()
    sums["recall"] = sums.tp / (sums.tp + sums.fn)
    sums["specificity"] = sums.tn / (sums.tn + sums.fp)
    return sums.reset_index()


def compare_models(
    per_image: pd.DataFrame, *, alpha: float, seed: int, holm_across_metrics: bool = False
) -> pd.DataFrame:
    """Participant-level paired comparison of every model pair, metric by metric, on the images where the
    metric is defined for every model; Holm over the model pairs of a metric, or over all tests.

    Two tests per comparison (``stats.paired_test``): the pre-specified exact permutation test
    (``perm_p``, ``perm_p_holm``; primary) and the paper's Shapiro-Wilk -> t / Wilcoxon (``p``, ``p_holm``).
    """
    models = list(dict.fromkeys(per_image["model"]))
    rows = []
    for m in METRICS:
        means = common_images(per_image, m).groupby(["model", "participant_id"], sort=False)[m].mean()
        block = []
        for a, b in combinations(models, 2):
            pa = means.loc[a] if a in means.index.get_level_values(0) else pd.Series(dtype=float)
            pb = means.loc[b] if b in means.index.get_level_values(0) else pd.Series(dtype=float)
            both = pa.index.intersection(pb.index)
            block.append(
                {
                    "metric": m,
                    "model_a": a,
                    "model_b": b,
                    **stats.paired_test(pa[both].to_numpy(), pb[both].to_numpy(), alpha=alpha, seed=seed),
                }
            )
        rows += block
        if not holm_across_metrics:
            add_holm(block)
    if holm_across_metrics:
        add_holm(rows)
    if not rows:  # one model: nothing to compare, but the table keeps its columns
        keys = [
            "metric",
            "model_a",
            "model_b",
            *stats.paired_test(np.array([]), np.array([]), alpha=alpha, seed=seed),
            *HOLM_COLUMNS,
        ]
        out = pd.DataFrame([dict.fromkeys(keys)]).iloc[:0]
    else:
        out = pd.DataFrame(rows)
    out["holm_over"] = "all metrics and pairs" if holm_across_metrics else "model pairs of the metric"
    return out


HOLM_COLUMNS = {"p_holm": "p", "perm_p_holm": "perm_p"}  # Holm-adjusted column -> raw P column


def add_holm(rows: list[dict]) -> None:
    """Holm-adjust each test's P values over ``rows`` (in place), the paper's and the permutation test's apart."""
    for adjusted, raw in HOLM_COLUMNS.items():
        for row, p_holm in zip(rows, stats.holm([r[raw] for r in rows]), strict=True):
            row[adjusted] = p_holm


def table2(summary: pd.DataFrame, comparison: pd.DataFrame) -> pd.DataFrame:
    """The paper's Table 2: metric, each model's % (95% CI), and the participant-level P values (Holm):
    the pre-specified exact permutation test (``P value``, primary) and the paper's test beside it, with n."""
    rows = []
    for m in (*METRICS, *PIXEL_METRICS):
        row = {"Evaluation metric": LABELS[m]}
        for r in summary[summary.metric == m].itertuples():
            ci = f"{100 * r.ci_low:.2f}-{100 * r.ci_high:.2f}" if not np.isnan(r.ci_low) else "n/a"
            row[f"{r.model}, % (95% CI)"] = f"{100 * r.mean:.2f} ({ci})" if not np.isnan(r.mean) else "n/a"
        row["images"] = ", ".join(str(n) for n in dict.fromkeys(summary[summary.metric == m].n_defined))
        cmp = comparison[comparison.metric == m]
        for r in cmp.itertuples():
            pair = "" if len(cmp) == 1 else f" {r.model_a} vs {r.model_b}"
            row[f"P value{pair}"] = stats.format_p(r.perm_p_holm)
            row[f"test{pair}"] = f"permutation, {r.perm_method} (n={r.n})"
            row[f"P value, paper's test{pair}"] = stats.format_p(r.p_holm)
            row[f"paper's test{pair}"] = f"{r.test} (n={r.n})"
        rows.append(row)
    return pd.DataFrame(rows)


# ------------------------------------------------------------------ figures


def _pyplot():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def figure4(confusions: pd.DataFrame, path: Path, title: str) -> None:
    """Figure 4: one pixel confusion matrix per model (raw counts, colour = share of the true class)."""
    plt = _pyplot()
    n = len(confusions)
    fig, axes = plt.subplots(1, n, figsize=(4.2 * n, 4), squeeze=False)
    for ax, r in zip(axes[0], confusions.itertuples(), strict=True):
        cm = np.array([[r.tn, r.fp], [r.fn, r.tp]], float)
        share = cm / np.maximum(cm.sum(1, keepdims=True), 1)
        ax.imshow(share, cmap="Blues", vmin=0, vmax=1)
        for i in range(2):
            for j in range(2):
                ax.text(
                    j,
                    i,
                    f"{int(cm[i, j]):,}\n({100 * share[i, j]:.1f}%)",
                    ha="center",
                    va="center",
                    color="white" if share[i, j] > 0.5 else "black",
                )
        ax.set_xticks([0, 1], ["background", "cancer"])
        ax.set_yticks([0, 1], ["background", "cancer"])
        ax.set_xlabel("predicted")
        ax.set_ylabel("ground truth (WSI)")
        ax.set_title(f"{r.model}\nrecall {100 * r.recall:.1f}%, specificity {100 * r.specificity:.1f}%", fontsize=10)
    fig.suptitle(title)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def overlay(
    image: np.ndarray, mask: np.ndarray, colour: tuple[int, int, int], void: np.ndarray | None = None
) -> np.ndarray:
    """RGB of a grayscale image with ``mask`` tinted in ``colour`` and void pixels darkened."""
    rgb = np.repeat(image[..., None].astype(float), 3, axis=2)
    rgb[mask] = 0.5 * rgb[mask] + 0.5 * np.array(colour)
    if void is not None:
        rgb[void] *= 0.4
    return rgb.astype(np.uint8)


def figure5(voc: Path, pred_dirs: dict[str, Path], ids: list[str], path: Path, split: str = "test") -> None:
    """Figure 5: per image of the split (grouped by participant) the crop, the truth and each model's prediction."""
    plt = _pyplot()
    cols = 2 + len(pred_dirs)
    fig, axes = plt.subplots(max(len(ids), 1), cols, figsize=(3.2 * cols, 1.2 + 0.9 * max(len(ids), 1)), squeeze=False)
    for r, (row, image_id) in enumerate(zip(axes, sorted(ids, key=lambda i: (participant_of(i), i)), strict=False)):
        img = read_image(voc, image_id)
        truth = np.asarray(PIL.Image.open(voc / "SegmentationClass" / f"{image_id}.png"))
        void = truth == VOID
        panels = [("crop", img), ("ground truth", overlay(img, truth == 1, (255, 60, 60), void))]
        for model, d in pred_dirs.items():
            panels.append(
                (model, overlay(img, np.asarray(PIL.Image.open(d / f"{image_id}.png")) == 1, (60, 200, 255), void))
            )
        for ax, (name, im) in zip(row, panels, strict=True):
            ax.imshow(im, cmap="gray", vmin=0, vmax=255, aspect="auto")
            ax.set_xticks([])
            ax.set_yticks([])
            if r == 0:
                ax.set_title(name, fontsize=9)
        row[0].set_ylabel(image_id, rotation=0, ha="right", va="center", fontsize=8)
    for ax in axes[len(ids) :].ravel():
        ax.axis("off")
    fig.suptitle(
        f"{split} images: crop along the needle tract, ground truth (red) and predictions (blue); void darkened",
        fontsize=10,
    )
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


# ------------------------------------------------------------------ entry point


def parser() -> argparse.ArgumentParser:
    """The command line; every setting that config.yaml carries is a required option the rule passes."""
    p = argparse.ArgumentParser(description="evaluate the models' predictions of one split")
    p.add_argument("--voc", required=True)
    p.add_argument("--split", required=True)
    p.add_argument("--predictions", nargs="+", required=True, help="model=directory pairs")
    p.add_argument("--ci", choices=CI_METHODS, required=True, help="config evaluate.ci")
    p.add_argument("--bootstrap", type=int, required=True, help="config evaluate.bootstrap")
    p.add_argument("--seed", type=int, required=True, help="config evaluate.seed (bootstrap, Monte Carlo permutations)")
    p.add_argument("--alpha", type=float, required=True, help="config evaluate.alpha")
    p.add_argument("--holm", choices=HOLM, required=True, help="config evaluate.holm")
    p.add_argument("--out", required=True, help="output directory")
    return p


def main(argv: list[str] | None = None) -> None:
    a = parser().parse_args(argv)

    def go() -> None:
        voc, out = Path(a.voc), Path(a.out)
        out.mkdir(parents=True, exist_ok=True)
        dirs = dict(x.split("=", 1) for x in a.predictions)
        ids = (voc / "ImageSets" / "Segmentation" / f"{a.split}.txt").read_text().split()
        if not ids:
            raise InputError(
                f"the {a.split} split has no images to evaluate",
                "confirm the biopsies listed in results/review.tsv, or add participants to this split",
            )
        per_image = pd.concat(
            [score_images(voc, Path(d), ids).assign(model=m) for m, d in dirs.items()], ignore_index=True
        )
        per_image.to_csv(
            out / "per_image.tsv", sep="\t", index=False, float_format="%.10g"
        )  # enough digits to recompute
        across = a.holm == "pairs_and_metrics"
        summary = summarise(per_image, a.ci, a.bootstrap, a.seed)
        summary.to_csv(out / "summary.tsv", sep="\t", index=False, float_format="%.6g")
        conf = pixel_confusion(per_image)
        conf.to_csv(out / "confusion.tsv", sep="\t", index=False, float_format="%.6g")
        comparison = compare_models(per_image, alpha=a.alpha, seed=a.seed, holm_across_metrics=across)
        comparison.to_csv(out / "comparison.tsv", sep="\t", index=False, float_format="%.6g")
        table2(summary, comparison).to_csv(out / "table2.tsv", sep="\t", index=False)
        sens = with_conventions(per_image)
        sensitivity = table2(
            summarise(sens, a.ci, a.bootstrap, a.seed),
            compare_models(sens, alpha=a.alpha, seed=a.seed, holm_across_metrics=across),
        )
        sensitivity.to_csv(out / "table2_sensitivity.tsv", sep="\t", index=False)
        figure4(conf, out / "figure4.png", f"Pixel confusion matrices, {a.split} split ({len(ids)} images)")
        figure5(voc, {m: Path(d) for m, d in dirs.items()}, ids, out / "figure5.png", a.split)
        print(f"{a.split}: {len(ids)} images of {per_image.participant_id.nunique()} participants, {len(dirs)} models")
        print(summary.to_string(index=False))

    run_cli(go, file=a.voc)


if __name__ == "__main__":
    main()
