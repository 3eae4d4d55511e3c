"""Participant-level train/val/test allocation that never moves anyone already allocated.

Participants are allocated in sheet order (enrolment order): each one goes to a
split drawn with probability proportional to how far that split is behind its
target ratio, using a random number seeded by the split seed and the
participant's own ID.  A participant's split therefore depends only on the rows
above it, so appending participants never changes an earlier allocation.  The
first three participants fill train, val and test (in a seeded order), so any
cohort of three or more has every split non-empty.  A ``split`` column in
participants.tsv wins.

Cross-validation folds (``split.folds``) are allocated the same way among the
non-test participants, so they too stay put when participants are appended.
"""

from __future__ import annotations

import hashlib
from pathlib import Path

import numpy as np
import pandas as pd

SPLITS = ("train", "val", "test")


def unit_random(seed: int, participant_id: str) -> float:
    """A number in [0, 1) fixed by the seed and the participant ID alone."""
    h = hashlib.sha256(f"{seed}:{participant_id}".encode()).digest()
    return int.from_bytes(h[:8], "big") / 2**64


def allocate_groups(
    participant_ids: list[str], groups: tuple[str, ...], weights: list[float], seed: int, fixed: dict[str, str]
) -> dict[str, str]:
    """Group of every participant, in sheet order (see the module docstring); ``fixed`` groups win and count."""
    r = np.array(weights, float)
    r /= r.sum()
    counts = np.zeros(len(groups))
    first = [groups[i] for i in np.argsort([unit_random(seed, f"order{k}") for k in range(len(groups))])]
    out = {}
    for i, pid in enumerate(participant_ids):
        if pid in fixed:
            group = fixed[pid]
        elif i < len(groups):
            group = first[i]
        else:
            deficit = np.clip(r * (i + 1) - counts, 0, None) + 1e-9
            cum = np.cumsum(deficit / deficit.sum())
            group = groups[int(np.searchsorted(cum, unit_random(seed, pid), side="right"))]
        out[pid] = group
        counts[groups.index(group)] += 1
    return out


def allocate(
    participant_ids: list[str], ratios: dict[str, float], seed: int, fixed: dict[str, str] | None = None
) -> dict[str, str]:
    """Split of every participant, in sheet order; ``fixed`` splits win and count towards the ratios."""
    return allocate_groups(participant_ids, SPLITS, [ratios[s] for s in SPLITS], seed, fixed or {})


def folds(participant_ids: list[str], k: int, seed: int) -> dict[str, int]:
    """Cross-validation fold (0..k-1) of every participant, in sheet order, equal shares.

    Same scheme as the splits (a participant's fold depends only on the rows above
    it), with its own random stream; the first k participants fill the k folds."""
    names = tuple(f"fold{j}" for j in range(k))
    return {p: int(f[4:]) for p, f in allocate_groups(participant_ids, names, [1.0] * k, seed + 1, {}).items()}


def sheet_splits(participant_ids: list[str], split_column: list | None) -> dict[str, str]:
    """Splits given by hand in participants.tsv's optional ``split`` column (empty cells: allocate)."""
    if split_column is None:
        return {}
    return {p: s for p, s in zip(participant_ids, split_column, strict=True) if isinstance(s, str) and s}


def table(splits: dict[str, str], fixed: dict[str, str], seed: int) -> pd.DataFrame:
    """results/splits.tsv: participant, split, where the split came from (sheet or allocated), seed."""
    return pd.DataFrame(
        {
            "participant_id": list(splits),
            "split": list(splits.values()),
            "source": ["sheet" if p in fixed else "allocated" for p in splits],
            "seed": seed,
        }
    )


def write(splits: dict[str, str], fixed: dict[str, str], seed: int, out: str, log: str) -> None:
    """Write results/splits.tsv, and the split sizes to the job's log."""
    t = table(splits, fixed, seed)
    t.to_csv(out, sep="\t", index=False)
    Path(log).write_text(t["split"].value_counts().to_string() + "\n")
