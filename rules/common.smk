import functools
import json
import os
import sys
from pathlib import Path

import yaml
from snakemake.exceptions import WorkflowError
from snakemake.utils import validate

from workflow_scripts import decisions as decisionlib
from workflow_scripts import geometry
from workflow_scripts import sheets as sheetlib
from workflow_scripts import split

# ------------------------------------------------------------------ config and sheets


validate(config, "../schemas/config.schema.yaml")

RESULTS = config["results"]
LOGS = config["logs"]
JOB_BENCHMARKS = config["job_benchmarks"]
DEMO = config["demo"]
GENERATED = f"{DEMO['root']}/data/" if DEMO["enabled"] else None
# jobs run `python -m workflow_scripts.<step>` with this interpreter, importable from the checkout
# (a conda env from --sdm conda is activated in front of this)
_env = dict(os.environ)
os.environ.update(
    PATH=os.pathsep.join([os.path.dirname(sys.executable), _env.get("PATH", "")]),
    PYTHONPATH=os.pathsep.join(p for p in [workflow.basedir, _env.get("PYTHONPATH", "")] if p),
)


@functools.cache
def schema_document(schema):
    """A sheet schema (read once)."""
    return yaml.safe_load(Path(workflow.basedir, schema.replace("../", "")).read_text())


def schema_properties(schema):
    """Column definitions of a sheet schema."""
    return schema_document(schema)["properties"]


def read_sheet(key, schema, ids):
    """Read a sheet; return it with every schema problem of every row (named by sheet and line)."""
    path = config["samples"][key]
    props = schema_properties(schema)
    numeric = {c for c, p in props.items() if p.get("type") in ("number", "integer")}
    try:
        df = sheetlib.read_sheet(path, numeric)
    except sheetlib.SheetError as e:
        raise WorkflowError(str(e))
    problems = sheetlib.unknown_columns(df, schema_document(schema), path)
    return df, problems + sheetlib.schema_problems(df, schema_document(schema), path, ids)


participants, _problems = read_sheet("participants", "../schemas/participants.schema.yaml", ("participant_id",))
biopsies, _bproblems = read_sheet("biopsies", "../schemas/biopsies.schema.yaml", ("participant_id", "biopsy_id"))
_problems += _bproblems
# review decisions (tractmap-review): each wins over the sheet's overrides of the same group
# (decisions.GROUPS; docs/review.md); they reach jobs as params, so a decision
# reruns only its biopsy's jobs and the aggregates
DECISIONS = decisionlib.read(config["review"]["decisions"])
OVERRIDE_SOURCE = {}  # (participant, biopsy) -> auto / sheet / review (<reviewer>), shown in the QC table
if not _problems:
    _problems += decisionlib.problems(DECISIONS, config["review"]["decisions"], set(zip(biopsies["participant_id"], biopsies["biopsy_id"])))
if not _problems:
    biopsies, OVERRIDE_SOURCE = decisionlib.apply(biopsies, DECISIONS)
# biopsies excluded by hand (a reason in the `exclude` column): not processed, listed in the report
_reason = biopsies["exclude"].fillna("").str.strip() if "exclude" in biopsies else biopsies["biopsy_id"].str.slice(0, 0)
EXCLUDED = [[p, b, r] for p, b, r in zip(biopsies["participant_id"], biopsies["biopsy_id"], _reason, strict=True) if r]
# the demo renders a slide with every core the sheet puts on it, excluded ones too: excluding a biopsy
# (in the sheet or in review) must not re-render its neighbours
DEMO_ON_SLIDE = {}
for _row in biopsies.to_dict("records"):
    DEMO_ON_SLIDE.setdefault((_row["participant_id"], sheetlib.slide_key(_row["wsi"])), []).append(_row)
# rows per slide, excluded ones too: a slide with more cores than rows holds its biopsies (orient)
SHEET_ROWS_ON_SLIDE = {k: len(v) for k, v in DEMO_ON_SLIDE.items()}
biopsies = biopsies[_reason == ""]
_problems += sheetlib.check(
    participants, biopsies, (config["samples"]["participants"], config["samples"]["biopsies"]), GENERATED
)
if _problems:
    raise WorkflowError(f"{len(_problems)} sample sheet problem(s); nothing was run:\n  " + "\n  ".join(_problems))
biopsies = biopsies.set_index(["participant_id", "biopsy_id"], drop=False).sort_index()
# rows as plain dicts: input functions run once per job, and a dict lookup is ~100x cheaper than .loc
ROWS = dict(zip(biopsies.index, biopsies.to_dict("records")))
# slides: one per wsi path (several biopsies' cores may lie on one slide); read once per slide under
# <results>/slides/<participant>/<slide>/, then one orientation per biopsy on its own core
SLIDE = {key: sheetlib.slide_key(row["wsi"]) for key, row in ROWS.items()}
SLIDE_ROW = {(p, SLIDE[(p, b)]): row for (p, b), row in reversed(ROWS.items())}  # any row: they agree (sheets.check)
ON_SLIDE = {}  # (participant, slide) -> the rows of the biopsies whose cores lie on it
for (_p, _b), _row in ROWS.items():
    ON_SLIDE.setdefault((_p, SLIDE[(_p, _b)]), []).append(_row)
