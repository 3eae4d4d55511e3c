"""Bad sample sheets and config are rejected before any job runs, naming the sheet and line."""

import pandas as pd
import pytest
import yaml
from conftest import make_cohort, snakemake, write_config


@pytest.fixture
def workdir(tmp_path):
    make_cohort(tmp_path, 3, seed=5)
    write_config(tmp_path)
    return tmp_path


def edit(workdir, sheet, fn):
    path = workdir / "sheets" / sheet
    df = pd.read_csv(path, sep="\t", dtype=str)
    df = fn(df)
    df.to_csv(path, sep="\t", index=False)


def rejected(workdir, *needles):
    res = snakemake(workdir, "-n", check=False)
    text = res.stdout + res.stderr
    assert res.returncode != 0, text
    assert "Job stats" not in text  # nothing was planned
    for n in needles:
        assert n in text, (n, text[-3000:])


def test_good_sheets_plan(workdir):
    assert "Job stats" in snakemake(workdir, "-n").stdout


def test_duplicate_participant(workdir):
    edit(workdir, "participants.tsv", lambda d: pd.concat([d, d.iloc[[1]]]))
    rejected(workdir, "participants.tsv line 5", "duplicate participant_id P002")


def test_duplicate_biopsy(workdir):
    edit(workdir, "biopsies.tsv", lambda d: pd.concat([d, d.iloc[[0]]]))
    n = len(pd.read_csv(workdir / "sheets/biopsies.tsv", sep="\t"))
    rejected(workdir, f"biopsies.tsv line {n + 1}", "duplicate biopsy P001/B1")


@pytest.mark.parametrize(
    "sheet, row, column, value, needles",
    [
        (
            "biopsies.tsv",
            0,
            "participant_id",
            "P999",
            ["biopsies.tsv line 2", "P999", "not in sheets/participants.tsv"],
        ),
        (
            "biopsies.tsv",
            1,
            "wsi",
            "/nonexistent/slide.svs",
            ["biopsies.tsv line 3", "wsi file /nonexistent/slide.svs does not exist"],
        ),
        ("participants.tsv", 2, "birads", "6", ["participants.tsv line 4", "P003", "'6' is not one of"]),
        ("biopsies.tsv", 0, "tip_x", "120", ["biopsies.tsv line 2", "tip_y"]),  # half an override
        ("participants.tsv", 1, "participant_id", "P_2 x", ["participants.tsv line 3", "does not match"]),
        ("biopsies.tsv", 1, "annotation", "/data/{sample}/a.geojson", ["biopsies.tsv line 3", "reads as a wildcard"]),
        ("biopsies.tsv", 2, "us_mm_per_px", "0.0004", ["biopsies.tsv line 4", "us_mm_per_px", "mm per pixel"]),
    ],
    ids=[
        "unknown-participant",
        "missing-file",
        "malformed-value",
        "half-an-override",
        "bad-id-pattern",
        "wildcard-in-path",
        "implausible-us-spacing",
    ],
)
def test_bad_cell_is_rejected_naming_sheet_and_line(workdir, sheet, row, column, value, needles):
    path = workdir / "sheets" / sheet
    df = pd.read_csv(path, sep="\t", dtype=str)
    df.loc[row, column] = value
    df.to_csv(path, sep="\t", index=False)
    rejected(workdir, *needles)


