"""The house's layout: the synthetic cohort stays out of the pipeline, and docs/development.md maps rules to code."""

import ast
import re
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
STEPS = sorted((ROOT / "workflow_scripts").glob("*.py"))
SYNTHETIC = sorted((ROOT / "workflow_scripts" / "synthetic").glob("*.py"))


def imported_modules(path: Path) -> set[str]:
    """Every module a Python file imports (relative imports as '.name')."""
    names = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            names |= {a.name for a in node.names}
        elif isinstance(node, ast.ImportFrom):
            # relative imports: '.x' inside a package, 'workflow_scripts.x' from the package above it
            base = ("." if node.level == 1 else "workflow_scripts." if node.level else "") + (node.module or "")
            names |= {base} | {f"{base}.{a.name}" for a in node.names}
    return names


def test_no_pipeline_step_imports_the_synthetic_cohort():
    assert len(STEPS) > 15 and len(SYNTHETIC) >= 5
    offenders = {p.name: sorted(m for m in imported_modules(p) if "synthetic" in m) for p in STEPS}
    assert {k: v for k, v in offenders.items() if v} == {}
    # the Snakefile and rule files reach it only through the demo rule's command line
    for smk in [ROOT / "Snakefile", *sorted((ROOT / "rules").glob("*.smk"))]:
        uses = re.findall(r"workflow_scripts[./]synthetic", smk.read_text())
        assert not uses or smk.name == "demo.smk", smk.name


def test_the_synthetic_cohort_owns_its_geometry():
    """The forward model may not share code with the pipeline it is used to score."""
    for p in SYNTHETIC:
        shared = sorted(m for m in imported_modules(p) if m.startswith("workflow_scripts"))
        assert shared == [], (p.name, shared)


def test_docs_map_every_rule_file_and_module():
    """docs/development.md's 'Where things are' names every rule file, rule and module, so a newcomer finds each."""
    page = (ROOT / "docs" / "development.md").read_text()
    table = page.split("## Where things are", 1)[1].split("\n## ", 1)[0]
    for smk in sorted((ROOT / "rules").glob("*.smk")):
        assert f"`rules/{smk.name}`" in table, smk.name
        for rule in re.findall(r"^\s*rule (\w+):", smk.read_text(), re.M):
            assert f"`{rule}`" in table, rule
    for module in STEPS:
        if module.name != "__init__.py":
            assert f"`{module.name}`" in table, module.name
    assert "`synthetic/`" in table


def test_slurm_profile_sends_every_gpu_rule_to_a_gpu():
    """Training and prediction, per split and per cross-validation fold, each get a GPU of their own on SLURM."""
    import yaml

    rules = "".join(p.read_text() for p in (ROOT / "rules").glob("*.smk"))
    gpu_rules = set(re.findall(r"^rule (\w+):(?:(?!^rule ).)*?^\s+gpu=1,", rules, re.M | re.S))
    gpu_rules |= {  # `use rule X as Y` inherits X's resources
        new for old, new in re.findall(r"^use rule (\w+) as (\w+)", rules, re.M) if old in gpu_rules
    }
    assert gpu_rules == {"train", "train_fold", "predict", "predict_fold"}
    profile = yaml.safe_load((ROOT / "profiles/slurm/config.yaml").read_text())["set-resources"]
    assert {r for r in gpu_rules if profile.get(r, {}).get("gpu") == 1} == gpu_rules
