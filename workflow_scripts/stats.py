"""Statistics: participant-level paired model comparison and Table 1 (characteristics by split).

All tests are scipy/statsmodels calls; this module only chooses among them and
says which one it used.

* Paired comparison, pre-specified primary test: the exact paired permutation
  (sign-flip) test of the mean difference, every one of the 2^n sign patterns
  enumerated (Monte Carlo, seeded, above ``EXACT_MAX_N`` participants).  It makes
  no normality assumption and chooses nothing from the data.  Its smallest
  attainable two-sided P is 2/2^n (.0625 at n = 5, as the Wilcoxon test's), so
  it is reported with n.
* Paired comparison, the paper's procedure (kept as the paper-faithful row):
  Shapiro-Wilk on the paired differences; a paired t test if normality is not
  rejected at ``alpha``, else the Wilcoxon signed-rank test.
  The mean difference gets a (1 - alpha) t interval.
  Effect sizes: Cohen's d_z (t test) or the matched-pairs rank-biserial
  correlation (Wilcoxon).  Several model pairs: Holm correction.
* Table 1: continuous variables as mean (SD), compared by one-way ANOVA when
  every split's values pass Shapiro-Wilk (n >= 3), else Kruskal-Wallis;
  categorical variables as n (%), compared by the chi-square test, or Fisher's
  exact test when an expected count is below 5 (r x c: Monte Carlo, seeded).
"""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np
import pandas as pd
import yaml
from scipy import stats as sps
from statsmodels.stats.multitest import multipletests

from workflow_scripts.errors import run_cli

SPLITS = ("train", "val", "test")
MC_TABLES = 100_000
EXACT_MAX_N = 20  # up to 2^20 sign patterns are enumerated; more participants: MC_TABLES random ones
SPLIT_NAMES = {"train": "Training set", "val": "Validation set", "test": "Testing set"}


def sign_flip_test(d: np.ndarray, *, seed: int) -> dict:
    """Two-sided paired permutation test of mean(d) = 0 by flipping the signs of the differences ``d``.

    scipy's permutation_test enumerates all 2^n sign patterns up to ``EXACT_MAX_N`` (exact P),
    beyond that it draws ``MC_TABLES`` of them (seeded).  ``perm_min_p`` is the smallest two-sided
    P the test can give with these n (2/2^n when exact).
    """
    d = np.asarray(d, float)
    n = len(d)
    if np.allclose(d, 0):
        return {"perm_p": 1.0, "perm_method": "none (no differences)", "perm_min_p": np.nan}
    exact = n <= EXACT_MAX_N
    res = sps.permutation_test(
        (d,),
        np.mean,
        permutation_type="samples",
        vectorized=True,
        n_resamples=np.inf if exact else MC_TABLES,
        alternative="two-sided",
        rng=np.random.default_rng(seed),
    )
    if exact:
        return {"perm_p": float(res.pvalue), "perm_method": f"exact, {2**n:,} sign patterns", "perm_min_p": 2 / 2**n}
    return {
        "perm_p": float(res.pvalue),
        "perm_method": f"Monte Carlo, {MC_TABLES:,} sign patterns, seed {seed}",
        "perm_min_p": 2 / (MC_TABLES + 1),
    }


