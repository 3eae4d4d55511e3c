"""Failure summary: every job log that ends in a tractmap error, as one table.

Written after every run (success or not) so that with ``--keep-going`` the
biopsies that failed are listed, with the reason and the fix, next to everyone
else's results.
"""

from __future__ import annotations

import argparse
import re
from pathlib import Path

import pandas as pd

PATTERN = re.compile(r"tractmap error: (?:participant (?P<p>[^,]+), )?(?:biopsy (?P<b>[^,]+), )?(?:file (?P<f>\S+): )?(?P<what>.*?)\n\s*hint: (?P<hint>.*)")


def collect(logs: Path) -> pd.DataFrame:
    """One row per log file that holds a tractmap error."""
    rows = []
    for log in sorted(logs.rglob("*.log")):
        m = PATTERN.search(log.read_text(errors="replace"))
        if m:
            rows.append({"step": log.relative_to(logs).parts[0], "participant_id": m["p"] or "", "biopsy_id": m["b"] or "",
                         "file": m["f"] or "", "problem": m["what"].strip(), "hint": m["hint"].strip(), "log": str(log)})
    return pd.DataFrame(rows, columns=["step", "participant_id", "biopsy_id", "file", "problem", "hint", "log"])


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--logs", default="logs")
    p.add_argument("--out", required=True)
    a = p.parse_args(argv)
    table = collect(Path(a.logs))
    Path(a.out).parent.mkdir(parents=True, exist_ok=True)
    table.to_csv(a.out, sep="\t", index=False)
    if len(table):
        print(f"{len(table)} failed job(s), listed in {a.out}:")
        for r in table.itertuples():
            print(f"  {r.step}: {r.participant_id}/{r.biopsy_id}: {r.problem} (hint: {r.hint})")


if __name__ == "__main__":
    main()
