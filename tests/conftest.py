"""Shared fixtures: a small real demo cohort run through the real Snakemake workflow."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[1]
SNAKEMAKE = [sys.executable, "-m", "snakemake"]
# the cohort run's configured log and job-benchmark folders (not the defaults; a space tests quoting)
RUN_LOGS = "job logs"
RUN_BENCHMARKS = "job logs/bench marks"
OPEN_AUDIT_HOOK = Path(__file__).parent / "open_audit"  # a sitecustomize that records each process's files


def write_config(workdir: Path, **overrides) -> Path:
    """config.yaml for a test working directory, based on the shipped one."""
    cfg = yaml.safe_load((ROOT / "config.yaml").read_text())
    cfg["samples"] = {"participants": "sheets/participants.tsv", "biopsies": "sheets/biopsies.tsv"}
    cfg["demo"]["large_slide"] = ""
    cfg["train"].update(epochs=2, batch_size=2, crop_width=64)  # CPU-small: proves the plumbing, not accuracy
    for key, value in overrides.items():
        cfg[key] = value
    path = workdir / "config.yaml"
    path.write_text(yaml.safe_dump(cfg))
    return path


def write_voc(root: Path, splits: dict[str, list[str]], shape=(24, 48), void_rows: int = 2, seed: int = 0) -> None:
    """A small VOC dataset: a bright background, a dark cancer band per image, void (255) in the top rows."""
    import numpy as np
    import PIL.Image

    rng = np.random.default_rng(seed)
    (root / "ImageSets/Segmentation").mkdir(parents=True)
    for sub in ("JPEGImages", "PNGImages", "SegmentationClass"):
        (root / sub).mkdir()
    for split, names in splits.items():
        (root / f"ImageSets/Segmentation/{split}.txt").write_text("\n".join(names) + "\n")
        for n in names:
            lab = np.zeros(shape, np.uint8)
            lab[shape[0] // 4 : 3 * shape[0] // 4, rng.integers(0, shape[1] // 2) : 5 * shape[1] // 8] = 1
            lab[:void_rows] = 255
            img = (np.where(lab == 1, 60, 180) + rng.integers(0, 20, shape)).astype(np.uint8)
            PIL.Image.fromarray(img).save(root / "JPEGImages" / f"{n}.jpg")
            PIL.Image.fromarray(img).save(root / "PNGImages" / f"{n}.png")  # the lossless copy consumers read
            PIL.Image.fromarray(lab, mode="P").save(root / "SegmentationClass" / f"{n}.png")


def make_cohort(workdir: Path, n: int, seed: int = 11) -> None:
    """Write demo sheets for n participants into workdir/sheets."""
    from workflow_scripts import synthetic

    render_seed = yaml.safe_load((ROOT / "config.yaml").read_text())["demo"]["seed"]  # the cores' positions
    parts, biops = synthetic.cohort_sheets(n, seed, "demo/data", render_seed=render_seed)
    (workdir / "sheets").mkdir(parents=True, exist_ok=True)
    parts.to_csv(workdir / "sheets/participants.tsv", sep="\t", index=False)
    biops.to_csv(workdir / "sheets/biopsies.tsv", sep="\t", index=False)


def ingest_ultrasound(src: Path, out_dir: Path) -> subprocess.CompletedProcess:
    """The ultrasound ingest step's command line on one file, as participant P001, biopsy B1."""
    cmd = [sys.executable, "-m", "workflow_scripts.ingest", "ultrasound", f"--image={out_dir / 'o.png'}"]
    cmd += [f"--meta={out_dir / 'o.json'}", "--frame=last", "--participant=P001", "--biopsy=B1", "--", str(src)]
    return subprocess.run(cmd, capture_output=True, text=True, cwd=ROOT)


def snakemake_command(workdir: Path, *args: str) -> list[str]:
    """The command line that runs the real workflow in workdir with its config.yaml."""
    return [
        *SNAKEMAKE,
        "--snakefile",
        str(ROOT / "Snakefile"),
        "--directory",
        str(workdir),
        "--configfile",
        str(workdir / "config.yaml"),
        *args,
    ]


def snakemake(
    workdir: Path,
    *args: str,
    check: bool = True,
    timeout: int = 1200,
    pythonpath: list[Path] = (),
    env: dict[str, str] | None = None,
) -> subprocess.CompletedProcess:
    """Run the real workflow in workdir (``pythonpath``: folders put before the checkout; ``env``: added)."""
    cmd = snakemake_command(workdir, *args)
    env = {**os.environ, **(env or {}), "PYTHONPATH": os.pathsep.join([*map(str, pythonpath), str(ROOT)])}
    res = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, env=env)
    if check and res.returncode != 0:
        raise AssertionError(f"snakemake {' '.join(args)} failed:\n{res.stdout[-4000:]}\n{res.stderr[-6000:]}")
    return res


def open_audit_dir(run: Path) -> Path:
    """Where the files a run's processes opened are recorded (outside the run, so no output scan sees them)."""
    return run.parent / f"{run.name}.open_audit"


@pytest.fixture(scope="session")
def cohort_run(tmp_path_factory) -> Path:
    """A complete workflow run on a small synthetic cohort (4 participants).

    Every file its Python processes open, list or rename in the run's folder is recorded (see
    ``tests/open_audit``) in the folder ``open_audit`` beside it, for ``test_declared_inputs``."""
    workdir = tmp_path_factory.mktemp("cohort")
    audit = open_audit_dir(workdir)
    audit.mkdir()
    make_cohort(workdir, 4)
    write_config(workdir, logs=RUN_LOGS, job_benchmarks=RUN_BENCHMARKS)
    env = {"TRACTMAP_OPEN_AUDIT": str(audit), "TRACTMAP_OPEN_ROOT": str(workdir)}
    snakemake(workdir, "--cores", "2", pythonpath=[OPEN_AUDIT_HOOK], env=env)
    return workdir


@pytest.fixture
def copy_run(cohort_run, tmp_path) -> Path:
    """A private copy of the completed run, for tests that change it."""
    dst = tmp_path / "run"

    # checkpoints are hard-linked: they are only ever replaced (unlink/rename), never written in place
    def link_or_copy(src: str, dst: str) -> None:
        os.link(src, dst) if src.endswith(".pt") else shutil.copy2(src, dst)

    shutil.copytree(cohort_run, dst, symlinks=True, copy_function=link_or_copy)
    return dst
