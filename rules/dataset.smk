# Dataset: participant splits, VOC conversion, registration QC.

VOC = f"{RESULTS}/voc"


rule splits:
    input:
        config["samples"]["participants"],
    output:
        f"{RESULTS}/splits.tsv",
    params:
        seed=config["split"]["seed"],
        r=config["split"]["ratios"],
    conda:
        "../envs/tractmap.yaml"
    log:
        "logs/splits.log",
    benchmark:
        "benchmarks/splits.tsv"
    shell:
        "python -m workflow_scripts.split {input} --out {output} --seed {params.seed} "
        "--ratios {params.r[train]} {params.r[val]} {params.r[test]} > {log} 2>&1"


rule voc_image:
    input:
        rules.labelme.output,
    output:
        image=f"{VOC}/JPEGImages/{{participant}}_{{biopsy}}.jpg",
        label=f"{VOC}/SegmentationClass/{{participant}}_{{biopsy}}.png",
        viz=f"{VOC}/SegmentationClassVisualization/{{participant}}_{{biopsy}}.jpg",
    params:
        root=lambda w, output: str(Path(output.image).parent.parent),
    group:
        "prep_{participant}"
    conda:
        "../envs/tractmap.yaml"
    log:
        "logs/voc_image/{participant}/{biopsy}.log",
    benchmark:
        "benchmarks/voc_image/{participant}/{biopsy}.tsv"
    shell:
        "python -m workflow_scripts.voc image {input} --root {params.root} "
        "--image-id {wildcards.participant}_{wildcards.biopsy} --participant {wildcards.participant} --biopsy {wildcards.biopsy} > {log} 2>&1"


rule voc_list:
    input:
        lambda w: voc_files(("train", "val") if w.split == "trainval" else (w.split,)),
    output:
        f"{VOC}/ImageSets/Segmentation/{{split}}.txt",
    conda:
        "../envs/tractmap.yaml"
    log:
        "logs/voc_list/{split}.log",
    benchmark:
        "benchmarks/voc_list/{split}.tsv"
    shell:
        "python -m workflow_scripts.voc list {input} --out {output} > {log} 2>&1"


rule voc_class_names:
    output:
        f"{VOC}/class_names.txt",
    conda:
        "../envs/tractmap.yaml"
    log:
        "logs/voc_class_names.log",
    benchmark:
        "benchmarks/voc_class_names.tsv"
    shell:
        "python -m workflow_scripts.voc names --out {output} > {log} 2>&1"


rule qc_figure:
    input:
        pre=f"{ING}/prefire.png",
        tract=rules.tract.output.json,
        oriented=rules.orient.output.oriented,
        crop=rules.tract.output.crop,
        label=rules.voc_image.output.label,
    output:
        f"{RESULTS}/qc/{{participant}}/{{biopsy}}.png",
    group:
        "prep_{participant}"
    conda:
        "../envs/tractmap.yaml"
    log:
        "logs/qc_figure/{participant}/{biopsy}.log",
    benchmark:
        "benchmarks/qc_figure/{participant}/{biopsy}.tsv"
    shell:
        "python -m workflow_scripts.qc figure --pre {input.pre} --tract {input.tract} "
        "--oriented {input.oriented} --crop {input.crop} --label {input.label} --out {output} "
        "--title '{wildcards.participant}/{wildcards.biopsy}' > {log} 2>&1"


rule qc_table:
    input:
        tract=per_biopsy(f"{RESULTS}/tract/{{participant}}/{{biopsy}}.json"),
        orient=per_biopsy(f"{RESULTS}/orient/{{participant}}/{{biopsy}}.json"),
        transfer=per_biopsy(f"{RESULTS}/transfer/{{participant}}/{{biopsy}}_summary.json"),
        label=per_biopsy(f"{VOC}/SegmentationClass/{{participant}}_{{biopsy}}.png"),
        truth=per_biopsy(f"{config['truth_dir']}/{{participant}}/{{biopsy}}.json") if config.get("truth_dir") and DEMO["enabled"] else [],
    output:
        table=f"{RESULTS}/qc/registration_qc.tsv",
        figure=f"{RESULTS}/qc/registration_qc.png",
    conda:
        "../envs/tractmap.yaml"
    log:
        "logs/qc_table.log",
    benchmark:
        "benchmarks/qc_table.tsv"
    shell:
        "python -m workflow_scripts.qc table --tract {input.tract} --orient {input.orient} "
        "--transfer {input.transfer} --label {input.label} --truth {input.truth} "
        "--out {output.table} --figure {output.figure} > {log} 2>&1"
