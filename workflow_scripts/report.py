"""Report: one self-contained HTML file (figures inlined) that opens from disk without a server.

Sections: run metadata (versions, config digest, seeds), cohort and splits with
Table 1, registration QC, training, test results (Table 2, comparisons, Figures
4-5), validation results, and failures and exclusions with their reasons.
"""

from __future__ import annotations

import argparse
import base64
import hashlib
import html
import json
import time
from pathlib import Path

import pandas as pd

from workflow_scripts import failures, provenance
from workflow_scripts.review_app import review_page
from workflow_scripts.state import STATES

PACKAGES = (
    "tractmap",
    "snakemake",
    "torch",
    "torchvision",
    "numpy",
    "scipy",
    "statsmodels",
    "pandas",
    "pydicom",
    "tifffile",
    "labelme",
    "scikit-image",
)

STYLE = """
body{font-family:system-ui,sans-serif;max-width:1200px;margin:2em auto;padding:0 1em;color:#222}
h1{border-bottom:2px solid #444}h2{margin-top:2em;border-bottom:1px solid #aaa}
table{border-collapse:collapse;margin:.5em 0;font-size:13px}
td,th{border:1px solid #ccc;padding:3px 7px;text-align:right}
th{background:#eee}td:first-child{text-align:left;white-space:pre}
figure{margin:1em 0}figure img{max-width:100%;border:1px solid #ddd}figcaption{font-size:13px;color:#555}
.broken{border:3px solid red;padding:1em;color:red}.note{font-size:13px;color:#555}
"""

# marks a figure that fails to decode (and counts those that did) so a reader and a test can see it
CHECK = """
window.addEventListener('load', function () {
  var imgs = document.querySelectorAll('figure img'), ok = 0;
  imgs.forEach(function (im) {
    if (im.complete && im.naturalWidth > 0) { ok++; } else { im.parentNode.classList.add('broken'); }
  });
  var s = document.getElementById('render-status');
  s.textContent = ok + ' of ' + imgs.length + ' figures rendered';
  s.dataset.rendered = ok; s.dataset.total = imgs.length;
});
"""


def digest(config: dict) -> str:
    """SHA-256 of the config as canonical JSON: two runs with the same digest used the same settings."""
    return hashlib.sha256(json.dumps(config, sort_keys=True).encode()).hexdigest()


def seeds(config: dict) -> dict[str, object]:
    """Every seed the run used, by step."""
    ev = config.get("evaluate", {})
    return {
        "demo cohort": config.get("demo", {}).get("seed"),
        "split": config["split"]["seed"],
        "training": config["train"]["seed"],
        "bootstrap": ev.get("seed"),
    }


def figure(path: Path, caption: str) -> str:
    """An inline PNG figure."""
    data = base64.b64encode(Path(path).read_bytes()).decode()
    text = html.escape(caption)
    return f'<figure><img alt="{text}" src="data:image/png;base64,{data}"><figcaption>{text}</figcaption></figure>'


def table(df: pd.DataFrame, float_format: str = "{:.4g}") -> str:
    if df.empty:
        return '<p class="note">none</p>'
    return df.to_html(index=False, na_rep="", float_format=float_format.format, border=0)


def dl(items: dict) -> str:
    return (
        "<table>"
        + "".join(f"<tr><td>{html.escape(str(k))}</td><td>{html.escape(str(v))}</td></tr>" for k, v in items.items())
        + "</table>"
    )


