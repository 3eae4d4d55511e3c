"""Paths as users write them: every shell argument is quoted, and nothing in a sheet runs as a command."""

import ast
import json
import re
import string
from pathlib import Path

import numpy as np
import pandas as pd
import PIL.Image
import pytest
from conftest import ROOT, ingest_ultrasound, snakemake, write_config

# fields that carry sheet paths, config values or derived paths into a shell command
RISKY = re.compile(r"^(input|output|params|log)\b")


def shell_commands(text: str) -> list[str]:
    """The shell strings of a Snakemake file: each ``shell:`` block's string literals, joined."""
    out = []
    for m in re.finditer(r"^(?P<ind>[ \t]*)shell:[ \t]*\n(?P<body>(?:(?P=ind)[ \t]+\S.*\n?)+)", text, re.M):
        out.append(
            "".join(ast.literal_eval(line.strip().rstrip(",")) for line in m["body"].splitlines() if line.strip())
        )
    return out


def unquoted_fields(cmd: str) -> list[str]:
    """Replacement fields of a shell command that reach the shell without ``:q``."""
    return [
        f"{{{name}{':' + spec if spec else ''}}}"
        for _, name, spec, _ in string.Formatter().parse(cmd)
        if name is not None and RISKY.match(name) and not (spec or "").endswith("q")
    ]


def test_lint_finds_an_unquoted_field():
    bad = 'rule x:\n    shell:\n        "cp {input} {output:q} "\n        "> {log} 2>&1"\n'
    good = 'rule x:\n    shell:\n        "cp {input:q} {output:q} --n={params.t[n]:q} {{literal}} > {log:q} 2>&1"\n'
    assert [unquoted_fields(c) for c in shell_commands(bad)] == [["{input}", "{log}"]]
    assert [unquoted_fields(c) for c in shell_commands(good)] == [[]]


def test_every_shell_field_is_quoted():
    files = [ROOT / "Snakefile", *sorted((ROOT / "rules").glob("*.smk"))]
    commands = {f.name: shell_commands(f.read_text()) for f in files}
    n_rules = sum(len(re.findall(r"^\s*rule \w+:", f.read_text(), re.M)) for f in files)
    # in-process `run:` rules (splits) reach no shell
    in_process = sum(len(re.findall(r"^\s+run:", f.read_text(), re.M)) for f in files)
    assert in_process <= 1
    assert sum(len(c) for c in commands.values()) >= n_rules - 1 - in_process  # `all` has no shell
    problems = {name: [u for c in cmds for u in unquoted_fields(c)] for name, cmds in commands.items()}
    assert not any(problems.values()), f"quote these with :q: {problems}"
    assert "shell(" not in (ROOT / "Snakefile").read_text()  # onsuccess/onerror run in-process, not through a shell


HOSTILE = [  # one folder per biopsy: what shared drives and several hands put into sheets
    "My Study 2024/pre fire (1)",
    'it\'s "quoted" & more; $HOME #1 [a] {b c}',
    "`touch BACKTICK_OWNED` and \\back\\slash",
    "Ünïcødé Ørsted 🧪",
    "-leading dash",
]


@pytest.mark.slow
def test_hostile_paths_run_through_registration_and_voc(tmp_path):
    from workflow_scripts import synthetic

    BID = "HX01_B1"  # biopsy IDs as users write them, underscore included

    owned = tmp_path / "owned"
    folders = [*HOSTILE, f"$(touch {owned})"]
    parts, rows = [], []
    for i, folder in enumerate(folders, 1):
        pid = f"P{i:03d}"
        d = (
            Path(folder) if folder.startswith("-") else tmp_path / "data" / folder
        )  # a relative path that starts with '-'
        files = {
            "prefire": d / "pre fire.dcm",
            "postfire": d / "post'fire.dcm",
            "wsi": d / "slide (1).ome.tif",
            "annotation": d / "ann$x.geojson",
            "truth": tmp_path / "truth" / f"{pid}.json",
            "truth_mask": tmp_path / "truth" / f"{pid}.png",
        }
        files = {k: v if v.is_absolute() else tmp_path / v for k, v in files.items()}
        synthetic.generate_biopsy(31, pid, BID, files)
        parts.append({"participant_id": pid})
        rows.append(
            {
                "participant_id": pid,
                "biopsy_id": BID,
                **{k: str(files[k]) for k in ("prefire", "postfire", "wsi", "annotation")},
            }
        )
    (tmp_path / "sheets").mkdir()
    pd.DataFrame(parts).to_csv(tmp_path / "sheets/participants.tsv", sep="\t", index=False)
    pd.DataFrame(rows).to_csv(tmp_path / "sheets/biopsies.tsv", sep="\t", index=False)
    results = "rés ults & 'co' $(touch OWNED2)"
    write_config(
        tmp_path,
        results=results,
        truth_dir=None,
        demo={"enabled": False, "root": "demo", "seed": 1, "large_slide": ""},
        transfer={
            "classes": {"Tumor": "cancer", 'it\'s a $(class), "x"': "cancer"},
            "outside_core": "void",
            "across": "shrinkage",
            "plausible_shrinkage": [0.6, 1.05],
        },
    )
    targets = [
        f"{results}/qc/registration_qc.tsv",
        *(f"{results}/qc/P{i:03d}/{BID}.png" for i in range(1, len(folders) + 1)),
    ]
    snakemake(tmp_path, "--cores", "2", *targets)

    qc = pd.read_csv(tmp_path / results / "qc/registration_qc.tsv", sep="\t")
    assert len(qc[qc["participant_id"].str.startswith("P")]) == len(folders)  # every biopsy registered
    for i in range(1, len(folders) + 1):
        labelme = json.loads((tmp_path / results / f"labelme/P{i:03d}/{BID}.json").read_text())
        assert "cancer" in {s["label"] for s in labelme["shapes"]}  # the class map (with quotes in a key) was read
        voc = np.asarray(PIL.Image.open(tmp_path / results / f"voc/SegmentationClass/P{i:03d}_{BID}.png"))
        assert (voc == 1).any() and (voc == 0).any(), i  # the tumour outline reached the VOC label
    # nothing in a path ran: no file made by $(...) or backticks, anywhere
    assert not owned.exists()
    assert not list(tmp_path.rglob("BACKTICK_OWNED")) and not list(tmp_path.rglob("OWNED2"))
    assert not list(ROOT.glob("*OWNED*"))


def test_a_failure_with_a_hostile_path_reaches_failures_tsv_intact(tmp_path):

    from workflow_scripts import failures

    bad = tmp_path / "scans: 2024" / "-x pre fire (1).dcm"
    bad.parent.mkdir()
    bad.write_bytes(b"DICM" * 40)  # not a DICOM
    log = tmp_path / "logs/ingest_ultrasound/P001/B1_prefire.log"
    log.parent.mkdir(parents=True)
    res = ingest_ultrasound(bad, tmp_path)
    log.write_text(res.stdout + res.stderr)
    assert res.returncode == 1 and "tractmap error: participant P001, biopsy B1" in res.stderr, res.stderr
    row = failures.collect(tmp_path / "logs").iloc[0]
    assert (row["step"], row["participant_id"], row["biopsy_id"], row["file"]) == (
        "ingest_ultrasound",
        "P001",
        "B1",
        str(bad),
    )
    assert row["problem"] and row["hint"]
