"""The real workflow on a small synthetic cohort: accuracy, privacy, reruns, corrections, failures."""

import json
import shutil
from pathlib import Path

import numpy as np
import pandas as pd
import PIL.Image
import pydicom
import pytest
import torch
import yaml
from conftest import ROOT, RUN_BENCHMARKS, RUN_LOGS, make_cohort, snakemake, write_config

pytestmark = pytest.mark.slow  # real Snakemake runs (minutes)


def planned_jobs(workdir: Path, *args: str) -> dict[str, int]:
    """Job counts by rule from a dry run."""
    out = snakemake(workdir, "--quiet", "rules", "-n", *args).stdout  # targets after a flag: --quiet takes values
    counts = {}
    for line in out.splitlines():
        parts = line.split()
        if len(parts) == 2 and parts[1].isdigit() and parts[0] not in ("total", "job"):
            counts[parts[0]] = int(parts[1])
    return counts


def test_dry_run_plans_one_ingest_job_per_image(tmp_path):
    make_cohort(tmp_path, 6, seed=3)
    write_config(tmp_path)
    sheet = pd.read_csv(tmp_path / "sheets/biopsies.tsv", sep="\t")
    n, slides = len(sheet), sheet["wsi"].nunique()
    assert slides < n  # this cohort has a slide that carries several cores: it is read once
    jobs = planned_jobs(tmp_path)
    assert jobs["ingest_ultrasound"] == 2 * n and jobs["demo_ultrasound"] == n
    assert jobs["ingest_wsi"] == jobs["cores"] == jobs["demo_slide"] == slides and jobs["orient"] == n


def test_lint_is_clean():
    import subprocess
    import sys

    res = subprocess.run([sys.executable, "-m", "snakemake", "--lint"], cwd=ROOT, capture_output=True, text=True)
    assert res.returncode == 0 and "Lints for" not in res.stdout + res.stderr, res.stdout + res.stderr


def test_registration_accuracy_from_the_qc_table(cohort_run):
    qc = pd.read_csv(cohort_run / "results/qc/registration_qc.tsv", sep="\t")
    rows = qc[~qc["participant_id"].isin(["median", "p95"])]
    assert len(rows) == len(pd.read_csv(cohort_run / "sheets/biopsies.tsv", sep="\t"))
    assert rows["orientation_correct"].astype(bool).all()
    # no stroke_mm in the demo sheet: every biopsy's stroke is the config's, and no length was set by hand
    assert (rows["stroke_mm"] == 22.0).all() and (rows["stroke_source"] == "config tract.throw_mm").all()
    assert (rows["length_source"] == "auto").all() and rows["override_length_mm"].isna().all()
    tips = np.concatenate([rows["tip0_error_mm"], rows["tip1_error_mm"]])
    assert np.median(tips) < 0.3 and np.percentile(tips, 95) < 1.0
    assert rows["axis_error_deg"].median() < 1.0
    assert rows["dice"].median() >= 0.9
    med = qc[qc["participant_id"] == "median"].iloc[0]
    assert med["dice"] == pytest.approx(rows["dice"].median())


def test_benchmarks_one_per_job_in_the_configured_folder_and_small(cohort_run):
    """Every job of the per-biopsy and per-slide rules writes its own benchmark into the configured folder, and
    none holds more than 1 GB.  (Its seconds are not asserted: they measure the machine, not the code.)"""
    # the configured folders are used, and nothing lands in the committed benchmarks/ scripts' folder
    assert not (cohort_run / "benchmarks").exists() and not (cohort_run / "logs").exists()
    sheet = pd.read_csv(cohort_run / "sheets/biopsies.tsv", sep="\t", dtype=str)
    biopsies = {f"{p}/{b}" for p, b in zip(sheet["participant_id"], sheet["biopsy_id"], strict=True)}
    slide_dirs = cohort_run / "results/slides"
    slides = {d.relative_to(slide_dirs).as_posix() for d in slide_dirs.glob("*/*")}
    assert len(slides) == sheet["wsi"].nunique()  # one folder per slide file
    expected = {
        **dict.fromkeys(("orient", "tract", "transfer", "voc_image"), biopsies),
        "ingest_ultrasound": {f"{k}_{phase}" for k in biopsies for phase in ("prefire", "postfire")},
        "ingest_wsi": slides,
    }
    for rule, jobs in expected.items():
        files = sorted((cohort_run / RUN_BENCHMARKS / rule).rglob("*.tsv"))
        assert {f.relative_to(cohort_run / RUN_BENCHMARKS / rule).with_suffix("").as_posix() for f in files} == jobs
        for f in files:
            b = pd.read_csv(f, sep="\t")
            assert len(b) == 1 and b["max_rss"].iloc[0] < 1024, f  # MB


