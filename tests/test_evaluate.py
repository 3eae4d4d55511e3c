"""Metrics, the cluster bootstrap and the statistics, against independent computations."""

from __future__ import annotations

import math

import numpy as np
import pandas as pd
import pytest
from scipy import stats as sps
from sklearn import metrics as skm
from statsmodels.stats.multitest import multipletests

from workflow_scripts import evaluate, stats

VOID = 255


def random_masks(seed: int, shape=(40, 60), p_cancer=0.4, p_void=0.15):
    rng = np.random.default_rng(seed)
    truth = (rng.random(shape) < p_cancer).astype(np.uint8)
    truth[rng.random(shape) < p_void] = VOID
    pred = np.where(rng.random(shape) < 0.7, truth % VOID, rng.integers(0, 2, shape)).astype(np.uint8)
    return truth, pred


@pytest.mark.parametrize("seed", range(6))
def test_metrics_equal_scikit_learn_on_random_masks(seed):
    truth, pred = random_masks(seed, p_cancer=[0.05, 0.4, 0.9][seed % 3])
    keep = truth != VOID
    t, p = truth[keep], pred[keep]
    cm = evaluate.confusion(truth, pred)
    np.testing.assert_array_equal(cm, skm.confusion_matrix(t, p, labels=[0, 1]))
    m = evaluate.image_metrics(cm)
    assert m["pixel_accuracy"] == pytest.approx(skm.accuracy_score(t, p))
    assert m["dice"] == pytest.approx(skm.f1_score(t, p))
    assert m["precision"] == pytest.approx(skm.precision_score(t, p))
    assert m["recall"] == pytest.approx(skm.recall_score(t, p))
    assert m["specificity"] == pytest.approx(skm.recall_score(t, p, pos_label=0))
    assert m["miou"] == pytest.approx(skm.jaccard_score(t, p, average="macro"))


def test_undefined_metrics_are_nan_and_counted():
    truth = np.zeros((10, 10), np.uint8)
    truth[:, :3] = VOID
    empty = evaluate.image_metrics(evaluate.confusion(truth, np.zeros_like(truth)))
    assert empty["pixel_accuracy"] == 1 and empty["specificity"] == 1 and empty["miou"] == 1
    assert all(math.isnan(empty[k]) for k in ("dice", "precision", "recall"))
    # sklearn, told to give nan where a value is undefined (zero_division=nan), agrees on every metric
    t = truth[truth != VOID]
    ref = {
        "pixel_accuracy": skm.accuracy_score(t, t),
        "dice": skm.f1_score(t, t, zero_division=np.nan),
        "precision": skm.precision_score(t, t, zero_division=np.nan),
        "recall": skm.recall_score(t, t, zero_division=np.nan),
        "specificity": skm.recall_score(t, t, pos_label=0, zero_division=np.nan),
        "miou": skm.jaccard_score(t, t, average="macro"),  # background only: its IoU
    }
    assert {k: empty[k] for k in ref} == pytest.approx(ref, nan_ok=True)
    df = pd.DataFrame(
        {
            "model": "m",
            "image_id": ["a_1", "a_2", "b_1"],
            "participant_id": ["a", "a", "b"],
            "dice": [0.5, np.nan, 0.7],
            **{k: [1.0, 1.0, 1.0] for k in evaluate.METRICS if k != "dice"},
            **{k: [5, 5, 5] for k in ("tn", "fp", "fn", "tp")},
        }
    )
    s = evaluate.summarise(df, "cluster_t", 200, 1).set_index("metric")
    assert (
        s.loc["dice", "mean"] == pytest.approx(0.6)
        and s.loc["dice", "n_defined"] == 2
        and s.loc["dice", "n_images"] == 3
    )


def clustered_values(seed: int, n_participants=12):
    """Images of one participant share a participant effect: clustered data."""
    rng = np.random.default_rng(seed)
    values, groups = [], []
    for i in range(n_participants):
        effect = rng.normal(0, 0.15)
        k = int(rng.integers(1, 7))
        values += list(0.7 + effect + rng.normal(0, 0.02, k))
        groups += [f"P{i}"] * k
    return np.array(values), np.array(groups)


