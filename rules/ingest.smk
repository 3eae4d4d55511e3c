# Ingest: one job per image.


rule ingest_ultrasound:
    input:
        lambda w: sheet_row(w)[w.phase],
    output:
        image=f"{RESULTS}/ingest/{{participant}}/{{biopsy}}/{{phase}}.png",
        meta=f"{RESULTS}/ingest/{{participant}}/{{biopsy}}/{{phase}}.json",
    params:
        frame=config["ingest"]["frame"],
        sheet_mm=sheet_value("us_mm_per_px"),
    group:
        "prep_{participant}"
    conda:
        "../envs/tractmap.yaml"
    log:
        f"{LOGS}/ingest_ultrasound/{{participant}}/{{biopsy}}_{{phase}}.log",
    benchmark:
        f"{JOB_BENCHMARKS}/ingest_ultrasound/{{participant}}/{{biopsy}}_{{phase}}.tsv"
    shell:
        "python -m workflow_scripts.ingest ultrasound --image={output.image:q} --meta={output.meta:q} "
        "--frame={params.frame:q} --us-mm-per-px={params.sheet_mm:q} --participant={wildcards.participant:q} --biopsy={wildcards.biopsy:q} "
        "-- {input:q} > {log:q} 2>&1"


# One job per slide: a slide that carries several biopsies' cores is read once.
SLIDE_DIR = f"{RESULTS}/slides/{{participant}}/{{slide}}"


rule ingest_wsi:
    input:
        slide_value("wsi"),
    output:
        image=f"{SLIDE_DIR}/wsi.png",
        meta=f"{SLIDE_DIR}/wsi.json",
    params:
        um=config["ingest"]["thumb_um_per_px"],
        sheet_um=slide_value("wsi_um_per_px"),
    group:
        "prep_{participant}"
    conda:
        "../envs/tractmap.yaml"
    log:
        f"{LOGS}/ingest_wsi/{{participant}}/{{slide}}.log",
    benchmark:
        f"{JOB_BENCHMARKS}/ingest_wsi/{{participant}}/{{slide}}.tsv"
    shell:
        "python -m workflow_scripts.ingest wsi --image={output.image:q} --meta={output.meta:q} "
        "--thumb-um={params.um:q} --um-per-px={params.sheet_um:q} --participant={wildcards.participant:q} "
        "-- {input:q} > {log:q} 2>&1"


rule cores:
    input:
        thumb=rules.ingest_wsi.output.image,
        meta=rules.ingest_wsi.output.meta,
        wsi=slide_value("wsi"),  # a finer level, read by region where fat and glass between pieces must be told apart
        annotation=slide_value("annotation"),
    output:
        cores=f"{SLIDE_DIR}/cores.json",
        labels=f"{SLIDE_DIR}/cores.png",
        figure=f"{SLIDE_DIR}/cores_figure.png",  # every core and piece of tissue seen, and why
    params:
        c=config["cores"],
    group:
        "prep_{participant}"
    conda:
        "../envs/tractmap.yaml"
    log:
        f"{LOGS}/cores/{{participant}}/{{slide}}.log",
    benchmark:
        f"{JOB_BENCHMARKS}/cores/{{participant}}/{{slide}}.tsv"
    shell:
        "python -m workflow_scripts.cores --thumb={input.thumb:q} --meta={input.meta:q} --wsi={input.wsi:q} "
        "--annotation={input.annotation:q} --out={output.cores:q} --labels={output.labels:q} --figure={output.figure:q} "
        "--max-gap-mm={params.c[max_gap_mm]:q} --min-width-mm={params.c[min_width_mm]:q} "
        "--min-area-mm2={params.c[min_area_mm2]:q} --dye-class={params.c[dye_class]:q} "
        "--participant={wildcards.participant:q} > {log:q} 2>&1"