SLIDE_BIOPSIES = {k: [r["biopsy_id"] for r in rows] for k, rows in ON_SLIDE.items()}  # for failures.tsv

# IDs: the schema's patterns, used as wildcard constraints (participant IDs hold no '_',
# so the VOC image ID <participant>_<biopsy> splits at its first '_')
_ID = {c: schema_properties("../schemas/biopsies.schema.yaml")[c]["pattern"].strip("^$") for c in ("participant_id", "biopsy_id")}


wildcard_constraints:
    participant=_ID["participant_id"],
    biopsy=_ID["biopsy_id"],
    slide="[A-Za-z0-9._-]+",
    phase="prefire|postfire",
    split="train|val|test|trainval|fold[0-9]+_(?:train|val)",
    fold="[0-9]+",
    model="|".join(config["train"]["models"]),


# participant splits: computed once, here, from the sheet (cheap), so that rules can depend on one
# split only; the splits rule writes this same allocation to <results>/splits.tsv
SPLIT_FIXED = split.sheet_splits(list(participants["participant_id"]), participants.get("split"))
SPLIT = split.allocate(
    list(participants["participant_id"]), config["split"]["ratios"], config["split"]["seed"], SPLIT_FIXED
)
# cross-validation (split.folds >= 2): folds of the non-test participants, computed here once too
FOLDS = config["split"]["folds"] if config["split"]["folds"] >= 2 else 0  # 0 or 1: off
FOLD = split.folds([p for p in SPLIT if SPLIT[p] != "test"], FOLDS, config["split"]["seed"]) if FOLDS else {}

# corrected Labelme files: listed once at parse time
CORRECTIONS = {
    (p.parent.name, p.stem)
    for p in Path(config["corrections_dir"]).glob("*/*.json")
} if Path(config["corrections_dir"]).is_dir() else set()

# ------------------------------------------------------------------ helpers for rules

EVAL = f"{RESULTS}/evaluate"
# what evaluation writes for each split (name -> extension)
EVAL_OUTPUTS = {"per_image": "tsv", "summary": "tsv", "confusion": "tsv", "comparison": "tsv", "table2": "tsv",
                "table2_sensitivity": "tsv", "figure4": "png", "figure5": "png"}
# the ones shown in Snakemake's own report (snakemake --report), with captions in report/
EVAL_REPORTED = ("table2", "table2_sensitivity", "comparison", "figure4", "figure5")


def eval_output(name):
    """One evaluation output path; marked for Snakemake's report when it is in EVAL_REPORTED."""
    path = f"{EVAL}/{{split}}/{name}.{EVAL_OUTPUTS[name]}"
    if name not in EVAL_REPORTED:
        return path
    return report(path, caption=f"report/{name}.rst", category="Evaluation", subcategory="{split} split",
                  labels={"split": "{split}", "output": name})



def sheet_row(wildcards):
    """The biopsies.tsv row of a job's biopsy."""
    return ROWS[(wildcards.participant, wildcards.biopsy)]


def sheet_file(column):
    """Input function: the file named in a biopsies.tsv column for a job's biopsy."""
    return lambda wildcards: sheet_row(wildcards)[column]


def sheet_value(column):
    """A job's optional biopsies.tsv value as text ("" when the column or cell is empty)."""

    def value(wildcards):
        v = sheet_row(wildcards).get(column)
        return "" if v is None or (isinstance(v, float) and v != v) else str(v)

    return value


def slide_value(column):
    """A slide job's value of a biopsies.tsv column shared by every row on that slide ("" when empty)."""

    def value(wildcards):
        v = SLIDE_ROW[(wildcards.participant, wildcards.slide)].get(column)
        return "" if v is None or (isinstance(v, float) and v != v) else str(v)

    return value


def slide_rows(wildcards):
    """The number of biopsies.tsv rows (excluded ones too) whose cores lie on this biopsy's slide."""
    return SHEET_ROWS_ON_SLIDE[(wildcards.participant, SLIDE[(wildcards.participant, wildcards.biopsy)])]


def slide_output(name):
    """Input function: a slide-level output (<results>/slides/<participant>/<slide>/<name>) of a biopsy's slide."""
    return lambda w: f"{RESULTS}/slides/{w.participant}/{SLIDE[(w.participant, w.biopsy)]}/{name}"


def demo_slide_args(wildcards):
    """Params of a demo rendering job: the biopsies whose cores share its slide (the sheet rows that name the
    slide, or its own name alone when none does), whether the sheet names them, and the cohort's options."""
    p = wildcards.participant
    own = wildcards.get("biopsy") or wildcards.get("demo_slide")
    wsi = ROWS[(p, own)]["wsi"] if (p, own) in ROWS else f"{DEMO['root']}/data/{p}/{own}_wsi.ome.tif"
    rows = DEMO_ON_SLIDE.get((p, sheetlib.slide_key(wsi))) or [{"biopsy_id": own}]
    core = lambda r: "" if r.get("core") is None or r["core"] != r["core"] else str(r["core"]).strip()
    flags = ["--named"] if any(core(r) and not core(r).isdigit() for r in rows) else []
    flags += ["--large-slide"] if f"{p}/{rows[0]['biopsy_id']}" == DEMO.get("large_slide") and len(rows) == 1 else []
    flags += ["--varied"] if DEMO.get("varied") else []
    return ["--slide-biopsies=" + ",".join(r["biopsy_id"] for r in rows), *flags]