def test_cluster_bootstrap_is_reproducible_contains_the_estimate_and_matches_a_plain_loop():
    v, g = clustered_values(0)
    a = evaluate.cluster_bootstrap(v, g, 2000, seed=5)
    assert a == evaluate.cluster_bootstrap(v, g, 2000, seed=5)
    assert a != evaluate.cluster_bootstrap(v, g, 2000, seed=6)
    mean, lo, hi, n = a
    assert mean == pytest.approx(v.mean()) and n == len(v) and lo < mean < hi
    # an independent, slow implementation: resample participants, pool their images
    rng = np.random.default_rng(99)
    ids = np.unique(g)
    boot = []
    for _ in range(4000):
        pick = rng.choice(ids, len(ids))
        boot.append(np.concatenate([v[g == p] for p in pick]).mean())
    ref_lo, ref_hi = np.percentile(boot, [2.5, 97.5])
    assert lo == pytest.approx(ref_lo, abs=0.02) and hi == pytest.approx(ref_hi, abs=0.02)
    # resampling images as if independent understates the uncertainty of clustered data
    naive = sps.bootstrap(
        (v,), np.mean, n_resamples=2000, method="percentile", rng=np.random.default_rng(5)
    ).confidence_interval
    assert (hi - lo) > 1.5 * (naive.high - naive.low)


def test_paired_t_when_differences_are_normal_with_known_values():
    a = np.array([3.0, 5.0, 7.0, 9.0, 11.0])
    b = a - np.array([1.0, 2.0, 3.0, 4.0, 5.0])  # differences 1..5: mean 3, SD sqrt(2.5)
    r = stats.paired_test(a, b, alpha=0.05, seed=0)
    assert r["test"] == "paired t" and r["shapiro_p"] >= 0.05 and r["n"] == 5
    assert r["statistic"] == pytest.approx(3 / (math.sqrt(2.5) / math.sqrt(5)))  # 4.2426
    assert r["p"] == pytest.approx(sps.ttest_rel(a, b).pvalue) and r["p"] == pytest.approx(0.01324, abs=1e-4)
    assert r["effect_size"] == pytest.approx(3 / math.sqrt(2.5)) and r["effect"] == "Cohen's d_z"


def test_wilcoxon_when_shapiro_rejects_normality():
    d = np.array([0.01, 0.02, 0.015, 0.012, 0.018, 0.011, 0.6, 0.014, 0.016, 0.013])  # one huge outlier
    b = np.linspace(0.5, 0.8, len(d))
    a = b + d
    assert sps.shapiro(d).pvalue < 0.05
    r = stats.paired_test(a, b, alpha=0.05, seed=0)
    assert r["test"] == "Wilcoxon signed-rank"
    ref = sps.wilcoxon(a, b)
    assert r["p"] == pytest.approx(ref.pvalue) and r["statistic"] == pytest.approx(ref.statistic)
    assert r["effect_size"] == pytest.approx(1.0) and r["effect"] == "rank-biserial r"  # every difference positive


def enumerated_sign_flip_p(d: np.ndarray) -> float:
    """Two-sided sign-flip P by listing every sign pattern: the share of patterns whose |mean| reaches the
    observed one (the null distribution is symmetric, so this is scipy's 2 x one-sided P)."""
    from itertools import product

    means = np.array([np.mean(np.array(s) * d) for s in product((1, -1), repeat=len(d))])
    return float(np.mean(np.abs(means) >= abs(np.mean(d)) - 1e-12))


