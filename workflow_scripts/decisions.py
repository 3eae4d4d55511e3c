"""Review decisions as data: the file tractmap-review writes and the workflow reads.

One row per biopsy (its latest decision) in ``review.decisions`` (config.yaml; default
``reviews/decisions.tsv``).  Every save and undo is also appended to the history beside it
(``decisions.log.tsv``), which undo replays.  Writes hold an exclusive lock on ``<file>.lock``,
re-read the file inside the lock and replace it atomically, so two browser tabs saving at once
lose nothing.

The value columns mean what the biopsies.tsv override columns of the same name mean.  Precedence,
decided here only: a decision wins over the sheet, group by group (:data:`GROUPS`): a decision that
sets any of a group's columns replaces all of that group's sheet values (a review tip never pairs
with a sheet axis); groups the decision leaves empty keep the sheet's values.
"""

from __future__ import annotations

import contextlib
import csv
import fcntl
import functools
import hashlib
import os
import re
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING

import jsonschema
import yaml

if TYPE_CHECKING:
    import pandas as pd

# pandas and the sheet checks are imported where the workflow reads the file: the app, which only
# writes it, starts without them

SCHEMA = Path(__file__).resolve().parents[1] / "schemas" / "decisions.schema.yaml"
TRACT = ("tip_x", "tip_y", "axis_deg", "override_length_mm")
# override groups, each taken whole from the decision or whole from the sheet
GROUPS = {"dye_end": ("dye_end",), "tract": TRACT, "stroke": ("stroke_mm",), "exclude": ("exclude",)}
# the groups whose sheet values override a step's automatic call, and so make ``override_source`` "sheet": not the
# stroke (the gun's setting, a fact the tract is checked against, recorded as ``stroke_source``) nor an exclusion
# (an excluded biopsy has no state); the calibration columns (us_mm_per_px, wsi_um_per_px) are no group at all
SHEET_OVERRIDES = ("dye_end", "tract")
VALUES = tuple(c for cols in GROUPS.values() for c in cols)
# warnings_seen: the checks' warnings the reviewer saw and saved over (optional: older files lack it); no override
COLUMNS = ["participant_id", "biopsy_id", "decision", *VALUES, "warnings_seen", "reviewer", "decided_at"]
NUMERIC = {"tip_x", "tip_y", "axis_deg", "override_length_mm", "stroke_mm"}
IDS = ("participant_id", "biopsy_id")
# characters that break a line-based reader: C0/C1 controls (tab, newline, ...) and Unicode line/paragraph breaks
CONTROL = re.compile(r"[\x00-\x1f\x7f-\x9f\u2028\u2029]")


class Stale(Exception):
    """A write made on a version of a biopsy's decision that is no longer current; ``current``: the row now."""

    def __init__(self, current: dict | None):
        super().__init__("the decision changed since it was read")
        self.current = current


@functools.cache
def schema() -> dict:
    """The JSON schema of one decision (schemas/decisions.schema.yaml)."""
    return yaml.safe_load(SCHEMA.read_text())


def default_path() -> str:
    """review.decisions when config.yaml leaves it out: the config schema's default (one place)."""
    doc = yaml.safe_load(SCHEMA.with_name("config.schema.yaml").read_text())
    return doc["properties"]["review"]["properties"]["decisions"]["default"]


def history_path(path: Path) -> Path:
    """The append-only history beside a decisions file."""
    return path.with_name(f"{path.stem}.log{path.suffix}")


def present(value: object) -> bool:
    """Whether a cell holds a value (not NaN, None or blank)."""
    return not (value is None or (isinstance(value, float) and value != value) or str(value).strip() == "")


def one_line(text: str) -> str:
    """``text`` on one line: where it holds control characters (tab, newline, ...), every run of them and of
    the spaces around them becomes one space, ends trimmed; other text is kept as it is."""
    return " ".join(CONTROL.sub(" ", text).split()) if CONTROL.search(text) else text


def clean(record: dict) -> dict:
    """A row's non-empty cells, numbers as numbers."""
    return {k: float(v) if k in NUMERIC else v for k, v in record.items() if present(v)}


