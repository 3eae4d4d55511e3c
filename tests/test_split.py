"""Participant splits: disjoint, stable when participants are added, close to 7:2:1."""

import pandas as pd
import pytest

from workflow_scripts.split import allocate, folds

RATIOS = {"train": 0.7, "val": 0.2, "test": 0.1}


def ids(n, prefix="P"):
    return [f"{prefix}{i:04d}" for i in range(n)]


@pytest.mark.parametrize("n", [10, 100, 1000])
def test_ratios_close_to_7_2_1(n):
    counts = pd.Series(allocate(ids(n), RATIOS, seed=7)).value_counts()
    for split, r in RATIOS.items():
        assert abs(counts.get(split, 0) - r * n) <= max(1, 0.02 * n), (split, counts.to_dict())


@pytest.mark.parametrize("seed", [1, 2, 3])
def test_adding_five_participants_moves_nobody(seed):
    before = allocate(ids(40), RATIOS, seed)
    after = allocate(ids(40) + ids(5, "NEW"), RATIOS, seed)
    assert {k: after[k] for k in before} == before
    assert len(after) == 45


@pytest.mark.parametrize("n", [3, 4, 5])
def test_every_split_non_empty_from_three(n):
    assert set(allocate(ids(n), RATIOS, seed=9).values()) == {"train", "val", "test"}


def test_each_participant_in_exactly_one_split_and_sheet_split_wins():
    out = allocate(ids(30), RATIOS, seed=5, fixed={"P0003": "test", "P0010": "val"})
    assert len(out) == 30 and set(out.values()) <= set(RATIOS)
    assert out["P0003"] == "test" and out["P0010"] == "val"


def test_seed_changes_allocation():
    assert allocate(ids(50), RATIOS, 1) != allocate(ids(50), RATIOS, 2)


@pytest.mark.parametrize("k", [2, 5])
def test_folds_are_by_participant_balanced_and_stable_when_participants_are_appended(k):
    before = folds(ids(40), k, seed=7)
    assert sorted(set(before.values())) == list(range(k))  # every fold used, each participant in one
    sizes = pd.Series(before).value_counts()
    assert sizes.max() - sizes.min() <= max(2, 0.15 * 40 / k)
    after = folds(ids(40) + ids(6, "NEW"), k, seed=7)
    assert {p: after[p] for p in before} == before
    assert set(folds(ids(k), k, seed=3).values()) == set(range(k))  # k participants fill k folds
