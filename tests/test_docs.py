"""The README is a user guide that stays true: short, every link resolves, every docs page is reachable
from it, its example sheet rows pass the pipeline's own sheet checks, and every error a user can meet
is explained in docs/troubleshooting.md.  Fast: no Snakemake run."""

from __future__ import annotations

import ast
import re
from pathlib import Path

import pandas as pd
import pytest
import yaml

from workflow_scripts import sheets

ROOT = Path(__file__).resolve().parents[1]
README = ROOT / "README.md"
DOCS = sorted((ROOT / "docs").glob("*.md"))
MAX_README_BYTES = 20480
# calls whose first argument is a message a user reads: the step error, the sheet errors, the workflow's
ERROR_CALLS = {"InputError", "SheetError", "WorkflowError", "error", "Refused"}  # error: argparse's
MESSAGE_ARG = {"Refused": 1}  # the review app's refusal: (HTTP status, message); the others: (message, ...)
PROBLEM_LISTS = {"problems", "found"}  # lists of sheet / decisions-file problems, reported before any job runs
MIN_KEY = 14  # a shorter leading text ("the ", "core ", "sample sheet ") says little: a later part is the key
MIN_LOOKUP = 8  # shorter than this, no part of a message is worth looking up


def links(path: Path) -> list[str]:
    """Targets of the Markdown links and images in a file, without code blocks."""
    text = re.sub(r"```.*?```", "", path.read_text(), flags=re.S)
    return re.findall(r"!?\[[^\]]*\]\(([^)\s]+)\)", text)


def relative_targets(path: Path) -> list[str]:
    """Links to files of the repository (no URL, no in-page anchor), anchors cut off."""
    return [t.split("#", 1)[0] for t in links(path) if not re.match(r"[a-z]+:|#", t)]


def test_readme_is_short():
    """A user guide, not a lab notebook: method and measurements live in docs/."""
    assert README.stat().st_size <= MAX_README_BYTES, README.stat().st_size


@pytest.mark.parametrize("page", [README, *DOCS], ids=lambda p: p.name)
def test_every_relative_link_resolves(page: Path):
    missing = [t for t in relative_targets(page) if not (page.parent / t).exists()]
    assert missing == [], f"{page.name}: links to missing files {missing}"


def anchors(path: Path) -> set[str]:
    """The anchors GitHub gives a Markdown file's headings: lower case, punctuation dropped, spaces to '-'."""
    text = re.sub(r"```.*?```", "", path.read_text(), flags=re.S)
    return {re.sub(r"[^\w\- ]", "", h.strip().lower()).replace(" ", "-") for h in re.findall(r"^#+ (.+)$", text, re.M)}


@pytest.mark.parametrize("page", [README, *DOCS], ids=lambda p: p.name)
def test_every_anchor_names_a_heading(page: Path):
    """A link to a section (page.md#section, or #section in the page) lands on a heading that exists."""
    wrong = []
    for target in links(page):
        if "#" in target and not re.match(r"[a-z]+:", target):
            file, anchor = target.split("#", 1)
            where = (page.parent / file) if file else page
            if where.suffix == ".md" and where.exists() and anchor not in anchors(where):
                wrong.append(target)
    assert wrong == [], f"{page.name}: links to missing sections {wrong}"


def test_readme_links_every_docs_page():
    assert len(DOCS) >= 8, "the method, measurements and references live in docs/*.md"
    linked = {(ROOT / t).resolve() for t in relative_targets(README)}
    assert [p.name for p in DOCS if p.resolve() not in linked] == []


def example_sheets(text: str) -> dict[str, pd.DataFrame]:
    """The README's example sheets: a fenced block whose first line is `# <name>.tsv`, tab-separated."""
    found = {}
    for block in re.findall(r"```tsv\n(.*?)```", text, flags=re.S):
        first, body = block.split("\n", 1)
        name = first.removeprefix("#").strip()
        rows = [r.split("\t") for r in body.strip("\n").split("\n")]
        found[name] = pd.DataFrame(rows[1:], columns=rows[0]).replace("", float("nan"))
    return found


