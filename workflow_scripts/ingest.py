"""Ingest: calibrated grayscale ultrasound from DICOM, and a low-resolution WSI view.

Only technical attributes are read from DICOM headers (an allow-list below);
patient and study attributes are never copied anywhere.  Slides are read by
:mod:`workflow_scripts.slide` (OpenSlide or tifffile), tile by tile.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np
import pydicom
from pydicom.pixels import apply_color_lut, pixel_array
from skimage.io import imsave

from workflow_scripts.errors import InputError, run_cli
from workflow_scripts.slide import read_slide

TISSUE, SPATIAL_2D, UNITS_CM = 1, 1, 3


# ---------------------------------------------------------------- ultrasound


def tissue_region(ds: pydicom.Dataset) -> tuple[int, dict]:
    """The calibrated 2-D tissue region (the largest, if there are several), validated."""
    regions = ds.get("SequenceOfUltrasoundRegions")
    if not regions:
        raise InputError(
            "no SequenceOfUltrasoundRegions: the image carries no physical calibration",
            "export the DICOM from the scanner with calibration, or re-export it as an ultrasound object",
        )
    tissue = [
        (i, r)
        for i, r in enumerate(regions)
        if r.get("RegionDataType") == TISSUE and r.get("RegionSpatialFormat") == SPATIAL_2D
    ]
    if not tissue:
        raise InputError(
            f"none of the {len(regions)} ultrasound regions is a 2-D tissue region (RegionDataType=1, "
            "RegionSpatialFormat=1)",
            "check that this is a B-mode image and not a Doppler or report screen",
        )
    area = lambda r: (r.RegionLocationMaxX1 - r.RegionLocationMinX0) * (r.RegionLocationMaxY1 - r.RegionLocationMinY0)  # noqa: E731
    # the largest; equal views (a dual-view screen): the leftmost, then the topmost
    index, r = min(tissue, key=lambda ir: (-area(ir[1]), ir[1].RegionLocationMinX0, ir[1].RegionLocationMinY0))
    ties = sum(area(t) == area(r) for _, t in tissue)
    x0, y0, x1, y1 = (
        int(r.get(k, -1))
        for k in ("RegionLocationMinX0", "RegionLocationMinY0", "RegionLocationMaxX1", "RegionLocationMaxY1")
    )
    # several vendors write the max bounds inclusive of one pixel past the image: clamp that, reject more
    clamped = (x1 == ds.Columns) or (y1 == ds.Rows)
    x1, y1 = (x1 - 1 if x1 == ds.Columns else x1), (y1 - 1 if y1 == ds.Rows else y1)
    if not (0 <= x0 < x1 < ds.Columns and 0 <= y0 < y1 < ds.Rows):
        raise InputError(
            f"tissue region [{x0},{y0}]-[{x1},{y1}] lies outside the {ds.Columns}x{ds.Rows} image",
            "the calibration does not belong to this image; re-export it from the scanner",
        )
    dx, dy = r.get("PhysicalDeltaX"), r.get("PhysicalDeltaY")
    ux, uy = r.get("PhysicalUnitsXDirection"), r.get("PhysicalUnitsYDirection")
    if not dx or not dy or float(dx) <= 0 or float(dy) <= 0:
        raise InputError(
            "tissue region has no PhysicalDeltaX/PhysicalDeltaY: missing resolution", "re-export with calibration"
        )
    if ux != UNITS_CM or uy != UNITS_CM:
        raise InputError(
            f"tissue region units are {ux}/{uy}, not 3 (cm)", "re-export the image with spatial calibration in cm"
        )
    return index, {
        "x0": x0,
        "y0": y0,
        "x1": x1,
        "y1": y1,
        "mm_per_px": [float(dx) * 10, float(dy) * 10],
        "bounds_clamped": clamped,
        "tissue_regions": len(tissue),
        "equal_views": ties,
        "region_rule": "largest tissue region; equal views: the leftmost, then the topmost",
    }


def to_gray(frame: np.ndarray, photometric: str) -> np.ndarray:
    """uint8 grayscale from MONOCHROME1/2, RGB or (already converted) YBR pixels."""
    if frame.ndim == 2:
        g = frame.astype(float)
        if photometric == "MONOCHROME1":
            g = g.max() - g
    else:
        g = frame[..., :3].astype(float) @ np.array([0.299, 0.587, 0.114])
    if g.max() > 255:
        g = 255 * g / g.max()
    return np.clip(np.round(g), 0, 255).astype(np.uint8)


def decode_frame(ds: pydicom.Dataset, index: int | None) -> np.ndarray:
    """One frame's pixels (only that frame is decoded; YBR becomes RGB), through pydicom's pixel plugins.

    Compressed transfer syntaxes (JPEG baseline/lossless, JPEG-LS, JPEG 2000, RLE) decode through
    the pylibjpeg plugins that tractmap installs; a syntax none can decode is a clear error.
    """
    meta = getattr(ds, "file_meta", None)
    syntax = meta.get("TransferSyntaxUID", "unknown") if meta is not None else "unknown"
    try:
        return pixel_array(ds, index=index)
    except (RuntimeError, NotImplementedError, ValueError) as e:
        name = getattr(syntax, "name", str(syntax))
        raise InputError(
            f"cannot decode the pixel data (transfer syntax {name}: {str(e).splitlines()[0][:160]})",
            "re-export the image uncompressed or as JPEG baseline/lossless, JPEG-LS, JPEG 2000 or RLE",
        ) from None


def pick_frame(n_frames: int, choice: str | int) -> int:
    """Frame index for a cine: 'last' (the frozen, saved frame; default), 'first' or an index."""
    if choice == "last":
        return n_frames - 1
    if choice == "first":
        return 0
    k = int(choice)
    if not -n_frames <= k < n_frames:
        raise InputError(
            f"frame {k} requested but the DICOM has {n_frames} frames",
            "set ingest.frame to 'last', 'first' or a valid index",
        )
    return k % n_frames


def read_ultrasound(
    path: str | Path, frame: str | int = "last", mm_per_px: tuple[float, float] | None = None
) -> tuple[np.ndarray, dict]:
    """Grayscale tissue-region image and its calibration metadata (no header identities).

    ``mm_per_px`` is a manual calibration for a DICOM without one: the whole frame is used.
    """
    try:
        ds = pydicom.dcmread(path)
    except Exception as e:  # pydicom raises many types for a broken file
        raise InputError(f"not a readable DICOM file ({type(e).__name__})", "check the path in biopsies.tsv") from None
    if mm_per_px is None:
        index, region = tissue_region(ds)
    else:
        index, region = (
            -1,
            {
                "x0": 0,
                "y0": 0,
                "x1": int(ds.Columns) - 1,
                "y1": int(ds.Rows) - 1,
                "mm_per_px": [float(v) for v in mm_per_px],
            },
        )
    photometric = str(ds.get("PhotometricInterpretation", "MONOCHROME2"))
    n = int(ds.get("NumberOfFrames", 1) or 1)
    k = pick_frame(n, frame)
    arr = decode_frame(ds, k if n > 1 else None)
    if photometric == "PALETTE COLOR":  # indices through the LUT to RGB; a 16-bit LUT to 8 bits
        rgb = apply_color_lut(arr, ds)
        arr = rgb / 257.0 if rgb.dtype == np.uint16 else rgb
    gray = to_gray(arr, photometric)[region["y0"] : region["y1"] + 1, region["x0"] : region["x1"] + 1]
    meta = {
        "mm_per_px": region["mm_per_px"],
        "shape": list(gray.shape),
        "region_index": index,
        "region_bounds_xyxy": [region[k] for k in ("x0", "y0", "x1", "y1")],
        **{k: region[k] for k in ("bounds_clamped", "tissue_regions", "equal_views", "region_rule") if k in region},
        "photometric": photometric,
        "frames": n,
        "frame_used": k,
        "frame_rule": str(frame),
    }
    return gray, meta


# ---------------------------------------------------------------- entry point


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description="ingest one ultrasound DICOM or one WSI")
    p.add_argument("kind", choices=["ultrasound", "wsi"])
    p.add_argument("source")
    p.add_argument("--image", required=True)
    p.add_argument("--meta", required=True)
    p.add_argument("--frame", default="last")
    p.add_argument("--thumb-um", type=float, default=16.0)
    p.add_argument(
        "--um-per-px", default="", help="slide pixel size from the sheet (overrides the file's); empty: from the file"
    )
    p.add_argument("--participant")
    p.add_argument("--biopsy")
    a = p.parse_args(argv)

    def go() -> None:
        if a.kind == "ultrasound":
            img, meta = read_ultrasound(a.source, a.frame)
        else:
            img, meta = read_slide(a.source, a.thumb_um, float(a.um_per_px) if a.um_per_px else None)
        imsave(a.image, img, check_contrast=False)
        Path(a.meta).write_text(json.dumps(meta, indent=1))
        print(f"ingested {a.kind}: {img.shape[1]}x{img.shape[0]} px")

    run_cli(go, a.participant, a.biopsy, a.source)


if __name__ == "__main__":
    main()
