"""The workflow on a real single-node SLURM (started by tests/slurm/harness.sh), against a local run."""

import os
import re
import subprocess

import pandas as pd
import pytest
import yaml
from conftest import ROOT, make_cohort, snakemake_command, write_config

pytestmark = [pytest.mark.slurm, pytest.mark.slow]


HARNESS = ROOT / "tests/slurm/harness.sh"
MODELS = ["unet"]  # one (fast) model: GPU allocation and sbatch routing are the same for every model


@pytest.fixture(scope="module")
def slurm():
    if os.geteuid() != 0:
        pytest.skip("starting slurmctld/slurmd needs root")
    subprocess.run(["bash", str(HARNESS), "start"], check=True, timeout=600)
    yield
    subprocess.run(["bash", str(HARNESS), "stop"], timeout=60)


@pytest.fixture(scope="module")
def slurm_run(slurm, tmp_path_factory):
    workdir = tmp_path_factory.mktemp("slurm")
    make_cohort(workdir, 4)  # the same cohort as the local cohort_run
    write_config(workdir)
    cfg = yaml.safe_load((workdir / "config.yaml").read_text())
    cfg["train"]["models"] = {m: cfg["train"]["models"][m] for m in MODELS}
    (workdir / "config.yaml").write_text(yaml.safe_dump(cfg))
    # the SLURM plugin's defaults can hang and ignore SIGTERM: a hard timeout
    cmd = [
        "timeout",
        "-s",
        "KILL",
        "900",
        *snakemake_command(
            workdir,
            "--profile",
            str(ROOT / "profiles/slurm"),
            "--cores",
            "2",
            # the profile's polling suits a busy cluster; a test cluster answers at once
            "--seconds-between-status-checks",
            "2",
            "--slurm-init-seconds-before-status-checks",
            "2",
        ),
    ]
    res = subprocess.run(cmd, capture_output=True, text=True, env={**os.environ, "PYTHONPATH": str(ROOT)})
    assert res.returncode == 0, res.stdout[-3000:] + res.stderr[-5000:]
    return workdir, res.stdout + res.stderr


def submissions(log: str) -> dict[int, str]:
    """SLURM job id -> log directory (relative to slurm_logs) of every sbatch submission."""
    found = re.findall(r"submitted with SLURM jobid (\d+) \(log: .*?/slurm_logs/(.+?)/\d+\.log\)", log)
    return {int(j): d for j, d in found}


def test_every_remote_job_went_through_sbatch_and_groups_are_per_participant(slurm_run):
    workdir, log = slurm_run
    subs = submissions(log)
    dirs = list(subs.values())
    participants = pd.read_csv(workdir / "sheets/participants.tsv", sep="\t", dtype=str)["participant_id"]
    biopsies = pd.read_csv(workdir / "sheets/biopsies.tsv", sep="\t", dtype=str)
    groups = [d for d in dirs if d.startswith("group_prep_")]
    assert sorted(re.match(r"group_prep_([^_]+)_", g).group(1) for g in groups) == sorted(participants)  # one each
    assert dirs.count("rule_qc_table") == 1
    assert sorted(d for d in dirs if d.startswith("rule_train")) == [f"rule_train/{m}" for m in MODELS]
    assert sorted(d for d in dirs if d.startswith("rule_predict")) == sorted(
        f"rule_predict/{m}_{s}" for m in MODELS for s in ("test", "val")
    )
    assert len(dirs) == len(participants) + 1 + 3 * len(MODELS)  # nothing else was submitted; local rules ran locally
    for jobid, d in subs.items():  # the SLURM job logs exist and show the jobs ran there
        text = (workdir / ".snakemake/slurm_logs" / d / f"{jobid}.log").read_text()
        assert "--executor slurm-jobstep" in text
        if d.startswith("group_prep_"):
            pid = re.match(r"group_prep_([^_]+)_", d).group(1)
            n = (biopsies["participant_id"] == pid).sum()
            assert len(re.findall(r"^\s*rule tract:", text, re.M)) == n  # the whole chain of every biopsy
            assert len(re.findall(r"^\s*rule demo_ultrasound:", text, re.M)) == n


def test_training_jobs_were_allocated_a_gpu(slurm_run):
    workdir, log = slurm_run
    ids = [j for j, d in submissions(log).items() if d.startswith(("rule_train", "rule_predict"))]
    assert len(ids) == 3 * len(MODELS)
    for j in ids:
        info = subprocess.run(
            ["timeout", "-s", "KILL", "20", "scontrol", "show", "job", str(j)], capture_output=True, text=True
        ).stdout
        assert "gres:gpu:1" in info or "gres/gpu=1" in info, info
    for model in MODELS:
        assert re.search(r"SLURM job \d+, CUDA_VISIBLE_DEVICES=0", (workdir / f"logs/train/{model}.log").read_text())


def test_deterministic_outputs_match_a_local_run(slurm_run, cohort_run):
    workdir, _ = slurm_run
    patterns = [
        "results/tract/*/*.json",
        "results/orient/*/*.json",
        "results/voc/SegmentationClass/*.png",
        "results/voc/ImageSets/Segmentation/*.txt",
        "results/splits.tsv",
        "results/qc/registration_qc.tsv",
    ]
    n = 0
    for pattern in patterns:
        local = sorted(p.relative_to(cohort_run) for p in cohort_run.glob(pattern))
        remote = sorted(p.relative_to(workdir) for p in workdir.glob(pattern))
        assert local == remote and local, pattern
        for rel in local:
            assert (workdir / rel).read_bytes() == (cohort_run / rel).read_bytes(), rel
            n += 1
    assert n > 20
