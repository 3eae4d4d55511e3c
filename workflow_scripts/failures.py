"""Failure summary: every job log that ends in a tractmap error, as one table.

Written after every run (success or not) so that with ``--keep-going`` the
biopsies that failed are listed, with the reason and the fix, next to everyone
else's results.
"""

from __future__ import annotations

import argparse
import json
import re
from pathlib import Path

import pandas as pd

from workflow_scripts.errors import RECORD

COLUMNS = ["step", "participant_id", "biopsy_id", "file", "problem", "hint", "log"]
FAILED_LOG = re.compile(r"^\s*log: (.+) \(check log file\(s\) for error details\)$")  # Snakemake's error block
PHASE = re.compile(r"_(prefire|postfire)$")


def said(record: dict, step: str, log: Path) -> dict[str, str]:
    """A failure record's problem and hint, each non-empty: a record that leaves one out (an older or foreign
    writer) says so and points to the log."""
    return {
        "problem": record.get("problem") or f"the {step} job failed without saying why",
        "hint": record.get("hint") or f"read {log} for what went wrong, and rerun the {step} step",
    }


def collect(logs: Path) -> pd.DataFrame:
    """One row per log file that holds a tractmap failure record (written by errors.run_cli)."""
    rows = []
    for log in sorted(logs.rglob("*.log")):
        records = [ln[len(RECORD) :] for ln in log.read_text(errors="replace").splitlines() if ln.startswith(RECORD)]
        if records:
            r, step = json.loads(records[-1]), log.relative_to(logs).parts[0]
            rows.append(
                {
                    "step": step,
                    "participant_id": r.get("participant", ""),
                    "biopsy_id": r.get("biopsy", ""),
                    "file": r.get("file", ""),
                    **said(r, step, log),
                    "log": str(log),
                }
            )
    return pd.DataFrame(rows, columns=COLUMNS)


def failed_job_logs(run_logs: list[str]) -> list[Path]:
    """Job logs that Snakemake's own run log lists as belonging to failed jobs."""
    found = []
    for run_log in run_logs:
        text = Path(run_log).read_text(errors="replace") if Path(run_log).is_file() else ""
        for ln in text.splitlines():
            m = FAILED_LOG.match(ln)
            if m:
                found += [Path(p) for p in m.group(1).split(", ")]
    return list(dict.fromkeys(found))


def unrecorded(failed: list[Path], logs: Path, recorded: set[str]) -> pd.DataFrame:
    """Rows for failed jobs whose log holds no failure record: killed, out of memory, or a crash outside Python."""
    rows = []
    for log in failed:
        if str(log) in recorded:
            continue
        parts = log.relative_to(logs).parts if log.is_relative_to(logs) else log.parts
        who = [*parts[1:-1], PHASE.sub("", Path(parts[-1]).stem)] if len(parts) >= 3 else ["", ""]
        rows.append(
            {
                "step": parts[0],
                "participant_id": who[0],
                "biopsy_id": who[1] if len(who) > 1 else "",
                "file": "",
                "problem": "the job failed without a tractmap error (killed, out of memory or time, "
                "or a crash outside Python)",
                "hint": f"read {log}{'' if log.is_file() else ' (not written)'} and the cluster's "
                "job log; rerun with more resources",
                "log": str(log),
            }
        )
    return pd.DataFrame(rows, columns=COLUMNS)


def per_biopsy(table: pd.DataFrame, slides: dict[tuple[str, str], list[str]]) -> pd.DataFrame:
    """A slide-level job's row (its log is <logs>/<step>/<participant>/<slide>.log) once for each biopsy
    whose core lies on that slide: each of them failed."""
    rows = []
    for r in table.to_dict("records"):
        on = slides.get((r["participant_id"], Path(r["log"]).stem), [])
        rows += [{**r, "biopsy_id": b} for b in on] if on and r["biopsy_id"] in ("", Path(r["log"]).stem) else [r]
    return pd.DataFrame(rows, columns=COLUMNS)


def write(
    logs: Path, out: Path, run_logs: list[str] | None = None, slides: dict[tuple[str, str], list[str]] | None = None
) -> pd.DataFrame:
    """Collect the failures into ``out`` (TSV) and print them.

    ``run_logs`` are Snakemake's own logs of this run; a failed job they name whose
    log holds no tractmap record is listed too, so every failed job has a row.  ``slides``
    ((participant, slide) -> biopsies) lists a slide-level failure under each biopsy on the slide.
    """
    table = collect(logs)
    extra = unrecorded(failed_job_logs(run_logs or []), logs, set(table["log"]))
    table = pd.concat([table, extra], ignore_index=True) if len(extra) else table
    table = per_biopsy(table, slides or {})
    out.parent.mkdir(parents=True, exist_ok=True)
    table.to_csv(out, sep="\t", index=False)
    if len(table):
        print(f"{len(table)} failed job(s), listed in {out}:")
        for r in table.itertuples():
            print(f"  {r.step}: {r.participant_id}/{r.biopsy_id}: {r.problem} (hint: {r.hint})")
    return table


def parser() -> argparse.ArgumentParser:
    """The command line; every setting that config.yaml carries is a required option the rule passes."""
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--logs", required=True, help="the per-job log folder (config logs)")
    p.add_argument("--out", required=True)
    return p


def main(argv: list[str] | None = None) -> None:
    a = parser().parse_args(argv)
    write(Path(a.logs), Path(a.out))


if __name__ == "__main__":
    main()