def test_no_dicom_header_value_reaches_any_output(cohort_run):
    canaries = set()
    for t in (cohort_run / "demo/truth").rglob("*.json"):
        canaries |= set(json.loads(t.read_text())["canaries"].values())
    for d in (cohort_run / "demo/data").rglob("*.dcm"):  # the planted values really are in the inputs
        ds = pydicom.dcmread(d)
        assert str(ds.PatientName) in canaries and ds.StudyInstanceUID in canaries
    needles = [c.encode() for c in canaries] + [c.replace("^", " ").encode() for c in canaries]
    scanned = 0
    for top in ("results", RUN_LOGS, ".snakemake/log"):
        for f in (cohort_run / top).rglob("*"):
            if f.is_file():
                data = f.read_bytes()
                hit = [n for n in needles if n in data or n in str(f).encode()]
                assert not hit, (f, hit)
                scanned += 1
    assert scanned > 50


def test_complete_run_has_nothing_to_do(cohort_run):
    assert planned_jobs(cohort_run) == {}


def train_only_the_unet(workdir: Path) -> None:
    """Tests of reruns after a registration change keep one (fast) model: changed labels retrain every model."""
    cfg = yaml.safe_load((workdir / "config.yaml").read_text())
    cfg["train"]["models"] = {"unet": cfg["train"]["models"]["unet"]}
    (workdir / "config.yaml").write_text(yaml.safe_dump(cfg))


def test_corrected_labelme_file_wins_and_reruns_only_that_biopsy(copy_run):
    auto = copy_run / "results/transfer/P001/B1.json"
    doc = json.loads(auto.read_text())
    doc["shapes"] = [s for s in doc["shapes"] if s["label"] != "cancer"]  # a reviewer removes the tumour
    corr = copy_run / "corrections/P001/B1.json"
    corr.parent.mkdir(parents=True)
    corr.write_text(json.dumps(doc))
    jobs = planned_jobs(copy_run)
    assert jobs.get("labelme") == 1 and jobs.get("voc_image") == 1 and jobs.get("qc_figure") == 1
    assert "tract" not in jobs and "transfer" not in jobs and "ingest_ultrasound" not in jobs
    # the files the correction feeds (training on them is the same rule as ever)
    snakemake(copy_run, "--cores", "2", "results/voc/SegmentationClass/P001_B1.png", "results/labelme/P001/B1.json")
    label = np.asarray(PIL.Image.open(copy_run / "results/voc/SegmentationClass/P001_B1.png"))
    assert not (label == 1).any()
    assert json.loads((copy_run / "results/labelme/P001/B1.json").read_text())["shapes"] == doc["shapes"]
    # editing the correction again reruns it again
    doc["shapes"] = json.loads(auto.read_text())["shapes"]
    corr.write_text(json.dumps(doc))
    assert planned_jobs(copy_run).get("voc_image") == 1


def test_manual_overrides_are_honoured(copy_run):
    sheet = copy_run / "sheets/biopsies.tsv"
    b = pd.read_csv(sheet, sep="\t", dtype=str)
    b["tip_x"], b["tip_y"], b["axis_deg"], b["override_length_mm"], b["stroke_mm"] = "", "", "", "", ""
    b.loc[0, ["tip_x", "tip_y", "axis_deg", "override_length_mm", "stroke_mm"]] = ["300", "250", "15", "18", "19"]
    b.to_csv(sheet, sep="\t", index=False)
    jobs = planned_jobs(copy_run)
    assert jobs.get("tract") == 1
    pid, bid = b.loc[0, "participant_id"], b.loc[0, "biopsy_id"]
    snakemake(copy_run, "--cores", "2", f"results/tract/{pid}/{bid}.json")
    res = json.loads((copy_run / f"results/tract/{pid}/{bid}.json").read_text())
    meta = json.loads((copy_run / f"results/ingest/{pid}/{bid}/prefire.json").read_text())
    x0, y0 = meta["region_bounds_xyxy"][:2]
    np.testing.assert_allclose(res["t0_px"], [300 - x0, 250 - y0])
    assert res["axis_deg"] == pytest.approx(15.0) and res["sampled_length_mm"] == pytest.approx(18.0)
    assert (res["stroke_mm"], res["stroke_source"], res["length_source"]) == (
        19.0,
        "biopsies.tsv stroke_mm",
        "biopsies.tsv override_length_mm",
    )
    assert res["state"] == "override" and res["source"] == {"t0": "sheet", "axis": "sheet", "t1": "sheet"}