def paired_test(a: np.ndarray, b: np.ndarray, *, alpha: float, seed: int) -> dict:
    """Compare paired values a vs b (one per participant); NaN pairs are dropped.

    ``perm_*``: the pre-specified primary test (``sign_flip_test``); ``test``, ``p``: the paper's
    Shapiro-Wilk -> paired t / Wilcoxon procedure.
    """
    a, b = np.asarray(a, float), np.asarray(b, float)
    keep = ~(np.isnan(a) | np.isnan(b))
    a, b = a[keep], b[keep]
    d = a - b
    out = {
        "n": int(len(d)),
        "mean_a": float(np.mean(a)) if len(d) else np.nan,
        "mean_b": float(np.mean(b)) if len(d) else np.nan,
        "mean_diff": float(np.mean(d)) if len(d) else np.nan,
        "diff_ci_low": np.nan,
        "diff_ci_high": np.nan,
        "shapiro_p": np.nan,
        "test": "",
        "statistic": np.nan,
        "p": np.nan,
        "effect_size": np.nan,
        "effect": "",
        "perm_p": np.nan,
        "perm_method": "",
        "perm_min_p": np.nan,
    }
    if len(d) < 3:
        return {**out, "test": "none (fewer than 3 participants)", "perm_method": "none (fewer than 3 participants)"}
    out.update(sign_flip_test(d, seed=seed))
    if np.ptp(d) > 0:  # (1 - alpha) t interval of the mean participant-level difference
        ci = sps.ttest_rel(a, b).confidence_interval(1 - alpha)
        out["diff_ci_low"], out["diff_ci_high"] = float(ci.low), float(ci.high)
    if np.allclose(d, 0):
        return {**out, "test": "none (no differences)", "p": 1.0}
    out["shapiro_p"] = float(sps.shapiro(d).pvalue) if np.ptp(d) > 0 else 0.0
    if out["shapiro_p"] >= alpha:
        r = sps.ttest_rel(a, b)
        sd = np.std(d, ddof=1)
        return {
            **out,
            "test": "paired t",
            "statistic": float(r.statistic),
            "p": float(r.pvalue),
            "effect_size": float(np.mean(d) / sd) if sd > 0 else np.nan,
            "effect": "Cohen's d_z",
        }
    r = sps.wilcoxon(a, b)
    nz = d[d != 0]
    ranks = sps.rankdata(np.abs(nz))
    rbc = (ranks[nz > 0].sum() - ranks[nz < 0].sum()) / ranks.sum()
    return {
        **out,
        "test": "Wilcoxon signed-rank",
        "statistic": float(r.statistic),
        "p": float(r.pvalue),
        "effect_size": float(rbc),
        "effect": "rank-biserial r",
    }


def format_p(p: float) -> str:
    """P values as in the journal: <.001, .002, .03, .80; n/a when no test was possible.

    Three digits below .01, and also where two would round onto .05 (.0496 is .050, not .05),
    so that a P value never reads as if it sat on the other side of alpha.
    """
    if np.isnan(p):
        return "n/a"
    if p < 0.001:
        return "<.001"
    three = p < 0.01 or round(p, 2) == 0.05
    return (f"{p:.3f}" if three else f"{p:.2f}").lstrip("0")


def holm(pvalues: list[float]) -> list[float]:
    """Holm-adjusted P values (NaN stays NaN)."""
    p = np.asarray(pvalues, float)
    out = np.full(len(p), np.nan)
    ok = ~np.isnan(p)
    if ok.any():
        out[ok] = multipletests(p[ok], method="holm")[1]
    return out.tolist()


def continuous_test(groups: list[np.ndarray], *, alpha: float) -> tuple[str, float]:
    """ANOVA if every group is normal by Shapiro-Wilk (n >= 3 each), else Kruskal-Wallis."""
    groups = [g[~np.isnan(g)] for g in groups]
    groups = [g for g in groups if len(g)]
    if len(groups) < 2:
        return "none (fewer than 2 groups)", np.nan
    if all(len(g) >= 3 and np.ptp(g) > 0 and sps.shapiro(g).pvalue >= alpha for g in groups):
        return "ANOVA", float(sps.f_oneway(*groups).pvalue)
    if len(np.unique(np.concatenate(groups))) < 2:
        return "none (all values equal)", np.nan
    return "Kruskal-Wallis", float(sps.kruskal(*groups).pvalue)


def categorical_test(table: np.ndarray, *, seed: int, n_tables: int = MC_TABLES) -> tuple[str, float]:
    """Chi-square test of a levels x splits count table; Fisher's exact test if an expected count is < 5.

    A 2 x 2 table gets the exact P; larger ones the Fisher-Freeman-Halton P estimated
    from ``n_tables`` random tables with the same margins, seeded (scipy's own default is unseeded).
    """
    t = np.asarray(table)
    t = t[t.sum(1) > 0][:, t.sum(0) > 0]
    if t.shape[0] < 2 or t.shape[1] < 2:
        return "none (one level or one group)", np.nan
    expected = sps.contingency.expected_freq(t)
    if not (expected < 5).any():
        return "chi-square", float(sps.chi2_contingency(t, correction=False).pvalue)
    if t.shape == (2, 2):
        return "Fisher's exact", float(sps.fisher_exact(t).pvalue)
    mc = sps.MonteCarloMethod(n_resamples=n_tables, rng=np.random.default_rng(seed))
    p = np.ravel(sps.fisher_exact(t, method=mc).pvalue)[0]  # an array of one for some small tables
    return f"Fisher's exact (Monte Carlo, {n_tables:,} tables)", float(p)


