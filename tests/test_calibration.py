"""The orientation call's calibrated probability (``calibration.p_correct``): fast, no rendering."""

from __future__ import annotations

import copy
import dataclasses

import numpy as np
import pytest

from workflow_scripts import calibration, orient


def call(confidence: float, kind: str = "colour", thick: bool = True, doubted: bool = False) -> dict:
    """What ``p_correct`` reads: the ``features`` an orientation result records (``vars(orient.Call)``, as floats)
    and whether a doubt held the call."""
    c = orient.Call(confidence, 0.5, kind, thick, 30.0, 10.0, 66.0, False, 0.0, 0.0, 0.01)
    return {k: (float(v) if not isinstance(v, str) else v) for k, v in vars(c).items()} | {"doubted": doubted}


def test_the_stored_model_names_the_calls_fields():
    """The JSON was fitted on the features ``orient.Call`` records now, and every term it uses is defined."""
    m = calibration.model()
    assert m["call_fields"] == [f.name for f in dataclasses.fields(orient.Call)]
    assert set(m["terms"]) <= set(calibration.TERMS)
    assert len(m["terms"]) == len(m["mean"]) == len(m["sd"]) == len(m["coef"])
    assert m["fitted"]["training_seeds"] and not set(m["fitted"]["training_seeds"]) & set(m["fitted"]["held_out_seeds"])
    for name in calibration.TERMS:  # every term reads only the call's fields
        assert np.isfinite(calibration.TERMS[name](call(0.6)))


@pytest.mark.parametrize(
    "kind,thick,doubted", [("colour", True, False), ("colour", False, True), ("novelty", True, False)]
)
def test_probability_is_monotone_in_the_contrast_and_bounded(kind, thick, doubted):
    m = calibration.model()
    ps = np.array([calibration.p_correct(call(c, kind, thick, doubted)) for c in np.linspace(0.2, 1.0, 17)])
    assert ((ps >= 0) & (ps <= 1)).all()
    slope = m["coef"][m["terms"].index("confidence")]
    assert slope > 0  # a clearer end contrast makes a right call likelier
    assert (np.diff(ps) > 0).all(), ps


def test_a_changed_coefficient_changes_the_probability():
    m = copy.deepcopy(calibration.model())
    base = calibration.p_correct(call(0.6), m)
    m["coef"][0] += 1.0
    assert calibration.p_correct(call(0.6), m) != pytest.approx(base, abs=1e-6)
    m["intercept"] = 50.0
    assert calibration.p_correct(call(0.6), m) == pytest.approx(1.0)
    m["intercept"] = -1e4  # no overflow at either extreme
    assert calibration.p_correct(call(0.6), m) == pytest.approx(0.0)
