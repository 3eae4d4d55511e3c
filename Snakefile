# tractmap: register core-needle-biopsy histology onto breast ultrasound and
# build the segmentation dataset (Yao et al., JMIR Med Inform 2026).
from pathlib import Path

from snakemake.utils import min_version

from workflow_scripts import failures

min_version("9.0")


configfile: "config.yaml"


report: "rules/report/workflow.rst"


include: "rules/common.smk"
include: "rules/demo.smk"
include: "rules/ingest.smk"
include: "rules/register.smk"
include: "rules/dataset.smk"
include: "rules/train.smk"
include: "rules/evaluate.smk"


localrules:
    all,
    splits,
    voc_list,
    voc_class_names,
    nnunet_export,
    ensemble,
    cv_table,
    evaluate,
    table1,
    review,
    report,


rule all:
    default_target: True
    input:
        all_targets(),


# After every run, list the jobs that failed on bad input (with --keep-going the
# others finish): <results>/failures.tsv, with the reason and the fix.
# Called in-process: no shell sees the configured results path.
onsuccess:
    failures.write(Path(LOGS), Path(RESULTS, "failures.tsv"), slides=SLIDE_BIOPSIES)


onerror:
    failures.write(Path(LOGS), Path(RESULTS, "failures.tsv"), log, slides=SLIDE_BIOPSIES)
