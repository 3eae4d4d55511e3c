"""Whole slide images: one low-resolution RGB view of a slide, and its pixel size.

Vendor formats (Aperio SVS, DICOM WSI, Hamamatsu NDPI, 3DHistech MRXS, Leica
SCN, Philips TIFF, Sakura, Trestle, Ventana) are read through OpenSlide.  OME-TIFF and
generic TIFF are read through tifffile, whose imagecodecs backends decode more
TIFF codecs than OpenSlide's generic-tiff driver (JPEG 2000, JPEG XL/XR, LERC,
LZMA, PNG, WebP, 12-bit JPEG) and which knows OME metadata.

Either way the chosen pyramid level is read one tile at a time and averaged down
to the target resolution, so memory is bounded by the output, not the slide.
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import openslide
import tifffile

from workflow_scripts.errors import InputError

PLAUSIBLE_UM = (0.05, 20.0)  # µm/px of any real slide scanner or microscope camera
SOFTWARE_DPI = (1.0, 72.0, 96.0, 150.0, 300.0)  # resolution tags that image software writes by default
TILE = 1024  # px per side of one OpenSlide read
OVERRIDE_HINT = "give the pixel size in the wsi_um_per_px column of biopsies.tsv (about 0.25 at 40x, 0.5 at 20x)"

Tiles = Iterator[tuple[int, int, np.ndarray]]  # (y, x, h x w x 3 uint8) pieces of one level


# ------------------------------------------------------------------ pixel size


def plausible(um: float | None) -> bool:
    """True when a pixel size (µm) is one a scanner could have written."""
    return um is not None and np.isfinite(um) and PLAUSIBLE_UM[0] <= um <= PLAUSIBLE_UM[1]


def tag_um_per_px(page: tifffile.TiffPage) -> tuple[float | None, str]:
    """Pixel size from the TIFF resolution tags, or None with the reason it does not count."""
    res, unit = page.tags.get("XResolution"), page.tags.get("ResolutionUnit")
    if not res:
        return None, "no resolution tags"
    num, den = res.value
    per_unit = num / den if den else 0.0
    unit_value = unit.value if unit else 2  # TIFF's default unit is the inch
    if unit_value not in (2, 3) or per_unit <= 0:
        return None, "resolution tags without a physical unit"
    dpi = per_unit if unit_value == 2 else per_unit * 2.54
    um = (25400.0 if unit_value == 2 else 10000.0) / per_unit
    if any(abs(dpi - d) < 0.01 for d in SOFTWARE_DPI):
        return None, f"resolution tags of {dpi:g} dpi ({um:.4g} µm/px), a software default, not a scanner calibration"
    if not plausible(um):
        return (
            None,
            f"resolution tags of {um:.4g} µm/px, outside the {PLAUSIBLE_UM[0]}-{PLAUSIBLE_UM[1]} µm/px of real slides",
        )
    return um, "TIFF resolution tags"


def ome_um_per_px(ome: str) -> float | None:
    """PhysicalSizeX of the first OME image, in µm."""
    m = re.search(r'PhysicalSizeX="([0-9.eE+-]+)"', ome)
    if not m:
        return None
    unit = re.search(r'PhysicalSizeXUnit="([^"]+)"', ome)
    scale = {"nm": 1e-3, "mm": 1e3, "cm": 1e4, "m": 1e6}.get(unit.group(1) if unit else "µm", 1.0)
    return float(m.group(1)) * scale


def tiff_um_per_px(tif: tifffile.TiffFile) -> tuple[float | None, str]:
    """Pixel size of a TIFF slide: OME PhysicalSizeX, an Aperio MPP, or plausible resolution tags."""
    if tif.is_ome and tif.ome_metadata:
        um = ome_um_per_px(tif.ome_metadata)
        if um is not None:
            return (
                (um, "OME PhysicalSizeX")
                if plausible(um)
                else (None, f"OME PhysicalSizeX of {um:.4g} µm/px is implausible")
            )
    m = re.search(r"MPP\s*=\s*([0-9.]+)", tif.pages[0].description or "")
    if m and plausible(float(m.group(1))):
        return float(m.group(1)), "Aperio MPP"
    return tag_um_per_px(tif.pages[0])


def choose(file_um: float | None, reason: str, sheet_um: float | None) -> tuple[float, str]:
    """The pixel size used: the sheet's override, else the file's; unknown is an error."""
    if sheet_um is not None:
        if not plausible(sheet_um):
            raise InputError(
                f"wsi_um_per_px {sheet_um} is outside {PLAUSIBLE_UM[0]}-{PLAUSIBLE_UM[1]} µm/px",
                "give µm per pixel, not mm or pixels per inch",
            )
        return float(sheet_um), "biopsies.tsv wsi_um_per_px"
    if file_um is None:
        raise InputError(f"slide pixel size is unknown: {reason}", OVERRIDE_HINT)
    return file_um, reason


# ------------------------------------------------------------------ reading


def level_plan(level_um: list[float], target_um: float) -> tuple[int, int]:
    """(level, integer averaging factor): the coarsest level at least as fine as the target."""
    ok = [i for i, u in enumerate(level_um) if u <= target_um * 1.01] or [0]
    k = max(ok)
    return k, max(1, int(target_um / level_um[k] + 0.01))


def downsample(tiles: Tiles, shape: tuple[int, int], f: int) -> np.ndarray:
    """Average f x f blocks of a level given as tiles; only the output is held in memory."""
    h, w = -(-shape[0] // f), -(-shape[1] // f)
    acc, n = np.zeros((h, w, 3), np.float64), np.zeros((h, w, 1), np.float64)
    for y, x, t in tiles:
        rows = _block_starts(y, t.shape[0], f)
        cols = _block_starts(x, t.shape[1], f)
        s = np.add.reduceat(np.add.reduceat(t.astype(np.float32), rows, axis=0), cols, axis=1)
        c = np.add.reduceat(np.add.reduceat(np.ones(t.shape[:2] + (1,), np.float32), rows, axis=0), cols, axis=1)
        oy, ox = y // f, x // f  # a partial first block continues the previous tile's output row
        acc[oy : oy + s.shape[0], ox : ox + s.shape[1]] += s
        n[oy : oy + s.shape[0], ox : ox + s.shape[1]] += c
    return np.round(acc / np.maximum(n, 1)).astype(np.uint8)


def _block_starts(start: int, length: int, f: int) -> np.ndarray:
    """Offsets within a tile where a new f-block begins (always including 0)."""
    first = (-start) % f
    return np.unique(np.r_[0, np.arange(first, length, f)]).astype(np.intp)


def to_rgb8(t: np.ndarray, photometric: int, bits: int = 8) -> np.ndarray:
    """One decoded tile (h, w, samples) as 8-bit RGB: grey replicated, alpha dropped, 9-16 bits scaled."""
    if t.dtype == np.uint16:
        t = np.round(t.astype(np.float32) * (255.0 / ((1 << bits) - 1))).clip(0, 255).astype(np.uint8)
    elif t.dtype != np.uint8:
        raise InputError(
            f"slide samples are {t.dtype}; tractmap reads 8- or 16-bit brightfield slides",
            "export the slide as 8-bit RGB",
        )
    if t.shape[2] in (1, 2):  # grey (+ alpha)
        g = t[..., :1]
        t = np.repeat(255 - g if photometric == 0 else g, 3, axis=2)  # MINISWHITE: 0 is white
    return t[..., :3]


def tiff_tiles(page: tifffile.TiffPage) -> Tiles:
    """Decoded tiles or strips of one TIFF page via tifffile, planar-separate samples placed as channels."""
    spp = page.samplesperpixel
    if page.photometric not in (0, 1, 2, 6):
        raise InputError(f"slide photometric {page.photometric!r} is not RGB or grey", "export the slide as RGB")
    planar = page.planarconfig == 2 and spp > 1
    pending: dict[tuple[int, int], list] = {}
    for seg, (s, _, y, x, _), _ in page.segments():
        seg = seg[0][: page.imagelength - y, : page.imagewidth - x]  # tiles at the edge are padded
        if not planar:
            yield y, x, to_rgb8(seg, page.photometric, page.bitspersample)
            continue
        parts = pending.setdefault((y, x), [None] * spp)
        parts[s] = seg[..., 0]
        if all(p is not None for p in parts):
            del pending[(y, x)]
            yield y, x, to_rgb8(np.stack(parts, axis=-1), page.photometric, page.bitspersample)


def openslide_tiles(slide, level: int) -> Tiles:
    """RGB tiles of one OpenSlide level; transparent (unscanned) pixels become white."""
    w, h = slide.level_dimensions[level]
    ds = slide.level_downsamples[level]
    for y in range(0, h, TILE):
        for x in range(0, w, TILE):
            rgba = np.asarray(
                slide.read_region((round(x * ds), round(y * ds)), level, (min(TILE, w - x), min(TILE, h - y)))
            )
            if rgba[..., 3].min() == 255:
                yield y, x, rgba[..., :3]
                continue
            a = rgba[..., 3:].astype(np.float32) / 255.0
            yield y, x, np.round(rgba[..., :3] * a + 255.0 * (1.0 - a)).astype(np.uint8)


def read_openslide(path: str, target_um: float, sheet_um: float | None) -> tuple[np.ndarray, dict]:
    """A vendor slide through OpenSlide."""
    try:
        slide = openslide.OpenSlide(path)
    except openslide.OpenSlideError as e:
        raise InputError(
            f"OpenSlide cannot open this slide: {e}", "the file is damaged or uses an unsupported codec; re-export it"
        ) from None
    with slide:
        mpp = slide.properties.get(openslide.PROPERTY_NAME_MPP_X)
        vendor = slide.properties.get(openslide.PROPERTY_NAME_VENDOR, "?")
        file_um = float(mpp) if mpp else None
        reason = (
            f"{vendor} openslide.mpp-x"
            if plausible(file_um)
            else f"{vendor} slide without a plausible openslide.mpp-x ({mpp})"
        )
        um, source = choose(file_um if plausible(file_um) else None, reason, sheet_um)
        shapes = [[h, w] for w, h in slide.level_dimensions]
        ums = [um * d for d in slide.level_downsamples]
        k, f = level_plan(ums, target_um)
        try:
            img = downsample(openslide_tiles(slide, k), tuple(shapes[k]), f)
        except openslide.OpenSlideError as e:
            raise InputError(
                f"a slide tile could not be decoded (OpenSlide: {e})", "the file is damaged; re-export or re-scan it"
            ) from None
    return img, {
        "format": vendor,
        "reader": "openslide",
        "um_per_px": um,
        "um_source": source,
        "level": k,
        "level_um_per_px": ums[k] * f,
        "level_shapes": shapes,
        "level_um": ums,
        "averaged": f,
    }


def tiff_levels(tif: tifffile.TiffFile) -> list[tifffile.TiffPageSeries]:
    """Pyramid levels of the first image series; each must be one 2-D plane (YX, YXS or SYX).

    A generic stack of same-shape pages (tifffile's axis I) is read from its first
    page, as TIFF viewers show it; OME channels, focal planes or time points are refused.
    """
    series = tif.series[0]
    for lv in series.levels:
        axes = "".join(a for a, n in zip(lv.axes, lv.shape, strict=True) if (n > 1 or a in "YX") and a != "I")
        if axes not in ("YX", "YXS", "SYX"):
            extra = ", ".join(f"{a}={n}" for a, n in zip(lv.axes, lv.shape, strict=True) if a not in "YXS" and n > 1)
            raise InputError(
                f"the slide's image series has axes {lv.axes} ({extra}): more than one image plane",
                "export one 2-D RGB image per slide (e.g. the brightfield plane only)",
            )
    return series.levels


def read_tiff(path: str, target_um: float, sheet_um: float | None) -> tuple[np.ndarray, dict]:
    """An OME-TIFF or generic TIFF slide through tifffile (and imagecodecs)."""
    try:
        tif = tifffile.TiffFile(path)
    except Exception as e:  # noqa: BLE001 - any parse failure means "not a TIFF we can read"
        raise InputError(
            f"not a slide format tractmap reads ({type(e).__name__}: {e})",
            "use an OpenSlide format (SVS, NDPI, MRXS, SCN, Philips TIFF, DICOM WSI), OME-TIFF or tiled TIFF",
        ) from None
    with tif:
        um, source = choose(*tiff_um_per_px(tif), sheet_um)
        levels = tiff_levels(tif)
        shapes = [[lv.keyframe.imagelength, lv.keyframe.imagewidth] for lv in levels]
        ums = [um * shapes[0][1] / s[1] for s in shapes]
        k, f = level_plan(ums, target_um)
        page = levels[k].keyframe
        try:
            img = downsample(tiff_tiles(page), tuple(shapes[k]), f)
        except InputError:
            raise
        except Exception as e:  # noqa: BLE001 - codec errors come from many libraries
            codec = getattr(page.compression, "name", page.compression)
            raise InputError(
                f"slide tiles could not be decoded (compression {codec}: {type(e).__name__}: {e})",
                "the file is damaged or uses a codec imagecodecs lacks; re-export it as JPEG or LZW tiled TIFF",
            ) from None
    return img, {
        "format": "ome-tiff" if tif.is_ome else "tiff",
        "reader": "tifffile",
        "um_per_px": um,
        "um_source": source,
        "pages_in_series": len(levels[0].pages),
        "page_used": 0,
        "level": k,
        "level_um_per_px": ums[k] * f,
        "level_shapes": shapes,
        "level_um": ums,
        "averaged": f,
    }


def read_slide(path: str | Path, target_um: float, sheet_um: float | None = None) -> tuple[np.ndarray, dict]:
    """An RGB view of a slide at about ``target_um`` µm/px (never coarser), plus its metadata.

    ``level_um_per_px`` is the µm/px of the returned image; ``um_per_px`` that of level 0.
    """
    path = str(path)
    if not Path(path).is_file():
        raise InputError("slide file does not exist", "fix the wsi path in biopsies.tsv")
    vendor = openslide.OpenSlide.detect_format(path)
    if vendor and vendor != "generic-tiff":
        return read_openslide(path, target_um, sheet_um)
    return read_tiff(path, target_um, sheet_um)


# ------------------------------------------------------------------ one region at full resolution


def tiff_region(page: tifffile.TiffPage, x: int, y: int, w: int, h: int) -> np.ndarray:
    """RGB pixels [y, y+h) x [x, x+w) of one TIFF page (inside it): only the tiles or strips that overlap
    them are read and decoded."""
    sh, sw = (page.tilelength, page.tilewidth) if page.is_tiled else (page.rowsperstrip, page.imagewidth)
    sh = min(sh or page.imagelength, page.imagelength)
    ny, nx = -(-page.imagelength // sh), -(-page.imagewidth // sw)
    spp = page.samplesperpixel
    planes = spp if page.planarconfig == 2 and spp > 1 else 1
    raw = np.zeros((h, w, spp), page.dtype)
    decode, tables = page.decode, page.jpegtables  # first: their first access may read the file
    fh = page.parent.filehandle
    for ty in range(y // sh, min(-(-(y + h) // sh), ny)):
        for tx in range(x // sw, min(-(-(x + w) // sw), nx)):
            oy, ox = ty * sh - y, tx * sw - x  # the segment's place in the region
            ys = slice(max(oy, 0), min(oy + sh, h, page.imagelength - y))
            xs = slice(max(ox, 0), min(ox + sw, w, page.imagewidth - x))
            for s in range(planes):
                i = s * ny * nx + ty * nx + tx
                fh.seek(page.dataoffsets[i])
                seg = decode(fh.read(page.databytecounts[i]), i, jpegtables=tables)[0][0]
                piece = seg[ys.start - oy : ys.stop - oy, xs.start - ox : xs.stop - ox]
                raw[ys, xs, s : s + 1 if planes > 1 else spp] = piece
    return to_rgb8(raw, page.photometric, page.bitspersample)


def read_region(path: str | Path, level: int, x: int, y: int, w: int, h: int) -> tuple[np.ndarray, list[list[int]]]:
    """RGB pixels [y, y+h) x [x, x+w) of one pyramid level (numbered as :func:`read_slide` numbers them in
    ``level_shapes``), read by region, never the whole level; and the slide's level shapes (h, w), by which a
    caller checks that the file is still the one it read before."""
    path = str(path)
    if not Path(path).is_file():
        raise InputError("slide file does not exist", "fix the wsi path in biopsies.tsv")
    vendor = openslide.OpenSlide.detect_format(path)
    if vendor and vendor != "generic-tiff":
        with openslide.OpenSlide(path) as slide:
            shapes = [[lh, lw] for lw, lh in slide.level_dimensions]
            ds = slide.level_downsamples[level]
            rgba = np.asarray(slide.read_region((round(x * ds), round(y * ds)), level, (w, h)))
            a = rgba[..., 3:].astype(np.float32) / 255.0
            return np.round(rgba[..., :3] * a + 255.0 * (1.0 - a)).astype(np.uint8), shapes
    with tifffile.TiffFile(path) as tif:
        levels = tiff_levels(tif)
        shapes = [[lv.keyframe.imagelength, lv.keyframe.imagewidth] for lv in levels]
        return tiff_region(levels[level].keyframe, x, y, w, h), shapes
