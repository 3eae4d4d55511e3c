# Training: one job per model in config train.models; reads the train and val
# splits only, so adding a test participant never retrains.
rule train:
    input:
        lists=expand(f"{VOC}/ImageSets/Segmentation/{{s}}.txt", s=["train", "val"]),
        labels=voc_files(("train", "val")),
        images=voc_files(("train", "val"), "PNGImages"),
    output:
        model=f"{RESULTS}/train/{{model}}/model.pt",
        history=f"{RESULTS}/train/{{model}}/history.tsv",
        curves=report(f"{RESULTS}/train/{{model}}/curves.png", caption="report/curves.rst", category="Training",
                      labels={"model": "{model}"}),
    params:
        settings=train_settings_json,
        voc=lambda w, input: str(Path(input.lists[0]).parents[2]),
        state=lambda w, output: str(Path(output.model).parent / "state"),
        train_list="train",
        val_list="val",
    threads: 2
    resources:
        gpu=1,
    conda:
        "../envs/tractmap.yaml"
    log:
        f"{LOGS}/train/{{model}}.log",
    benchmark:
        f"{JOB_BENCHMARKS}/train/{{model}}.tsv"
    shell:
        "python -m workflow_scripts.train --voc={params.voc:q} --config={params.settings:q} "
        "--model-out={output.model:q} --history={output.history:q} --curves={output.curves:q} "
        "--train-list={params.train_list:q} --val-list={params.val_list:q} "
        "--state-dir={params.state:q} --threads={threads} > {log:q} 2>&1"


# Cross-validation (split.folds >= 2): one model per fold and architecture, trained on the
# other folds and selected on its own; on SLURM each is its own GPU job.
use rule train as train_fold with:
    input:
        lists=lambda w: fold_lists_of(w.fold),
        labels=voc_files(("train", "val")),
        images=voc_files(("train", "val"), "PNGImages"),
    output:
        model=f"{RESULTS}/cv/{{model}}/fold{{fold}}/model.pt",
        history=f"{RESULTS}/cv/{{model}}/fold{{fold}}/history.tsv",
        curves=f"{RESULTS}/cv/{{model}}/fold{{fold}}/curves.png",
    params:
        settings=train_settings_json,
        voc=lambda w, input: str(Path(input.lists[0]).parents[2]),
        state=lambda w, output: str(Path(output.model).parent / "state"),
        train_list=lambda w: f"fold{w.fold}_train",
        val_list=lambda w: f"fold{w.fold}_val",
    log:
        f"{LOGS}/train_fold/{{model}}/fold{{fold}}.log",
    benchmark:
        f"{JOB_BENCHMARKS}/train_fold/{{model}}/fold{{fold}}.tsv"
