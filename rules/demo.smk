# Synthetic demo cohort: a forward model renders each biopsy's files from a hidden
# truth (workflow_scripts/synthetic/). Only defined when demo.enabled is true.
# A slide that carries several biopsies' cores is rendered once, with all of them.

if DEMO["enabled"]:
    DEMO_DATA = f"{DEMO['root']}/data/{{participant}}"

    rule demo_ultrasound:
        output:
            prefire=f"{DEMO_DATA}/{{biopsy}}_prefire.dcm",
            postfire=f"{DEMO_DATA}/{{biopsy}}_postfire.dcm",
            truth=f"{DEMO['root']}/truth/{{participant}}/{{biopsy}}.json",
            truth_mask=f"{DEMO['root']}/truth/{{participant}}/{{biopsy}}_mask.png",
        params:
            seed=DEMO["seed"],
            slide=demo_slide_args,
        group:
            "prep_{participant}"
        conda:
            "../envs/tractmap.yaml"
        log:
            f"{LOGS}/demo_ultrasound/{{participant}}/{{biopsy}}.log",
        benchmark:
            f"{JOB_BENCHMARKS}/demo_ultrasound/{{participant}}/{{biopsy}}.tsv"
        shell:
            "python -m workflow_scripts.synthetic ultrasound --seed={params.seed:q} --participant={wildcards.participant:q} "
            "--biopsy={wildcards.biopsy:q} {params.slide:q} --prefire={output.prefire:q} --postfire={output.postfire:q} "
            "--truth={output.truth:q} --truth-mask={output.truth_mask:q} > {log:q} 2>&1"

    rule demo_slide:
        output:
            wsi=f"{DEMO_DATA}/{{demo_slide}}_wsi.ome.tif",
            annotation=f"{DEMO_DATA}/{{demo_slide}}_annotations.geojson",
        params:
            seed=DEMO["seed"],
            slide=demo_slide_args,
        wildcard_constraints:
            demo_slide="[A-Za-z0-9][A-Za-z0-9_-]*",
        group:
            "prep_{participant}"
        conda:
            "../envs/tractmap.yaml"
        log:
            f"{LOGS}/demo_slide/{{participant}}/{{demo_slide}}.log",
        benchmark:
            f"{JOB_BENCHMARKS}/demo_slide/{{participant}}/{{demo_slide}}.tsv"
        shell:
            "python -m workflow_scripts.synthetic slide --seed={params.seed:q} --participant={wildcards.participant:q} "
            "{params.slide:q} --wsi={output.wsi:q} --annotation={output.annotation:q} > {log:q} 2>&1"


    rule demo_export:
        # a PNG/JPEG export of a rendered DICOM (sheets with us_mm_per_px; see synthetic.cohort_sheets)
        input:
            f"{DEMO['root']}/data/{{participant}}/{{biopsy}}_{{phase}}.dcm",
        output:
            f"{DEMO['root']}/data/{{participant}}/{{biopsy}}_{{phase}}.{{ext}}",
        wildcard_constraints:
            ext="png|jpg",
        group:
            "prep_{participant}"
        conda:
            "../envs/tractmap.yaml"
        log:
            f"{LOGS}/demo_export/{{participant}}/{{biopsy}}_{{phase}}_{{ext}}.log",
        benchmark:
            f"{JOB_BENCHMARKS}/demo_export/{{participant}}/{{biopsy}}_{{phase}}_{{ext}}.tsv"
        shell:
            "python -m workflow_scripts.synthetic export -- {input:q} {output:q} > {log:q} 2>&1"