def test_every_problem_of_every_row_is_reported_at_once(workdir):
    edit(workdir, "participants.tsv", lambda d: d.assign(birads=["6", "4a", "7"][: len(d)]))

    def bad_biopsies(d):
        d.loc[0, "participant_id"] = "P_1"
        d.loc[1, "tip_x"] = "12"
        d.loc[2, "wsi"] = "/nowhere/s.svs"
        return d

    edit(workdir, "biopsies.tsv", bad_biopsies)
    edit(workdir, "biopsies.tsv", lambda d: d.assign(dye_ned="left", throw_mm="18"))  # a typo and a retired column
    rejected(
        workdir,
        "sample sheet problem(s)",
        "biopsies.tsv: unknown column dye_ned (did you mean dye_end?)",
        "biopsies.tsv: column throw_mm is no longer read",
        "set stroke_mm to the gun's stroke setting",
        "override_length_mm to set the sampled length by hand",
        "participants.tsv line 2 (P001): column birads: '6' is not one of",
        "participants.tsv line 4 (P003): column birads: '7' is not one of",
        "biopsies.tsv line 2 (P_1, B1): column participant_id",
        "VOC image IDs are <participant>_<biopsy>",
        "biopsies.tsv line 3",
        "'tip_y' is a dependency of 'tip_x'",
        "biopsies.tsv line 4",
        "wsi file /nowhere/s.svs does not exist",
    )


def test_underscored_biopsy_ids_and_a_sheet_pixel_size_plan(workdir):
    edit(
        workdir,
        "biopsies.tsv",
        lambda d: d.assign(
            biopsy_id=d["participant_id"] + "_" + d["biopsy_id"], wsi_um_per_px="0.25", stroke_mm="15"
        ).assign(override_length_mm=lambda x: ["14.5"] + [""] * (len(x) - 1)),
    )
    out = snakemake(workdir, "-n", "-p").stdout
    assert "Job stats" in out and "SegmentationClass/P001_B1.png" not in out
    assert "--um-per-px=0.25" in out and "voc/SegmentationClass/P001_P001_B1.png" in out
    # each biopsy's gun stroke, and the one length override, reach the tract step
    assert out.count("--stroke-mm 15.0") == out.count("workflow_scripts.tract ") > 0
    assert out.count("--override-length-mm 14.5") == 1
    # the stroke and the pixel size are facts of the gun and the scan, not overrides: only P001's B1 has one
    assert out.count("--override-source=sheet ") == 1
    assert out.count("--override-source=auto ") == out.count("workflow_scripts.state ") - 1 > 0


def test_export_rows_plan_their_spacing_and_the_demo_exports(workdir):
    def exports(d):
        d.loc[0, "prefire"] = d.loc[0, "prefire"].replace(".dcm", ".png")
        d.loc[0, "postfire"] = d.loc[0, "postfire"].replace(".dcm", ".jpg")
        d["us_mm_per_px"] = ""
        d.loc[0, "us_mm_per_px"] = "0.05"
        d.loc[1, "us_mm_per_px"] = "0.05 0.06"  # a DICOM row: the column wins over its calibration
        return d

    edit(workdir, "biopsies.tsv", exports)
    out = snakemake(workdir, "-n", "-p").stdout
    assert "rule demo_export" in out and "B1_prefire.png" in out and "B1_postfire.jpg" in out
    assert "--us-mm-per-px=0.05 " in out and "--us-mm-per-px='0.05 0.06'" in out


def test_bad_config(workdir):
    cfg = yaml.safe_load((workdir / "config.yaml").read_text())
    cfg["transfer"]["outside_core"] = "maybe"
    (workdir / "config.yaml").write_text(yaml.safe_dump(cfg))
    # the schema's own check, naming the key and its choices (not any crash that happens to echo the value)
    rejected(workdir, "'maybe' is not one of ['void', 'background']", "['transfer']['outside_core']")


def test_an_unknown_column_names_the_closest_known_one():
    from workflow_scripts import sheets

    schema = {"properties": {"participant_id": {}, "dye_end": {}, "stroke_mm": {}}}
    df = pd.DataFrame(columns=["participant_id", "dye_ned", "stroke", "throw_mm", "zzz"])
    assert sheets.unknown_columns(df, schema, "b.tsv") == [
        "b.tsv: unknown column dye_ned (did you mean dye_end?); rename or remove it",
        "b.tsv: unknown column stroke (did you mean stroke_mm?); rename or remove it",
        f"b.tsv: column throw_mm is no longer read: {sheets.RETIRED['throw_mm']}",
        "b.tsv: unknown column zzz (known columns: participant_id, dye_end, stroke_mm); rename or remove it",
    ]
