"""A held or failed biopsy always says why: every failure row has a problem and a hint, and every reason a held
biopsy can be given is on docs/troubleshooting.md."""

from __future__ import annotations

import json
import re
from pathlib import Path

import numpy as np
from conftest import ROOT

from workflow_scripts import failures, state, tract
from workflow_scripts.errors import RECORD


def shape(text: str) -> str:
    """A message with its values (numbers, ``<placeholders>``) as ``#``, without backticks or line breaks."""
    text = re.sub(r"<[^<>]+>", "#", text.replace("`", ""))
    return " ".join(re.sub(r"-?\d+(\.\d+)?", "#", text).split())


def test_every_review_reason_is_on_the_troubleshooting_page():
    """Each reason the tract and the review state write (and a failure row's fallback) is quoted on the page, with
    its values as placeholders, so that a person who meets one finds what to do."""
    res = {"confidence": {"t0": 0.002, "t1": 0.1, "axis": 0.3}, "fit": {"snr": [0.4, 2.0]}}
    res.update(sampled_length_mm=14.9, stroke_mm=22.0)
    r = {"t1": np.array([50.0, 40.0]), "direction": np.array([1.0, 0.0]), "prefire_echo": 0.2}
    reasons = [*tract.confidence_reasons(res, 0.55), tract.length_reason(30.0, 22.0)]
    reasons += [tract._prefire_fallback(r, 22.0, np.array([0.05, 0.05]))[1]]
    reasons += [state.held_reason("<step>", s, "") for s in state.HELD]
    reasons += [failures.said({}, "<step>", Path("x.log"))["problem"]]
    doc = shape((ROOT / "docs" / "troubleshooting.md").read_text())
    assert len(reasons) == 8 and [x for x in reasons if shape(x) not in doc] == []


def test_a_failure_record_without_its_problem_or_hint_still_says_why(tmp_path: Path):
    """A record that leaves out its problem or hint (an older or foreign writer) still gives a row that says what
    failed and where to read about it, never a blank cell or a crash of the summary."""
    cases = {"B1": {"problem": "", "hint": ""}, "B2": {}, "B3": {"problem": "bad frame", "hint": "check it"}}
    for bid, said in cases.items():
        log = tmp_path / "logs" / "tract" / "P001" / f"{bid}.log"
        log.parent.mkdir(parents=True, exist_ok=True)
        record = {"participant": "P001", "biopsy": bid, "file": "pre.png", **said}
        log.write_text("tractmap error: ...\n" + RECORD + json.dumps(record) + "\n")
    rows = failures.collect(tmp_path / "logs").set_index("biopsy_id")
    for bid in ("B1", "B2"):
        assert rows.loc[bid, "problem"] == "the tract job failed without saying why"
        assert rows.loc[bid, "hint"].startswith(f"read {tmp_path / 'logs' / 'tract' / 'P001' / bid}.log")
    assert (rows.loc["B3", "problem"], rows.loc["B3", "hint"]) == ("bad frame", "check it")
