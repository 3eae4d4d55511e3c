"""One error type for bad input, and the entry-point wrapper that gives it context.

Pure functions raise :class:`InputError` saying *what* is wrong and *how to fix
it*; the command-line wrapper adds *who* (participant, biopsy) and *which file*,
so every message a user sees names all four.
"""

from __future__ import annotations

import json
import sys
import traceback
from collections.abc import Callable


class InputError(Exception):
    """A problem with the user's data, with a hint at the fix."""

    def __init__(self, what: str, hint: str = "", file: str | None = None):
        super().__init__(what)
        self.what, self.hint, self.file = what, hint, file

    def describe(self, participant: str | None = None, biopsy: str | None = None, file: str | None = None) -> str:
        """Full message: who, which file, what, and the hint."""
        who = ", ".join(x for x in (participant and f"participant {participant}", biopsy and f"biopsy {biopsy}") if x)
        where = self.file or file
        parts = [p for p in (who, where and f"file {where}") if p]
        msg = ": ".join([", ".join(parts), self.what]) if parts else self.what
        return f"{msg}\n  hint: {self.hint}" if self.hint else msg


def read_json(path: str, what: str, hint: str) -> object:
    """A user's JSON file; a damaged or non-JSON file is an :class:`InputError` naming ``what`` it should be."""
    try:
        with open(path, encoding="utf-8") as f:
            return json.load(f)
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        where = f", line {e.lineno}" if isinstance(e, json.JSONDecodeError) else ""
        raise InputError(f"{what} is not valid JSON ({type(e).__name__}{where})", hint) from None


RECORD = "tractmap failure record: "  # prefix of the machine-readable line that failures.py collects


def run_cli(
    fn: Callable[[], None], participant: str | None = None, biopsy: str | None = None, file: str | None = None
) -> None:
    """Run an entry point; turn any error into one clear line on stderr and exit 1.

    An :class:`InputError` is the user's data; anything else is unexpected, so its
    traceback goes to stderr (the job's log) first.  Both end in the human line and a
    JSON record of participant, biopsy, file, problem and hint, so that a path with
    spaces or colons survives the trip to ``failures.tsv``.
    """
    try:
        fn()
    except Exception as exc:  # noqa: BLE001 - every failure must end in the one-line error
        if isinstance(exc, InputError):
            err = exc
        else:
            traceback.print_exc()
            err = InputError(
                f"unexpected error ({type(exc).__name__}: {exc})",
                "the file may be damaged or of a kind tractmap cannot read; the traceback is in this log",
            )
        print(f"tractmap error: {err.describe(participant, biopsy, file)}", file=sys.stderr)
        record = {
            "participant": participant or "",
            "biopsy": biopsy or "",
            "file": str(err.file or file or ""),
            "problem": err.what,
            "hint": err.hint,
        }
        print(RECORD + json.dumps(record, ensure_ascii=False), file=sys.stderr)
        sys.exit(1)
