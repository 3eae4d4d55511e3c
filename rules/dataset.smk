# Dataset: participant splits, VOC conversion, registration QC.

VOC = f"{RESULTS}/voc"


rule splits:
    input:
        config["samples"]["participants"],
    output:
        f"{RESULTS}/splits.tsv",
    params:
        # the allocation depends on these: a change reruns this rule
        seed=config["split"]["seed"],
        ratios=config["split"]["ratios"],
    log:
        f"{LOGS}/splits.log",
    benchmark:
        f"{JOB_BENCHMARKS}/splits.tsv"
    run:
        # the parse-time allocation (common.smk), written as it is: one split computation
        split.write(SPLIT, SPLIT_FIXED, params.seed, output[0], log[0])


rule voc_image:
    input:
        labelme=rules.labelme.output[0],
        crop=rules.tract.output.crop,
    output:
        image=f"{VOC}/JPEGImages/{{participant}}_{{biopsy}}.{config['voc']['image_format']}",
        lossless=f"{VOC}/PNGImages/{{participant}}_{{biopsy}}.png",
        label=f"{VOC}/SegmentationClass/{{participant}}_{{biopsy}}.png",
        viz=f"{VOC}/SegmentationClassVisualization/{{participant}}_{{biopsy}}.jpg",
    params:
        root=lambda w, output: str(Path(output.image).parent.parent),
        image_format=config["voc"]["image_format"],
    group:
        "prep_{participant}"
    conda:
        "../envs/tractmap.yaml"
    log:
        f"{LOGS}/voc_image/{{participant}}/{{biopsy}}.log",
    benchmark:
        f"{JOB_BENCHMARKS}/voc_image/{{participant}}/{{biopsy}}.tsv"
    shell:
        "python -m workflow_scripts.voc image --root={params.root:q} --image-id={wildcards.participant:q}_{wildcards.biopsy:q} "
        "--crop={input.crop:q} --image-format={params.image_format:q} --participant={wildcards.participant:q} --biopsy={wildcards.biopsy:q} -- {input.labelme:q} "
        "> {log:q} 2>&1"


rule voc_list:
    input:
        labels=lambda w: member_files(list_members(w.split)),
        state=lambda w: step_files(list_members(w.split), "state"),
    output:
        f"{VOC}/ImageSets/Segmentation/{{split}}.txt",
    conda:
        "../envs/tractmap.yaml"
    log:
        f"{LOGS}/voc_list/{{split}}.log",
    benchmark:
        f"{JOB_BENCHMARKS}/voc_list/{{split}}.tsv"
    shell:
        "python -m workflow_scripts.voc list --out={output:q} --state {input.state:q} "
        "-- {input.labels:q} > {log:q} 2>&1"


rule nnunet_export:
    input:
        lists=expand(f"{VOC}/ImageSets/Segmentation/{{s}}.txt", s=["train", "val", "test"]),
        folds=fold_lists(),
        labels=voc_files(("train", "val")),
        images=voc_files(("train", "val", "test"), "PNGImages"),
    output:
        directory(f"{RESULTS}/nnunet/Dataset{config['nnunet']['dataset_id']:03d}_{config['nnunet']['name']}"),
    params:
        voc=lambda w, input: str(Path(input.lists[0]).parents[2]),
        name=config["nnunet"]["name"],
    conda:
        "../envs/tractmap.yaml"
    log:
        f"{LOGS}/nnunet_export.log",
    benchmark:
        f"{JOB_BENCHMARKS}/nnunet_export.tsv"
    shell:
        "python -m workflow_scripts.nnunet --voc={params.voc:q} --out={output:q} --name={params.name:q} "
        "--train={input.lists[0]:q} --val={input.lists[1]:q} --test={input.lists[2]:q} --folds {input.folds:q} "
        "> {log:q} 2>&1"


rule voc_class_names:
    output:
        f"{VOC}/class_names.txt",
    conda:
        "../envs/tractmap.yaml"
    log:
        f"{LOGS}/voc_class_names.log",
    benchmark:
        f"{JOB_BENCHMARKS}/voc_class_names.tsv"
    shell:
        "python -m workflow_scripts.voc names --out={output:q} > {log:q} 2>&1"


