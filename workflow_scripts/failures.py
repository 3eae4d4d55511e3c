"""Failure summary: every job log that ends in a tractmap error, as one table.

Written after every run (success or not) so that with ``--keep-going`` the
biopsies that failed are listed, with the reason and the fix, next to everyone
else's results.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import pandas as pd

from workflow_scripts.errors import RECORD


def collect(logs: Path) -> pd.DataFrame:
    """One row per log file that holds a tractmap failure record (written by errors.run_cli)."""
    rows = []
    for log in sorted(logs.rglob("*.log")):
        records = [ln[len(RECORD):] for ln in log.read_text(errors="replace").splitlines() if ln.startswith(RECORD)]
        if records:
            r = json.loads(records[-1])
            rows.append({"step": log.relative_to(logs).parts[0], "participant_id": r["participant"], "biopsy_id": r["biopsy"],
                         "file": r["file"], "problem": r["problem"], "hint": r["hint"], "log": str(log)})
    return pd.DataFrame(rows, columns=["step", "participant_id", "biopsy_id", "file", "problem", "hint", "log"])


def write(logs: Path, out: Path) -> pd.DataFrame:
    """Collect the failures into ``out`` (TSV) and print them."""
    table = collect(logs)
    out.parent.mkdir(parents=True, exist_ok=True)
    table.to_csv(out, sep="\t", index=False)
    if len(table):
        print(f"{len(table)} failed job(s), listed in {out}:")
        for r in table.itertuples():
            print(f"  {r.step}: {r.participant_id}/{r.biopsy_id}: {r.problem} (hint: {r.hint})")
    return table


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--logs", default="logs")
    p.add_argument("--out", required=True)
    a = p.parse_args(argv)
    write(Path(a.logs), Path(a.out))


if __name__ == "__main__":
    main()
