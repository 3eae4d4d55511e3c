"""Orientation calibration: the dyed-end call's probability of being right, fitted on training seeds, checked on
held-out ones.

Slides are rendered and cached, and every biopsy oriented with nothing removed, by ``orient_ablation.py``'s own
functions (the varied forward model, the WSI level at 16 um/px through a JPEG round trip, one to four cores per
slide).  Each call's features (``orient.Call``, the result's ``features``), its state and whether its end is
right (the truth, read only to score) are collected on the training seeds and on the held-out seeds (never fitted
on).  Three logistic models of P(right | call) are fitted with statsmodels (a dependency already; scikit-learn only
a test extra): Platt scaling (the contrast alone), a small model on the terms in ``calibration.TERMS``, and the same
with whether a doubt held the call; all standardised with a weak N(0, 1) prior on each slope (ridge: rare errors make
the MLE diverge).  Prints for held-out: Brier score, log loss, expected calibration error (10 bins); per method
the decisions (at the rules' review count, at p >= 0.5, at p >= 0.9, as a veto on the rules' accepted calls) and
how many of the 22 pinned cases each would change; and the mean p per state the rules gave.  Draws
docs/calibration_orient.png.  ``--write`` stores the model best calibrated on held-out and the pinned cases pooled
(least log loss, then ECE) in ``workflow_scripts/orient_calibration.json``, which ``calibration.p_correct`` reads.

    python benchmarks/orient_calibration.py --workers 2
    python benchmarks/orient_calibration.py --workers 2 --write
"""

from __future__ import annotations

import argparse
import dataclasses
import datetime
import hashlib
import json
import sys
import warnings
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

import matplotlib
import numpy as np
import pandas as pd
import statsmodels.api as sm

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
sys.path.insert(0, str(Path(__file__).resolve().parent))

import orient_ablation as ab  # noqa: E402

from workflow_scripts import calibration, orient  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
# the 22 one-core cases the tests pin (docs/ablation_orient.md): a learned decision must change none of their states
CASES = (
    "1:V0090 5:V0020 8:V0047 9:V0097 10:V0028 7:V0080 1:V0095 2:V0102 12:V0029 10:V0024 12:V0037 7:V0074 "
    "9:V0117 5:V0111 1:V0046 5:V0064 7:V0077 15:V0074 15:V0053 11:V0085 12:V0053 8:V0074"
).split()
LEARNED = ("confidence", "novelty", "thick", "log_dye_per_least", "lone", "asked")
DOUBTED = "learned + doubts"  # the same terms and whether a doubt of the rules held the call
PRIOR_SD = 1.0  # the slopes' prior sd, per standardised term
BINS = 10


def jobs(seeds: list[int], n: int, core_counts: list[int], cache: str) -> list[tuple]:
    """``orient_ablation.render_cached`` jobs: ``n`` slides per seed, cores per slide cycled, JPEG round trip."""
    return [(s, f"V{i:04d}", core_counts[i % len(core_counts)], 16.0, cache, True) for s in seeds for i in range(n)]


def collect(js: list[tuple], workers: int) -> pd.DataFrame:
    """The slides rendered (or read from the cache) and oriented, nothing removed: one row per biopsy."""
    with ProcessPoolExecutor(workers) as ex:
        paths = list(ex.map(ab.render_cached, js))
        return pd.DataFrame([r for rs in ex.map(ab.orient_slide, [(p, [None], 16.0) for p in paths]) for r in rs])


def code_version() -> str:
    """A digest of the code the calls come from (core finding, stain, dye, orientation): collected calls are
    reused only while it is unchanged."""
    names = ("cores.py", "stain.py", "dye.py", "orient.py")
    return hashlib.sha256(b"".join((ROOT / "workflow_scripts" / n).read_bytes() for n in names)).hexdigest()[:16]


def data(a: argparse.Namespace) -> pd.DataFrame:
    """Each split's rows, from ``--data`` where that split was collected with the same slides and the same code
    (:func:`code_version`), else anew."""
    work = {
        "train": jobs(a.train_seeds, a.n_train, a.cores, a.cache),
        "held_out": jobs(a.held_out, a.n_held, a.cores, a.cache),
        "cases": [(int(c.split(":")[0]), c.split(":")[1], 1, 16.0, a.cache, False) for c in CASES],
    }
    out = []
    for split, js in work.items():
        tsv = Path(a.data) / f"{split}.tsv"
        key, stamp = json.dumps([[j[:3] for j in js], code_version()]), tsv.with_suffix(".key.json")
        if not (tsv.exists() and stamp.exists() and stamp.read_text() == key):
            tsv.parent.mkdir(parents=True, exist_ok=True)
            collect(js, a.workers).to_csv(tsv, sep="\t", index=False)
            stamp.write_text(key)
            print(f"  {split}: {len(js)} slides oriented", file=sys.stderr, flush=True)
        out.append(pd.read_csv(tsv, sep="\t", keep_default_na=False, na_values=[""]).assign(split=split))
    return pd.concat(out, ignore_index=True)