def test_permutation_test_known_values_and_its_floor_at_five_participants():
    """n = 5, every difference positive: 2 of the 32 sign patterns are as extreme, P = 2/32 = .0625 exactly, the
    same floor as the Wilcoxon test's (the paper's t test reaches P < .05 only by assuming normality)."""
    b = np.array([0.50, 0.55, 0.60, 0.62, 0.70])
    a = b + np.array([0.01, 0.02, 0.03, 0.04, 0.05])
    r = stats.paired_test(a, b, alpha=0.05, seed=0)
    assert r["perm_p"] == 2 / 32 == r["perm_min_p"] and r["perm_method"] == "exact, 32 sign patterns"
    assert sps.wilcoxon(a, b).pvalue == pytest.approx(0.0625) and r["test"] == "paired t" and r["p"] < 0.05
    # n = 6: the floor halves, 2/64
    assert stats.sign_flip_test(np.full(6, 0.02), seed=0)["perm_p"] == pytest.approx(2 / 64)
    # mixed signs, against a plain enumeration
    rng = np.random.default_rng(4)
    for n in (3, 7, 10):
        d = rng.normal(0.02, 0.05, n)
        assert stats.sign_flip_test(d, seed=0)["perm_p"] == pytest.approx(enumerated_sign_flip_p(d))
    # by hand, d = (1, 2, 3, -4, 5), sum 7: a pattern that negates magnitudes summing to S has sum 15 - 2S, so
    # |sum| >= 7 when S <= 4 ({}, {1}, {2}, {3}, {4}, {1,2}, {1,3}) or, mirrored, S >= 11: 14 of 32
    assert stats.sign_flip_test(np.array([1.0, 2, 3, -4, 5]), seed=0)["perm_p"] == pytest.approx(14 / 32)


def test_permutation_test_beyond_the_exact_limit_is_seeded_monte_carlo(monkeypatch):
    monkeypatch.setattr(stats, "EXACT_MAX_N", 8)
    monkeypatch.setattr(stats, "MC_TABLES", 20_000)
    d = np.random.default_rng(2).normal(0.03, 0.05, 12)
    r = stats.sign_flip_test(d, seed=5)
    assert r["perm_method"] == "Monte Carlo, 20,000 sign patterns, seed 5"
    assert r == stats.sign_flip_test(d, seed=5)  # reproducible
    exact = enumerated_sign_flip_p(d)  # 4,096 patterns
    assert abs(r["perm_p"] - exact) < 4 * math.sqrt(exact * (1 - exact) / 20_000) + 1e-4


def test_too_few_participants_is_no_test():
    r = stats.paired_test(np.array([0.5, 0.6]), np.array([0.4, 0.3]), alpha=0.05, seed=0)
    assert r["n"] == 2 and math.isnan(r["p"]) and r["test"].startswith("none")


def test_holm_matches_statsmodels_and_known_values():
    p = [0.01, 0.04, 0.03]
    assert stats.holm(p) == pytest.approx([0.03, 0.06, 0.06])
    assert stats.holm(p) == pytest.approx(multipletests(p, method="holm")[1])
    out = stats.holm([0.02, float("nan")])
    assert out[0] == pytest.approx(0.02) and math.isnan(out[1])


def test_three_models_are_compared_pairwise_with_holm():
    rng = np.random.default_rng(3)
    rows = []
    for model, shift in (("a", 0.0), ("b", 0.05), ("c", 0.1)):
        for i in range(8):
            for _ in range(2):
                rows.append(
                    {
                        "model": model,
                        "image_id": f"P{i}_B{len(rows) % 2}",
                        "participant_id": f"P{i}",
                        **{m: 0.6 + shift + rng.normal(0, 0.03) for m in evaluate.METRICS},
                        **{k: int(rng.integers(1, 50)) for k in ("tn", "fp", "fn", "tp")},
                    }
                )
    cmp = evaluate.compare_models(pd.DataFrame(rows), alpha=0.05, seed=0)
    dice = cmp[cmp.metric == "dice"]
    assert list(zip(dice.model_a, dice.model_b, strict=True)) == [("a", "b"), ("a", "c"), ("b", "c")]
    assert dice.p_holm.to_numpy() == pytest.approx(multipletests(dice.p.to_numpy(), method="holm")[1])
    assert dice.perm_p_holm.to_numpy() == pytest.approx(multipletests(dice.perm_p.to_numpy(), method="holm")[1])
    assert (dice.n == 8).all()  # participants, not images
    assert (dice.perm_method == "exact, 256 sign patterns").all()
    table = evaluate.table2(evaluate.summarise(pd.DataFrame(rows), "cluster_t", 200, 1), cmp)
    assert "P value a vs c" in table.columns and len(table) == len(evaluate.METRICS) + len(evaluate.PIXEL_METRICS)
    # the primary (permutation) P and the paper's beside it, each with n
    row = table.set_index("Evaluation metric").loc["DSC"]
    assert row["P value a vs c"] == stats.format_p(dice.perm_p_holm.iloc[1])
    assert row["P value, paper's test a vs c"] == stats.format_p(dice.p_holm.iloc[1])
    assert row["test a vs c"] == "permutation, exact, 256 sign patterns (n=8)"
    assert row["paper's test a vs c"] == f"{dice.test.iloc[1]} (n=8)"
    # optionally Holm over every test of every metric
    every = evaluate.compare_models(pd.DataFrame(rows), alpha=0.05, seed=0, holm_across_metrics=True)
    assert len(every) == 3 * len(evaluate.METRICS)
    assert every.p_holm.to_numpy() == pytest.approx(multipletests(every.p.to_numpy(), method="holm")[1])
    assert every.perm_p_holm.to_numpy() == pytest.approx(multipletests(every.perm_p.to_numpy(), method="holm")[1])
    assert (every.p_holm >= cmp.p_holm - 1e-12).all()


