"""Real public files through the documented interface.

The sheets, a real Snakemake run, the ingest JSONs and failures.tsv."""

from __future__ import annotations

import json

import pandas as pd
import pytest
from conftest import snakemake, write_config
from realfiles import fetch
from test_ingest_real import as_ultrasound, real


@pytest.mark.slow
def test_real_slides_and_scans_through_the_workflow(tmp_path):
    slides = fetch("openslide-python") / "tests/fixtures"
    pre = as_ultrasound(real("SC_rgb_jpeg_dcmtk.dcm"), tmp_path / "pre fire.dcm")
    post = as_ultrasound(real("SC_rgb_jpeg_dcmtk.dcm"), tmp_path / "post fire.dcm")
    ann = tmp_path / "a.geojson"
    ann.write_text('{"type": "FeatureCollection", "features": []}')
    cases = {  # (participant, biopsy): (slide, sheet µm/px, expected outcome)
        ("P001", "HX01_B1"): ("small.svs", "", 0.499),
        ("P001", "HX01_B2"): ("boxes.tiff", "0.5", 0.5),
        ("P002", "B1"): ("boxes.tiff", "", "software default"),
        ("P002", "B2"): ("unreadable.svs", "", "could not be decoded"),
        ("P003", "B1"): ("😐.svs", "", "killed"),
    }
    rows = [
        {
            "participant_id": p,
            "biopsy_id": b,
            "prefire": str(pre),
            "postfire": str(post),
            "wsi": str(slides / s),
            "annotation": str(ann),
            "wsi_um_per_px": um,
        }
        for (p, b), (s, um, _) in cases.items()
    ]
    (tmp_path / "sheets").mkdir()
    pd.DataFrame({"participant_id": ["P001", "P002", "P003"]}).to_csv(
        tmp_path / "sheets/participants.tsv", sep="\t", index=False
    )
    pd.DataFrame(rows).to_csv(tmp_path / "sheets/biopsies.tsv", sep="\t", index=False)
    write_config(tmp_path, truth_dir=None, demo={"enabled": False, "root": "demo", "seed": 1, "large_slide": ""})
    # one job dies the way the OOM killer ends it: SIGKILL, no Python error, no tractmap record
    hook = tmp_path / "hook"
    hook.mkdir()
    (hook / "sitecustomize.py").write_text(
        "import os, sys\nif '--participant=P003' in sys.argv and sys.argv[1:2] == ['wsi']:\n    "
        "os.kill(os.getpid(), 9)\n"
    )
    from workflow_scripts.sheets import slide_key

    slide_dir = {(p, b): f"results/slides/{p}/{slide_key(str(slides / s))}" for (p, b), (s, _, _) in cases.items()}
    targets = [f"results/ingest/{p}/{b}/prefire.json" for p, b in cases] + [f"{d}/wsi.json" for d in slide_dir.values()]
    res = snakemake(tmp_path, "--cores", "2", "--keep-going", *targets, check=False, pythonpath=[hook])
    assert res.returncode != 0

    failures = pd.read_csv(tmp_path / "results/failures.tsv", sep="\t", dtype=str).fillna("")
    got = {(r.participant_id, r.biopsy_id): r for r in failures.itertuples()}
    assert set(got) == {k for k, v in cases.items() if isinstance(v[2], str)}, failures
    for key, (_, _, outcome) in cases.items():
        meta = tmp_path / slide_dir[key] / "wsi.json"
        assert (tmp_path / f"results/ingest/{key[0]}/{key[1]}/prefire.json").exists()  # the scans were never at fault
        if isinstance(outcome, float):
            assert json.loads(meta.read_text())["um_per_px"] == pytest.approx(outcome)
        else:
            assert not meta.exists() and got[key].step == "ingest_wsi"
            assert outcome in got[key].problem + got[key].hint, got[key]
    assert "wsi_um_per_px" in got[("P002", "B1")].hint
    # no log holds a traceback without the one-line error after it
    for log in (tmp_path / "logs").rglob("*.log"):
        text = log.read_text()
        assert "Traceback" not in text or "tractmap error:" in text, log


@pytest.mark.parametrize(
    "step, args",
    [
        ("ingest", ["ultrasound", "--image={o}/i.png", "--meta={o}/i.json", "--frame=last"]),
        ("ingest", ["wsi", "--image={o}/i.png", "--meta={o}/i.json", "--thumb-um=16"]),
        (
            "transfer",
            [
                "--annotation={bad}",
                "--orient={o}/x.json",
                "--tract={o}/x.json",
                "--crop={o}/c.png",
                "--out={o}/l.json",
                "--summary={o}/s.json",
                "--cores={o}/cores.json",
                "--labels={o}/cores.png",
                "--slide-meta={o}/wsi.json",
                '--classes={{"Tumor": "cancer"}}',
                "--outside-core=void",
                "--across=shrinkage",
                "--plausible-shrinkage",
                "0.6",
                "1.05",
            ],
        ),
        ("voc", ["image", "--root={o}/voc", "--image-id=P001_B1", "--image-format=jpg"]),
    ],
    ids=["ingest-ultrasound", "ingest-wsi", "transfer", "voc"],
)
@pytest.mark.parametrize(
    "content", [b"\x89PNG\r\n\x1a\n" + bytes(range(256)) * 4, b'{"type": "Feature'], ids=["binary", "cut-json"]
)
def test_each_step_on_a_bad_user_file_prints_one_line_and_no_traceback(tmp_path, step, args, content):
    import subprocess
    import sys

    bad = tmp_path / "bad file"
    bad.write_bytes(content)
    argv = [a.format(o=tmp_path, bad=bad) for a in args] + ["--participant=P001", "--biopsy=B1"]
    argv += [] if any("{bad}" in a for a in args) else ["--", str(bad)]
    res = subprocess.run([sys.executable, "-m", f"workflow_scripts.{step}", *argv], capture_output=True, text=True)
    assert res.returncode == 1 and "Traceback" not in res.stderr, res.stderr
    assert f"tractmap error: participant P001, biopsy B1, file {bad}:" in res.stderr and "hint:" in res.stderr
    assert sorted(p.name for p in tmp_path.iterdir()) == ["bad file"]  # nothing written
