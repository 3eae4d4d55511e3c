# Evaluation: predictions of the val and test splits, metrics with participant-level
# bootstrap CIs and paired tests (Table 2, Figures 4-5), Table 1, and the HTML report.

rule predict:
    input:
        model=rules.train.output.model,
        images=lambda w: voc_files((w.split,), "PNGImages"),
        ids=f"{VOC}/ImageSets/Segmentation/{{split}}.txt",
    output:
        directory(f"{RESULTS}/predict/{{model}}/{{split}}"),
    params:
        voc=lambda w, input: str(Path(input.ids).parents[2]),
        split=lambda w: w.split,
        normalise=lambda w: json.loads(train_settings_json(w))["normalise"],
    threads: 2
    resources:
        gpu=1,
    conda:
        "../envs/tractmap.yaml"
    log:
        f"{LOGS}/predict/{{model}}/{{split}}.log",
    benchmark:
        f"{JOB_BENCHMARKS}/predict/{{model}}/{{split}}.tsv"
    shell:
        "python -m workflow_scripts.predict --model={input.model:q} --voc={params.voc:q} --split={params.split:q} "
        "--normalise={params.normalise:q} --out={output:q} --threads={threads} > {log:q} 2>&1"


# each fold model predicts the test split; the fold ensemble averages their probabilities
use rule predict as predict_fold with:
    input:
        model=rules.train_fold.output.model,
        images=voc_files(("test",), "PNGImages"),
        ids=f"{VOC}/ImageSets/Segmentation/test.txt",
    output:
        directory(f"{RESULTS}/cv/{{model}}/fold{{fold}}/test"),
    params:
        voc=lambda w, input: str(Path(input.ids).parents[2]),
        split="test",
        normalise=lambda w: json.loads(train_settings_json(w))["normalise"],
    log:
        f"{LOGS}/predict_fold/{{model}}/fold{{fold}}.log",
    benchmark:
        f"{JOB_BENCHMARKS}/predict_fold/{{model}}/fold{{fold}}.tsv"


rule ensemble:
    input:
        folds=lambda w: [f"{RESULTS}/cv/{w.model}/fold{k}/test" for k in range(FOLDS)],
        ids=f"{VOC}/ImageSets/Segmentation/test.txt",
    output:
        directory(f"{RESULTS}/predict/{{model}}_ensemble/test"),
    conda:
        "../envs/tractmap.yaml"
    log:
        f"{LOGS}/ensemble/{{model}}.log",
    benchmark:
        f"{JOB_BENCHMARKS}/ensemble/{{model}}.tsv"
    shell:
        "python -m workflow_scripts.crossval ensemble --ids={input.ids:q} --out={output:q} -- {input.folds:q} "
        "> {log:q} 2>&1"


rule cv_table:
    input:
        expand(f"{RESULTS}/cv/{{model}}/fold{{fold}}/history.tsv", model=config["train"]["models"], fold=range(FOLDS)),
    output:
        report(f"{RESULTS}/cv/folds.tsv", caption="report/cv.rst", category="Training", labels={"model": "folds"}),
    params:
        triples=lambda w, input: [f"{Path(h).parts[-3]}={Path(h).parts[-2][4:]}={h}" for h in input],
    conda:
        "../envs/tractmap.yaml"
    log:
        f"{LOGS}/cv_table.log",
    benchmark:
        f"{JOB_BENCHMARKS}/cv_table.tsv"
    shell:
        "python -m workflow_scripts.crossval table --out={output:q} -- {params.triples:q} > {log:q} 2>&1"


rule evaluate:
    input:
        predictions=lambda w: [f"{RESULTS}/predict/{m}/{w.split}" for m in evaluated_models(w.split)],
        labels=lambda w: voc_files((w.split,)),
        images=lambda w: voc_files((w.split,), "PNGImages"),  # the example figure draws on them
        ids=f"{VOC}/ImageSets/Segmentation/{{split}}.txt",
    output:
        **{k: eval_output(k) for k in EVAL_OUTPUTS},
    params:
        voc=lambda w, input: str(Path(input.ids).parents[2]),
        pairs=lambda w, input: [f"{m}={d}" for m, d in zip(evaluated_models(w.split), input.predictions)],
        out=lambda w, output: str(Path(output.table2).parent),
        ev=config["evaluate"],
    conda:
        "../envs/tractmap.yaml"
    log:
        f"{LOGS}/evaluate/{{split}}.log",
    benchmark:
        f"{JOB_BENCHMARKS}/evaluate/{{split}}.tsv"
    shell:
        "python -m workflow_scripts.evaluate --voc={params.voc:q} --split={wildcards.split:q} --predictions {params.pairs:q} "
        "--ci={params.ev[ci]:q} --bootstrap={params.ev[bootstrap]:q} --seed={params.ev[seed]:q} --alpha={params.ev[alpha]:q} "
        "--holm={params.ev[holm]:q} --out={params.out:q} "
        "> {log:q} 2>&1"


rule table1:
    input:
        participants=config["samples"]["participants"],
        splits=rules.splits.output,
        schema=workflow.source_path("../schemas/participants.schema.yaml"),
    output:
        report(f"{EVAL}/table1.tsv", caption="report/table1.rst", category="Cohort", labels={"output": "Table 1"}),
    params:
        seed=config["evaluate"]["seed"],
        alpha=config["evaluate"]["alpha"],
    conda:
        "../envs/tractmap.yaml"
    log:
        f"{LOGS}/table1.log",
    benchmark:
        f"{JOB_BENCHMARKS}/table1.tsv"
    shell:
        "python -m workflow_scripts.stats --participants={input.participants:q} --splits={input.splits:q} "
        "--schema={input.schema:q} --seed={params.seed:q} --alpha={params.alpha:q} --out={output:q} > {log:q} 2>&1"


rule report:
    input:
        splits=rules.splits.output,
        table1=rules.table1.output,
        qc_table=rules.qc_table.output.table,
        qc_figure=rules.qc_table.output.figure,
        review=rules.review.output,
        qc_figures=rules.review.input.qc,  # review.tsv names them; the report inlines the held ones
        test=expand(rules.evaluate.output, split="test"),
        val=expand(rules.evaluate.output, split="val"),
        curves=expand(rules.train.output.curves, model=config["train"]["models"]),
        history=expand(rules.train.output.history, model=config["train"]["models"]),
        cv=rules.cv_table.output if FOLDS else [],
    output:
        f"{RESULTS}/report.html",
    params:
        config=json.dumps(config, sort_keys=True),
        exclusions=json.dumps(EXCLUDED),
        train=lambda w, input: json.dumps({m: [c, h] for m, c, h in zip(config["train"]["models"], input.curves, input.history)}),
        test=lambda w, input: str(Path(input.test[0]).parent),
        val=lambda w, input: str(Path(input.val[0]).parent),
        logs=LOGS,
        cv=lambda w, input: input.cv[0] if FOLDS else "",
    conda:
        "../envs/tractmap.yaml"
    log:
        f"{LOGS}/report.log",
    benchmark:
        f"{JOB_BENCHMARKS}/report.tsv"
    shell:
        "python -m workflow_scripts.report --config={params.config:q} --exclusions={params.exclusions:q} "
        "--splits={input.splits:q} --table1={input.table1:q} --qc-table={input.qc_table:q} --qc-figure={input.qc_figure:q} --review={input.review:q} "
        "--test={params.test:q} --val={params.val:q} --train={params.train:q} --logs={params.logs:q} --cv={params.cv:q} --out={output:q} > {log:q} 2>&1"