def table1(
    participants: pd.DataFrame, split_of: dict[str, str], schema: dict, *, seed: int, alpha: float
) -> pd.DataFrame:
    """Table 1: one row per characteristic (and per level), one column per split, the test and P value.

    Characteristics and their levels come from the participants schema: numbers are
    continuous, enums categorical.  ``seed`` and ``alpha`` (Shapiro-Wilk's level): config evaluate.seed and .alpha.
    """
    df = participants.assign(split=participants["participant_id"].map(split_of))
    df = df[df["split"].isin(SPLITS)]
    n = {s: int((df["split"] == s).sum()) for s in SPLITS}
    cols = {s: f"{SPLIT_NAMES[s]} (n={n[s]})" for s in SPLITS}
    rows = []
    for name, prop in schema["properties"].items():
        if name in ("participant_id", "split") or name not in df:
            continue
        title = prop.get("title", name)
        if prop.get("type") in ("number", "integer"):
            values = pd.to_numeric(df[name], errors="coerce")
            test, p = continuous_test([values[df["split"] == s].to_numpy(float) for s in SPLITS], alpha=alpha)
            row = {"Characteristic": f"{title}, mean (SD)", "test": test, "P value": p}
            for s in SPLITS:
                v = values[df["split"] == s].dropna()
                row[cols[s]] = (
                    f"{v.mean():.1f} ({v.std(ddof=1):.1f})" if len(v) > 1 else (f"{v.mean():.1f}" if len(v) else "")
                )
            rows.append(row)
        elif "enum" in prop:
            levels = [lv for lv in prop["enum"] if (df[name] == lv).any()]
            counts = np.array([[int(((df[name] == lv) & (df["split"] == s)).sum()) for s in SPLITS] for lv in levels])
            test, p = categorical_test(counts, seed=seed) if len(levels) else ("none (no values)", np.nan)
            rows.append(
                {"Characteristic": f"{title}, n (%)", **{cols[s]: "" for s in SPLITS}, "test": test, "P value": p}
            )
            for lv, c in zip(levels, counts, strict=True):
                rows.append(
                    {
                        "Characteristic": f"  {lv}",
                        **{cols[s]: f"{k} ({100 * k / max(n[s], 1):.1f})" for s, k in zip(SPLITS, c, strict=True)},
                        "test": "",
                        "P value": np.nan,
                    }
                )
    out = pd.DataFrame(rows, columns=["Characteristic", *cols.values(), "test", "P value"])
    out["p"] = out["P value"]
    out["P value"] = [format_p(p) if t else "" for p, t in zip(out["p"], out["test"], strict=True)]
    return out


def parser() -> argparse.ArgumentParser:
    """The command line; every setting that config.yaml carries is a required option the rule passes."""
    p = argparse.ArgumentParser(description="Table 1: participant characteristics by split")
    p.add_argument("--participants", required=True)
    p.add_argument("--splits", required=True, help="splits.tsv")
    p.add_argument("--schema", required=True, help="participants schema (characteristics and levels)")
    p.add_argument("--seed", type=int, required=True, help="seed of the Monte Carlo exact tests (config evaluate.seed)")
    p.add_argument("--alpha", type=float, required=True, help="Shapiro-Wilk's level (config evaluate.alpha)")
    p.add_argument("--out", required=True)
    return p


def main(argv: list[str] | None = None) -> None:
    a = parser().parse_args(argv)

    def go() -> None:
        part = pd.read_csv(a.participants, sep="\t", dtype=str, keep_default_na=False).replace("", np.nan)
        splits = pd.read_csv(a.splits, sep="\t", dtype=str)
        t = table1(
            part,
            dict(zip(splits["participant_id"], splits["split"], strict=True)),
            yaml.safe_load(Path(a.schema).read_text()),
            seed=a.seed,
            alpha=a.alpha,
        )
        t.to_csv(a.out, sep="\t", index=False, float_format="%.4g")
        print(t.to_string(index=False))

    run_cli(go, file=a.participants)


if __name__ == "__main__":
    main()
