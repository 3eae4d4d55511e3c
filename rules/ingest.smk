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


rule ingest_wsi:
    input:
        sheet_file("wsi"),
    output:
        image=f"{RESULTS}/ingest/{{participant}}/{{biopsy}}/wsi.png",
        meta=f"{RESULTS}/ingest/{{participant}}/{{biopsy}}/wsi.json",
    params:
        um=config["ingest"]["thumb_um_per_px"],
        sheet_um=sheet_value("wsi_um_per_px"),
    group:
        "prep_{participant}"
    conda:
        "../envs/tractmap.yaml"
    log:
        f"{LOGS}/ingest_wsi/{{participant}}/{{biopsy}}.log",
    benchmark:
        f"{JOB_BENCHMARKS}/ingest_wsi/{{participant}}/{{biopsy}}.tsv"
    shell:
        "python -m workflow_scripts.ingest wsi --image={output.image:q} --meta={output.meta:q} "
        "--thumb-um={params.um:q} --um-per-px={params.sheet_um:q} --participant={wildcards.participant:q} --biopsy={wildcards.biopsy:q} "
        "-- {input:q} > {log:q} 2>&1"
