"""One error type for bad input, and the entry-point wrapper that gives it context.

Pure functions raise :class:`InputError` saying *what* is wrong and *how to fix
it*; the command-line wrapper adds *who* (participant, biopsy) and *which file*,
so every message a user sees names all four.
"""

from __future__ import annotations

import sys
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
        msg = (": ".join([", ".join(parts), self.what]) if parts else self.what)
        return f"{msg}\n  hint: {self.hint}" if self.hint else msg


def run_cli(fn: Callable[[], None], participant: str | None = None, biopsy: str | None = None, file: str | None = None) -> None:
    """Run an entry point; turn an InputError into one clear line on stderr and exit 1."""
    try:
        fn()
    except InputError as e:
        print(f"tractmap error: {e.describe(participant, biopsy, file)}", file=sys.stderr)
        sys.exit(1)