def schema(name: str) -> dict:
    return yaml.safe_load((ROOT / "schemas" / f"{name}.schema.yaml").read_text())


def test_readme_example_rows_pass_the_sheet_checks(tmp_path: Path):
    """Each sheet the README shows has one example row per schema, with every column the schema defines,
    and passes exactly the checks the workflow runs before any job (schema, columns, IDs, slides)."""
    found = example_sheets(README.read_text())
    assert set(found) == {"participants.tsv", "biopsies.tsv"}
    problems = []
    for name, df in found.items():
        doc = schema(name.removesuffix(".tsv"))
        assert list(df.columns) == list(doc["properties"]), f"{name}: show every column, in the schema's order"
        numeric = {c for c, p in doc["properties"].items() if p.get("type") in ("number", "integer")}
        # read back as the workflow reads a sheet: text, with numeric columns converted
        path = tmp_path / name
        df.to_csv(path, sep="\t", index=False)
        df = found[name] = sheets.read_sheet(str(path), numeric)
        ids = ("participant_id",) if name == "participants.tsv" else ("participant_id", "biopsy_id")
        problems += sheets.unknown_columns(df, doc, name) + sheets.schema_problems(df, doc, name, ids)
    biopsies = found["biopsies.tsv"]
    for col in sheets.FILE_COLUMNS:  # the example's files are made up: stand them in, so only their names count
        for value in biopsies[col]:
            (tmp_path / value).parent.mkdir(parents=True, exist_ok=True)
            (tmp_path / value).touch()
        biopsies[col] = [str(tmp_path / v) for v in biopsies[col]]
    problems += sheets.check(found["participants.tsv"], biopsies, ("participants.tsv", "biopsies.tsv"))
    assert problems == []


# ------------------------------------------------------------------ every error message is explained


def literal_parts(node: ast.AST, constants: dict[str, str]) -> list[str] | None:
    """The fixed text of a message expression, in order (f-string placeholders cut it into parts);
    None when it is not built from literals (a re-raised ``e.what``)."""
    if isinstance(node, ast.Constant) and isinstance(node.value, str):
        return [node.value]
    if isinstance(node, ast.Name) and node.id in constants:
        return [constants[node.id]]
    if isinstance(node, ast.JoinedStr):
        parts, current = [], ""
        for v in node.values:
            if isinstance(v, ast.Constant):
                current += v.value
            else:
                parts, current = [*parts, current], ""
        return [*parts, current]
    if isinstance(node, ast.BinOp) and isinstance(node.op, ast.Add):
        left, right = literal_parts(node.left, constants), literal_parts(node.right, constants)
        return None if left is None else left + (right or [])
    return None


def message_key(parts: list[str]) -> str | None:
    """What troubleshooting.md must quote: the message's first fixed part long enough to look up (its
    leading text, unless that is a bare "the " or "sample sheet "), else its longest fixed part;
    whitespace and punctuation at the ends trimmed."""
    keys = [" ".join(p.split()).strip(" :;,.()[]'") for p in parts]
    key = next((k for k in keys if len(k) >= MIN_KEY), max(keys, key=len))
    return key if len(key) >= MIN_LOOKUP else None


def is_message_call(node: ast.Call) -> bool:
    """A call that raises or records a user-facing error: ``InputError(...)``, ``problems.append(...)``,
    ``parser.error(...)``, the review app's ``Refused(status, ...)``."""
    f = node.func
    if isinstance(f, ast.Name):
        return f.id in ERROR_CALLS
    if isinstance(f, ast.Attribute):
        return f.attr in ERROR_CALLS or (
            f.attr == "append" and isinstance(f.value, ast.Name) and f.value.id in PROBLEM_LISTS
        )
    return False


