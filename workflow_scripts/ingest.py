"""Ingest: calibrated grayscale ultrasound (DICOM or a PNG/JPEG/TIFF export), and a low-resolution WSI view.

Only technical attributes are read from DICOM headers (an allow-list below);
patient and study attributes are never copied anywhere, nor is any text, EXIF or
TIFF tag of an image export (only its pixels are read).  An export, or a DICOM
without ``SequenceOfUltrasoundRegions``, takes its pixel spacing from the
``us_mm_per_px`` column of biopsies.tsv; a depth ruler burnt into the frame only
suggests a value in the error's hint.  Slides are read by
:mod:`workflow_scripts.slide` (OpenSlide or tifffile), tile by tile.
"""

from __future__ import annotations

import argparse
import json
import re
from pathlib import Path

import numpy as np
import PIL.Image
import pydicom
import tifffile
from pydicom.pixels import apply_color_lut, pixel_array
from skimage.io import imsave

from workflow_scripts.errors import InputError, run_cli
from workflow_scripts.slide import read_slide

TISSUE, SPATIAL_2D, UNITS_CM = 1, 1, 3
SPACING_RANGE_MM = (0.005, 1.0)  # plausible ultrasound pixel spacings (also in schemas/biopsies.schema.yaml)
CONFLICT_REL = 0.02  # a DICOM calibration and us_mm_per_px further apart than this send the biopsy to review
SOURCE_DICOM, SOURCE_SHEET = "dicom SequenceOfUltrasoundRegions", "biopsies.tsv us_mm_per_px"
SPACING_HINT = "add us_mm_per_px (mm per pixel, from the scanner's depth setting) to biopsies.tsv"
MAGIC = {b"\x89PNG\r\n\x1a\n": "png", b"\xff\xd8\xff": "jpeg", b"II*\x00": "tiff", b"MM\x00*": "tiff"}
MAGIC.update({b"II+\x00": "tiff", b"MM\x00+": "tiff"})  # BigTIFF


# ---------------------------------------------------------------- ultrasound


def parse_spacing(text: str | float | None) -> tuple[float, float] | None:
    """``us_mm_per_px`` as (x, y) mm per pixel: one number, or x and y ("0.05,0.06" or "0.05 0.06"); empty: None."""
    if text is None or (isinstance(text, float) and text != text) or not str(text).strip():
        return None
    parts = [p for p in re.split(r"[,\s]+", str(text).strip()) if p]
    try:
        values = [float(p) for p in parts]
    except ValueError:
        values = []
    lo, hi = SPACING_RANGE_MM
    if len(values) not in (1, 2) or not all(lo <= v <= hi for v in values):
        raise InputError(
            f"us_mm_per_px {text!r} is not one or two pixel spacings between {lo} and {hi} mm",
            "give mm per pixel as one number (e.g. 0.05) or x and y (e.g. 0.05,0.06); a 4 cm deep image of "
            "800 rows is 0.05 mm/px",
        )
    return (values[0], values[-1])


def tissue_region(ds: pydicom.Dataset) -> tuple[int, dict] | None:
    """The 2-D tissue region (the largest, if there are several), validated; None without any region.

    The region's ``mm_per_px`` is None, with ``uncalibrated`` saying why, when it has no usable
    physical spacing (the bounds still hold).
    """
    regions = ds.get("SequenceOfUltrasoundRegions")
    if not regions:
        return None
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
    mm, why = None, ""
    if not dx or not dy or float(dx) <= 0 or float(dy) <= 0:
        why = "tissue region has no PhysicalDeltaX/PhysicalDeltaY: missing resolution"
    elif ux != UNITS_CM or uy != UNITS_CM:
        why = f"tissue region units are {ux}/{uy}, not 3 (cm)"
    else:
        mm = [float(dx) * 10, float(dy) * 10]
    return index, {
        "x0": x0,
        "y0": y0,
        "x1": x1,
        "y1": y1,
        "mm_per_px": mm,
        "uncalibrated": why,
        "bounds_clamped": clamped,
        "tissue_regions": len(tissue),
        "equal_views": ties,
        "region_rule": "largest tissue region; equal views: the leftmost, then the topmost",
    }


def to_gray(frame: np.ndarray, photometric: str) -> np.ndarray:
    """uint8 grayscale from MONOCHROME1/2, RGB or (already converted) YBR pixels (a 4th, alpha, channel dropped)."""
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


