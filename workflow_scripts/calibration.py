"""The orientation call's calibrated probability of being right (``p_correct``).

The dyed-end ``confidence`` is an end contrast, not a probability.  A logistic model fitted by
``benchmarks/orient_calibration.py --write`` on the varied cohort's training seeds maps the call's
features (``orient.Call``, recorded as the result's ``features``) and whether a doubt held it to the
probability that the dyed end is right.  Its coefficients live once, in ``orient_calibration.json``
beside this module, with the seeds, counts and date they were fitted on; ``p_correct`` reads them.
The decision (``state``) does not use it: see docs/calibration_orient.md.
"""

from __future__ import annotations

import json
import math
from collections.abc import Callable, Mapping
from functools import cache
from pathlib import Path

PATH = Path(__file__).with_name("orient_calibration.json")

# the model's terms, each from the call's features (level-free: ratios of level px, never px themselves)
TERMS: dict[str, Callable[[Mapping], float]] = {
    "confidence": lambda f: float(f["confidence"]),
    "novelty": lambda f: float(f["kind"] == "novelty"),
    "thick": lambda f: float(f["thick"]),
    "log_dye_per_least": lambda f: math.log(max(float(f["dye_px"]), 1e-6) / float(f["scale"])),
    "lone": lambda f: float(f["lone"]),
    "asked": lambda f: float(f["asked"]),
    "doubted": lambda f: float(f["doubted"]),  # a doubt in orient.DOUBTS held the call (its review_reason)
}


@cache
def model(path: Path = PATH) -> dict:
    """The fitted model: ``terms`` (names in :data:`TERMS`), their ``mean`` and ``sd`` (standardisation),
    ``coef`` (per standardised term) and ``intercept``, and how it was fitted."""
    return json.loads(Path(path).read_text())


def p_correct(features: Mapping, fitted: Mapping | None = None) -> float:
    """The probability that the call whose ``features`` these are (``vars(orient.Call)``, and ``doubted``: whether
    a doubt held it) names the dyed end rightly: the logistic model ``fitted`` (default: :func:`model`) on its
    standardised terms."""
    m = fitted if fitted is not None else model()
    z = float(m["intercept"])
    for name, mean, sd, b in zip(m["terms"], m["mean"], m["sd"], m["coef"], strict=True):
        z += float(b) * (TERMS[name](features) - float(mean)) / float(sd)
    return 1.0 / (1.0 + math.exp(-z)) if z >= 0 else math.exp(z) / (1.0 + math.exp(z))