def exact_rxc_p(table: np.ndarray) -> float:
    """Fisher-Freeman-Halton P of a 2 x c table by enumerating every table with the same margins."""
    from itertools import product

    from scipy.special import gammaln

    rows, cols = table.sum(1), table.sum(0)
    logp = lambda t: gammaln(rows + 1).sum() + gammaln(cols + 1).sum() - gammaln(table.sum() + 1) - gammaln(t + 1).sum()  # noqa: E731
    p_obs = logp(table)
    total = 0.0
    for first in product(*[range(c + 1) for c in cols[:-1]]):
        last = rows[0] - sum(first)
        if not 0 <= last <= cols[-1]:
            continue
        top = np.array([*first, last])
        t = np.stack([top, cols - top])
        if (t < 0).any():
            continue
        if logp(t) <= p_obs + 1e-7:
            total += np.exp(logp(t))
    return float(total)


def test_table1_tests_agree_with_scipy():
    rng = np.random.default_rng(1)
    n = 60
    df = pd.DataFrame(
        {
            "participant_id": [f"P{i}" for i in range(n)],
            "age": rng.normal(55, 10, n).round(),
            "volume_mm3": rng.lognormal(1, 1.2, n),  # skewed: Kruskal-Wallis
            "side": rng.choice(["left", "right"], n),  # large cells: chi-square
            "histology": ["DCIS" if i % 12 == 0 else "invasive" for i in range(n)],  # small cells: exact test
            "margin": ["circumscribed" if i in (0, 1) else "not circumscribed" for i in range(n)],
        }
    )
    split = {p: ("train", "val", "test")[i % 3] for i, p in enumerate(df.participant_id)}
    schema = {
        "properties": {
            "participant_id": {},
            "age": {"type": "number"},
            "volume_mm3": {"type": "number"},
            "side": {"type": "string", "enum": ["left", "right"]},
            "histology": {"type": "string", "enum": ["invasive", "DCIS"]},
            "margin": {"type": "string", "enum": ["circumscribed", "not circumscribed"]},
        }
    }
    t = stats.table1(df, split, schema, seed=4, alpha=0.05).set_index("Characteristic")
    groups = lambda c: [df[c][[split[p] == s for p in df.participant_id]].to_numpy() for s in ("train", "val", "test")]  # noqa: E731
    assert t.loc["age, mean (SD)", "test"] == "ANOVA"
    assert t.loc["age, mean (SD)", "p"] == pytest.approx(sps.f_oneway(*groups("age")).pvalue)
    assert t.loc["volume_mm3, mean (SD)", "test"] == "Kruskal-Wallis"
    assert t.loc["volume_mm3, mean (SD)", "p"] == pytest.approx(sps.kruskal(*groups("volume_mm3")).pvalue)
    side = pd.crosstab(df.side, [split[p] for p in df.participant_id])[["train", "val", "test"]].to_numpy()
    assert t.loc["side, n (%)", "test"] == "chi-square"
    assert t.loc["side, n (%)", "p"] == pytest.approx(sps.chi2_contingency(side, correction=False).pvalue)
    hist = (
        pd.crosstab(df.histology, [split[p] for p in df.participant_id])
        .loc[["invasive", "DCIS"], ["train", "val", "test"]]
        .to_numpy()
    )
    assert t.loc["histology, n (%)", "test"].startswith("Fisher's exact (Monte Carlo")  # 2 x 3, seeded
    mc = sps.MonteCarloMethod(n_resamples=stats.MC_TABLES, rng=np.random.default_rng(4))
    assert t.loc["histology, n (%)", "p"] == pytest.approx(sps.fisher_exact(hist, method=mc).pvalue)
    # the exact 2 x 3 P (enumerated by hand below) is within Monte Carlo error
    assert t.loc["histology, n (%)", "p"] == pytest.approx(exact_rxc_p(hist), abs=0.002)
    # two splits only (a 2 x 2 table): the exact test itself
    two = {p: s if s != "test" else "val" for p, s in split.items()}
    t2 = stats.table1(df, two, schema, seed=0, alpha=0.05).set_index("Characteristic")
    margin = pd.crosstab(df.margin, [two[p] for p in df.participant_id])[["train", "val"]].to_numpy()
    assert t2.loc["margin, n (%)", "test"] == "Fisher's exact"
    assert t2.loc["margin, n (%)", "p"] == pytest.approx(sps.fisher_exact(margin).pvalue)
    train_n = sum(1 for s in split.values() if s == "train")
    left = int(((df.side == "left") & (df.participant_id.map(split) == "train")).sum())
    assert t.loc["  left", f"Training set (n={train_n})"] == f"{left} ({100 * left / train_n:.1f})"