def pick_frame(n_frames: int, choice: str | int | None) -> int:
    """Frame index for a cine: 'last' (the frozen, saved frame), 'first' or an index (config ingest.frame).

    ``None`` (no choice made) reads a single image and refuses a cine: which frame is a setting, not a guess."""
    if choice is None:
        if n_frames == 1:
            return 0
        raise InputError(
            f"a cine of {n_frames} frames, and no frame chosen",
            "set ingest.frame in config.yaml ('last': the frozen frame; 'first'; or an index), "
            "or pass --frame (or --config) to tractmap-infer",
        )
    if choice == "last":
        return n_frames - 1
    if choice == "first":
        return 0
    k = int(choice)
    if not -n_frames <= k < n_frames:
        raise InputError(
            f"frame {k} requested but the file has {n_frames} frames",
            "set ingest.frame to 'last', 'first' or a valid index",
        )
    return k % n_frames


def file_format(path: str | Path) -> str:
    """'dicom', 'png', 'jpeg' or 'tiff' by the file's first bytes (not its name).

    'DICM' after the 128-byte preamble wins: a preamble may itself be a TIFF header (dual-personality
    DICOM files).  Anything unrecognised is tried as DICOM (a file without preamble).
    """
    with open(path, "rb") as f:
        head = f.read(132)
    if head[128:132] == b"DICM":
        return "dicom"
    return next((fmt for magic, fmt in MAGIC.items() if head.startswith(magic)), "dicom")


def read_export(path: str | Path, fmt: str, frame: str | int | None) -> tuple[np.ndarray, dict]:
    """The whole frame of a PNG/JPEG/TIFF export as uint8 grey, converted as an RGB DICOM is (:func:`to_gray`).

    Only pixels are read: text chunks, EXIF and TIFF tags never leave this function.  A palette or
    CMYK image becomes RGB, alpha is dropped, 16-bit grey is scaled by its maximum (as 16-bit DICOM
    pixels are); a multi-page TIFF is a cine whose page ``frame`` is used.
    """
    try:
        if fmt == "tiff":
            with tifffile.TiffFile(path) as tif:
                n = len(tif.pages)
                if not n:
                    raise ValueError("no pages")
                page = tif.pages[pick_frame(n, frame)]
                arr, white = page.asarray(), page.photometric == tifffile.PHOTOMETRIC.MINISWHITE
            photometric = "MONOCHROME1" if white else ("RGB" if arr.ndim == 3 else "MONOCHROME2")
            if arr.ndim == 3 and arr.shape[-1] == 2:  # grey + alpha
                arr, photometric = arr[..., 0], "MONOCHROME1" if white else "MONOCHROME2"
        else:
            with PIL.Image.open(path) as im:
                n = 1
                if im.mode in ("L", "I", "I;16", "I;16B", "I;16L", "F"):
                    arr, photometric = np.asarray(im), "MONOCHROME2"
                else:  # RGB, RGBA, LA, P, CMYK, YCbCr: to RGB, alpha dropped
                    arr, photometric = np.asarray(im.convert("RGB")), "RGB"
    except (OSError, ValueError, SyntaxError, PIL.Image.DecompressionBombError, tifffile.TiffFileError) as e:
        raise InputError(
            f"not a readable {fmt.upper()} image ({type(e).__name__})", "re-export the frame from the scanner"
        ) from None
    if arr.ndim not in (2, 3) or min(arr.shape[:2]) < 16:
        raise InputError(f"a {fmt.upper()} image of shape {arr.shape} is not an ultrasound frame", "check the path")
    return to_gray(arr, photometric), {
        "photometric": photometric,
        "frames": n,
        "frame_used": pick_frame(n, frame),
    }


def content_region(gray: np.ndarray, level: int = 10, share: float = 0.3) -> dict:
    """The image inside an uncalibrated frame: rows and columns trimmed from the edges while fewer than
    ``share`` of their pixels exceed grey ``level`` (black screen with text, ticks and icons).

    Speckle fills nearly every row and column of the image itself, screen furniture only a few; the
    whole frame is kept when the trim would leave less than half of it in either direction.
    """
    bright = gray > level
    rows, cols = np.flatnonzero(bright.mean(axis=1) >= share), np.flatnonzero(bright.mean(axis=0) >= share)
    h, w = gray.shape
    x0, y0, x1, y1 = 0, 0, w - 1, h - 1
    rule = "whole frame (no furniture to trim, or too little image left)"
    if len(rows) and len(cols):
        cx0, cy0, cx1, cy1 = int(cols[0]), int(rows[0]), int(cols[-1]), int(rows[-1])
        if (cx1 - cx0 + 1) >= w / 2 and (cy1 - cy0 + 1) >= h / 2:
            x0, y0, x1, y1 = cx0, cy0, cx1, cy1
            rule = f"rows/columns trimmed from the edges while under {share:.0%} of their pixels exceed grey {level}"
    return {"x0": x0, "y0": y0, "x1": x1, "y1": y1, "region_rule": rule}


