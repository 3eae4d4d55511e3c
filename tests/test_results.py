"""Evaluation outputs, the HTML report in a real browser, and inference on never-seen DICOMs."""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

import numpy as np
import pandas as pd
import PIL.Image
import pydicom
import pytest
import yaml
from conftest import ROOT, snakemake
from sklearn import metrics as skm

from workflow_scripts import evaluate, ingest, synthetic

pytestmark = pytest.mark.slow  # real Snakemake runs (minutes)

MODELS = tuple(yaml.safe_load((ROOT / "config.yaml").read_text())["train"]["models"])


def test_evaluation_recomputes_from_saved_predictions(cohort_run):
    voc = cohort_run / "results/voc"
    for split in ("test", "val"):
        ids = (voc / f"ImageSets/Segmentation/{split}.txt").read_text().split()
        assert ids, split  # the loops below check something
        per = pd.read_csv(cohort_run / f"results/evaluate/{split}/per_image.tsv", sep="\t")
        for model in MODELS:
            rows = per[per.model == model].set_index("image_id")
            assert sorted(rows.index) == sorted(ids)
            for image_id in ids:
                pred_dir = cohort_run / f"results/predict/{model}/{split}"
                prob = np.load(pred_dir / f"{image_id}_prob.npy")
                label = np.asarray(PIL.Image.open(pred_dir / f"{image_id}.png"))
                truth = np.asarray(PIL.Image.open(voc / f"SegmentationClass/{image_id}.png"))
                assert prob.shape == truth.shape and prob.min() >= 0 and prob.max() <= 1
                np.testing.assert_array_equal(label, (prob >= 0.5).astype(np.uint8))
                keep = truth != 255
                t, p = truth[keep], label[keep]
                assert rows.loc[image_id, "pixel_accuracy"] == pytest.approx(skm.accuracy_score(t, p))
                cm = skm.confusion_matrix(t, p, labels=[0, 1])
                assert [rows.loc[image_id, k] for k in ("tn", "fp", "fn", "tp")] == cm.ravel().tolist()
        summary = pd.read_csv(cohort_run / f"results/evaluate/{split}/summary.tsv", sep="\t")
        rows_wanted = sorted((m, k) for m in MODELS for k in (*evaluate.METRICS, *evaluate.PIXEL_METRICS))
        assert sorted(zip(summary.model, summary.metric, strict=True)) == rows_wanted
        for r in summary.itertuples():
            mine = per[per.model == r.model]
            if r.metric == "recall_pixel":
                expected = mine.tp.sum() / (mine.tp.sum() + mine.fn.sum())
                used = mine[mine.tp + mine.fn > 0]
            elif r.metric == "specificity_pixel":
                expected = mine.tn.sum() / (mine.tn.sum() + mine.fp.sum())
                used = mine[mine.tn + mine.fp > 0]
            else:  # the images where every model's metric is defined
                wide = per.pivot(index="image_id", columns="model", values=r.metric).dropna()
                expected = wide[r.model].mean()
                assert r.n_defined == len(wide)
                used = mine[mine.image_id.isin(wide.index)]
            assert r.mean == pytest.approx(expected, rel=1e-5)  # TSVs hold 6 digits
            assert r.n_participants == used.participant_id.nunique(), r
            if r.n_participants >= 2:  # the configured interval, cut to [0, 1] (every metric is a proportion)
                assert 0 <= r.ci_low <= r.mean <= r.ci_high <= 1, r
            else:  # one participant (this cohort's test and val splits): no interval, never a made-up one
                assert np.isnan(r.ci_low) and np.isnan(r.ci_high), r
        conf = pd.read_csv(cohort_run / f"results/evaluate/{split}/confusion.tsv", sep="\t").set_index("model")
        for model in MODELS:
            assert conf.loc[model, "tp"] == per[per.model == model]["tp"].sum()
        t2 = pd.read_csv(cohort_run / f"results/evaluate/{split}/table2.tsv", sep="\t")
        assert list(t2["Evaluation metric"]) == [
            evaluate.LABELS[m] for m in (*evaluate.METRICS, *evaluate.PIXEL_METRICS)
        ]
        t2s = pd.read_csv(cohort_run / f"results/evaluate/{split}/table2_sensitivity.tsv", sep="\t")
        assert list(t2s.columns) == list(t2.columns) and len(t2s) == len(t2)
    t1 = pd.read_csv(cohort_run / "results/evaluate/table1.tsv", sep="\t", dtype=str, keep_default_na=False)
    n = pd.read_csv(cohort_run / "results/splits.tsv", sep="\t")["split"].value_counts()
    assert f"Training set (n={n['train']})" in t1.columns and "Age (y), mean (SD)" in set(t1["Characteristic"])