rule qc_figure:
    input:
        pre=f"{ING}/prefire.png",
        tract=rules.tract.output.json,
        orient=rules.orient.output.json,
        state=rules.review_state.output[0],
        oriented=rules.orient.output.oriented,
        crop=rules.tract.output.crop,
        label=rules.voc_image.output.label,
        slide=slide_output("wsi.png"),
        cores=slide_output("cores.json"),
        labels=slide_output("cores.png"),
    output:
        f"{RESULTS}/qc/{{participant}}/{{biopsy}}.png",
    group:
        "prep_{participant}"
    conda:
        "../envs/tractmap.yaml"
    log:
        f"{LOGS}/qc_figure/{{participant}}/{{biopsy}}.log",
    benchmark:
        f"{JOB_BENCHMARKS}/qc_figure/{{participant}}/{{biopsy}}.tsv"
    shell:
        "python -m workflow_scripts.qc figure --pre={input.pre:q} --tract={input.tract:q} --orient={input.orient:q} "
        "--state={input.state:q} "
        "--oriented={input.oriented:q} --crop={input.crop:q} --label={input.label:q} --out={output:q} "
        "--slide={input.slide:q} --cores={input.cores:q} --labels={input.labels:q} "
        "--title={wildcards.participant:q}/{wildcards.biopsy:q} > {log:q} 2>&1"


rule qc_table:
    input:
        tract=per_biopsy(f"{RESULTS}/tract/{{participant}}/{{biopsy}}.json"),
        orient=per_biopsy(f"{RESULTS}/orient/{{participant}}/{{biopsy}}.json"),
        state=per_biopsy(f"{RESULTS}/state/{{participant}}/{{biopsy}}.json"),
        transfer=per_biopsy(f"{RESULTS}/transfer/{{participant}}/{{biopsy}}_summary.json"),
        label=per_biopsy(f"{VOC}/SegmentationClass/{{participant}}_{{biopsy}}.png"),
        truth=per_biopsy(f"{config['truth_dir']}/{{participant}}/{{biopsy}}.json") if config.get("truth_dir") and DEMO["enabled"] else [],
        truth_mask=per_biopsy(f"{config['truth_dir']}/{{participant}}/{{biopsy}}_mask.png") if config.get("truth_dir") and DEMO["enabled"] else [],
    output:
        table=report(f"{RESULTS}/qc/registration_qc.tsv", caption="report/qc_table.rst", category="Registration QC",
                     labels={"output": "per biopsy"}),
        figure=report(f"{RESULTS}/qc/registration_qc.png", caption="report/qc_figure.rst", category="Registration QC",
                      labels={"output": "histograms"}),
    conda:
        "../envs/tractmap.yaml"
    log:
        f"{LOGS}/qc_table.log",
    benchmark:
        f"{JOB_BENCHMARKS}/qc_table.tsv"
    shell:
        "python -m workflow_scripts.qc table --tract {input.tract:q} --orient {input.orient:q} --state {input.state:q} "
        "--transfer {input.transfer:q} --label {input.label:q} --truth {input.truth:q} --truth-mask {input.truth_mask:q} "
        "--out={output.table:q} --figure={output.figure:q} > {log:q} 2>&1"


rule review:
    input:
        state=per_biopsy(f"{RESULTS}/state/{{participant}}/{{biopsy}}.json"),
        orient=per_biopsy(f"{RESULTS}/orient/{{participant}}/{{biopsy}}.json"),
        tract=per_biopsy(f"{RESULTS}/tract/{{participant}}/{{biopsy}}.json"),
        prefire=per_biopsy(f"{ING}/prefire.json"),
        qc=per_biopsy(f"{RESULTS}/qc/{{participant}}/{{biopsy}}.png"),
    output:
        f"{RESULTS}/review.tsv",
    conda:
        "../envs/tractmap.yaml"
    log:
        f"{LOGS}/review.log",
    benchmark:
        f"{JOB_BENCHMARKS}/review.tsv"
    shell:
        "python -m workflow_scripts.review --state {input.state:q} --orient {input.orient:q} --tract {input.tract:q} "
        "--prefire {input.prefire:q} "
        "--qc {input.qc:q} --out={output:q} > {log:q} 2>&1"