def ruler_period(gray: np.ndarray, level: int = 150, min_ticks: int = 6) -> dict | None:
    """A depth ruler's tick period in px: the column with the most evenly spaced bright runs (ticks), or None.

    In each column the runs of pixels brighter than ``level`` are candidate ticks; a column counts
    when at least ``min_ticks`` of them follow one spacing (each gap within 15% of a whole multiple
    of the median gap, so a missing tick or a label is tolerated).  The period is a least-squares fit
    of the tick centres against their tick numbers.  Speckle, the needle and calipers give irregular
    or too few runs.
    """
    best = None
    h = gray.shape[0]
    for x in range(gray.shape[1]):
        on = np.concatenate([[False], gray[:, x] > level, [False]])
        edges = np.flatnonzero(np.diff(on.astype(np.int8)))
        starts, ends = edges[::2], edges[1::2]
        if len(starts) < min_ticks or np.max(ends - starts) > h / 20:  # long runs: tissue or a line, not ticks
            continue
        centres = (starts + ends - 1) / 2.0
        gaps = np.diff(centres)
        d = float(np.median(gaps))
        if d < 3:
            continue
        k = gaps / d
        if np.mean(np.abs(k - np.round(k)) < 0.15) < 0.9 or np.any(np.round(k) < 1):
            continue
        idx = np.concatenate([[0], np.cumsum(np.round(k))])
        period = float(np.polyfit(idx, centres, 1)[0])
        score = len(centres)
        if best is None or score > best["ticks"]:
            best = {"column": x, "ticks": score, "period_px": period}
    return best


def ruler_hint(gray: np.ndarray) -> str:
    """What a depth ruler in the frame suggests about the spacing (stated as a guess, for the error's hint)."""
    found = ruler_period(gray)
    if found is None:
        return "no depth ruler with evenly spaced ticks was found in the frame to suggest a value"
    p, rows = found["period_px"], gray.shape[0]
    lo, hi = SPACING_RANGE_MM
    guesses = [
        f"{mm / p:.4g} mm/px if they are {mm} mm apart (a {rows * mm / p / 10:.1f} cm deep frame)"
        for mm in (1, 5, 10)
        if lo <= mm / p <= hi
    ]
    return (
        f"a depth ruler (column {found['column']}, {found['ticks']} ticks) has ticks every {p:.1f} px, which "
        f"suggests about {'; '.join(guesses) or 'nothing plausible'}; check which against the scanner's depth "
        "setting (tractmap does not use this guess by itself)"
    )


def calibration(
    region: dict | None, manual: tuple[float, float] | None, uncalibrated: str, gray: np.ndarray
) -> tuple[list[float], str, str]:
    """(mm_per_px, source, conflict): the sheet's us_mm_per_px wins when set; else the DICOM's; else an error.

    ``conflict`` names both values when they differ by more than CONFLICT_REL; the caller records it
    and the tract step sends the biopsy to review.
    """
    own = region.get("mm_per_px") if region else None
    if manual is None:
        if own is None:
            raise InputError(f"{uncalibrated}: the pixel spacing is unknown", f"{SPACING_HINT}; {ruler_hint(gray)}")
        return own, SOURCE_DICOM, ""
    sheet = [float(v) for v in manual]
    conflict = ""
    if own is not None and any(abs(s - o) > CONFLICT_REL * o for s, o in zip(sheet, own, strict=True)):
        fmt = lambda v: "x".join(dict.fromkeys(f"{x:.4g}" for x in v))  # noqa: E731 - "0.05" or "0.05x0.06"
        conflict = f"DICOM {fmt(own)} mm/px vs us_mm_per_px {fmt(sheet)} mm/px (us_mm_per_px used)"
    return sheet, SOURCE_SHEET, conflict


