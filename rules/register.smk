# Registration, one job per biopsy per step: orientation, tract, ROI transfer.

ING = f"{RESULTS}/ingest/{{participant}}/{{biopsy}}"


rule orient:
    input:
        thumb=slide_output("wsi.png"),
        meta=slide_output("wsi.json"),
        cores=slide_output("cores.json"),
        labels=slide_output("cores.png"),
    output:
        json=f"{RESULTS}/orient/{{participant}}/{{biopsy}}.json",
        oriented=f"{RESULTS}/orient/{{participant}}/{{biopsy}}_oriented.png",
    params:
        core=sheet_value("core"),
        dye_end=dye_end_override,
        accept=config["orient"]["accept_confidence"],
        novelty=config["orient"]["accept_novelty"],
        conf=config["orient"]["min_confidence"],
        frac=config["orient"]["min_dye_fraction"],
    group:
        "prep_{participant}"
    conda:
        "../envs/tractmap.yaml"
    log:
        f"{LOGS}/orient/{{participant}}/{{biopsy}}.log",
    benchmark:
        f"{JOB_BENCHMARKS}/orient/{{participant}}/{{biopsy}}.tsv"
    shell:
        "python -m workflow_scripts.orient --thumb={input.thumb:q} --meta={input.meta:q} --out={output.json:q} "
        "--oriented={output.oriented:q} --cores={input.cores:q} --labels={input.labels:q} "
        "--core={params.core:q} --dye-end={params.dye_end:q} --accept-confidence={params.accept:q} "
        "--accept-novelty={params.novelty:q} --min-confidence={params.conf:q} "
        "--min-dye-fraction={params.frac:q} --participant={wildcards.participant:q} --biopsy={wildcards.biopsy:q} "
        "> {log:q} 2>&1"


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
        overrides=tract_override_args,
    group:
        "prep_{participant}"
    conda:
        "../envs/tractmap.yaml"
    log:
        f"{LOGS}/tract/{{participant}}/{{biopsy}}.log",
    benchmark:
        f"{JOB_BENCHMARKS}/tract/{{participant}}/{{biopsy}}.tsv"
    shell:
        "python -m workflow_scripts.tract --pre={input.pre:q} --pre-meta={input.pre_meta:q} --post={input.post:q} "
        "--post-meta={input.post_meta:q} --out={output.json:q} --crop={output.crop:q} "
        "--default-stroke-mm={params.t[throw_mm]:q} --width-mm={params.t[width_mm]:q} "
        "--margin-mm={params.t[margin_mm]:q} --out-mm-per-px={params.t[out_mm_per_px]:q} --min-confidence={params.t[min_confidence]:q} "
        "{params.overrides:q} --participant={wildcards.participant:q} --biopsy={wildcards.biopsy:q} > {log:q} 2>&1"


rule review_state:
    # where the biopsy stands (accepted / review / override / failed), decided once in
    # workflow_scripts/state.py; the VOC lists, review.tsv, QC and the report read this file
    input:
        orient=rules.orient.output.json,
        tract=rules.tract.output.json,
        transfer=f"{RESULTS}/transfer/{{participant}}/{{biopsy}}_summary.json",
    output:
        f"{RESULTS}/state/{{participant}}/{{biopsy}}.json",
    params:
        # auto / sheet / review (<reviewer>): the sheet and the decisions file, read at parse time (common.smk)
        source=lambda w: OVERRIDE_SOURCE.get((w.participant, w.biopsy), "auto"),
        # rows on the slide (excluded ones too): more cores than rows holds the label (state.py)
        rows=slide_rows,
    group:
        "prep_{participant}"
    conda:
        "../envs/tractmap.yaml"
    log:
        f"{LOGS}/review_state/{{participant}}/{{biopsy}}.log",
    benchmark:
        f"{JOB_BENCHMARKS}/review_state/{{participant}}/{{biopsy}}.tsv"
    shell:
        "python -m workflow_scripts.state --orient={input.orient:q} --tract={input.tract:q} "
        "--transfer={input.transfer:q} --out={output:q} "
        "--override-source={params.source:q} --slide-rows={params.rows:q} --participant={wildcards.participant:q} "
        "--biopsy={wildcards.biopsy:q} > {log:q} 2>&1"


rule transfer:
    input:
        annotation=sheet_file("annotation"),
        orient=rules.orient.output.json,
        tract=rules.tract.output.json,
        crop=rules.tract.output.crop,
        cores=slide_output("cores.json"),
        labels=slide_output("cores.png"),
        slide_meta=slide_output("wsi.json"),
    output:
        labelme=f"{RESULTS}/transfer/{{participant}}/{{biopsy}}.json",
        summary=f"{RESULTS}/transfer/{{participant}}/{{biopsy}}_summary.json",
    params:
        classes=json.dumps(config["transfer"]["classes"]),
        outside=config["transfer"]["outside_core"],
        across=config["transfer"]["across"],
        shrink=config["transfer"]["plausible_shrinkage"],
    group:
        "prep_{participant}"
    conda:
        "../envs/tractmap.yaml"
    log:
        f"{LOGS}/transfer/{{participant}}/{{biopsy}}.log",
    benchmark:
        f"{JOB_BENCHMARKS}/transfer/{{participant}}/{{biopsy}}.tsv"
    shell:
        "python -m workflow_scripts.transfer --annotation={input.annotation:q} --orient={input.orient:q} "
        "--tract={input.tract:q} --crop={input.crop:q} --cores={input.cores:q} --labels={input.labels:q} "
        "--slide-meta={input.slide_meta:q} --out={output.labelme:q} "
        "--summary={output.summary:q} --classes={params.classes:q} --outside-core={params.outside:q} "
        "--across={params.across:q} --plausible-shrinkage {params.shrink:q} "
        "--participant={wildcards.participant:q} --biopsy={wildcards.biopsy:q} > {log:q} 2>&1"


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
        f"{LOGS}/labelme/{{participant}}/{{biopsy}}.log",
    benchmark:
        f"{JOB_BENCHMARKS}/labelme/{{participant}}/{{biopsy}}.tsv"
    shell:
        "cp -- {input:q} {output:q} && printf 'labelme source: %s\\n' {input:q} > {log:q}"