def calls(df: pd.DataFrame) -> list[dict | None]:
    """What ``calibration.p_correct`` reads of each call: its ``features`` and whether a doubt held it (the
    ``review_reason``, as ``orient.automatic_call`` passes it); None where the call failed."""
    return [
        {**json.loads(f), "doubted": isinstance(why, str) and why != ""} if state != "failed" else None
        for f, why, state in zip(df["features"], df["reason"], df["state"], strict=True)
    ]


def terms(df: pd.DataFrame, names: tuple[str, ...]) -> np.ndarray:
    """The calls' values of ``calibration.TERMS`` ``names`` (one row per call, none failed)."""
    return np.array([[calibration.TERMS[t](f) for t in names] for f in calls(df)], float)


def fit(train: pd.DataFrame, names: tuple[str, ...]) -> dict:
    """A logistic P(right | standardised terms) on the training calls, with a N(0, PRIOR_SD) prior on each slope
    (statsmodels' ridge: alpha per observation, the intercept free); in ``calibration.model``'s layout."""
    x, y = terms(train, names), train["correct"].astype(float).to_numpy()
    mean, sd = x.mean(0), x.std(0)
    sd[sd == 0] = 1.0
    design = sm.add_constant((x - mean) / sd, has_constant="add")
    alpha = np.r_[0.0, np.full(len(names), 1.0 / (PRIOR_SD**2 * len(y)))]
    with warnings.catch_warnings():  # its path passes through separating fits, which the prior then holds
        warnings.simplefilter("ignore")
        res = sm.GLM(y, design, family=sm.families.Binomial()).fit_regularized(alpha=alpha, L1_wt=0.0)
    return {"terms": list(names), "mean": mean.tolist(), "sd": sd.tolist(), "intercept": float(res.params[0]),
            "coef": [float(b) for b in res.params[1:]], "prior_sd": PRIOR_SD, "mle": mle_note(y, design)}  # fmt: skip


def mle_note(y: np.ndarray, design: np.ndarray) -> str:
    """Whether the unpenalised MLE exists on these data (with rare errors the terms may separate them)."""
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            res = sm.Logit(y, design).fit(disp=0, maxiter=200)
    except Exception as e:  # statsmodels raises PerfectSeparationError or a linear-algebra error
        return f"no unpenalised MLE ({type(e).__name__})"
    big = np.abs(res.params[1:]).max()
    ok = res.mle_retvals.get("converged", False) and big < 20
    return f"unpenalised MLE {'converged' if ok else 'diverges'} (largest |slope| {big:.1f})"


def scores(p: np.ndarray, y: np.ndarray) -> dict:
    """Brier score, log loss and the expected calibration error over ``BINS`` equal-width bins."""
    q = np.clip(p, 1e-6, 1 - 1e-6)
    idx = np.minimum((p * BINS).astype(int), BINS - 1)
    ece = sum(abs(p[idx == b].mean() - y[idx == b].mean()) * (idx == b).mean() for b in range(BINS) if (idx == b).any())
    return {
        "brier": float(np.mean((p - y) ** 2)),
        "log_loss": float(-np.mean(y * np.log(q) + (1 - y) * np.log(1 - q))),
        "ece": float(ece),
    }


def states(df: pd.DataFrame, p: np.ndarray | None, rule: str) -> pd.Series:
    """Each biopsy's state under a method: the rules' own (``p`` None), or accepted where ``p`` reaches a bar
    (``rule`` 'p>=0.9'), or the rules' review count sent to review lowest ``p`` first ('rules' review count'), or
    the rules' states with their accepted calls below a bar sent to review ('rules and p>=0.5');
    a failed call (no dye, or a contrast below min_confidence) stays failed."""
    if p is None:
        return df["state"].copy()
    if rule.startswith("rules and p>="):  # a veto only: the rules' accepted calls below the bar go to review
        return df["state"].where(~((df["state"] == "accepted") & (p < float(rule[13:]))), "review")
    out = pd.Series(np.where(df["state"] == "failed", "failed", "accepted"), index=df.index, dtype=object)
    live = (df["state"] != "failed").to_numpy()
    if rule.startswith("p>="):
        out[live & (p < float(rule[3:]))] = "review"
    else:
        k = int((df["state"] == "review").sum())
        order = np.argsort(np.where(live, p, np.inf), kind="stable")[:k]
        out.iloc[order] = "review"
    return out


