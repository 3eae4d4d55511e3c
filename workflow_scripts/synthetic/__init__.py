"""The synthetic demo cohort: a forward model that renders images from a hidden truth.

Every biopsy gets a hidden ground truth (needle geometry, lesion, cancer
sub-regions, slide placement, dye colour).  From it we render what a hospital
would hand us: pre-fire and post-fire ultrasound DICOMs calibrated only through
``SequenceOfUltrasoundRegions`` (or, as an option, PNG/JPEG screen exports whose
spacing only the sheet's ``us_mm_per_px`` gives), a pyramidal tiled OME-TIFF of the H&E core with
dye on the distal end, and a QuPath 0.4 GeoJSON export.  The truth itself is
written to a separate folder and is read by scoring only.

This package owns its own geometry and sits outside the pipeline's steps: the
pipeline must recover the truth from pixels, and no step imports anything from
here (``tests/test_layout.py`` checks it).

Modules: ``truth`` (sampling the truth), ``ultrasound`` (DICOM rendering),
``histology`` (WSI rendering), ``annotations`` (QuPath GeoJSON) and ``cohort``
(one biopsy's files, the demo sheets, the command line:
``python -m workflow_scripts.synthetic``).
"""

from .annotations import qupath_features, write_geojson
from .cohort import cohort_sheets, generate_biopsy, generate_slide, generate_ultrasound, slide_truths
from .histology import region_reader, render_slide, render_slide_tile, write_wsi
from .truth import (
    BiopsyTruth,
    biopsy_rng,
    cancer_inside,
    place_cores_on_slide,
    place_on_slide,
    prefire_tip_positions,
    sample_truth,
    truth_label,
    truth_record,
)
from .ultrasound import export_dicom, render_prefire, render_ultrasound, write_dicom, write_export

__all__ = [
    "BiopsyTruth",
    "biopsy_rng",
    "cancer_inside",
    "cohort_sheets",
    "export_dicom",
    "generate_biopsy",
    "generate_slide",
    "generate_ultrasound",
    "place_cores_on_slide",
    "region_reader",
    "render_slide",
    "slide_truths",
    "place_on_slide",
    "prefire_tip_positions",
    "qupath_features",
    "render_prefire",
    "render_slide_tile",
    "render_ultrasound",
    "sample_truth",
    "truth_label",
    "truth_record",
    "write_dicom",
    "write_export",
    "write_geojson",
    "write_wsi",
]