def test_one_bad_biopsy_spares_everyone_else(copy_run):
    train_only_the_unet(copy_run)
    b = pd.read_csv(copy_run / "sheets/biopsies.tsv", sep="\t", dtype=str)
    bad = copy_run / b.loc[1, "prefire"]
    ds = pydicom.dcmread(bad)
    ds.PixelData = (
        np.zeros_like(ds.pixel_array).tobytes()
        if ds.SamplesPerPixel == 1
        else np.zeros((ds.Rows, ds.Columns, 3), np.uint8).tobytes()
    )
    if "NumberOfFrames" in ds and int(ds.NumberOfFrames) > 1:
        ds.PixelData = np.zeros(
            (int(ds.NumberOfFrames), ds.Rows, ds.Columns) + ((3,) if ds.SamplesPerPixel == 3 else ()), np.uint8
        ).tobytes()
    ds.save_as(bad)
    others = sorted((copy_run / "results/tract").glob("*/*.json"))
    before = {
        f: f.read_bytes()
        for f in others
        if f.parent.name + "/" + f.stem != f"{b.loc[1, 'participant_id']}/{b.loc[1, 'biopsy_id']}"
    }
    res = snakemake(copy_run, "--cores", "2", "--keep-going", check=False)
    assert res.returncode != 0
    log = (copy_run / RUN_LOGS / f"tract/{b.loc[1, 'participant_id']}/{b.loc[1, 'biopsy_id']}.log").read_text()
    for s in (
        f"participant {b.loc[1, 'participant_id']}",
        f"biopsy {b.loc[1, 'biopsy_id']}",
        "prefire.png",
        "no needle",
        "tip_x/tip_y",
    ):
        assert s in log, log
    for f, data in before.items():
        assert f.read_bytes() == data
    failures = pd.read_csv(copy_run / "results/failures.tsv", sep="\t", dtype=str)
    row = failures[failures["step"] == "tract"].iloc[0]
    assert (row["participant_id"], row["biopsy_id"]) == (b.loc[1, "participant_id"], b.loc[1, "biopsy_id"])
    assert "no needle" in row["problem"] and "tip_x/tip_y" in row["hint"]
    assert len(failures) == 1
    # the user excludes the biopsy with a reason: the rest of the pipeline completes and the report says why
    b["exclude"] = ""
    b.loc[1, "exclude"] = "no needle visible (operator note)"
    b.to_csv(copy_run / "sheets/biopsies.tsv", sep="\t", index=False)
    snakemake(copy_run, "--cores", "2")
    report = (copy_run / "results/report.html").read_text()
    assert "no needle visible (operator note)" in report and "no needle echo found" in report
    excluded = f"{b.loc[1, 'participant_id']}_{b.loc[1, 'biopsy_id']}"
    assert all(
        excluded not in (copy_run / f"results/voc/ImageSets/Segmentation/{s}.txt").read_text()
        for s in ("train", "val", "test")
    )