def decisions(df: pd.DataFrame, st: pd.Series) -> dict:
    """Auto-correct %, wrong accepted, review and failed for one set of states."""
    acc, right = st == "accepted", df["correct"].fillna(False).astype(bool)
    return {
        "auto_correct_%": round(100 * float((acc & right).mean()), 1),
        "wrong_accepted": int((acc & ~right).sum()),
        "review": int((st == "review").sum()),
        "failed": int((st == "failed").sum()),
    }


def probabilities(df: pd.DataFrame, models: dict) -> dict[str, np.ndarray]:
    """Per method, each biopsy's p (NaN where the call failed): the contrast read as one, and each model's."""
    live = df["state"] != "failed"
    out = {"rules (contrast as p)": np.where(live, df["confidence"].clip(0, 1), np.nan)}
    for name, m in models.items():
        out[name] = np.array([calibration.p_correct(f, m) if f else np.nan for f in calls(df)])
    return out


def report(df: pd.DataFrame, models: dict, cases: pd.DataFrame) -> tuple[pd.DataFrame, pd.DataFrame]:
    """The held-out tables: the scores per method, and the decisions per method and operating point, with the
    pinned cases whose state each changes."""
    probs, pc = probabilities(df, models), probabilities(cases, models)
    live = (df["state"] != "failed").to_numpy()
    y = df["correct"].astype(float).to_numpy()
    score = pd.DataFrame([{"method": k, **scores(v[live], y[live])} for k, v in probs.items()])
    rows = [{"method": "hand-written rules", "operating point": "config", **decisions(df, states(df, None, "")),
             "pinned cases changed": 0}]  # fmt: skip
    for name in models:
        for rule in ("rules' review count", "p>=0.5", "p>=0.9", "rules and p>=0.5"):
            changed = int((states(cases, pc[name], rule) != cases["state"]).sum())
            rows.append({"method": name, "operating point": rule, **decisions(df, states(df, probs[name], rule)),
                         "pinned cases changed": changed})  # fmt: skip
    return score, pd.DataFrame(rows)


def by_state(df: pd.DataFrame, models: dict) -> pd.DataFrame:
    """Per state the rules gave: calls, how many are wrong, and each method's mean p (what a reviewer would see)."""
    probs = probabilities(df, models)
    rows = []
    for state, g in df[df["state"] != "failed"].groupby("state"):
        row = {"state": state, "calls": len(g), "wrong": int((~g["correct"].astype(bool)).sum())}
        rows.append(row | {f"mean p {k}": float(np.mean(v[g.index])) for k, v in probs.items()})
    return pd.DataFrame(rows)


def figure(df: pd.DataFrame, models: dict, out: Path) -> None:
    """Reliability diagram on held-out (observed share right against mean p, per bin of 0.1) and the histogram
    of the predicted probabilities."""
    probs = probabilities(df, models)
    live = (df["state"] != "failed").to_numpy()
    y = df["correct"].astype(float).to_numpy()[live]
    fig, (top, bottom) = plt.subplots(2, 1, figsize=(5.5, 7), height_ratios=[3, 1.3], sharex=True)
    top.plot([0, 1], [0, 1], color="0.6", lw=1, ls=":", label="perfect calibration")
    edges = np.linspace(0, 1, BINS + 1)
    for (name, p), style in zip(probs.items(), ("s--", "o-", "^-", "v-"), strict=True):
        p = p[live]
        idx = np.minimum((p * BINS).astype(int), BINS - 1)
        b = [k for k in range(BINS) if (idx == k).any()]
        top.plot([p[idx == k].mean() for k in b], [y[idx == k].mean() for k in b], style, label=name, ms=4)
        bottom.hist(p, bins=edges, histtype="step", lw=1.5, label=name)
    top.set(ylabel="share of calls right", xlim=(0, 1), ylim=(0, 1.02))
    top.set_title(f"Dyed-end calls, held-out seeds ({live.sum()} calls, {int((1 - y).sum())} wrong)", fontsize=10)
    top.legend(fontsize=8, loc="lower right")
    bottom.set(xlabel="predicted probability the dyed end is right", ylabel="calls", yscale="log")
    fig.tight_layout()
    fig.savefig(out, dpi=110)
    plt.close(fig)


def stored(m: dict, name: str, a: argparse.Namespace, train: pd.DataFrame, score: dict) -> dict:
    """The JSON ``calibration.model`` reads: the model, what it was fitted on, and its held-out scores."""
    return {
        "version": 1,
        "model": name,
        **m,
        "fitted": {
            "date": datetime.date.today().isoformat(),
            "script": "benchmarks/orient_calibration.py --write",
            "training_seeds": a.train_seeds,
            "slides_per_seed": a.n_train,
            "cores_per_slide": a.cores,
            "calls": len(train),
            "wrong_calls": int((~train["correct"].astype(bool)).sum()),
            "held_out_seeds": a.held_out,
            "held_out": {k: round(v, 4) for k, v in score.items()},
        },
        "call_fields": [f.name for f in dataclasses.fields(orient.Call)],
    }


