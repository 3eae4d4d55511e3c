"""One source for every setting: config.yaml, never a step's own default.

The rule these tests enforce, for every command line in workflow_scripts/ (each module with a ``main``
builds its options in ``parser()``, so they can be read without running anything):

* an option that is a setting (its dest is a config.yaml key, its help names ``config <key>``, or its
  default equals a distinctive config value) has no default: it is required and its rule passes it from
  config, quoted;
* options that are not settings (paths, lists of inputs, sheet values, flags) may keep a neutral default:
  None, an empty list, an empty string or empty JSON (``{}``, ``[]``), or False for a flag (a boolean
  setting is a flag its rule adds when config says true);
* every option a step requires appears in the rule that runs the step, and every value a rule's shell
  command substitutes is quoted (``{...:q}``; ``{threads}``, an integer Snakemake sets, is the exception);
* no library function gives a parameter named as a config key a default of its own (None or False, meaning
  "not used here", is allowed): callers pass config's value.
"""

from __future__ import annotations

import argparse
import importlib
import inspect
import pkgutil
import re

import yaml
from conftest import ROOT

import workflow_scripts

CONFIG = yaml.safe_load((ROOT / "config.yaml").read_text())
NEUTRAL = (None, [], "", "{}", "[]")
UNQUOTED_OK = {"threads"}  # an integer Snakemake sets


def flatten(d: dict, prefix: str = "") -> dict[str, object]:
    """config.yaml's leaves by dotted key (``tract.min_confidence``)."""
    out = {}
    for k, v in d.items():
        key = f"{prefix}{k}"
        out.update(flatten(v, f"{key}.") if isinstance(v, dict) else {key: v})
    return out


FLAT = flatten(CONFIG)
NAMES = {part for key in FLAT for part in key.split(".")}  # leaf and section names


def distinctive(v: object) -> bool:
    """A config value specific enough that a default equal to it is a copy (not 0, 1, a flag or a letter)."""
    if isinstance(v, bool) or v is None:
        return False
    if isinstance(v, (int, float)):
        return v not in (0, 1, -1)
    return isinstance(v, str) and len(v) > 1


VALUES = {}  # distinctive config value -> its keys
for _key, _value in FLAT.items():
    if distinctive(_value):
        VALUES.setdefault((type(_value) is str, _value), []).append(_key)


def cli_modules() -> list:
    """Every workflow_scripts module that defines a main() (``__main__`` runners excluded)."""
    mods = []
    for info in pkgutil.walk_packages(workflow_scripts.__path__, "workflow_scripts."):
        if info.name.endswith("__main__"):
            continue
        mod = importlib.import_module(info.name)
        if callable(getattr(mod, "main", None)) and mod.main.__module__ == mod.__name__:
            mods.append(mod)
    return mods


MODULES = cli_modules()


def options(p: argparse.ArgumentParser, prog: str) -> list[tuple[str, argparse.Action]]:
    """Every option of a parser and of its sub-commands, with the command that has it."""
    out = []
    for a in p._actions:
        if isinstance(a, argparse._SubParsersAction):
            for name, sub in a.choices.items():
                out += options(sub, f"{prog} {name}")
        elif not isinstance(a, argparse._HelpAction):
            out.append((prog, a))
    return out


def neutral(a: argparse.Action) -> bool:
    """No setting hides in the default: required, or None/empty, or False for a flag."""
    if a.required or a.default is None:
        return True
    if isinstance(a, argparse._StoreTrueAction):
        return a.default is False
    return isinstance(a.default, (list, str)) and a.default in NEUTRAL


def named_keys(a: argparse.Action) -> list[str]:
    """The config keys an option's help names (``config tract.width_mm``)."""
    return re.findall(r"\bconfig ([A-Za-z_][\w.]*\w)", a.help or "")


def setting_keys(a: argparse.Action) -> list[str]:
    """Why an option is a setting: the config keys it names, shares its dest with, or copies the value of."""
    why = [f"config {k}" for k in named_keys(a)]
    if a.dest in NAMES or any(n.startswith(f"{a.dest}_") for n in NAMES):
        why.append(f"a config key named like {a.dest!r}")
    if distinctive(a.default):
        why += [f"config {k} = {a.default!r}" for k in VALUES.get((type(a.default) is str, a.default), [])]
    return why


def default_problems(modules) -> list[str]:
    """Every option whose own default stands in for a config setting."""
    problems = []
    for mod in modules:
        for prog, a in options(mod.parser(), mod.__name__):
            why = setting_keys(a)
            if not neutral(a) and why:
                problems.append(
                    f"{prog} {'/'.join(a.option_strings) or a.dest}: default {a.default!r} duplicates or contradicts "
                    f"{'; '.join(why)}; make it required and pass it from config in its rule"
                )
    return problems


def test_every_command_line_has_a_parser():
    missing = sorted(m.__name__ for m in MODULES if not hasattr(m, "parser"))
    assert not missing, f"give these a parser() (main() parses parser().parse_args): {missing}"
    assert len(MODULES) >= 15  # the walk found the steps (a broken walk would make every test here pass)


def test_no_command_line_default_duplicates_or_contradicts_config():
    problems = default_problems(MODULES)
    assert not problems, "\n".join(problems)


