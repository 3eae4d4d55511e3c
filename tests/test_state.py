"""The review state: one decision per biopsy, read by the VOC lists, the review queue and QC."""

from __future__ import annotations

import itertools
import json
from pathlib import Path

import pandas as pd
import pytest

from workflow_scripts import qc, state, voc
from workflow_scripts.errors import InputError

STEP_STATES = ("accepted", "review", "override", "failed")


@pytest.mark.parametrize("o, t", list(itertools.product(STEP_STATES, STEP_STATES)))
def test_the_biopsy_takes_the_strongest_step_state(o, t):
    """failed > review > override > accepted, over both steps, whichever step has it."""
    res = state.biopsy_state({"state": o}, {"state": t}, "sheet")
    rank = {"failed": 0, "review": 1, "override": 2, "accepted": 3}
    assert res["state"] == min(o, t, key=rank.get)
    assert res["steps"] == {"orient": o, "tract": t, "transfer": "accepted"} and res["override_source"] == "sheet"


@pytest.mark.parametrize(
    "tract_state, expected", [("accepted", "review"), ("review", "review"), ("override", "override")]
)
def test_a_calibration_conflict_holds_an_accepted_tract_and_an_override_stands(tract_state, expected):
    conflict = "ultrasound calibration: DICOM 0.04 mm/px vs us_mm_per_px 0.05 mm/px (us_mm_per_px used)"
    tract = {"state": tract_state, "calibration_conflicts": [conflict]}
    res = state.biopsy_state({"state": "accepted"}, tract)
    assert res["steps"]["tract"] == expected and res["state"] == expected
    assert conflict in res["reasons"]["tract"]  # said, even where the override stands
    clean = state.biopsy_state({"state": "accepted"}, {"state": tract_state, "calibration_conflicts": []})
    assert clean["steps"]["tract"] == tract_state  # the same tract without the conflict keeps its own state


def test_reasons_are_kept_for_the_steps_that_are_not_accepted():
    o = {"state": "review", "review_reason": "end contrast 0.40 < 0.55"}
    t = {"state": "accepted", "review_reason": ""}
    assert state.biopsy_state(o, t)["reasons"] == {"orient": "end contrast 0.40 < 0.55"}


SHORT = "the core on the slide (11.3 mm) is shorter than the sampled tract (19.2 mm) allows"


@pytest.mark.parametrize(
    "o, source, expected",
    [
        ("accepted", "auto", "review"),
        ("review", "auto", "review"),
        ("override", "sheet", "review"),
        ("override", "review (ana)", "override"),
    ],
)
def test_the_labels_own_evidence_holds_the_biopsy_until_a_review_decides(o, source, expected):
    """A transfer summary with review reasons (a core/tract length out of range, tumour on a left-over piece)
    holds an otherwise accepted biopsy, with its reason; a decision in the review app (whose page shows the
    reasons) clears it, an override in biopsies.tsv does not."""
    res = state.biopsy_state({"state": o}, {"state": "accepted"}, source, transfer={"review_reasons": [SHORT]})
    assert res["state"] == expected
    assert (res["reasons"].get("transfer") == SHORT) == ("review" not in source)
    assert res["steps"]["transfer"] == ("accepted" if "review" in source else "review")
    clean = state.biopsy_state({"state": o}, {"state": "accepted"}, source, transfer={"review_reasons": []})
    assert clean["steps"]["transfer"] == "accepted"


HELD_PAIRS = [(o, t) for o, t in itertools.product(STEP_STATES, STEP_STATES) if {o, t} & {"review", "failed"}]