def test_training_outputs_and_selection_on_validation(cohort_run):
    splits = pd.read_csv(cohort_run / "results/splits.tsv", sep="\t")
    assert set(splits["split"]) == {"train", "val", "test"} and splits["participant_id"].is_unique
    voc = cohort_run / "results/voc/ImageSets/Segmentation"
    lists = {s: set((voc / f"{s}.txt").read_text().split()) for s in ("train", "val", "test")}
    assert not (lists["train"] & lists["val"]) and not (lists["train"] | lists["val"]) & lists["test"]
    for s, ids in lists.items():  # a participant's images all sit in its split
        assert {i.split("_")[0] for i in ids} == set(splits.loc[splits["split"] == s, "participant_id"])
    models = yaml.safe_load((cohort_run / "config.yaml").read_text())["train"]["models"]
    assert len(models) == 3  # the paper's two and the U-Net baseline
    for model in models:
        ck = torch.load(cohort_run / f"results/train/{model}/model.pt", weights_only=False)
        assert set(ck["train_ids"]) == lists["train"] and set(ck["val_ids"]) == lists["val"]
        assert ck["selected_on"] == "validation Dice" and ck["config"]["arch"] == model
        hist = pd.read_csv(cohort_run / f"results/train/{model}/history.tsv", sep="\t")
        assert list(hist["epoch"]) == [1, 2] and {"val_dice", "images_per_s", "lr"} <= set(hist.columns)
        curves = np.asarray(PIL.Image.open(cohort_run / f"results/train/{model}/curves.png").convert("RGB"))
        assert series_pixels(curves) >= 200, model  # each curve drawn (~400 px each; a legend swatch alone is ~50)
        log = (cohort_run / RUN_LOGS / f"train/{model}.log").read_text()
        assert "ETA" in log and "img/s" in log


# the colours of train.plot_curves' three series: train loss (C0), val loss (C1), val Dice ("g")
SERIES = {"train loss": (31, 119, 180), "val loss": (255, 127, 14), "val Dice": (0, 128, 0)}


def series_pixels(rgb: np.ndarray) -> int:
    """The fewest pixels any one of the curve figure's series colours covers."""
    return min(int((np.abs(rgb.astype(int) - c).sum(-1) < 60).sum()) for c in SERIES.values())


def add_participant(workdir: Path, pid: str, split: str) -> None:
    """Append a participant (with a fixed split) and one biopsy to the sheets."""
    from workflow_scripts import synthetic

    parts = pd.read_csv(workdir / "sheets/participants.tsv", sep="\t", dtype=str)
    biops = pd.read_csv(workdir / "sheets/biopsies.tsv", sep="\t", dtype=str)
    p, b = synthetic.cohort_sheets(1, 99, "demo/data")
    p["participant_id"], b["participant_id"] = pid, pid
    b["prefire"], b["postfire"] = f"demo/data/{pid}/B1_prefire.dcm", f"demo/data/{pid}/B1_postfire.dcm"
    b["wsi"], b["annotation"] = f"demo/data/{pid}/B1_wsi.ome.tif", f"demo/data/{pid}/B1_annotations.geojson"
    p["split"] = split
    pd.concat([parts, p]).to_csv(workdir / "sheets/participants.tsv", sep="\t", index=False)
    pd.concat([biops, b.iloc[:1]]).to_csv(workdir / "sheets/biopsies.tsv", sep="\t", index=False)


def test_new_test_participant_does_not_retrain_but_a_train_participant_does(copy_run):
    add_participant(copy_run, "P900", "test")
    jobs = planned_jobs(copy_run)
    assert "train" not in jobs
    assert jobs.get("demo_ultrasound") == 1 and jobs.get("tract") == 1 and jobs.get("voc_image") == 1
    add_participant(copy_run, "P901", "train")
    models = yaml.safe_load((copy_run / "config.yaml").read_text())["train"]["models"]
    assert planned_jobs(copy_run).get("train") == len(models)


def test_changing_characteristics_reruns_no_image_processing(copy_run):
    sheet = copy_run / "sheets/participants.tsv"
    p = pd.read_csv(sheet, sep="\t", dtype=str)
    p.loc[0, "age"] = "77"
    p.loc[1, "vascularity"] = "rim"
    p.to_csv(sheet, sep="\t", index=False)
    jobs = planned_jobs(copy_run)
    # Table 1 and the report show the characteristics: they are redone (an empty plan would leave them stale);
    # besides them only the split record, which copies the sheet, and the `all` target
    assert {"table1", "report"} <= set(jobs) <= {"splits", "table1", "report", "all"}, jobs