def python_messages(source: str, where: str) -> list[tuple[str, str]]:
    """(where, key) of every user-facing error message in a Python source."""
    tree = ast.parse(source)
    constants = {  # module-level string constants, e.g. a hint shared by several errors
        t.id: n.value.value
        for n in tree.body
        if isinstance(n, ast.Assign) and isinstance(n.value, ast.Constant) and isinstance(n.value.value, str)
        for t in n.targets
        if isinstance(t, ast.Name)
    }
    found = []
    for node in ast.walk(tree):
        name = getattr(node, "func", None)
        arg = MESSAGE_ARG.get(getattr(name, "id", getattr(name, "attr", "")), 0)
        if isinstance(node, ast.Call) and is_message_call(node) and len(node.args) > arg:
            parts = literal_parts(node.args[arg], constants)
            key = message_key(parts) if parts else None
            if key:
                found.append((f"{where}:{node.lineno}", key))
    return found


def smk_messages(path: Path) -> list[tuple[str, str]]:
    """Messages a rule file raises itself (Snakemake syntax is not Python: the raise lines are)."""
    found = []
    for i, text in enumerate(path.read_text().splitlines(), 1):
        call = re.search(r"\b(?:WorkflowError|InputError|SheetError)\((.+)", text)
        if call:
            try:
                expr = ast.parse(call.group(1).rsplit(")", 1)[0] if call.group(1).count(")") else call.group(1))
            except SyntaxError:
                continue
            parts = literal_parts(expr.body[0].value, {}) if expr.body else None
            key = message_key(parts) if parts else None
            if key:
                found.append((f"{path.name}:{i}", key))
    return found


def user_messages() -> list[tuple[str, str]]:
    """Every user-facing error message of the pipeline's code and rules (the demo's generator excluded)."""
    found = []
    for py in sorted((ROOT / "workflow_scripts").glob("*.py")):
        found += python_messages(py.read_text(), py.name)
    for smk in [ROOT / "Snakefile", *sorted((ROOT / "rules").glob("*.smk"))]:
        found += smk_messages(smk)
    return found


def undocumented(messages: list[tuple[str, str]], doc: str) -> list[tuple[str, str]]:
    """The messages whose key the troubleshooting page does not quote (whitespace-insensitive)."""
    text = " ".join(doc.replace("`", "").split())
    return [(where, key) for where, key in messages if key not in text]


def test_the_message_scan_finds_the_errors():
    """The scan itself: it sees the errors of every kind, so a passing check below means something."""
    keys = {key for _, key in user_messages()}
    assert len(keys) >= 60
    assert "no needle echo found in the image" in keys  # InputError with a literal
    assert "needle advance too short" in keys  # f-string: the leading text
    assert "split has no images" in keys  # f-string with a short lead: its next part
    assert "wsi_um_per_px" in keys  # no part long enough: the longest
    assert "does not exist; set samples: in config.yaml" in keys  # SheetError
    assert "sample sheet problem(s); nothing was run" in keys  # WorkflowError in rules/common.smk
    assert any(k.startswith("other row(s) but gives no core") for k in keys)  # problems.append in sheets.py
    assert "a second decision for" in keys  # problems of the decisions file
    assert any("review.tsv does not exist: run the workflow first" in k for k in keys)  # argparse, tractmap-review
    assert "missing or wrong token: open the URL tractmap-review printed" in keys  # the review app's refusal


def test_undocumented_message_is_caught():
    """Removing a message's entry from the page makes the check fail."""
    doc = (ROOT / "docs" / "troubleshooting.md").read_text()
    messages = user_messages()
    for where, key in messages:
        stripped = " ".join(doc.replace("`", "").split()).replace(key, "")
        assert (where, key) in undocumented(messages, stripped), where


def test_every_error_message_is_in_troubleshooting():
    """A user who meets an error finds it, and its fix, in docs/troubleshooting.md."""
    doc = (ROOT / "docs" / "troubleshooting.md").read_text()
    assert undocumented(user_messages(), doc) == []
