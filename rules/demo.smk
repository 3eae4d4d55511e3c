# Synthetic demo cohort: a forward model renders each biopsy's files from a hidden
# truth (workflow_scripts/demo.py). Only defined when demo.enabled is true.

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
            large=lambda w: "--large-slide" if f"{w.participant}/{w.biopsy}" == DEMO.get("large_slide") else "",
        group:
            "prep_{participant}"
        conda:
            "../envs/tractmap.yaml"
        log:
            "logs/demo_biopsy/{participant}/{biopsy}.log",
        benchmark:
            "benchmarks/demo_biopsy/{participant}/{biopsy}.tsv"
        shell:
            "python -m workflow_scripts.demo biopsy --seed {params.seed} --participant {wildcards.participant} "
            "--biopsy {wildcards.biopsy} {params.large} --prefire {output.prefire} "
            "--postfire {output.postfire} --wsi {output.wsi} --annotation {output.annotation} "
            "--truth {output.truth} --truth-mask {output.truth_mask} > {log} 2>&1"