def tract_override_args(wildcards):
    """Command-line flags from biopsies.tsv for the tract step: the overrides, and the gun's stroke if given."""
    o = sheetlib.overrides(sheet_row(wildcards))
    args = []
    if "tip_x" in o:
        args += ["--tip", str(o["tip_x"]), str(o["tip_y"])]
    if "axis_deg" in o:
        args += ["--axis-deg", str(o["axis_deg"])]
    if "override_length_mm" in o:  # the sheet's, or a review's (decisions win: workflow_scripts.decisions)
        args += ["--override-length-mm", str(o["override_length_mm"])]
    if "stroke_mm" in o:
        args += ["--stroke-mm", str(o["stroke_mm"])]
    return args


def dye_end_override(wildcards):
    """The dye_end override of biopsies.tsv ("" when the automatic call stands)."""
    return sheetlib.overrides(sheet_row(wildcards)).get("dye_end", "")


def labelme_source(wildcards):
    """A corrected Labelme file wins over the automatic one."""
    if (wildcards.participant, wildcards.biopsy) in CORRECTIONS:
        return f"{config['corrections_dir']}/{wildcards.participant}/{wildcards.biopsy}.json"
    return f"{RESULTS}/transfer/{wildcards.participant}/{wildcards.biopsy}.json"


def per_biopsy(pattern):
    """Expand a {participant}/{biopsy} pattern over every biopsy in the sheet."""
    return [pattern.format(participant=p, biopsy=b) for p, b in biopsies.index]


def list_members(name):
    """Participants of a VOC list: a split, trainval (train + val), or fold<k>_train / fold<k>_val (the
    non-test participants outside / inside cross-validation fold k)."""
    if name in ("train", "val", "test", "trainval"):
        wanted = ("train", "val") if name == "trainval" else (name,)
        return {p for p, s in SPLIT.items() if s in wanted}
    fold, part = name.split("_")
    return {p for p, f in FOLD.items() if (f == int(fold[4:])) == (part == "val")}


def member_files(members, kind="SegmentationClass", ext="png"):
    """VOC files of the biopsies whose participant is in ``members``."""
    return [f"{RESULTS}/voc/{kind}/{p}_{b}.{ext}" for p, b in biopsies.index if p in members]


def voc_files(splits, kind="SegmentationClass", ext="png"):
    """VOC files of the biopsies whose participant is in one of ``splits``."""
    return member_files({p for p, s in SPLIT.items() if s in splits}, kind, ext)


def step_files(members, step):
    """<results>/<step>/<participant>/<biopsy>.json of the biopsies of ``members``, in member_files order."""
    return [f"{RESULTS}/{step}/{p}/{b}.json" for p, b in biopsies.index if p in members]


def fold_lists():
    """Every cross-validation fold's VOC lists, fold by fold (none when cross-validation is off)."""
    return [path for k in range(FOLDS) for path in fold_lists_of(k)]


def fold_lists_of(fold):
    """Fold ``fold``'s train and val VOC lists."""
    return [f"{RESULTS}/voc/ImageSets/Segmentation/fold{fold}_{s}.txt" for s in ("train", "val")]


def evaluated_models(split):
    """The prediction sets a split's evaluation compares: every model, and on the test split each model's
    fold ensemble when cross-validation is on."""
    models = list(config["train"]["models"])
    return models + [f"{m}_ensemble" for m in models] if FOLDS and split == "test" else models


def train_settings_json(wildcards):
    """JSON training settings of one model: the shared recipe plus the model's entry."""
    t = config["train"]
    crop = {k: config["tract"][k] for k in geometry.CROP_SETTINGS}  # recorded in model.pt for tractmap-infer
    return json.dumps({**{k: v for k, v in t.items() if k != "models"}, **t["models"][wildcards.model], "crop": crop})


def all_targets():
    return [
        f"{RESULTS}/report.html",
        f"{RESULTS}/qc/registration_qc.tsv",
        f"{RESULTS}/review.tsv",
        f"{RESULTS}/splits.tsv",
        f"{RESULTS}/voc/ImageSets/Segmentation/test.txt",
        f"{RESULTS}/voc/class_names.txt",
        f"{RESULTS}/nnunet/Dataset{config['nnunet']['dataset_id']:03d}_{config['nnunet']['name']}",
        *expand(f"{RESULTS}/train/{{model}}/model.pt", model=config["train"]["models"]),
        *([f"{RESULTS}/cv/folds.tsv"] if FOLDS else []),
        *per_biopsy(f"{RESULTS}/qc/{{participant}}/{{biopsy}}.png"),
    ]