def test_uncertain_orientation_waits_for_review_and_a_confirmation_reruns_only_that_biopsy(copy_run):
    import yaml

    cfg = yaml.safe_load((copy_run / "config.yaml").read_text())
    cfg["orient"]["accept_confidence"] = cfg["orient"]["accept_novelty"] = 0.99  # every orientation needs a person
    (copy_run / "config.yaml").write_text(yaml.safe_dump(cfg))
    lists = "results/voc/ImageSets/Segmentation"
    snakemake(copy_run, "--cores", "2", "results/review.tsv", f"{lists}/train.txt", f"{lists}/val.txt")
    sheet = pd.read_csv(copy_run / "sheets/biopsies.tsv", sep="\t", dtype=str)
    review = pd.read_csv(copy_run / "results/review.tsv", sep="\t", dtype=str)
    source = {
        (p, b): json.loads((copy_run / f"results/orient/{p}/{b}.json").read_text())["source"]
        for p, b in zip(sheet["participant_id"], sheet["biopsy_id"], strict=True)
    }
    # every automatic orientation (a tract may be listed too); a pathologist's dye mark decides without a person
    assert (review["step"] == "orient").sum() == sum(s == "auto" for s in source.values())
    assert set(source.values()) <= {"auto", "annotation"}
    marked = {f"{p}_{b}" for (p, b), s in source.items() if s == "annotation"}
    assert set((copy_run / f"{lists}/train.txt").read_text().split()) <= marked  # the rest held out until confirmed
    splits = pd.read_csv(copy_run / "results/splits.tsv", sep="\t", dtype=str)
    train = set(splits.loc[splits["split"] == "train", "participant_id"])
    held = {(r.participant_id, r.biopsy_id) for r in review.itertuples() if r.step == "tract"}
    row = next(
        r
        for _, r in review.iterrows()
        if r["step"] == "orient" and r["participant_id"] in train and (r["participant_id"], r["biopsy_id"]) not in held
    )
    pid = row["participant_id"]
    assert Path(copy_run, row["qc_figure"]).is_file()
    # the reviewer agrees with the QC figure and pastes the confirm override into biopsies.tsv
    key, value = row["confirm"].split("=")
    sheet[key] = ""
    sheet.loc[(sheet["participant_id"] == pid) & (sheet["biopsy_id"] == row["biopsy_id"]), key] = value
    sheet.to_csv(copy_run / "sheets/biopsies.tsv", sep="\t", index=False)
    jobs = planned_jobs(copy_run)
    assert jobs.get("orient") == 1 and jobs.get("transfer") == 1 and "tract" not in jobs, jobs
    snakemake(copy_run, "--cores", "2", "results/review.tsv", f"{lists}/train.txt")
    assert f"{pid}_{row['biopsy_id']}" in (copy_run / f"{lists}/train.txt").read_text().split()
    after = pd.read_csv(copy_run / "results/review.tsv", sep="\t", dtype=str)
    assert len(after) == len(review) - 1
    assert not (
        (after["participant_id"] == pid) & (after["biopsy_id"] == row["biopsy_id"]) & (after["step"] == "orient")
    ).any()
    assert json.loads((copy_run / f"results/orient/{pid}/{row['biopsy_id']}.json").read_text())["state"] == "override"


