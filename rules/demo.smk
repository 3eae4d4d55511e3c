# Synthetic demo cohort: a forward model renders each biopsy's files from a hidden
# truth (workflow_scripts/synthetic/). Only defined when demo.enabled is true.

if DEMO["enabled"]:

    rule demo_biopsy:
        output:
            prefire=f"{DEMO['root']}/data/{{participant}}/{{biopsy}}_prefire.dcm",
            postfire=f"{DEMO['root']}/data/{{participant}}/{{biopsy}}_postfire.dcm",
            wsi=f"{DEMO['root']}/data/{{participant}}/{{biopsy}}_wsi.ome.tif",
            annotation=f"{DEMO['root']}/data/{{participant}}/{{biopsy}}_annotations.geojson",
            truth=f"{DEMO['root']}/truth/{{participant}}/{{biopsy}}.json",
            truth_mask=f"{DEMO['root']}/truth/{{participant}}/{{biopsy}}_mask.png",
        params:
            seed=DEMO["seed"],
            large=lambda w: ["--large-slide"] if f"{w.participant}/{w.biopsy}" == DEMO.get("large_slide") else [],
            varied=["--varied"] if DEMO.get("varied") else [],
        group:
            "prep_{participant}"
        conda:
            "../envs/tractmap.yaml"
        log:
            f"{LOGS}/demo_biopsy/{{participant}}/{{biopsy}}.log",
        benchmark:
            f"{JOB_BENCHMARKS}/demo_biopsy/{{participant}}/{{biopsy}}.tsv"
        shell:
            "python -m workflow_scripts.synthetic biopsy --seed={params.seed:q} --participant={wildcards.participant:q} "
            "--biopsy={wildcards.biopsy:q} {params.large:q} {params.varied:q} --prefire={output.prefire:q} "
            "--postfire={output.postfire:q} --wsi={output.wsi:q} --annotation={output.annotation:q} "
            "--truth={output.truth:q} --truth-mask={output.truth_mask:q} > {log:q} 2>&1"

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
