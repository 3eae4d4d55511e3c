"""Every file a job's scripts read is an input of its rule, and every file they write an output or log.

The complete cohort run (``cohort_run``) records what each Python process opened, listed or renamed inside
the run's folder (``tests/open_audit``).  Each process is matched to its job by the outputs it wrote, and
its reads are held against the job's declared inputs as Snakemake itself reports them
(``--detailed-summary``).  A read the rule does not declare is a file whose change would not rerun the job,
and one the job may read before it exists.
"""

from __future__ import annotations

import json
from collections import defaultdict
from dataclasses import dataclass, field
from pathlib import Path

from conftest import RUN_LOGS, open_audit_dir, snakemake

# The one read a rule cannot declare: the report's "failed jobs" section reads the failure records in the job
# logs (config ``logs``), and a failed job has no output to declare as an input.  Only that folder, only logs.
LOG_READERS = {"report"}


@dataclass
class Job:
    """One job as Snakemake declares it: its rule, outputs, inputs and logs (paths relative to the run), and
    whether its shell command runs Python (``cp`` does not, a ``run:`` block runs inside Snakemake)."""

    rule: str
    python: bool = False
    outputs: set[str] = field(default_factory=set)
    inputs: set[str] = field(default_factory=set)
    logs: set[str] = field(default_factory=set)


def declared_jobs(run: Path) -> list[Job]:
    """The run's jobs from ``snakemake --detailed-summary`` (one row per output file; a job's outputs share
    its rule, inputs and logs)."""
    out = snakemake(run, "--detailed-summary").stdout.splitlines()
    head = next(i for i, line in enumerate(out) if line.startswith("output_file\t"))
    jobs: dict[tuple, Job] = {}
    for line in out[head + 1 :]:
        cols = line.split("\t")
        if len(cols) < 8:
            continue  # the rest of a shell command that runs over several lines
        output, _, rule, logs, inputs, shellcmd = cols[:6]
        split = lambda s: frozenset() if s == "-" else frozenset(s.split(","))  # noqa: E731
        key = (rule, split(inputs), split(logs))
        job = jobs.setdefault(key, Job(rule, inputs=set(key[1]), logs=set(key[2])))
        job.outputs.add(output.rstrip("/"))
        job.python |= "python" in shellcmd
    return list(jobs.values())


def processes(run: Path) -> dict[tuple, dict[str, set[str]]]:
    """Per job process (its command line; a forked data loader shares it): the paths read, written and listed.
    Snakemake's own process (it writes metadata, logs and benchmarks) is left out."""
    seen: dict[tuple, dict[str, set[str]]] = defaultdict(lambda: defaultdict(set))
    for f in open_audit_dir(run).glob("*.jsonl"):
        for line in f.read_text().splitlines():
            rec = json.loads(line)
            if not rec["argv"][0].endswith(("snakemake/__main__.py", "/snakemake")):
                seen[tuple(rec["argv"])][rec["kind"]].add(rec["path"])
    return seen


def within(path: str, declared: set[str]) -> bool:
    """Is ``path`` one of ``declared`` or inside a declared folder?"""
    return path in declared or any(path.startswith(d + "/") for d in declared)


def job_of(wrote: set[str], jobs: list[Job]) -> Job | None:
    """The job whose declared outputs the process wrote."""
    hits = [j for j in jobs if any(within(w, j.outputs) for w in wrote)]
    return hits[0] if len(hits) == 1 else None


def undeclared(run: Path, job: Job, files: dict[str, set[str]]) -> list[str]:
    """What one process of ``job`` did that the job does not declare (a file that no longer exists, a temporary
    renamed or removed, is the job's own affair)."""
    exists = lambda p: (run / p).exists()  # noqa: E731
    mine = job.outputs | job.logs
    problems = [
        f"{job.rule}: wrote {w}, not an output or log" for w in files["write"] if exists(w) and not within(w, mine)
    ]
    logs = {RUN_LOGS} if job.rule in LOG_READERS else set()
    problems += [
        f"{job.rule}: read {r}, not a declared input"
        for r in files["read"]
        if exists(r) and not within(r, job.inputs | mine) and not (within(r, logs) and r.endswith(".log"))
    ]
    parents = {str(Path(p).parent) for p in mine}
    problems += [
        f"{job.rule}: listed {d}, not a declared input folder"
        for d in files["list"]
        if exists(d) and not (within(d, job.inputs | mine | logs) or d in parents)
    ]
    return problems


def test_every_job_reads_only_its_declared_inputs(cohort_run):
    jobs = declared_jobs(cohort_run)
    seen = processes(cohort_run)
    assert len(seen) > len({j.rule for j in jobs}), "the open audit recorded too few processes: is the hook loaded?"
    ran = set()
    problems = []
    for argv, files in seen.items():
        job = job_of({w for w in files["write"] if (cohort_run / w).exists()}, jobs)
        if job is None:
            problems.append(f"{' '.join(argv)[:160]}: wrote {sorted(files['write'])[:3]}, no one job's declared output")
            continue
        problems += undeclared(cohort_run, job, files)
        ran.add(job.rule)
    assert not problems, "\n".join(sorted(set(problems)))
    scripted = {j.rule for j in jobs if j.python}
    assert len(scripted) > 15 and scripted <= ran, f"no process seen for {sorted(scripted - ran)}"
