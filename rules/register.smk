# Registration, one job per biopsy per step: orientation, tract, ROI transfer.

ING = f"{RESULTS}/ingest/{{participant}}/{{biopsy}}"


rule orient:
    input:
        thumb=f"{ING}/wsi.png",
        meta=f"{ING}/wsi.json",
    output:
        json=f"{RESULTS}/orient/{{participant}}/{{biopsy}}.json",
        oriented=f"{RESULTS}/orient/{{participant}}/{{biopsy}}_oriented.png",
    params:
        dye_end=dye_end,
        conf=config["orient"]["min_confidence"],
        frac=config["orient"]["min_dye_fraction"],
    group:
        "prep_{participant}"
    conda:
        "../envs/tractmap.yaml"
    log:
        "logs/orient/{participant}/{biopsy}.log",
    benchmark:
        "benchmarks/orient/{participant}/{biopsy}.tsv"
    shell:
        "python -m workflow_scripts.orient --thumb {input.thumb} --meta {input.meta} --out {output.json} "
        "--oriented {output.oriented} --dye-end '{params.dye_end}' --min-confidence {params.conf} "
        "--min-dye-fraction {params.frac} --participant {wildcards.participant} --biopsy {wildcards.biopsy} > {log} 2>&1"


rule tract:
    input:
        pre=f"{ING}/prefire.png",
        pre_meta=f"{ING}/prefire.json",
        post=f"{ING}/postfire.png",
        post_meta=f"{ING}/postfire.json",
    output:
        json=f"{RESULTS}/tract/{{participant}}/{{biopsy}}.json",
        crop=f"{RESULTS}/tract/{{participant}}/{{biopsy}}_crop.png",
    params:
        t=config["tract"],
        overrides=override_args,
    group:
        "prep_{participant}"
    conda:
        "../envs/tractmap.yaml"
    log:
        "logs/tract/{participant}/{biopsy}.log",
    benchmark:
        "benchmarks/tract/{participant}/{biopsy}.tsv"
    shell:
        "python -m workflow_scripts.tract --pre {input.pre} --pre-meta {input.pre_meta} --post {input.post} "
        "--post-meta {input.post_meta} --out {output.json} --crop {output.crop} "
        "--throw-mm {params.t[throw_mm]} --width-mm {params.t[width_mm]} "
        "--margin-mm {params.t[margin_mm]} --out-mm-per-px {params.t[out_mm_per_px]} "
        "{params.overrides} --participant {wildcards.participant} --biopsy {wildcards.biopsy} > {log} 2>&1"


rule transfer:
    input:
        annotation=biopsy_file("annotation"),
        orient=rules.orient.output.json,
        tract=rules.tract.output.json,
        crop=rules.tract.output.crop,
    output:
        labelme=f"{RESULTS}/transfer/{{participant}}/{{biopsy}}.json",
        summary=f"{RESULTS}/transfer/{{participant}}/{{biopsy}}_summary.json",
    params:
        classes=",".join(f"{k}={v}" for k, v in config["transfer"]["classes"].items()),
        outside=config["transfer"]["outside_core"],
        across=config["transfer"]["across"],
    group:
        "prep_{participant}"
    conda:
        "../envs/tractmap.yaml"
    log:
        "logs/transfer/{participant}/{biopsy}.log",
    benchmark:
        "benchmarks/transfer/{participant}/{biopsy}.tsv"
    shell:
        "python -m workflow_scripts.transfer --annotation {input.annotation} --orient {input.orient} "
        "--tract {input.tract} --crop {input.crop} --out {output.labelme} "
        "--summary {output.summary} --classes '{params.classes}' "
        "--outside-core {params.outside} --across {params.across} --participant {wildcards.participant} --biopsy {wildcards.biopsy} > {log} 2>&1"


rule labelme:
    input:
        labelme_source,
    output:
        f"{RESULTS}/labelme/{{participant}}/{{biopsy}}.json",
    group:
        "prep_{participant}"
    conda:
        "../envs/tractmap.yaml"
    log:
        "logs/labelme/{participant}/{biopsy}.log",
    benchmark:
        "benchmarks/labelme/{participant}/{biopsy}.tsv"
    shell:
        "cp {input} {output} && echo 'labelme source: {input}' > {log}"