def test_tiny_tables_give_a_p_value():
    """Both 2 x 3 tables have margins (2, 2) and (2, 1, 1): four tables, of probability 1/6, 1/3, 1/3, 1/6.
    The first is one of the two least likely (P = 2/6); the second is among the most likely (P = 1)."""
    for table, exact in (([[2, 0, 0], [0, 1, 1]], 1 / 3), ([[1, 1, 0], [1, 0, 1]], 1.0)):
        test, p = stats.categorical_test(np.array(table), seed=1)
        assert exact_rxc_p(np.array(table)) == pytest.approx(exact)  # the enumeration agrees with the hand count
        se = math.sqrt(exact * (1 - exact) / stats.MC_TABLES)
        assert test.startswith("Fisher's exact") and p == pytest.approx(exact, abs=4 * se + 1e-9), (table, p)
    assert stats.categorical_test(np.array([[3, 2, 1]]), seed=0)[0].startswith("none")


def test_journal_p_value_format():
    assert [stats.format_p(p) for p in (0.0004, 0.002, 0.0312, 0.8, float("nan"))] == [
        "<.001",
        ".002",
        ".03",
        ".80",
        "n/a",
    ]
    assert [stats.format_p(p) for p in (0.0496, 0.0504, 0.0449, 0.055)] == [".050", ".050", ".04", ".06"]


# ------------------------------------------------------------------ small-sample statistics


def image_row(model: str, image_id: str, truth: np.ndarray, pred: np.ndarray) -> dict:
    cm = evaluate.confusion(truth, pred)
    counts = dict(zip(("tn", "fp", "fn", "tp"), cm.ravel().tolist(), strict=True))
    return {
        "model": model,
        "image_id": image_id,
        "participant_id": image_id.split("_")[0],
        **counts,
        **evaluate.image_metrics(cm),
    }