@pytest.mark.parametrize("o, t", HELD_PAIRS)
def test_a_held_step_always_says_why(o, t):
    """A step held (review) or failed with no reason of its own still gets one in the state file, saying so and
    where to look; a step's own reason is kept as it is, and an accepted or override step is given none."""
    res = state.biopsy_state({"state": o}, {"state": t})
    held = {k for k, s in res["steps"].items() if s in ("review", "failed")}
    assert set(res["reasons"]) == held
    for k in held:
        assert res["reasons"][k].startswith(f"the {k} step ") and "without a reason" in res["reasons"][k]
        assert ("QC figure" if res["steps"][k] == "review" else "log") in res["reasons"][k]
    own = state.biopsy_state({"state": o, "review_reason": "dye faint"}, {"state": t, "review_reason": "T1 faint"})
    given = {"orient": "dye faint", "tract": "T1 faint"}
    assert own["reasons"] == {k: r for k, r in given.items() if own["steps"][k] != "accepted"}


def test_an_unknown_step_state_names_the_step():
    with pytest.raises(InputError, match="the tract result has state 'maybe'"):
        state.biopsy_state({"state": "accepted"}, {"state": "maybe"})


def write_states(tmp_path: Path, states: dict[str, tuple[str, str]]) -> tuple[list[str], list[str]]:
    """State files written by the CLI from orient/tract results, and matching VOC label paths."""
    labels, files = [], []
    for bid, (o, t) in states.items():
        (tmp_path / "o.json").write_text(json.dumps({"state": o}))
        (tmp_path / "t.json").write_text(json.dumps({"state": t}))
        (tmp_path / "s.json").write_text(json.dumps({"review_reasons": []}))
        out = tmp_path / "state" / "P001" / f"{bid}.json"
        out.parent.mkdir(parents=True, exist_ok=True)
        args = [f"--orient={tmp_path / 'o.json'}", f"--tract={tmp_path / 't.json'}", f"--out={out}"]
        args.append(f"--transfer={tmp_path / 's.json'}")
        state.main([*args, "--override-source=auto", "--slide-rows=1", "--participant=P001", f"--biopsy={bid}"])
        files.append(str(out))
        labels.append(str(tmp_path / f"P001_{bid}.png"))
    return labels, files


def test_voc_lists_only_accepted_and_override_biopsies(tmp_path, capsys):
    cases = {
        "B1": ("accepted", "accepted"),
        "B2": ("override", "accepted"),
        "B3": ("accepted", "review"),
        "B4": ("failed", "override"),
    }
    labels, files = write_states(tmp_path, cases)
    voc.main(["list", f"--out={tmp_path / 'train.txt'}", "--state", *files, "--", *labels])
    assert (tmp_path / "train.txt").read_text().split() == ["P001_B1", "P001_B2"]
    assert "2 held out: P001_B3 (review) P001_B4 (failed)" in capsys.readouterr().out
    with pytest.raises(SystemExit):  # a state file of another biopsy, in the wrong order, is refused
        voc.main(["list", f"--out={tmp_path / 'x.txt'}", "--state", *files[::-1], "--", *labels])
    assert "state file" in capsys.readouterr().err


def test_the_qc_row_carries_the_state_file_not_the_steps_own():
    tract = {"state": "accepted", "sampled_length_mm": 20.0, "length_flag": False, "confidence": {"t0": 0.9}}
    tract["calibration_conflicts"] = ["ultrasound calibration: DICOM 0.04 vs 0.05"]
    orient = {"state": "override", "confidence": 0.3, "source": "override"}
    st = state.biopsy_state(orient, tract, "review (tester)")
    row = qc.table_row(tract, orient, st)
    assert (row["state"], row["orient_state"], row["tract_state"]) == ("review", "override", "review")
    assert row["override_source"] == "review (tester)"
    assert qc.decisions(st, {"confidence": 0.3}, tract).startswith("review; dye end: override (0.30); needle: review")


def test_the_report_counts_the_states_of_the_qc_table():
    from workflow_scripts import report

    qc_table = pd.DataFrame(
        {"participant_id": ["P1", "P1", "P2", "median", "p95"], "state": ["review", "accepted", "review", None, None]}
    )
    text = report.state_counts(qc_table)
    assert "of the 3 registered biopsies: 0 failed, 2 review, 0 override, 1 accepted" in text
