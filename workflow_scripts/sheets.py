"""Sample-sheet checks that a JSON schema cannot express, run before any job.

Every problem names the sheet, the line (as a spreadsheet shows it: the header
is line 1) and the IDs, and says how to fix it.  All problems are reported at once.
"""

from __future__ import annotations

import difflib
import hashlib
import os
import re

import jsonschema
import pandas as pd

FILE_COLUMNS = ("prefire", "postfire", "wsi", "annotation")
# what Snakemake takes for a wildcard in a file path, e.g. {sample} or {x,[0-9]+}; it has no escape for input paths
WILDCARD = re.compile(r"\{\s*[.\w]+\s*(,[^{}]*)?\}")


class SheetError(ValueError):
    """One or more problems in the sample sheets."""


def read_sheet(path: str, numeric_columns: set[str]) -> pd.DataFrame:
    """A TSV sheet read as text (IDs and codes such as BI-RADS "5" stay strings); empty cells are NaN.

    Values of numeric columns are converted where they parse; anything else is left
    as text so that schema validation rejects it instead of silently dropping it.
    """
    try:
        df = pd.read_csv(path, sep="\t", dtype=str)
    except FileNotFoundError:
        raise SheetError(f"sample sheet {path} does not exist; set samples: in config.yaml") from None
    for col in numeric_columns & set(df.columns):
        df[col] = df[col].map(_number).astype(object)
    return df


def _number(value: object) -> object:
    if not isinstance(value, str):
        return value
    try:
        return float(value)
    except ValueError:
        return value


def schema_problems(df: pd.DataFrame, schema: dict, sheet: str, ids: tuple[str, ...]) -> list[str]:
    """Every schema violation of every row (not only the first), naming sheet, line and IDs.

    A violated ``pattern`` also quotes the column's description, which says what
    the column accepts and why.
    """
    validator = jsonschema.Draft202012Validator(schema)
    props = schema.get("properties", {})
    problems = []
    for i, record in enumerate(df.to_dict("records")):
        row = {k: v for k, v in record.items() if not (isinstance(v, float) and v != v)}
        for err in sorted(validator.iter_errors(row), key=lambda e: list(e.absolute_path)):
            col = err.absolute_path[0] if err.absolute_path else None
            who = ", ".join(str(row[c]) for c in ids if c in row)
            why = props.get(col, {}).get("description", "") if err.validator == "pattern" else ""
            where = f"column {col}: " if col else ""
            problems.append(f"{sheet} line {line(i)} ({who}): {where}{err.message}" + (f" ({why})" if why else ""))
    return problems


# columns that once meant something else: naming one is an error that says what to use now
RETIRED = {
    "throw_mm": "it was the sampled-length override; set stroke_mm to the gun's stroke setting (mm; it only checks "
    "the length) or override_length_mm to set the sampled length by hand (T1 = T0 + that length)",
}


def unknown_columns(df: pd.DataFrame, schema: dict, sheet: str) -> list[str]:
    """Columns the schema does not define (a typo is otherwise silently ignored), each with the closest known one."""
    known = list(schema.get("properties", {}))
    problems = []
    for col in df.columns:
        if col in known:
            continue
        if col in RETIRED:
            problems.append(f"{sheet}: column {col} is no longer read: {RETIRED[col]}")
            continue
        close = difflib.get_close_matches(col, known, n=1)
        hint = f"did you mean {close[0]}?" if close else f"known columns: {', '.join(known)}"
        problems.append(f"{sheet}: unknown column {col} ({hint}); rename or remove it")
    return problems


def line(i: int) -> int:
    """Spreadsheet line of data row i (0-based)."""
    return i + 2