def test_models_are_judged_on_the_same_images_and_the_sensitivity_table_applies_conventions():
    """A cancer-free image where one model predicts nothing (Dice, precision undefined) and the other has false
    positives (Dice 0, precision 0) must not count against the second model only."""
    empty, lesion = np.zeros((8, 8), np.uint8), np.zeros((8, 8), np.uint8)
    lesion[2:6, 2:6] = 1
    fp = np.zeros_like(empty)
    fp[0, :4] = 1
    rows = []
    for pid in ("P1", "P2", "P3", "P4"):
        rows += [image_row("a", f"{pid}_B1", lesion, lesion), image_row("b", f"{pid}_B1", lesion, lesion)]
        rows += [image_row("a", f"{pid}_B2", empty, empty), image_row("b", f"{pid}_B2", empty, fp)]
        rows += [image_row("a", f"{pid}_B3", lesion, empty), image_row("b", f"{pid}_B3", lesion, lesion)]  # a misses
    per = pd.DataFrame(rows)
    s = evaluate.summarise(per, "cluster_t", 200, 1).set_index(["model", "metric"])
    # Dice: B2 is undefined for a, so it counts for neither; B3 counts (a: 0, b: 1)
    assert s.loc[("a", "dice"), "n_defined"] == s.loc[("b", "dice"), "n_defined"] == 8
    assert s.loc[("a", "dice"), "mean"] == pytest.approx(0.5) and s.loc[("b", "dice"), "mean"] == pytest.approx(1.0)
    # precision: a predicts nothing on B2 and B3, so only B1 counts for both: no apparent precision advantage
    assert s.loc[("a", "precision"), "n_defined"] == s.loc[("b", "precision"), "n_defined"] == 4
    cmp = evaluate.compare_models(per, alpha=0.05, seed=0).set_index("metric")
    assert cmp.loc["dice", "n"] == 4 and cmp.loc["dice", "mean_a"] == pytest.approx(0.5)
    # the sensitivity analysis: both-empty Dice = 1, a missed lesion's precision = 0
    sens = evaluate.with_conventions(per)
    ss = evaluate.summarise(sens, "cluster_t", 200, 1).set_index(["model", "metric"])
    assert ss.loc[("a", "dice"), "mean"] == pytest.approx(2 / 3) and ss.loc[("b", "dice"), "mean"] == pytest.approx(
        2 / 3
    )
    assert ss.loc[("a", "precision"), "mean"] == pytest.approx(0.5)  # B1: 1, B3: 0; B2 stays undefined
    # pixel-level recall pools every pixel: a finds the lesion in B1 only
    assert s.loc[("a", "recall_pixel"), "mean"] == pytest.approx(per[per.model == "a"].tp.sum() / 128)
    assert s.loc[("a", "recall_pixel"), "mean"] == pytest.approx(0.5)


def test_cluster_t_interval_against_a_direct_jackknife_and_scipy_t():
    v, g = clustered_values(4, n_participants=7)
    mean, lo, hi = evaluate.cluster_t_interval(v, np.ones(len(v)), g)
    assert mean == pytest.approx(v.mean())
    ids = np.unique(g)
    loo = np.array([v[g != p].mean() for p in ids])  # the estimate without each participant
    se = math.sqrt((len(ids) - 1) / len(ids) * ((loo - loo.mean()) ** 2).sum())
    q = sps.t.ppf(0.975, len(ids) - 1)  # 2.447 for 6 degrees of freedom
    assert q == pytest.approx(2.4469, abs=1e-4)
    assert (lo, hi) == pytest.approx((mean - q * se, mean + q * se))
    # a pixel ratio: sum(num) / sum(den)
    num, den = np.array([3.0, 0, 5, 2]), np.array([4.0, 2, 5, 4])
    r, rlo, rhi = evaluate.cluster_t_interval(num, den, np.array(["a", "a", "b", "c"]))
    assert r == pytest.approx(10 / 15) and rlo < r < rhi
    # a proportion near 1: the t interval is cut at 1 (the metrics are proportions)
    near = np.array([1.0, 1.0, 0.9, 1.0, 0.97])
    hi_raw = evaluate.cluster_t_interval(near, np.ones(5), np.arange(5))[2]
    assert hi_raw > 1 and evaluate.interval(near, np.ones(5), np.arange(5), "cluster_t", 0, 0)[2] == 1.0
    # evaluate.ci: bootstrap resamples participants' (num, den) sums for the same ratio
    b, blo, bhi = evaluate.interval(num, den, np.array(["a", "a", "b", "c"]), "bootstrap", 500, 1)
    assert b == pytest.approx(10 / 15) and blo <= b <= bhi and (blo, bhi) != (rlo, rhi)


def coverage(n_participants: int, reps: int, seed: int) -> float:
    """Share of 95% cluster-t intervals that hold the true image-level mean of simulated clustered data."""
    rng = np.random.default_rng(seed)
    hits = 0
    for _ in range(reps):
        n = rng.integers(1, 5, n_participants)  # 1-4 images per participant
        cl = np.repeat(np.arange(n_participants), n)
        v = 0.6 + rng.normal(0, 0.15, n_participants)[cl] + rng.normal(0, 0.1, len(cl))  # true mean 0.6
        _, lo, hi = evaluate.cluster_t_interval(v, np.ones(len(v)), cl)
        hits += lo <= 0.6 <= hi
    return hits / reps