@pytest.fixture(scope="session")
def chromium() -> str:
    """The chromium binary; installed from Debian (as root) when missing."""
    exe = shutil.which("chromium") or shutil.which("chromium-browser")
    if not exe and os.geteuid() == 0 and shutil.which("apt-get"):
        subprocess.run(["timeout", "-s", "KILL", "300", "apt-get", "update", "-qq"], check=True)
        subprocess.run(
            ["timeout", "-s", "KILL", "600", "apt-get", "install", "-y", "-qq", "chromium"],
            check=True,
            env={**os.environ, "DEBIAN_FRONTEND": "noninteractive"},
            stdout=subprocess.DEVNULL,
        )
        exe = shutil.which("chromium")
    assert exe, "the report test needs Debian's chromium: apt-get install chromium"
    return exe


def rendered(chromium: str, html, tmp_path) -> tuple[int, int, str]:
    """Open the file in headless Chromium; (figures decoded, figures, DOM) after the page's load check."""
    dom = subprocess.run(
        [
            chromium,
            "--headless",
            "--no-sandbox",
            "--disable-gpu",
            f"--user-data-dir={tmp_path / 'profile'}",
            "--virtual-time-budget=10000",
            "--dump-dom",
            f"file://{html}",
        ],
        capture_output=True,
        text=True,
        timeout=120,
    ).stdout
    m = re.search(r'id="render-status" data-rendered="(\d+)" data-total="(\d+)"', dom)
    assert m, dom[:2000]
    return int(m[1]), int(m[2]), dom


def test_report_renders_every_figure_in_headless_chromium(cohort_run, chromium, tmp_path):
    report = cohort_run / "results/report.html"
    text = report.read_text()
    assert 'src="http' not in text and "<link" not in text  # self-contained: nothing fetched
    ok, total, dom = rendered(chromium, report, tmp_path)
    # registration QC, a curve per model, Figures 4 and 5 for test and validation, a QC figure per review item
    n_review = len(pd.read_csv(cohort_run / "results/review.tsv", sep="\t"))
    assert total == 1 + len(MODELS) + 4 + n_review and ok == total
    assert "Needs review" in dom
    for s in (
        "Table 1",
        "Table 2",
        "Figure 4",
        "Figure 5",
        "config digest",
        "seed: bootstrap",
        "Failures and exclusions",
        "Paired comparisons",
        "version: torch",
    ):
        assert s in dom, s
    # negative control: a figure that does not decode is caught
    broken = tmp_path / "broken.html"
    broken.write_text(re.sub(r"base64,[A-Za-z0-9+/]{200}", "base64,AAAA", text, count=1))
    ok2, total2, _ = rendered(chromium, broken, tmp_path)
    assert (ok2, total2) == (total - 1, total)
    shot = tmp_path / "shot.png"
    subprocess.run(
        [
            chromium,
            "--headless",
            "--no-sandbox",
            "--disable-gpu",
            f"--user-data-dir={tmp_path / 'profile'}",
            f"--screenshot={shot}",
            "--window-size=1200,3000",
            f"file://{report}",
        ],
        capture_output=True,
        timeout=120,
    )
    px = np.asarray(PIL.Image.open(shot).convert("L"))
    assert (px < 200).mean() > 0.02  # text, tables and figures, not a blank page