def test_options_that_name_a_config_key_are_required_and_the_key_exists():
    problems = []
    for mod in MODULES:
        for prog, a in options(mod.parser(), mod.__name__):
            for key in named_keys(a):
                if not any(k == key or k.startswith(f"{key}.") for k in FLAT):
                    problems.append(f"{prog} {a.option_strings}: help names config {key}, which config.yaml lacks")
                elif not a.required and not isinstance(a, argparse._StoreTrueAction):
                    problems.append(f"{prog} {a.option_strings}: config {key} is a setting; make it required")
    assert not problems, "\n".join(problems)


def test_the_check_catches_a_default_that_copies_config(monkeypatch):
    """The check is not vacuous: a step whose setting regains its own default is reported."""
    from workflow_scripts import ingest

    real = ingest.parser

    def with_default() -> argparse.ArgumentParser:
        p = real()
        for _, a in options(p, "ingest"):
            if a.dest == "thumb_um":  # config ingest.thumb_um_per_px, as it was before
                a.required, a.default = False, 16.0
        return p

    monkeypatch.setattr(ingest, "parser", with_default)
    problems = default_problems([ingest])
    assert len(problems) == 1 and "--thumb-um: default 16.0" in problems[0], problems
    assert "config ingest.thumb_um_per_px" in problems[0]


def function_default_problems(modules) -> list[str]:
    """Library parameters named as a config key whose default would stand in for the setting."""
    leaves = {key.split(".")[-1] for key in FLAT}
    problems = []
    for mod in modules:
        for name, fn in inspect.getmembers(mod, inspect.isfunction):
            if fn.__module__ != mod.__name__:
                continue
            for prm in inspect.signature(fn).parameters.values():
                d = prm.default
                if prm.name in leaves and d is not inspect.Parameter.empty and d is not None and d is not False:
                    problems.append(f"{mod.__name__}.{name}({prm.name}={d!r}): config.yaml sets {prm.name}; no default")
    return problems


def test_no_library_function_defaults_a_config_setting():
    mods = [
        importlib.import_module(i.name)
        for i in pkgutil.walk_packages(workflow_scripts.__path__, "workflow_scripts.")
        if not i.name.endswith("__main__")
    ]
    problems = function_default_problems(mods)
    assert not problems, "\n".join(problems)

    def convert(doc, image_id, root, image_format="jpg"):  # as voc.convert was
        return doc

    mod = type(importlib)("probe")
    convert.__module__, mod.convert = "probe", convert
    assert function_default_problems([mod]) == [
        "probe.convert(image_format='jpg'): config.yaml sets image_format; no default"
    ]  # the check is not vacuous


# ------------------------------------------------------------------ the rules pass what the steps require


def rule_blocks() -> list[tuple[str, str]]:
    """(file:rule, text) of every rule in rules/*.smk, the text followed by the .smk functions it names."""
    texts = {p: p.read_text() for p in sorted((ROOT / "rules").glob("*.smk"))}
    functions = {}
    for text in texts.values():
        for m in re.finditer(r"^def (\w+)\(.*?(?=^\S)", text + "\n.", re.S | re.M):
            functions[m.group(1)] = m.group(0)
    blocks = []
    for path, text in texts.items():
        for m in re.finditer(r"^\s*(?:use )?rule (\w+).*?(?=^\s*(?:use )?rule \w|\Z)", text, re.S | re.M):
            body = m.group(0)
            helpers = [functions[w] for w in set(re.findall(r"\w+", body)) if w in functions]
            blocks.append((f"{path.name}:{m.group(1)}", "\n".join([body, *helpers])))
    return blocks


def shell_of(block: str) -> str:
    """The shell command's text (its string literals joined), or '' when the rule has none."""
    lines = block.split("\n")
    start = next((i for i, line in enumerate(lines) if line.strip() == "shell:"), None)
    if start is None:
        return ""
    indent = len(lines[start]) - len(lines[start].lstrip())
    body = []
    for line in lines[start + 1 :]:
        if line.strip() and len(line) - len(line.lstrip()) <= indent:
            break
        body.append(line)
    return "".join(re.findall(r'"((?:[^"\\]|\\.)*)"', "\n".join(body)))


def test_rules_pass_every_required_option_quoted():
    parsers = {m.__name__.removeprefix("workflow_scripts."): m.parser() for m in MODULES}
    parsers["synthetic"] = parsers.pop("synthetic.cohort")
    problems, steps = [], 0
    for name, block in rule_blocks():
        shell = shell_of(block)
        step = re.search(r"python -m workflow_scripts\.(\w+)(?: (\w+))?", shell)
        if not step:
            continue
        steps += 1
        p = parsers[step.group(1)]
        subs = [a for a in p._actions if isinstance(a, argparse._SubParsersAction)]
        if subs:
            p = subs[0].choices[step.group(2)]
        for a in p._actions:
            if a.required and a.option_strings and not any(o in block for o in a.option_strings):
                problems.append(f"{name}: the step requires {a.option_strings[0]}, which the rule does not pass")
        for field in re.findall(r"\{([^{}]*)\}", shell):
            if not field.endswith(":q") and field not in UNQUOTED_OK:
                problems.append(f"{name}: {{{field}}} reaches the shell unquoted (add :q)")
    assert steps >= 20, f"only {steps} step commands found in rules/*.smk: the parsing above broke"
    assert not problems, "\n".join(problems)
