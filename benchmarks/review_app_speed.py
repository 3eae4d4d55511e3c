"""tractmap-review on a held queue of 50+ biopsies: the app's start time and each page's time to interactive.

The queue: ``--workdir`` an existing working directory (config.yaml, results/review.tsv), or, by default,
one built here: the demo cohort (2 participants, 4 biopsies, every orientation held) run through the real
workflow up to results/review.tsv, and its held biopsies' files copied under new participant IDs until the
queue holds ``--n`` biopsies (the sheet gets the copies' rows, with the same slide files, so tiles work).

Printed: the start time (process start until the URL is printed) over ``--starts`` starts; then, in headless
Chromium (Debian's ``chromium``), each biopsy's page opened in turn right after a fresh start, cold cache:
time to interactive (the page drawn and its actions bound: ``performance.now()`` when app.js is done) and
time to load (every image, the rendered evidence overlay and full-resolution tiles included), median and
max.  The issue's limits: start < 3 s, page interactive < 1 s.  No test asserts these seconds.

    python benchmarks/review_app_speed.py [--n 50] [--workdir DIR] [--keep DIR]
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pandas as pd
import yaml

ROOT = Path(__file__).resolve().parents[1]


def seed_run(workdir: Path) -> None:
    """The demo cohort (2 participants) run up to results/review.tsv, every orientation held for review."""
    from workflow_scripts import synthetic

    cfg = yaml.safe_load((ROOT / "config.yaml").read_text())
    parts, biops = synthetic.cohort_sheets(2, 11, "demo/data", render_seed=cfg["demo"]["seed"])
    (workdir / "sheets").mkdir(parents=True, exist_ok=True)
    parts.to_csv(workdir / "sheets/participants.tsv", sep="\t", index=False)
    biops.to_csv(workdir / "sheets/biopsies.tsv", sep="\t", index=False)
    cfg["samples"] = {"participants": "sheets/participants.tsv", "biopsies": "sheets/biopsies.tsv"}
    cfg["demo"]["large_slide"] = ""
    cfg["orient"]["accept_confidence"] = cfg["orient"]["accept_novelty"] = 0.99  # hold every orientation
    (workdir / "config.yaml").write_text(yaml.safe_dump(cfg))
    cmd = [sys.executable, "-m", "snakemake", "--snakefile", str(ROOT / "Snakefile"), "--directory", str(workdir)]
    cmd += ["--configfile", str(workdir / "config.yaml"), "--cores", "2", "results/review.tsv"]
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    subprocess.run(cmd, check=True, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)


def copy_biopsy(res: Path, p: str, b: str, q: str, slide: str) -> None:
    """One held biopsy's result files, copied as participant ``q``."""
    pairs = [(f"ingest/{p}/{b}", f"ingest/{q}/{b}"), (f"slides/{p}/{slide}", f"slides/{q}/{slide}")]
    for src, dst in pairs:
        if not (res / dst).exists():
            shutil.copytree(res / src, res / dst)
    for name in (f"orient/{{}}/{b}.json", f"orient/{{}}/{b}_oriented.png", f"tract/{{}}/{b}.json",
                 f"tract/{{}}/{b}_crop.png", f"qc/{{}}/{b}.png", f"state/{{}}/{b}.json"):  # fmt: skip
        (res / name.format(q)).parent.mkdir(parents=True, exist_ok=True)
        shutil.copy(res / name.format(p), res / name.format(q))


def grow(workdir: Path, n: int) -> int:
    """Copies of the held biopsies under new participant IDs (P001 -> P001-C01, ...) until n are held."""
    res = workdir / "results"
    review = pd.read_csv(res / "review.tsv", sep="\t", dtype=str, keep_default_na=False)
    sheet_path = workdir / yaml.safe_load((workdir / "config.yaml").read_text())["samples"]["biopsies"]
    sheet = pd.read_csv(sheet_path, sep="\t", dtype=str)
    keys = list(dict.fromkeys(zip(review["participant_id"], review["biopsy_id"], strict=True)))
    rows, sheet_rows, k = [review], [sheet], 0
    while len(keys) * (k + 1) < n:
        k += 1
        for p, b in keys:
            q = f"{p}-C{k:02d}"
            slide = json.loads((res / f"orient/{p}/{b}.json").read_text())["slide"]
            copy_biopsy(res, p, b, q, slide)
            mine = review[(review["participant_id"] == p) & (review["biopsy_id"] == b)].copy()
            mine["participant_id"] = q
            mine["qc_figure"] = mine["qc_figure"].str.replace(f"/{p}/", f"/{q}/", regex=False)
            rows.append(mine)
            s = sheet[(sheet["participant_id"] == p) & (sheet["biopsy_id"] == b)].copy()
            s["participant_id"] = q
            sheet_rows.append(s)
    pd.concat(rows).to_csv(res / "review.tsv", sep="\t", index=False)
    pd.concat(sheet_rows).to_csv(sheet_path, sep="\t", index=False)
    return len(keys) * (k + 1)