def test_cross_validation_trains_one_model_per_fold_and_evaluates_the_fold_ensemble(copy_run):
    """split.folds: 2 on the test cohort (one architecture): fold lists by participant, a model per fold selected
    on its own fold, the ensemble's averaged probabilities evaluated on the test split, nnU-Net's splits = ours."""
    train_only_the_unet(copy_run)
    cfg = yaml.safe_load((copy_run / "config.yaml").read_text())
    cfg["split"]["folds"] = 2
    (copy_run / "config.yaml").write_text(yaml.safe_dump(cfg))
    snakemake(copy_run, "--cores", "2")
    lists = copy_run / "results/voc/ImageSets/Segmentation"
    read = lambda name: (lists / f"{name}.txt").read_text().split()  # noqa: E731
    nontest = set(read("train")) | set(read("val"))
    vals = [set(read(f"fold{k}_val")) for k in range(2)]
    assert vals[0] and vals[1] and not vals[0] & vals[1] and vals[0] | vals[1] == nontest
    people = [{i.split("_")[0] for i in v} for v in vals]
    assert not people[0] & people[1]  # by participant
    for k in range(2):
        assert set(read(f"fold{k}_train")) == nontest - vals[k]
        ck = torch.load(copy_run / f"results/cv/unet/fold{k}/model.pt", weights_only=False)
        assert set(ck["train_ids"]) == nontest - vals[k] and set(ck["val_ids"]) == vals[k]
    test_ids = read("test")
    for image_id in test_ids:  # the ensemble averages the folds' probabilities
        folds = [np.load(copy_run / f"results/cv/unet/fold{k}/test/{image_id}_prob.npy") for k in range(2)]
        ens = np.load(copy_run / f"results/predict/unet_ensemble/test/{image_id}_prob.npy")
        np.testing.assert_allclose(ens, (folds[0] + folds[1]) / 2, rtol=1e-6)
    summary = pd.read_csv(copy_run / "results/evaluate/test/summary.tsv", sep="\t")
    assert set(summary.model) == {"unet", "unet_ensemble"}
    table = pd.read_csv(copy_run / "results/cv/folds.tsv", sep="\t", dtype={"fold": str})
    per_fold = table[table.fold.isin(["0", "1"])]
    assert len(per_fold) == 2
    mean = table[table.fold == "mean"].iloc[0]
    assert mean.val_dice == pytest.approx(per_fold.val_dice.mean())
    nn = json.loads((copy_run / "results/nnunet/Dataset501_Tractmap/splits_final.json").read_text())
    assert [set(f["val"]) for f in nn] == vals
    html = (copy_run / "results/report.html").read_text()
    assert "Cross-validation (2 folds by participant)" in html and "unet_ensemble" in html


def test_a_biopsy_appended_on_a_read_slide_adds_only_its_own_jobs_and_a_bad_core_lists_the_cores(copy_run):
    # real data: the slide files are inputs, not rendered by the demo
    write_config(
        copy_run,
        truth_dir=None,
        demo={"enabled": False, "root": "demo", "seed": 1, "large_slide": ""},
        logs=RUN_LOGS,
        job_benchmarks=RUN_BENCHMARKS,
    )
    sheet = copy_run / "sheets/biopsies.tsv"
    full = pd.read_csv(sheet, sep="\t", dtype=str)
    on_slide = full[full.duplicated("wsi", keep=False)]
    assert len(on_slide) >= 2  # the cohort has a slide that carries several cores
    last = on_slide.iloc[-1]
    pid, bid = last["participant_id"], last["biopsy_id"]
    full.drop(index=last.name).to_csv(sheet, sep="\t", index=False)
    for f in [*copy_run.glob(f"results/*/{pid}/{bid}.*"), *copy_run.glob(f"results/*/{pid}/{bid}_*")]:
        f.unlink()
    shutil.rmtree(copy_run / f"results/ingest/{pid}/{bid}")
    snakemake(copy_run, "--cores", "2", "results/review.tsv")
    full.to_csv(sheet, sep="\t", index=False)  # the biopsy appended again
    jobs = planned_jobs(copy_run, "results/review.tsv")
    assert jobs == {
        "ingest_ultrasound": 2,
        "orient": 1,
        "tract": 1,
        # and each neighbour's review state (and its QC figure): a slide's row count holds or clears them (more
        # cores than rows, state.py); on_slide counts the appended biopsy too
        "review_state": len(on_slide),
        "transfer": 1,
        "labelme": 1,
        "voc_image": 1,
        "qc_figure": len(on_slide),
        "review": 1,
    }, jobs  # the slide is not read again, no other biopsy's steps rerun
    # a core value that picks nothing fails that biopsy alone, listing the cores found
    other = on_slide.iloc[0]
    full.loc[other.name, "core"] = "B9"
    full.to_csv(sheet, sep="\t", index=False)
    target = f"results/orient/{other['participant_id']}/{other['biopsy_id']}.json"
    assert snakemake(copy_run, "--cores", "1", "--keep-going", target, check=False).returncode != 0
    failures = pd.read_csv(copy_run / "results/failures.tsv", sep="\t", dtype=str)
    row = failures[failures["biopsy_id"] == other["biopsy_id"]].iloc[0]
    assert row["step"] == "orient" and "no annotation named 'B9'" in row["problem"]
    assert all(f"'{b}'" in row["problem"] for b in on_slide["core"])  # every core found, by name
    assert "set core in biopsies.tsv" in row["hint"]
