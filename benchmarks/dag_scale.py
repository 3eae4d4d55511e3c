"""DAG-scale benchmark: `snakemake -n` for tractmap against a bare Snakefile with the same job graph.

It writes sheets for N participants x B biopsies with placeholder input files
(empty, so only planning is measured) and times a dry run of each workflow in a
fresh directory, reporting wall time and peak memory (RSS of the snakemake process).

Usage: python benchmarks/dag_scale.py [--participants 1000] [--biopsies 4]
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pandas as pd
import yaml

ROOT = Path(__file__).resolve().parents[1]

# The same rules, files and wildcards as tractmap, without validation, helpers or scripts.
BARE = r"""
import pandas as pd
B = pd.read_csv("sheets/biopsies.tsv", sep="\t", dtype=str)
P = pd.read_csv("sheets/participants.tsv", sep="\t", dtype=str)
IDX = list(zip(B.participant_id, B.biopsy_id))
ROW = {(p, b): r for p, b, r in zip(B.participant_id, B.biopsy_id, B.to_dict("records"))}
SPLIT = {p: ("train", "val", "test")[i % 3] for i, p in enumerate(P.participant_id)}
R = "results"
MODELS = ["fcn_resnet101", "deeplabv3_resnet101"]
def pb(pat, keep=None):
    return [pat.format(participant=p, biopsy=b) for p, b in IDX if keep is None or SPLIT[p] in keep]
wildcard_constraints:
    participant="[A-Za-z0-9][A-Za-z0-9-]*", biopsy="[A-Za-z0-9][A-Za-z0-9-]*", phase="prefire|postfire", split="train|val|test|trainval"
rule all:
    input: R + "/qc/registration_qc.tsv", R + "/splits.tsv", R + "/voc/ImageSets/Segmentation/test.txt", R + "/voc/class_names.txt", expand(R + "/train/{m}/model.pt", m=MODELS), pb(R + "/qc/{participant}/{biopsy}.png")
rule ingest_ultrasound:
    input: lambda w: ROW[(w.participant, w.biopsy)][w.phase]
    output: R + "/ingest/{participant}/{biopsy}/{phase}.png", R + "/ingest/{participant}/{biopsy}/{phase}.json"
    shell: "touch {output}"
rule ingest_wsi:
    input: lambda w: ROW[(w.participant, w.biopsy)]["wsi"]
    output: R + "/ingest/{participant}/{biopsy}/wsi.png", R + "/ingest/{participant}/{biopsy}/wsi.json"
    shell: "touch {output}"
rule orient:
    input: R + "/ingest/{participant}/{biopsy}/wsi.png", R + "/ingest/{participant}/{biopsy}/wsi.json"
    output: R + "/orient/{participant}/{biopsy}.json", R + "/orient/{participant}/{biopsy}_oriented.png"
    shell: "touch {output}"
rule tract:
    input: expand(R + "/ingest/{{participant}}/{{biopsy}}/{ph}.{e}", ph=["prefire", "postfire"], e=["png", "json"])
    output: R + "/tract/{participant}/{biopsy}.json", R + "/tract/{participant}/{biopsy}_crop.png"
    shell: "touch {output}"
rule transfer:
    input: lambda w: ROW[(w.participant, w.biopsy)]["annotation"], R + "/orient/{participant}/{biopsy}.json", R + "/tract/{participant}/{biopsy}.json", R + "/tract/{participant}/{biopsy}_crop.png"
    output: R + "/transfer/{participant}/{biopsy}.json", R + "/transfer/{participant}/{biopsy}_summary.json"
    shell: "touch {output}"
rule labelme:
    input: R + "/transfer/{participant}/{biopsy}.json"
    output: R + "/labelme/{participant}/{biopsy}.json"
    shell: "touch {output}"
rule voc_image:
    input: R + "/labelme/{participant}/{biopsy}.json"
    output: R + "/voc/JPEGImages/{participant}_{biopsy}.jpg", R + "/voc/SegmentationClass/{participant}_{biopsy}.png", R + "/voc/SegmentationClassVisualization/{participant}_{biopsy}.jpg"
    shell: "touch {output}"
rule qc_figure:
    input: R + "/ingest/{participant}/{biopsy}/prefire.png", R + "/tract/{participant}/{biopsy}.json", R + "/orient/{participant}/{biopsy}_oriented.png", R + "/tract/{participant}/{biopsy}_crop.png", R + "/voc/SegmentationClass/{participant}_{biopsy}.png"
    output: R + "/qc/{participant}/{biopsy}.png"
    shell: "touch {output}"
rule splits:
    input: "sheets/participants.tsv"
    output: R + "/splits.tsv"
    shell: "touch {output}"