def start(workdir: Path) -> tuple[subprocess.Popen, float, str]:
    """tractmap-review on the workdir's results: the process, seconds until its URL is printed, the URL."""
    t0 = time.perf_counter()
    cmd = [sys.executable, "-m", "workflow_scripts.review_app", "results", "--reviewer", "benchmark"]
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    proc = subprocess.Popen(cmd, cwd=workdir, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True, env=env)
    proc.stdout.readline()
    url = proc.stdout.readline().strip()
    return proc, time.perf_counter() - t0, url


def stop(proc: subprocess.Popen) -> None:
    proc.terminate()
    proc.wait(10)


def pages(workdir: Path, chromium: str) -> tuple[float, list[float], list[float]]:
    """A fresh start (cold cache), then every held biopsy's page: (start s, interactive s, loaded s)."""
    from playwright import sync_api

    from workflow_scripts.review_app import review_page

    shutil.rmtree(workdir / "results/.review_cache", ignore_errors=True)
    review = pd.read_csv(workdir / "results/review.tsv", sep="\t", dtype=str)
    keys = list(dict.fromkeys(zip(review["participant_id"], review["biopsy_id"], strict=True)))
    with sync_api.sync_playwright() as pw:
        browser = pw.chromium.launch(executable_path=chromium)
        page = browser.new_page(viewport={"width": 1400, "height": 1100})
        proc, started, url = start(workdir)
        try:
            page.goto(url)  # the token becomes a cookie
            ready, loaded = [], []
            for key in keys:
                page.goto(url.split("/?")[0] + review_page(*key), wait_until="load")
                page.wait_for_selector("body[data-ready]")
                ready.append(float(page.get_attribute("body", "data-ready")) / 1000)
                loaded.append(page.evaluate("performance.getEntriesByType('navigation')[0].loadEventEnd") / 1000)
        finally:
            stop(proc)
            browser.close()
    return started, ready, loaded


def summary(name: str, values: list[float]) -> str:
    return f"{name}: median {statistics.median(values):.3f} s, max {max(values):.3f} s (n = {len(values)})"


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--n", type=int, default=50, help="held biopsies in the queue (at least)")
    p.add_argument("--workdir", type=Path, help="an existing working directory with results/review.tsv")
    p.add_argument("--keep", type=Path, help="build the queue here and keep it (default: a temporary folder)")
    p.add_argument("--starts", type=int, default=5, help="app starts timed")
    a = p.parse_args()
    chromium = shutil.which("chromium")
    if not chromium:
        sys.exit("no chromium: apt-get install -y chromium (Debian's; Playwright's own browser is not used)")
    tmp = None
    if a.workdir:
        workdir = a.workdir
    else:
        workdir = a.keep or Path(tmp := tempfile.mkdtemp(prefix="review-speed-"))
        workdir.mkdir(parents=True, exist_ok=True)
        if not (workdir / "results/review.tsv").is_file():
            t = time.perf_counter()
            seed_run(workdir)
            print(f"seed run (demo cohort up to results/review.tsv): {time.perf_counter() - t:.0f} s")
    held = grow(workdir, a.n)
    print(f"queue: {held} held biopsies in {workdir / 'results/review.tsv'}")
    starts = []
    for _ in range(a.starts):
        proc, seconds, _ = start(workdir)
        stop(proc)
        starts.append(seconds)
    print(summary("start (until the URL is printed)", starts) + "; limit 3 s")
    started, ready, loaded = pages(workdir, chromium)
    print(f"start before the page run: {started:.3f} s; pages opened at once after it, cold image cache")
    print(f"first page (the app's step imports still warming up): interactive {ready[0]:.3f} s")
    print(summary("page interactive", ready) + "; limit 1 s")
    print(summary("page loaded (every image, tiles rendered on first request)", loaded))
    if tmp:
        shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    main()