def test_snakemakes_own_report_holds_the_tables_and_figures(cohort_run, tmp_path):
    """`snakemake --report report.zip` works and carries every output marked with report(), captioned."""
    out = tmp_path / "report.zip"
    snakemake(cohort_run, "--report", str(out))
    with zipfile.ZipFile(out) as z:
        names = [Path(n).name for n in z.namelist()]
        html = next(z.read(n).decode() for n in z.namelist() if n.endswith("/report.html"))
    models = yaml.safe_load((cohort_run / "config.yaml").read_text())["train"]["models"]
    expected = {
        "registration_qc.tsv": 1,
        "registration_qc.png": 1,
        "table1.tsv": 1,
        "table2.tsv": 2,  # test and val
        "table2_sensitivity.tsv": 2,
        "comparison.tsv": 2,
        "figure4.png": 2,
        "figure5.png": 2,
        "curves.png": len(models),
    }
    assert {k: names.count(k) for k in expected} == expected
    for caption in ("Table 1: participant characteristics", "Figure 5", "selection-biased", "Registration QC per"):
        assert caption in html, caption


def test_pipelines_nnunet_export_holds_our_split_and_passes_nnunets_check(cohort_run):
    from nnunetv2.experiment_planning.verify_dataset_integrity import verify_dataset_integrity

    out = cohort_run / "results/nnunet/Dataset501_Tractmap"
    verify_dataset_integrity(str(out), num_processes=1)
    lists = {
        s: (cohort_run / f"results/voc/ImageSets/Segmentation/{s}.txt").read_text().split()
        for s in ("train", "val", "test")
    }
    assert json.loads((out / "splits_final.json").read_text()) == [{"train": lists["train"], "val": lists["val"]}]
    assert sorted(p.name for p in (out / "imagesTs").iterdir()) == sorted(f"{c}_0000.png" for c in lists["test"])


# ------------------------------------------------------------------ inference


def new_prefire(tmp_path, seed=4242):
    """A pre-fire DICOM of a participant the pipeline has never seen, and its (scoring-only) truth."""
    t = synthetic.sample_truth(seed, "Q900", "B1")
    frames = synthetic.render_prefire(t)
    path = tmp_path / "new_prefire.dcm"
    synthetic.write_dicom(t, path, frames, np.random.default_rng(1))
    return path, t


def infer(cohort_run, dicom, out, *extra):
    cmd = [
        sys.executable,
        "-m",
        "workflow_scripts.infer",
        "--model",
        str(cohort_run / "results/train/fcn_resnet101/model.pt"),
        "--dicom",
        str(dicom),
        "--out",
        str(out),
        *extra,
    ]
    return subprocess.run(cmd, capture_output=True, text=True, timeout=300, env={**os.environ, "PYTHONPATH": str(ROOT)})


def test_inference_on_a_never_seen_dicom(cohort_run, tmp_path):
    dicom, t = new_prefire(tmp_path)
    res = infer(cohort_run, dicom, tmp_path / "out", "--config", str(cohort_run / "config.yaml"))  # agrees
    assert res.returncode == 0, res.stderr
    image, meta = ingest.read_ultrasound(dicom, frame="last")
    geom = json.loads((tmp_path / "out/new_prefire.json").read_text())
    trained = yaml.safe_load((cohort_run / "config.yaml").read_text())["tract"]
    assert geom["crop_settings"] == {k: trained[k] for k in ("throw_mm", "width_mm", "margin_mm", "out_mm_per_px")}
    truth_tip = np.array(t.t0_mm) / t.mm_per_px
    assert np.linalg.norm((np.array(geom["t0_px"]) - truth_tip) * t.mm_per_px) < 0.5  # mm
    assert geom["source"]["t0"] == "auto" and geom["sampled_length_mm"] == pytest.approx(geom["stroke_mm"])
    prob = np.load(tmp_path / "out/new_prefire_prob.npy")
    assert prob.shape == image.shape
    inside = np.isfinite(prob)
    assert 0.005 < inside.mean() < 0.5 and prob[inside].min() >= 0 and prob[inside].max() <= 1
    ys, xs = np.nonzero(inside)  # the strip runs along the needle axis from T0
    assert np.min(np.hypot(xs - truth_tip[0], ys - truth_tip[1])) < 3
    heat = PIL.Image.open(tmp_path / "out/new_prefire_heatmap.png")
    assert heat.size[0] > 300 and np.asarray(heat.convert("RGB")).std() > 10