def test_cluster_t_interval_covers_at_small_numbers_of_participants():
    """The percentile cluster bootstrap covered 83% at 5 and 89% at 12 participants; this must reach 93% at 12."""
    measured = {g: coverage(g, 2000, seed=g) for g in (5, 12, 30)}
    print("coverage of nominal 95% intervals:", measured)
    assert measured[12] >= 0.93 and measured[30] >= 0.93 and measured[5] >= 0.9


def test_paired_difference_has_the_scipy_t_interval():
    a = np.array([0.61, 0.72, 0.55, 0.8, 0.66, 0.7])
    b = a - np.array([0.05, 0.02, 0.08, 0.03, 0.06, 0.04])
    r = stats.paired_test(a, b, alpha=0.05, seed=0)
    ci = sps.ttest_rel(a, b).confidence_interval(0.95)
    assert (r["diff_ci_low"], r["diff_ci_high"]) == pytest.approx((ci.low, ci.high))
    assert r["mean_diff"] == pytest.approx(0.28 / 6) and r["diff_ci_low"] < r["mean_diff"] < r["diff_ci_high"]


def test_a_single_model_is_summarised_without_comparisons():
    """One entry in train.models: Table 2 has no P value columns, and nothing fails."""
    truth = np.zeros((8, 8), np.uint8)
    truth[2:6, 2:6] = 1
    per = pd.DataFrame([image_row("unet", f"P{i}_B1", truth, truth) for i in range(3)])
    cmp = evaluate.compare_models(per, alpha=0.05, seed=0)
    assert cmp.empty and {"metric", "p_holm", "diff_ci_low"} <= set(cmp.columns)
    t2 = evaluate.table2(evaluate.summarise(per, "cluster_t", 200, 1), cmp)
    assert len(t2) == len(evaluate.METRICS) + len(evaluate.PIXEL_METRICS)
    assert not any(c.startswith("P value") for c in t2.columns) and t2.loc[1, "unet, % (95% CI)"].startswith("100.00")


def test_report_states_the_permutation_p_beside_the_papers_with_n(tmp_path):
    """evaluate's real outputs of two models on six participants, rendered by the report's test section."""
    import PIL.Image
    from conftest import write_voc

    from workflow_scripts import report, voc

    ids = [f"P{i}_B1" for i in range(6)]
    write_voc(tmp_path / "voc", {"test": ids}, shape=(16, 24), void_rows=1, seed=3)
    rng = np.random.default_rng(0)
    dirs = []
    for model, noise in (("good", 0.02), ("poor", 0.3)):
        (tmp_path / model).mkdir()
        for i in ids:
            truth = np.asarray(PIL.Image.open(tmp_path / f"voc/SegmentationClass/{i}.png")) % VOID
            flip = rng.random(truth.shape) < noise
            voc.save_palette_png(np.where(flip, 1 - truth, truth).astype(np.uint8), tmp_path / model / f"{i}.png")
        dirs.append(f"{model}={tmp_path / model}")
    out = tmp_path / "eval"
    evaluate.main(
        [f"--voc={tmp_path / 'voc'}", "--split=test", "--predictions", *dirs, "--ci=cluster_t", "--bootstrap=200"]
        + ["--seed=1", "--alpha=0.05", "--holm=pairs", f"--out={out}"]
    )
    cmp = pd.read_csv(out / "comparison.tsv", sep="\t").set_index("metric")
    assert cmp.loc["dice", "n"] == 6 and cmp.loc["dice", "perm_p"] == pytest.approx(2 / 64)  # good wins everywhere
    html = report.evaluation_section(out, "test")
    assert "exact paired permutation" in html and "here n = 6: 0.03125" in html
    assert "P value, paper&#x27;s test" in html or "P value, paper's test" in html
    assert "permutation, exact, 64 sign patterns (n=6)" in html and "perm_p_holm" in html