def printed(
    a: argparse.Namespace, models: dict, train: pd.DataFrame, held: pd.DataFrame, cases: pd.DataFrame
) -> pd.DataFrame:
    """Print the fits, the held-out scores and decisions, what each state's calls look like, and the pinned cases
    a p >= 0.9 decision would change; return the scores."""
    score, table = report(held, models, cases)
    n_wrong = lambda d: int((~d["correct"].astype(bool)).sum())  # noqa: E731
    print(f"training: seeds {a.train_seeds}, {len(train)} calls, {n_wrong(train)} wrong")
    for name, m in models.items():
        coefs = ", ".join(f"{t} {b:+.2f}" for t, b in zip(m["terms"], m["coef"], strict=True))
        print(f"  {name}: intercept {m['intercept']:+.2f}, {coefs}; {m['mle']}")
    hl = held[held["state"] != "failed"]
    print(f"held-out: seeds {a.held_out}, n {len(held)} biopsies, {len(hl)} calls, {n_wrong(hl)} wrong calls, "
          f"{len(held) - len(hl)} failed\n")  # fmt: skip
    pd.set_option("display.width", 200, "display.max_columns", 20)
    print(score.to_string(index=False, float_format=lambda v: f"{v:.4f}"), "\n")
    print(table.to_string(index=False), "\n")
    for name, split in (("held-out", held), ("pinned cases", cases)):
        per = by_state(split, models).to_string(index=False, float_format=lambda v: f"{v:.3f}")
        print(f"{name}, per state the rules gave:\n{per}\n")
    for name, p in probabilities(cases, models).items():
        if name in models:
            st = states(cases, p, "p>=0.9")
            moved = [f"{b} {s}->{t}" for b, s, t in zip(cases["biopsy"], cases["state"], st, strict=True) if s != t]
            print(f"pinned cases {name} at p>=0.9 changes: {', '.join(moved) or 'none'}")
    return score.set_index("method")


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--train-seeds", type=int, nargs="+", default=[1, 2, 3, 4, 5, 6])
    p.add_argument("--held-out", type=int, nargs="+", default=[13, 14])
    p.add_argument("--n-train", type=int, default=30, help="slides per training seed")
    p.add_argument("--n-held", type=int, default=40, help="slides per held-out seed")
    p.add_argument("--cores", type=int, nargs="+", default=[1, 2, 3, 4], help="cores per slide, cycled")
    p.add_argument("--workers", type=int, default=1)
    p.add_argument("--cache", default="benchmarks/out/orient_cache")
    p.add_argument("--data", default="benchmarks/out/orient_calibration", help="the collected calls, per split")
    p.add_argument("--figure", default="docs/calibration_orient.png")
    p.add_argument("--write", action="store_true", help=f"store the best-calibrated model in {calibration.PATH.name}")
    a = p.parse_args()
    if set(a.train_seeds) & set(a.held_out):
        p.error("a held-out seed cannot be a training seed")
    df = data(a)
    split = lambda k: df[df["split"] == k].reset_index(drop=True)  # noqa: E731
    train = split("train")[split("train")["state"] != "failed"]
    models = {
        m: fit(train, t)
        for m, t in (("Platt", ("confidence",)), ("learned", LEARNED), (DOUBTED, (*LEARNED, "doubted")))
    }
    score = printed(a, models, train, split("held_out"), split("cases"))
    figure(split("held_out"), models, ROOT / a.figure)
    # held-out has one or two wrong calls, too few to tell the models apart; the pinned cases (never fitted on)
    # hold the hard calls a reviewer sees, so the choice is made on both, pooled
    pooled = pd.concat([split("held_out"), split("cases")], ignore_index=True)
    live = (pooled["state"] != "failed").to_numpy()
    y = pooled["correct"].astype(float).to_numpy()
    both = pd.DataFrame({k: scores(v[live], y[live]) for k, v in probabilities(pooled, models).items()}).T
    print("held-out and pinned cases pooled:\n" + both.to_string(float_format=lambda v: f"{v:.4f}"))
    if a.write:  # the best calibrated on both pooled: the least log loss, then the least ECE
        best = min(models, key=lambda k: (round(both.loc[k, "log_loss"], 4), both.loc[k, "ece"]))
        calibration.PATH.write_text(
            json.dumps(stored(models[best], best, a, train, score.loc[best].to_dict()), indent=1) + "\n"
        )
        print(f"\nwrote {calibration.PATH.relative_to(ROOT)} ({best})")


if __name__ == "__main__":
    main()