def check(
    participants: pd.DataFrame, biopsies: pd.DataFrame, names: tuple[str, str], generated_prefix: str | None = None
) -> list[str]:
    """Problems: duplicate IDs, unknown participants, missing files (except ones the workflow generates)."""
    pname, bname = names
    problems: list[str] = []
    if "participant_id" not in participants or not {"participant_id", "biopsy_id", *FILE_COLUMNS} <= set(biopsies):
        return problems  # the schema check has named the missing columns
    dup = participants["participant_id"].duplicated(keep="first")
    for i in dup[dup].index:
        problems.append(
            f"{pname} line {line(i)}: duplicate participant_id "
            f"{participants.at[i, 'participant_id']}; each participant has one row"
        )
    key = biopsies["participant_id"] + "/" + biopsies["biopsy_id"]
    dup = key.duplicated(keep="first")
    for i in dup[dup].index:
        problems.append(
            f"{bname} line {line(i)}: duplicate biopsy {key[i]}; biopsy_id must be unique within a participant"
        )
    known = set(participants["participant_id"])
    for i in biopsies.index[~biopsies["participant_id"].isin(known)]:
        problems.append(
            f"{bname} line {line(i)}: biopsy {key[i]} belongs to participant {biopsies.at[i, 'participant_id']}, "
            f"who is not in {pname}; add the participant there"
        )
    problems += slide_problems(biopsies, bname)
    for col in FILE_COLUMNS:
        for i, path in biopsies[col].items():
            if generated_prefix and str(path).startswith(generated_prefix):
                continue
            if WILDCARD.search(str(path)):
                problems.append(
                    f"{bname} line {line(i)}: biopsy {key[i]}: {col} file {path} holds '{{name}}', which Snakemake "
                    "reads as a wildcard; rename that file or folder (braces around text with a space are fine)"
                )
            elif not os.path.exists(path):
                problems.append(
                    f"{bname} line {line(i)}: biopsy {key[i]}: {col} file {path} does not exist; fix the path"
                )
    return problems


def slide_key(path: str) -> str:
    """A slide's folder name under <results>/slides/<participant>/: its file name in safe characters and a
    hash of its path (two slides of one name in different folders stay apart)."""
    norm = os.path.normpath(str(path))
    stem = re.sub(r"[^A-Za-z0-9._-]+", "_", os.path.basename(norm)).strip("._-")[:48] or "slide"
    return f"{stem}-{hashlib.sha1(norm.encode()).hexdigest()[:8]}"


SLIDE_COLUMNS = ("annotation", "wsi_um_per_px")  # what every row naming one slide must agree on


def slide_problems(biopsies: pd.DataFrame, sheet: str) -> list[str]:
    """A participant's rows that name one slide (several cores on it) but disagree: another annotation
    file or pixel size, a missing or repeated ``core``."""
    problems: list[str] = []
    norm = biopsies["wsi"].map(lambda p: os.path.normpath(str(p)))
    for (_, path), rows in biopsies.groupby([biopsies["participant_id"], norm], sort=False):
        if len(rows) < 2:
            continue
        lines = ", ".join(str(line(i)) for i in rows.index)
        for col in SLIDE_COLUMNS:
            values = rows[col].dropna().astype(str).unique() if col in rows else []
            if len(values) > 1 or (0 < rows[col].notna().sum() < len(rows) if col in rows else False):
                problems.append(
                    f"{sheet} lines {lines}: the biopsies on slide {path} give different {col} values; "
                    f"give every row on one slide the same {col}"
                )
        core = rows["core"].fillna("").astype(str).str.strip() if "core" in rows else pd.Series("", rows.index)
        for i in core.index[core == ""]:
            problems.append(
                f"{sheet} line {line(i)}: biopsy {rows.at[i, 'participant_id']}/{rows.at[i, 'biopsy_id']} shares slide "
                f"{path} with {len(rows) - 1} other row(s) but gives no core; set core to the name of the core's "
                "QuPath annotation or its position on the slide (1 = leftmost)"
            )
        for i in core.index[core.duplicated(keep="first") & (core != "")]:
            problems.append(
                f"{sheet} line {line(i)}: core {core[i]} of slide {path} is already another biopsy's; "
                "each core of a slide is one biopsy"
            )
    return problems


def overrides(row: dict) -> dict:
    """The manual override columns present (non-empty) in one biopsies.tsv row."""
    cols = ("tip_x", "tip_y", "axis_deg", "override_length_mm", "stroke_mm", "dye_end")
    return {c: row[c] for c in cols if c in row and pd.notna(row[c]) and row[c] != ""}