def evaluation_section(d: Path, split: str) -> str:
    """Table 2, the participant-level comparisons, summary with CIs, Figures 4 and 5 of one split."""
    cmp = pd.read_csv(d / "comparison.tsv", sep="\t")
    conf = pd.read_csv(d / "confusion.tsv", sep="\t")
    summ = pd.read_csv(d / "summary.tsv", sep="\t")
    method = summ["ci"].iloc[0]
    ci = (
        "t interval with G - 1 degrees of freedom around the participant-level jackknife standard error"
        if method == "cluster_t"
        else f"participant-level percentile bootstrap, {summ['bootstrap'].iloc[0]} resamples, "
        f"seed {summ['seed'].iloc[0]}"
    )
    holm = cmp["holm_over"].iloc[0] if len(cmp) else "model pairs of the metric"
    biased = (
        '<p class="note"><b>Selection-biased:</b> this split chose each model\'s epoch, so these figures are '
        "optimistic. The test split is the unbiased estimate.</p>"
        if split == "validation"
        else ""
    )
    return "".join(
        [
            f"<h3>Table 2 ({split} split)</h3>",
            biased,
            '<p class="note">Primary analysis. Image-level means, % (95% CI: '
            f"{html.escape(ci)}), each metric over the images where it is defined for every model (column "
            "<i>images</i>); the pixel-level rows pool the confusion counts of every pixel. P values: "
            "participant-level paired tests on the same images, Holm-corrected over the "
            f"{html.escape(holm)}. <b>P value</b>: the pre-specified primary test, an exact paired permutation "
            "(sign-flip) test of the mean difference. <b>P value, paper's test</b>: the paper's procedure "
            "(Shapiro-Wilk on the differences, then paired t or Wilcoxon). n is the number of participants; "
            f"with n participants no exact test can give a two-sided P below 2/2<sup>n</sup>{min_p_note(cmp)}.</p>",
            table(pd.read_csv(d / "table2.tsv", sep="\t", dtype=str, keep_default_na=False)),
            f"<h3>Table 2, sensitivity analysis ({split} split)</h3>",
            '<p class="note">The same, with explicit conventions instead of leaving images out: Dice = 1 when '
            "truth and prediction are both empty; precision = 0 when the truth has cancer and nothing is "
            "predicted.</p>",
            table(pd.read_csv(d / "table2_sensitivity.tsv", sep="\t", dtype=str, keep_default_na=False)),
            "<h3>Paired comparisons, participant level</h3>",
            table(
                cmp[
                    [
                        "metric",
                        "model_a",
                        "model_b",
                        "n",
                        "mean_a",
                        "mean_b",
                        "mean_diff",
                        "diff_ci_low",
                        "diff_ci_high",
                        "perm_method",
                        "perm_p",
                        "perm_p_holm",
                        "perm_min_p",
                        "shapiro_p",
                        "test",
                        "statistic",
                        "p",
                        "p_holm",
                        "effect",
                        "effect_size",
                    ]
                ]
            ),
            "<h3>Metrics with counts of defined images</h3>",
            '<p class="note">A metric whose denominator is zero (e.g. Dice with no cancer in truth '
            "or prediction) is undefined for that image. Each metric counts the images where it is defined "
            "for every model (n_defined).</p>",
            table(summ[["model", "metric", "mean", "ci_low", "ci_high", "n_images", "n_defined", "n_participants"]]),
            "<h3>Pixel-aggregated confusion matrices</h3>",
            table(conf, "{:.4f}"),
            figure(
                d / "figure4.png",
                f"Figure 4. Pixel confusion matrices, {split} split (raw counts; colour: share of the true class).",
            ),
            figure(d / "figure5.png", f"Figure 5. {split} images: crop, ground truth and each model's prediction."),
        ]
    )


def min_p_note(cmp: pd.DataFrame) -> str:
    """'' or ' (here n = 5: .0625)': the permutation test's smallest attainable P at this split's n."""
    n = sorted({int(v) for v in cmp["n"].dropna() if v >= 3}) if len(cmp) else []  # below 3: no test
    return f" (here n = {', '.join(map(str, n))}: {', '.join(f'{2 / 2**k:.4g}' for k in n)})" if n else ""


def review_links(rev: pd.DataFrame, results: Path) -> str:
    """The command that starts the review app on this results folder, and each held biopsy's page in it."""
    if rev.empty:
        return ""
    cmd = html.escape(f"tractmap-review {results}")
    keys = dict.fromkeys(zip(rev["participant_id"], rev["biopsy_id"], strict=True))
    # relative links: they open the biopsy's page when the app serves this report (its /report page)
    links = "".join(
        f'<li><a href="{html.escape(review_page(p, b).lstrip("/"))}">{html.escape(f"{p}/{b}")}</a></li>'
        for p, b in keys
    )
    return (
        f"<p>Review in the browser: run <code>{cmd}</code> in the working directory, open the URL it prints "
        "(it carries the access token), then its report page (/report, this report): these links open each held "
        f"biopsy's page there.</p><ul class='review-links'>{links}</ul>"
    )


def review_section(rev: pd.DataFrame, results: Path) -> str:
    """Biopsies held out of the dataset until a person confirms them, each with its QC figure and override."""
    parts = [
        "<h2>Needs review</h2>",
        f'<p class="note">{len(rev)} automatic decision(s) below the accept threshold. These biopsies are left out of '
        "the VOC split lists (so of training and evaluation) until confirmed: add the <b>confirm</b> override to "
        "biopsies.tsv if the QC figure agrees, or the <b>correct</b> one if it does not; only that biopsy reruns. "
        "The same list is in review.tsv.</p>",
        review_links(rev, results),
        table(rev.drop(columns=["qc_figure"])),
    ]
    for r in rev.itertuples():
        if Path(r.qc_figure).is_file():
            parts.append(
                figure(
                    Path(r.qc_figure), f"{r.participant_id}/{r.biopsy_id} ({r.step}): {r.reason}. Confirm: {r.confirm}"
                )
            )
    return "".join(parts)


def state_counts(qc: pd.DataFrame) -> str:
    """How many biopsies stand in each review state, from the QC table's ``state`` column (which is read from
    ``state/<p>/<b>.json``, decided once in workflow_scripts/state.py)."""
    per_biopsy = qc[~qc["participant_id"].isin(["median", "p95"])]
    counts = per_biopsy["state"].value_counts()
    found = ", ".join(f"{int(counts.get(s, 0))} {s}" for s in STATES)
    return (
        f"<p>Review state of the {len(per_biopsy)} registered biopsies: {html.escape(found)}. Only accepted and "
        "override biopsies enter the VOC split lists (training and evaluation).</p>"
    )