def test_inference_with_a_manual_tip_and_axis(cohort_run, tmp_path):
    dicom, t = new_prefire(tmp_path, seed=777)
    image, meta = ingest.read_ultrasound(dicom, frame="last")
    x0, y0 = meta["region_bounds_xyxy"][:2]
    assert meta["frames"] > 1  # a cine: which frame is the pre-fire one is the user's to say (--frame)
    tip = ["--tip", str(300 + x0), str(200 + y0), "--axis-deg", "10"]
    res = infer(cohort_run, dicom, tmp_path / "out", "--frame", "last", *tip)
    assert res.returncode == 0, res.stderr
    geom = json.loads((tmp_path / "out/new_prefire.json").read_text())
    assert geom["source"]["t0"] == "override"
    np.testing.assert_allclose(geom["t0_px"], [300, 200])
    assert geom["axis_deg"] == pytest.approx(10.0)


def test_inference_refuses_a_config_the_model_was_not_trained_with(cohort_run, tmp_path):
    """model.pt carries its crop settings; a --config that cuts crops differently is an error, not a silent misuse."""
    dicom, _ = new_prefire(tmp_path, seed=31)
    cfg = yaml.safe_load((cohort_run / "config.yaml").read_text())
    cfg["tract"]["out_mm_per_px"] = 0.1
    (tmp_path / "other.yaml").write_text(yaml.safe_dump(cfg))
    res = infer(cohort_run, dicom, tmp_path / "out", "--config", str(tmp_path / "other.yaml"))
    fails_saying(res, "other.yaml", "tract.out_mm_per_px 0.1 (model: 0.05)", "leave out --config")
    assert not (tmp_path / "out").exists()


def fails_saying(res: subprocess.CompletedProcess, *needles: str) -> None:
    """A clear one-message failure (exit 1, no traceback) that says all of ``needles``."""
    assert res.returncode == 1 and "Traceback" not in res.stderr, res.stderr
    for s in needles:
        assert s in res.stderr, res.stderr


def test_inference_errors_name_the_file_and_suggest_the_manual_options(cohort_run, tmp_path):
    dicom, t = new_prefire(tmp_path, seed=99)
    ds = pydicom.dcmread(dicom)
    del ds.SequenceOfUltrasoundRegions
    uncal = tmp_path / "uncalibrated.dcm"
    ds.save_as(uncal)
    fails_saying(
        infer(cohort_run, uncal, tmp_path / "o1"),
        "uncalibrated.dcm",
        "no SequenceOfUltrasoundRegions",
        "--mm-per-px",
        "--tip",
    )

    ds = pydicom.dcmread(dicom)
    frames = int(ds.get("NumberOfFrames", 1) or 1)
    shape = ((frames,) if frames > 1 else ()) + (ds.Rows, ds.Columns) + ((3,) if ds.SamplesPerPixel == 3 else ())
    ds.PixelData = np.full(shape, 40, np.uint8).tobytes()
    blank = tmp_path / "no_needle.dcm"
    ds.save_as(blank)
    fails_saying(infer(cohort_run, blank, tmp_path / "o2"), "no_needle.dcm", "no needle", "--tip X Y", "--axis-deg")
    # the manual options are the way out: the tract is where they put it, or found at the spacing given
    res = infer(cohort_run, blank, tmp_path / "o3", "--tip", "200", "150", "--axis-deg", "5")
    assert res.returncode == 0, res.stderr
    geom = json.loads((tmp_path / "o3/no_needle.json").read_text())
    x0, y0 = geom["region_bounds_xyxy"][:2]  # --tip is in the file's pixels, t0_px in the tissue region's
    assert geom["source"]["t0"] == "override" and geom["axis_deg"] == pytest.approx(5.0)
    np.testing.assert_allclose(geom["t0_px"], [200 - x0, 150 - y0])
    res = infer(cohort_run, uncal, tmp_path / "o4", "--mm-per-px", str(t.mm_per_px), str(t.mm_per_px))
    assert res.returncode == 0, res.stderr
    geom = json.loads((tmp_path / "o4/uncalibrated.json").read_text())
    assert geom["source"]["t0"] == "auto" and geom["sampled_length_mm"] == pytest.approx(geom["stroke_mm"])
    assert np.linalg.norm((np.array(geom["t0_px"]) - np.array(t.t0_mm) / t.mm_per_px) * t.mm_per_px) < 0.5  # mm
