"""Properties of the tract step over sampled biopsies, not pinned cases.

Each test draws its biopsies from the forward model (``workflow_scripts.synthetic``), half of them from
the domain-randomised one, with a seed it prints on failure; ``TRACT_PROPERTY_SEED=<n>`` draws others.
The truth is read only to score.
"""

import functools
import os
from dataclasses import replace

import numpy as np
import pytest

from workflow_scripts import synthetic, tract
from workflow_scripts.errors import InputError

SEED = int(os.environ.get("TRACT_PROPERTY_SEED", "29"))
DRAWS = 6
MIN_CONFIDENCE = 0.55  # config.yaml tract.min_confidence
T0_MM, T1_MM = 0.5, 1.0  # the accuracy an accepted tract must have (the T0 and T1 p95 the issue requires)


def draws(n: int = DRAWS) -> list[tuple[int, int, bool]]:
    """(draw seed, biopsy seed, varied model) for ``n`` biopsies from the master seed."""
    rng = np.random.default_rng(SEED)
    return [(SEED, int(rng.integers(1000, 10**6)), k % 2 == 1) for k in range(n)]


def frames(t: synthetic.BiopsyTruth) -> tuple[np.ndarray, np.ndarray]:
    """Pre- and post-fire tissue regions of a biopsy (the post-fire probe moved as the model says)."""
    shift = tuple(t.nuisance.get("shift_mm", (0.0, 0.0)))
    pre = synthetic.render_ultrasound(t, np.array(t.t0_mm), noise_seed=100)
    return pre, synthetic.render_ultrasound(t, np.array(t.t1_mm), noise_seed=200, shift_mm=shift)


def tips_mm(res: dict, mm_per_px: float) -> np.ndarray:
    """T0 and T1 of a tract in mm of its frame."""
    return np.array([res["t0_px"], res["t1_px"]]) * mm_per_px


@functools.cache
def at_two_spacings(draw: tuple[int, int, bool]) -> tuple[float, list[tuple[str, np.ndarray]], np.ndarray]:
    """A drawn biopsy's tract at its own spacing and at one 0.67-1.5 times as coarse (kept within the scanners'
    0.02-0.10 mm/px): the factor, (state, tips in mm) at each spacing, and the true tips in mm.  Cached: the
    property test and the test that it is not vacuous read the same tracts."""
    _, seed, varied = draw
    t = synthetic.sample_truth(seed, f"S{seed}", "B1", varied=varied)
    rng = np.random.default_rng(seed)
    k = float(np.clip(rng.uniform(0.67, 1.5), 0.02 / t.mm_per_px, 0.10 / t.mm_per_px))
    scaled = replace(t, mm_per_px=t.mm_per_px * k, rows=int(round(t.rows / k)), cols=int(round(t.cols / k)))
    found = []
    for case in (t, scaled):
        res = tract.tract(*frames(case), (case.mm_per_px,) * 2, case.stroke_mm, {}, MIN_CONFIDENCE)
        found.append((res["state"], tips_mm(res, case.mm_per_px)))
    return k, found, np.array([t.t0_mm, t.t1_mm])


@pytest.mark.parametrize("draw", draws(), ids=lambda d: f"seed{d[0]}-{d[1]}")
def test_scaling_the_ultrasound_spacing_keeps_the_tips_in_mm(draw):
    """The same tissue rendered at a coarser or finer spacing: T0 and T1 in mm stay where they were, and where
    both are accepted, within the accuracy required."""
    master, seed, varied = draw
    why = f"TRACT_PROPERTY_SEED={master}, biopsy seed {seed}, varied={varied}"
    k, ((state_a, a), (state_b, b)), truth = at_two_spacings(draw)
    assert {state_a, state_b} <= {"accepted", "review"}, why
    if state_a == state_b == "accepted":  # how often this holds: the test below
        moved = np.linalg.norm(a - b, axis=1)
        assert moved[0] < T0_MM and moved[1] < T1_MM, (why, f"spacing x{k:.2f}", moved)
        assert (np.linalg.norm(b - truth, axis=1) < [T0_MM, T1_MM]).all(), (why, f"spacing x{k:.2f}")


def test_most_draws_are_decided_at_either_spacing():
    """The spacing property above is not vacuous: the unvaried model's biopsies are accepted at both spacings
    (all but one of them), so its accuracy comparison runs."""
    states = [[s for s, _ in at_two_spacings(d)[1]] for d in draws()[::2]]
    both = sum(s == ["accepted", "accepted"] for s in states)
    assert both >= len(states) - 1, (f"TRACT_PROPERTY_SEED={SEED}", states)


@pytest.mark.parametrize("draw", draws(), ids=lambda d: f"seed{d[0]}-{d[1]}")
def test_swapped_frames_fail_clearly(draw):
    """Pre- and post-fire frames given the wrong way round: an error saying so, or a held tract with a reason,
    never a silently accepted tract."""
    master, seed, varied = draw
    why = f"TRACT_PROPERTY_SEED={master}, biopsy seed {seed}, varied={varied}"
    t = synthetic.sample_truth(seed, f"W{seed}", "B1", varied=varied)
    pre, post = frames(t)
    try:
        res = tract.tract(post, pre, (t.mm_per_px,) * 2, t.stroke_mm, {}, MIN_CONFIDENCE)
    except InputError as e:
        assert "swapped" in e.what and "prefire and postfire" in e.hint, (why, e.what)
        return
    assert res["state"] == "review" and res.get("review_reason"), (why, res["state"], res.get("review_reason"))