def cv_section(path: str) -> list[str]:
    """Cross-validation: per-fold validation Dice with mean and SD, and where the ensembles' test results are."""
    if not path:
        return []
    folds = pd.read_csv(path, sep="\t", dtype={"fold": str})
    k = int((~folds["fold"].isin(["mean", "sd"])).sum() / max(folds["model"].nunique(), 1))
    return [
        f"<h3>Cross-validation ({k} folds by participant)</h3>",
        '<p class="note">One model per fold and architecture, trained on the other folds\' participants and '
        "selected on its own fold's (validation Dice, selection-biased). Test results of each architecture's "
        "<b>fold ensemble</b> (the folds' probabilities averaged) are in Table 2 of the test split as "
        "<i>&lt;model&gt;_ensemble</i>, next to the single-split models.</p>",
        table(folds),
    ]


def build(a: argparse.Namespace) -> str:
    config = json.loads(a.config)
    splits = pd.read_csv(a.splits, sep="\t")
    qc = pd.read_csv(a.qc_table, sep="\t")
    fails = failures.collect(Path(a.logs))
    excl = pd.DataFrame(json.loads(a.exclusions), columns=["participant_id", "biopsy_id", "reason"])
    train_parts = []
    for model, (curves, history) in json.loads(a.train).items():
        h = pd.read_csv(history, sep="\t")
        best = h.loc[h["val_dice"].idxmax()]
        train_parts.append(
            f"<h3>{html.escape(model)}</h3><p>Selected on validation Dice: epoch {int(best.epoch)} of {len(h)}, "
            f"val Dice {best.val_dice:.3f}. The test split is never read during training.</p>"
            + figure(Path(curves), f"Training curves, {model}")
        )
    counts = splits.groupby("split").size().reindex(["train", "val", "test"], fill_value=0)
    body = [
        "<h1>tractmap report</h1>",
        f'<p class="note">Generated {time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime())}. '
        '<span id="render-status" data-rendered="" data-total="">figures not checked (JavaScript off)</span></p>',
        "<h2>Run metadata</h2>",
        dl(
            {
                "config digest (SHA-256)": digest(config),
                **{f"seed: {k}": v for k, v in seeds(config).items()},
                **{f"version: {k}": v for k, v in provenance.versions(PACKAGES).items()},
            }
        ),
        "<details><summary>full configuration</summary><pre>"
        + html.escape(json.dumps(config, indent=1))
        + "</pre></details>",
        "<h2>Cohort and splits</h2>",
        f"<p>{len(splits)} participants: {counts['train']} train, {counts['val']} validation, {counts['test']} test "
        "(split by participant; a participant's split never changes when others are added).</p>",
        "<h3>Table 1. Participant characteristics by split</h3>",
        table(pd.read_csv(a.table1, sep="\t", dtype=str, keep_default_na=False)),
        "<h2>Registration QC</h2>",
        state_counts(qc),
        table(qc[qc["participant_id"].isin(["median", "p95"])]),
        figure(Path(a.qc_figure), "Registration QC over all biopsies."),
        "<details><summary>per-biopsy QC</summary>"
        + table(qc[~qc["participant_id"].isin(["median", "p95"])])
        + "</details>",
        review_section(pd.read_csv(a.review, sep="\t", dtype=str, keep_default_na=False), Path(a.review).parent),
        "<h2>Training</h2>",
        *train_parts,
        *cv_section(a.cv),
        "<h2>Test results</h2>",
        evaluation_section(Path(a.test), "test"),
        "<h2>Validation results (selection-biased)</h2>",
        evaluation_section(Path(a.val), "validation"),
        "<h2>Failures and exclusions</h2>",
        "<h3>Failed jobs (from the logs of this working directory)</h3>",
        table(fails.drop(columns=["log"])),
        "<h3>Biopsies excluded (in biopsies.tsv, or by a review decision)</h3>",
        table(excl),
    ]
    return (
        "<!DOCTYPE html><html lang='en'><head><meta charset='utf-8'><title>tractmap "
        f"report</title><style>{STYLE}</style>"
        f"<script>{CHECK}</script></head><body>{''.join(body)}</body></html>"
    )


def parser() -> argparse.ArgumentParser:
    """The command line; every setting that config.yaml carries is a required option the rule passes."""
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    for k in ("splits", "table1", "qc-table", "qc-figure", "review", "test", "val", "out"):
        p.add_argument(f"--{k}", required=True)
    p.add_argument("--train", required=True, help="JSON {model: [curves.png, history.tsv]}")
    p.add_argument("--config", required=True, help="the run's configuration as JSON")
    p.add_argument("--logs", required=True, help="the per-job log folder (config logs)")
    p.add_argument("--cv", required=True, help="results/cv/folds.tsv, or '' when cross-validation is off")
    p.add_argument("--exclusions", default="[]", help="JSON list of [participant, biopsy, reason]")
    return p


def main(argv: list[str] | None = None) -> None:
    a = parser().parse_args(argv)
    Path(a.out).write_text(build(a))
    print(f"wrote {a.out}")


if __name__ == "__main__":
    main()
