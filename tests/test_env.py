"""envs/tractmap.yaml, the jobs' conda environment, stays in sync with pyproject.toml."""

import tomllib
from pathlib import Path

import yaml
from packaging.requirements import Requirement
from packaging.utils import canonicalize_name

ROOT = Path(__file__).resolve().parents[1]
# they run the workflow (and submit to SLURM); jobs never import them
ORCHESTRATION = {"snakemake", "snakemake-executor-plugin-slurm"}


def env_pins() -> dict[str, str]:
    env = yaml.safe_load((ROOT / "envs/tractmap.yaml").read_text())
    pip = next(d["pip"] for d in env["dependencies"] if isinstance(d, dict) and "pip" in d)
    reqs = [Requirement(line) for line in pip]
    assert all(len(r.specifier) == 1 and next(iter(r.specifier)).operator == "==" for r in reqs), pip  # pinned
    return {canonicalize_name(r.name): next(iter(r.specifier)).version for r in reqs}


def test_environment_pins_every_runtime_dependency_within_pyproject_ranges():
    deps = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["dependencies"]
    wanted = {canonicalize_name(r.name): r.specifier for r in map(Requirement, deps)}
    pins = env_pins()
    assert set(pins) == set(wanted) - ORCHESTRATION
    outside = {name: (pin, str(wanted[name])) for name, pin in pins.items() if pin not in wanted[name]}
    assert outside == {}


def test_environment_is_self_contained():
    """No editable install of the checkout: Snakemake copies the file, so a relative path would point elsewhere."""
    env = yaml.safe_load((ROOT / "envs/tractmap.yaml").read_text())
    text = (ROOT / "envs/tractmap.yaml").read_text()
    assert "-e " not in text and ".." not in text and "file:" not in text
    assert any(str(d).startswith("python=") for d in env["dependencies"])
    rules = "".join(p.read_text() for p in (ROOT / "rules").glob("*.smk"))
    assert rules.count('"../envs/tractmap.yaml"') >= 15  # every shell rule uses it