def read(path: str | Path) -> pd.DataFrame:
    """The decisions file, numbers as numbers; an empty table when there is none yet."""
    import pandas as pd

    from workflow_scripts import sheets as sheetlib

    if not Path(path).is_file():
        return pd.DataFrame(columns=COLUMNS)
    return sheetlib.read_sheet(str(path), NUMERIC)


def problems(table: pd.DataFrame, path: str, known: set[tuple[str, str]]) -> list[str]:
    """Every schema violation, duplicate and unknown biopsy of a decisions table, named by file and line."""
    from workflow_scripts import sheets as sheetlib

    found = sheetlib.schema_problems(table, schema(), path, IDS)
    seen = set()
    for i, r in enumerate(table.to_dict("records")):
        key = (str(r.get("participant_id")), str(r.get("biopsy_id")))
        if key in seen:
            found.append(f"{path} line {sheetlib.line(i)}: a second decision for {key[0]}/{key[1]}; keep one row")
        elif key not in known:
            found.append(
                f"{path} line {sheetlib.line(i)}: biopsy {key[0]}/{key[1]} is not in the biopsies sheet; "
                "delete the row, or add the biopsy back to the sheet"
            )
        seen.add(key)
    return found


def source(sheet_row: dict, decision: dict | None) -> str:
    """Where a biopsy's overrides come from: ``auto``, ``sheet``, ``review (<reviewer>)`` or both; the sheet counts
    only for the :data:`SHEET_OVERRIDES` groups that the decision leaves to it."""
    groups = {g for g, cols in GROUPS.items() if decision and any(present(decision.get(c)) for c in cols)}
    kept = [c for g in SHEET_OVERRIDES if g not in groups for c in GROUPS[g]]
    from_sheet = any(present(sheet_row.get(c)) for c in kept)
    parts = ([f"review ({decision['reviewer']})"] if decision else []) + (["sheet"] if from_sheet else [])
    return " + ".join(parts) or "auto"


def apply(sheet: pd.DataFrame, table: pd.DataFrame) -> tuple[pd.DataFrame, dict[tuple[str, str], str]]:
    """The sheet with each decision's groups in place of its own values, and each biopsy's override source."""
    import pandas as pd

    out = sheet.copy()
    for c in VALUES:
        if c not in out:
            out[c] = pd.Series([float("nan")] * len(out), index=out.index, dtype=object)
    by_key = {(r["participant_id"], r["biopsy_id"]): clean(r) for r in table.to_dict("records")}
    sources = {}
    for i, row in zip(out.index, out.to_dict("records"), strict=True):
        key = (row["participant_id"], row["biopsy_id"])
        d = by_key.get(key)
        sources[key] = source(row, d)
        for cols in GROUPS.values():
            if d and any(c in d for c in cols):
                for c in cols:
                    out.at[i, c] = d.get(c, float("nan"))
    return out, sources


def plain(e: jsonschema.ValidationError) -> str:
    """A schema error as a short sentence naming the field and what it must be; it echoes no value (a value
    may be long, or not text)."""
    v = e.validator_value
    says = {
        "type": f"must be {'a number' if v == 'number' else 'text'}",
        "enum": f"must be one of {', '.join(map(str, v))}" if isinstance(v, list) else "",
        "minimum": f"must be at least {v}",
        "exclusiveMinimum": f"must be more than {v}",
        "maximum": f"must be at most {v}",
        "pattern": "must not be blank" if v == "\\S" else "holds characters that are not allowed",
        "minLength": "must not be empty",
        "required": "give a reason to exclude" if v == ["exclude"] else "is missing a required field",
        "dependentRequired": "T0/T1 needs all of tip_x, tip_y, axis_deg and override_length_mm",
        "not": "a reason to exclude goes with the decision exclude only",
    }.get(str(e.validator)) or "is not what schemas/decisions.schema.yaml allows"
    return f"{'/'.join(map(str, e.absolute_path)) or 'decision'}: {says}"


def validate(record: dict) -> list[str]:
    """Schema problems of one decision, as plain sentences (empty: valid)."""
    v = jsonschema.Draft202012Validator(schema())
    return list(dict.fromkeys(plain(e) for e in v.iter_errors(record)))


# ------------------------------------------------------------------ writing (the app)

_THREAD_LOCK = threading.Lock()  # flock excludes other processes; this, other threads of the app