def read_ultrasound(
    path: str | Path, *, frame: str | int | None, mm_per_px: tuple[float, float] | None = None
) -> tuple[np.ndarray, dict]:
    """Grayscale tissue-region image and its calibration metadata (no header identities, no export text).

    ``frame`` picks a cine's frame (config ingest.frame; :func:`pick_frame`).
    A DICOM's tissue region gives the bounds and, unless ``mm_per_px`` (the sheet's us_mm_per_px) is
    set, the spacing.  An export or a DICOM without regions has its furniture trimmed
    (:func:`content_region`) and needs ``mm_per_px``.
    """
    fmt = file_format(path)
    if fmt == "dicom":
        try:
            ds = pydicom.dcmread(path)
        except Exception as e:  # pydicom raises many types for a broken file
            raise InputError(
                f"neither a readable DICOM file nor a PNG/JPEG/TIFF image ({type(e).__name__})",
                "check the path in biopsies.tsv",
            ) from None
        found = tissue_region(ds)
        photometric = str(ds.get("PhotometricInterpretation", "MONOCHROME2"))
        n = int(ds.get("NumberOfFrames", 1) or 1)
        k = pick_frame(n, frame)
        arr = decode_frame(ds, k if n > 1 else None)
        if photometric == "PALETTE COLOR":  # indices through the LUT to RGB; a 16-bit LUT to 8 bits
            rgb = apply_color_lut(arr, ds)
            arr = rgb / 257.0 if rgb.dtype == np.uint16 else rgb
        full = to_gray(arr, photometric)
        info = {"photometric": photometric, "frames": n, "frame_used": k}
        index, region = found if found else (-1, None)
        why = region["uncalibrated"] if region else "no SequenceOfUltrasoundRegions in the DICOM"
    else:
        full, info = read_export(path, fmt, frame)
        index, region, why = -1, None, f"a {fmt.upper()} export carries no pixel spacing"
    mm, source, conflict = calibration(region, mm_per_px, why, full)
    region = region or content_region(full)
    gray = full[region["y0"] : region["y1"] + 1, region["x0"] : region["x1"] + 1]
    meta = {
        "format": fmt,
        "mm_per_px": mm,
        "calibration_source": source,
        **({"calibration_conflict": conflict} if conflict else {}),
        "shape": list(gray.shape),
        "region_index": index,
        "region_bounds_xyxy": [region[k] for k in ("x0", "y0", "x1", "y1")],
        **{k: region[k] for k in ("bounds_clamped", "tissue_regions", "equal_views", "region_rule") if k in region},
        **info,
        "frame_rule": str(frame),
    }
    return gray, meta


# ---------------------------------------------------------------- entry point


def parser() -> argparse.ArgumentParser:
    """The command line; every setting that config.yaml carries is a required option the rule passes."""
    p = argparse.ArgumentParser(description="ingest one ultrasound frame (DICOM or PNG/JPEG/TIFF export) or one WSI")
    sub = p.add_subparsers(dest="kind", required=True)
    us = sub.add_parser("ultrasound", help="one ultrasound frame: a DICOM, or a PNG/JPEG/TIFF export")
    us.add_argument("--frame", required=True, help="config ingest.frame: a cine's frame (last, first or an index)")
    us.add_argument(
        "--us-mm-per-px",
        default="",
        help="ultrasound pixel spacing from the sheet (x or 'x,y' mm; wins over the DICOM's); empty: from the DICOM",
    )
    wsi = sub.add_parser("wsi", help="one slide, read at the level orientation uses")
    wsi.add_argument("--thumb-um", type=float, required=True, help="config ingest.thumb_um_per_px: the level read")
    wsi.add_argument(
        "--um-per-px", default="", help="slide pixel size from the sheet (overrides the file's); empty: from the file"
    )
    for s in (us, wsi):
        s.add_argument("source")
        s.add_argument("--image", required=True)
        s.add_argument("--meta", required=True)
        s.add_argument("--participant")
        s.add_argument("--biopsy")
    return p


def main(argv: list[str] | None = None) -> None:
    a = parser().parse_args(argv)

    def go() -> None:
        if a.kind == "ultrasound":
            img, meta = read_ultrasound(a.source, frame=a.frame, mm_per_px=parse_spacing(a.us_mm_per_px))
        else:
            img, meta = read_slide(a.source, a.thumb_um, float(a.um_per_px) if a.um_per_px else None)
        imsave(a.image, img, check_contrast=False)
        Path(a.meta).write_text(json.dumps(meta, indent=1))
        print(f"ingested {a.kind}: {img.shape[1]}x{img.shape[0]} px")

    run_cli(go, a.participant, a.biopsy, a.source)


if __name__ == "__main__":
    main()