rule voc_list:
    input: lambda w: pb(R + "/voc/SegmentationClass/{participant}_{biopsy}.png", ("train", "val") if w.split == "trainval" else (w.split,))
    output: R + "/voc/ImageSets/Segmentation/{split}.txt"
    shell: "touch {output}"
rule train:
    input: expand(R + "/voc/ImageSets/Segmentation/{s}.txt", s=["train", "val"]), pb(R + "/voc/SegmentationClass/{participant}_{biopsy}.png", ("train", "val")), pb(R + "/voc/JPEGImages/{participant}_{biopsy}.jpg", ("train", "val"))
    output: R + "/train/{model}/model.pt"
    shell: "touch {output}"
rule voc_class_names:
    output: R + "/voc/class_names.txt"
    shell: "touch {output}"
rule qc_table:
    input: pb(R + "/tract/{participant}/{biopsy}.json"), pb(R + "/orient/{participant}/{biopsy}.json"), pb(R + "/transfer/{participant}/{biopsy}_summary.json"), pb(R + "/voc/SegmentationClass/{participant}_{biopsy}.png")
    output: R + "/qc/registration_qc.tsv"
    shell: "touch {output}"
"""


def make(workdir: Path, n: int, per: int) -> None:
    from workflow_scripts import synthetic

    parts, _ = synthetic.cohort_sheets(n, 1, "data")
    rows = []
    for pid in parts["participant_id"]:
        for b in range(1, per + 1):
            stem = f"data/{pid}/B{b}"
            rows.append(
                {
                    "participant_id": pid,
                    "biopsy_id": f"B{b}",
                    "prefire": f"{stem}_prefire.dcm",
                    "postfire": f"{stem}_postfire.dcm",
                    "wsi": f"{stem}_wsi.ome.tif",
                    "annotation": f"{stem}_annotations.geojson",
                }
            )
    biops = pd.DataFrame(rows)
    (workdir / "sheets").mkdir(parents=True)
    parts.to_csv(workdir / "sheets/participants.tsv", sep="\t", index=False)
    biops.to_csv(workdir / "sheets/biopsies.tsv", sep="\t", index=False)
    for col in ("prefire", "postfire", "wsi", "annotation"):
        for f in biops[col]:
            Path(workdir / f).parent.mkdir(parents=True, exist_ok=True)
            (workdir / f).touch()
    cfg = yaml.safe_load((ROOT / "config.yaml").read_text())
    cfg["samples"] = {"participants": "sheets/participants.tsv", "biopsies": "sheets/biopsies.tsv"}
    cfg["demo"]["enabled"], cfg["truth_dir"] = False, None
    (workdir / "config.yaml").write_text(yaml.safe_dump(cfg))
    (workdir / "Bare.smk").write_text(BARE)


def dry_run(workdir: Path, snakefile: Path, extra: list[str]) -> tuple[float, float, int]:
    """Wall seconds, peak RSS (MB) of the snakemake process, and planned job count of one dry run."""
    cmd = [
        sys.executable,
        "-m",
        "snakemake",
        "-n",
        "--quiet",
        "rules",
        "--snakefile",
        str(snakefile),
        "--directory",
        str(workdir),
        *extra,
    ]
    with tempfile.TemporaryFile("w+") as out:
        t = time.perf_counter()
        proc = subprocess.Popen(cmd, stdout=out, stderr=subprocess.STDOUT, env={**os.environ, "PYTHONPATH": str(ROOT)})
        _, status, usage = os.wait4(proc.pid, 0)
        secs = time.perf_counter() - t
        out.seek(0)
        text = out.read()
    if os.waitstatus_to_exitcode(status) != 0:
        raise SystemExit(text[-3000:])
    total = [int(line.split()[1]) for line in text.splitlines() if line.startswith("total")]
    return secs, usage.ru_maxrss / 1024, total[0] if total else 0


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--participants", type=int, default=1000)
    p.add_argument("--biopsies", type=int, default=4)
    a = p.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        make(work, a.participants, a.biopsies)
        bare = dry_run(work, work / "Bare.smk", [])
        tm = dry_run(work, ROOT / "Snakefile", ["--configfile", str(work / "config.yaml")])
    print(f"{a.participants} participants x {a.biopsies} biopsies")
    print(f"bare Snakefile : {bare[0]:6.1f} s, peak RSS {bare[1]:7.0f} MB, {bare[2]} jobs")
    print(f"tractmap       : {tm[0]:6.1f} s, peak RSS {tm[1]:7.0f} MB, {tm[2]} jobs")
    print(f"ratio (tractmap / bare): time {tm[0] / bare[0]:.2f}, memory {tm[1] / bare[1]:.2f}")


if __name__ == "__main__":
    main()