@contextlib.contextmanager
def locked(path: Path) -> Iterator[None]:
    """Exclusive access to a decisions file and its history, across processes and threads."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with _THREAD_LOCK, open(path.with_name(path.name + ".lock"), "a") as f:
        fcntl.flock(f, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(f, fcntl.LOCK_UN)


def _rows(path: Path) -> list[dict]:
    if not path.is_file():
        return []
    with open(path, newline="", encoding="utf-8") as f:
        return [{c: r.get(c) or "" for c in COLUMNS} for r in csv.DictReader(f, delimiter="\t")]


def _write(path: Path, rows: list[dict]) -> None:
    """Replace a decisions file atomically (a reader sees the old or the new file, never a part)."""
    tmp = path.with_name(f".{path.name}.{os.getpid()}.{threading.get_ident()}.tmp")
    with open(tmp, "w", newline="", encoding="utf-8") as f:
        out = csv.DictWriter(f, COLUMNS, delimiter="\t", lineterminator="\n", extrasaction="ignore")
        out.writeheader()
        out.writerows(rows)
    os.replace(tmp, path)


def _append(path: Path, row: dict) -> None:
    new = not path.is_file()
    with open(path, "a", newline="", encoding="utf-8") as f:
        out = csv.DictWriter(f, COLUMNS, delimiter="\t", lineterminator="\n", extrasaction="ignore")
        if new:
            out.writeheader()
        out.writerow(row)


def _text(record: dict) -> dict:
    """A decision as the file's text cells (numbers without a trailing .0 where whole; text on one line)."""
    fmt = lambda v: repr(float(v)).removesuffix(".0") if isinstance(v, int | float) else one_line(str(v))  # noqa: E731
    return {c: fmt(record[c]) if c in record else "" for c in COLUMNS}


def _row_of(path: Path, key: tuple[str, str]) -> dict | None:
    return next((r for r in _rows(path) if (r["participant_id"], r["biopsy_id"]) == key), None)


def current(path: Path, key: tuple[str, str]) -> dict | None:
    """A biopsy's latest decision (its non-empty cells), if any."""
    row = _row_of(path, key)
    return None if row is None else clean(row)


def version(row: dict | None) -> str:
    """A short digest of a biopsy's row (any of its forms: text cells, or :func:`current`'s); ``none`` for none."""
    if row is None:
        return "none"
    return hashlib.sha1("\t".join(_text(clean(row)).values()).encode()).hexdigest()[:12]


def _expect(path: Path, key: tuple[str, str], expected: str | None) -> None:
    """Raise :class:`Stale` unless the biopsy's row is still of version ``expected`` (None: any)."""
    if expected is not None:
        row = _row_of(path, key)
        if version(row) != expected:
            raise Stale(None if row is None else clean(row))


def save(path: Path, record: dict, expected: str | None = None) -> dict:
    """Keep one (validated) decision: it replaces the biopsy's row, the others are re-read and kept.
    ``expected``: the version (:func:`version`) of the row it was made on; another raises :class:`Stale`."""
    row = _text(record)
    key = (row["participant_id"], row["biopsy_id"])
    with locked(path):
        _expect(path, key, expected)
        rows = [r for r in _rows(path) if (r["participant_id"], r["biopsy_id"]) != key]
        _write(path, [*rows, row])
        _append(history_path(path), row)
    return clean(row)


def undo(path: Path, key: tuple[str, str], reviewer: str, at: str, expected: str | None = None) -> dict | None:
    """Take back a biopsy's latest decision: the one before it (from the history) is current again, or none.
    ``expected`` as in :func:`save`."""
    with locked(path):
        _expect(path, key, expected)
        stack: list[dict] = []
        for r in _rows(history_path(path)):
            if (r["participant_id"], r["biopsy_id"]) == key:
                if r["decision"] == "undo":
                    stack = stack[:-1]
                else:
                    stack.append(r)
        if not stack:
            return None
        stack.pop()
        rows = [r for r in _rows(path) if (r["participant_id"], r["biopsy_id"]) != key]
        _write(path, rows + stack[-1:])
        _append(history_path(path), {"participant_id": key[0], "biopsy_id": key[1], "decision": "undo",
                                     "reviewer": reviewer, "decided_at": at})  # fmt: skip
    return clean(stack[-1]) if stack else {}
