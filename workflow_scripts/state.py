"""Review state: the one place that decides where a biopsy stands, written once per biopsy.

Each step records its own result (``state`` in ``orient/<p>/<b>.json`` and
``tract/<p>/<b>.json``: accepted, review, override or failed) and the tract also
records, as data, any DICOM-vs-``us_mm_per_px`` ``calibration_conflicts`` of its
frames.  :func:`biopsy_state` combines them into ``state/<p>/<b>.json``, which the
VOC lists, the review queue, the QC table and figure and the report read.

A step's state is its own, except that an accepted tract with a calibration
conflict is held for review (an override stands: a person set the tract).  The
biopsy's state is the first of these that any step has:

======== =============================================================
failed   a step could not decide (the biopsy cannot enter the dataset)
review   a step waits for a person: out of the VOC lists until decided
override a person decided a step (biopsies.tsv or a review decision)
accepted every step decided automatically and confidently
======== =============================================================

Only accepted and override biopsies enter the VOC split lists (:data:`USABLE`).
``override_source`` (auto / sheet / review (<reviewer>)) says where the
biopsy's overrides came from; it is recorded, and decides nothing.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from workflow_scripts.errors import InputError, read_json, run_cli

STATES = ("failed", "review", "override", "accepted")  # precedence: the first any step has wins
USABLE = ("accepted", "override")  # the states whose biopsies enter the VOC split lists
HELD = ("failed", "review")  # the step states that keep a biopsy out, and so always carry a reason


def step_state(result: dict, step: str) -> str:
    """A step's recorded state, checked to be one of :data:`STATES`."""
    s = result.get("state")
    if s not in STATES:
        raise InputError(
            f"the {step} result has state {s!r}, not one of {', '.join(STATES)}",
            f"rerun the {step} rule for this biopsy (the file may be from an older tractmap)",
        )
    return s


def tract_decision(tract: dict) -> tuple[str, str]:
    """The tract's state and reason with its calibration conflicts: an accepted tract with one is held."""
    s = step_state(tract, "tract")
    conflicts = tract.get("calibration_conflicts") or []  # "ultrasound calibration: DICOM ... vs ..." (tract.py)
    reason = "; ".join(r for r in (tract.get("review_reason"), *conflicts) if r)
    return ("review" if conflicts and s == "accepted" else s), reason


def too_many_cores(orient: dict, rows: int | None) -> list[str]:
    """More cores on the slide (orient's ``cores_on_slide``) than biopsies.tsv has rows for it (``rows``,
    excluded ones too): a core split in pieces, or a piece of debris as long as a core."""
    n = orient.get("cores_on_slide")
    if rows is None or n is None or n <= rows:
        return []
    return [
        f"the slide carries {n} cores but biopsies.tsv has {rows} row(s) for it: a core may be split in pieces, "
        "or a piece may belong to no biopsy; check the slide's cores"
    ]


def label_decision(
    orient: dict, summary: dict | None, override_source: str, rows: int | None = None
) -> tuple[str, str]:
    """The label's own evidence against it: the slide's tissue that does not add up for this core (orient's
    ``tissue_doubts``: a piece or a core in line with it left over, more cores than rows) and the transfer
    summary's ``review_reasons`` (a core/tract length out of range, tumour on a piece left over).  Held for
    review until a person decides in the review app, whose page shows these reasons (``override_source``
    names a review); an override in biopsies.tsv, set without that page, does not clear it."""
    reasons = [
        *(orient.get("tissue_doubts") or []),
        *too_many_cores(orient, rows),
        *((summary or {}).get("review_reasons") or []),
    ]
    if not reasons or "review" in override_source:
        return "accepted", ""
    return "review", "; ".join(reasons)


def held_reason(step: str, s: str, reason: str) -> str:
    """``reason``, or for a held step (:data:`HELD`) that gave none, one that says so and where to look."""
    if reason or s not in HELD:
        return reason
    if s == "failed":
        return f"the {step} step failed this biopsy without a reason: read the {step} job's log and rerun the step"
    return (
        f"the {step} step held this biopsy without a reason: open its QC figure (results/qc/) and check the "
        f"{step}, then confirm or correct it in the review app"
    )


def biopsy_state(
    orient: dict, tract: dict, override_source: str = "auto", transfer: dict | None = None, rows: int | None = None
) -> dict:
    """Where a biopsy stands: ``state`` (precedence failed > review > override > accepted over its steps),
    each step's ``steps`` state, the ``reasons`` of the steps that give one (every held step does:
    :func:`held_reason`), and ``override_source``.  ``transfer``: the transfer summary, whose
    ``review_reasons`` hold the biopsy with orient's ``tissue_doubts`` (:func:`label_decision`); ``rows``: the
    biopsies.tsv rows on the biopsy's slide."""
    decided = {
        "orient": (step_state(orient, "orient"), orient.get("review_reason") or ""),
        "tract": tract_decision(tract),
    }
    decided["transfer"] = label_decision(orient, transfer, override_source, rows)
    decided = {k: (s, held_reason(k, s, r)) for k, (s, r) in decided.items()}
    steps = {k: s for k, (s, _) in decided.items()}
    return {
        "state": next(s for s in STATES if s in steps.values()),
        "steps": steps,
        "reasons": {k: r for k, (s, r) in decided.items() if r and s != "accepted"},
        "override_source": override_source,
    }


def read_state(path: str | Path, participant: str | None = None, biopsy: str | None = None) -> dict:
    """A state file (``state/<p>/<b>.json``), checked to be of the biopsy its consumer expects."""
    doc = read_json(path, "the review state file", "rerun the review_state rule for this biopsy")
    got = (doc.get("participant_id"), doc.get("biopsy_id"))
    if participant is not None and got != (participant, biopsy):
        raise InputError(
            f"state file {path} is of {got[0]}/{got[1]}, not {participant}/{biopsy}",
            "pass the state files in the same biopsy order as the other files (the rule's inputs)",
        )
    return doc


def parser() -> argparse.ArgumentParser:
    """The command line: the biopsy's step results in, its state file out."""
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    for k in ("orient", "tract", "transfer", "out", "participant", "biopsy"):
        p.add_argument(f"--{k}", required=True)
    p.add_argument("--override-source", required=True, help="auto / sheet / review (<reviewer>) (common.smk)")
    p.add_argument(
        "--slide-rows", type=int, required=True, help="biopsies.tsv rows on this biopsy's slide, excluded ones too"
    )
    return p


def main(argv: list[str] | None = None) -> None:
    a = parser().parse_args(argv)

    def go() -> None:
        orient = read_json(a.orient, "the orient result", "rerun the orient rule for this biopsy")
        tract = read_json(a.tract, "the tract result", "rerun the tract rule for this biopsy")
        summary = read_json(a.transfer, "the transfer summary", "rerun the transfer rule for this biopsy")
        doc = {
            "participant_id": a.participant,
            "biopsy_id": a.biopsy,
            **biopsy_state(orient, tract, a.override_source, summary, a.slide_rows),
        }
        Path(a.out).write_text(json.dumps(doc, indent=1))
        print(f"{a.participant}/{a.biopsy}: {doc['state']} ({', '.join(f'{k} {v}' for k, v in doc['steps'].items())})")

    run_cli(go, a.participant, a.biopsy, a.orient)


if __name__ == "__main__":
    main()
