"""The images tractmap-review renders itself: full-resolution tiles around a core's ends, and the slide's
evidence overlay (every core's outline, the dye the orientation counted).

Each is rendered once, on first request, into ``<results>/.review_cache/<participant>/<biopsy>/``, under a
name that carries a digest of what it was made from (a rerun of the pipeline makes a new name, so a stale
image is never served).  Tiles are read by region from the slide file (:func:`workflow_scripts.slide.read_region`),
never the whole slide.  Nothing here takes a path from a request: the app passes the queue's own biopsy key,
a core end (0 or 1) and a pyramid level, each checked against the biopsy's records first.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import threading
from collections.abc import Callable
from pathlib import Path

import numpy as np
import PIL.Image

CACHE = ".review_cache"
TILE_PX = 512  # side of one full-resolution tile (px of its level)
SAFE_ID = re.compile(r"[A-Za-z0-9][A-Za-z0-9_-]*")  # the sheets' ID pattern: safe as a folder name
# overlay colours (RGBA): this biopsy's core, the slide's other cores, the dye counted (edge; a light fill
# leaves the dye's own colour visible beneath)
OUTLINE = {
    "this": (255, 212, 0, 255),
    "other": (0, 200, 255, 220),
    "dye": (0, 255, 0, 255),
    "dye_fill": (0, 255, 0, 70),
}
_RENDER = threading.Lock()  # one render at a time; a second request for the same image waits and reuses it


def digest(*parts: bytes | str) -> str:
    """A short digest of what an image is made from (its cache name changes when they do)."""
    h = hashlib.sha1()
    for p in parts:
        h.update(p.encode() if isinstance(p, str) else p)
        h.update(b"\0")
    return h.hexdigest()[:12]


def cache_dir(results: Path, key: tuple[str, str]) -> Path:
    """A biopsy's cache folder; IDs that the sheets' pattern would not allow are refused (never a path)."""
    if not all(SAFE_ID.fullmatch(k) for k in key):
        raise ValueError(f"biopsy {key[0]}/{key[1]}: IDs outside [A-Za-z0-9_-] cannot name a cache folder")
    return results / CACHE / key[0] / key[1]


def cached(path: Path, make: Callable[[], np.ndarray]) -> Path:
    """``path``, rendered by ``make`` (an RGB or RGBA array) and written atomically if it is not there yet."""
    if path.is_file():
        return path
    with _RENDER:
        if not path.is_file():
            path.parent.mkdir(parents=True, exist_ok=True)
            tmp = path.with_name(f".{path.name}.{os.getpid()}.{threading.get_ident()}.tmp")
            PIL.Image.fromarray(make()).save(tmp, format="PNG")
            os.replace(tmp, path)
    return path


# ------------------------------------------------------------------ tiles around the core's ends


def zoom_levels(meta: dict) -> list[int]:
    """The slide's pyramid levels finer than its thumbnail (level 0, full resolution, always among them)."""
    finer = [k for k, um in enumerate(meta["level_um"]) if um < meta["level_um_per_px"] * 0.99]
    return finer or [0]


def tile_box(end_xy: list[float], meta: dict, level: int, size: int = TILE_PX) -> dict:
    """The tile of ``level`` around a core end given in thumbnail px: its origin and size (level px), where the
    end falls in it, and its µm per px.  The tile stays inside the level (it shifts at the slide's edges)."""
    scale = meta["level_um_per_px"] / meta["level_um"][level]
    h, w = meta["level_shapes"][level]
    end = (np.asarray(end_xy, float) + 0.5) * scale - 0.5
    tw, th = min(size, w), min(size, h)
    x0 = int(np.clip(round(end[0] - tw / 2), 0, w - tw))
    y0 = int(np.clip(round(end[1] - th / 2), 0, h - th))
    return {
        "origin": [x0, y0],
        "size": [tw, th],
        "end": [float(end[0] - x0), float(end[1] - y0)],
        "um_per_px": meta["level_um"][level],
    }


def slide_file(workdir: Path, cfg: dict, key: tuple[str, str]) -> Path:
    """The slide file of a biopsy: its ``wsi`` cell in the biopsies sheet that config.yaml names (relative
    paths from the working directory, as the workflow reads them)."""
    from workflow_scripts import sheets as sheetlib

    sheet = workdir / cfg["samples"]["biopsies"]
    rows = sheetlib.read_sheet(str(sheet), set())
    row = rows[(rows["participant_id"] == key[0]) & (rows["biopsy_id"] == key[1])]
    if row.empty or not isinstance(row["wsi"].iloc[0], str):
        raise LookupError(f"biopsy {key[0]}/{key[1]} has no wsi in {sheet}")
    return workdir / row["wsi"].iloc[0]


def render_tile(slide: Path, meta: dict, level: int, box: dict) -> np.ndarray:
    """The tile's pixels, read by region; a slide file whose levels are no longer those ingested is refused."""
    from workflow_scripts.slide import read_region

    (x, y), (w, h) = box["origin"], box["size"]
    rgb, shapes = read_region(slide, level, x, y, w, h)
    if shapes != meta["level_shapes"]:
        raise LookupError(f"{slide} has changed since it was ingested (levels {shapes}): rerun the workflow")
    return rgb


# ------------------------------------------------------------------ the slide's evidence overlay


def outlines(labels: np.ndarray, this: int) -> np.ndarray:
    """RGBA: every core's outline (from the cores step's label image), this biopsy's core in its own colour."""
    from scipy import ndimage

    edge = labels != ndimage.grey_erosion(labels, size=3)
    edge |= labels != ndimage.grey_dilation(labels, size=3)
    edge &= labels > 0
    out = np.zeros((*labels.shape, 4), np.uint8)
    out[edge & (labels != this)] = OUTLINE["other"]
    out[edge & (labels == this)] = OUTLINE["this"]
    return out


def dye_pixels(rgb: np.ndarray, labels: np.ndarray, position: int, level_um: float, min_dye_fraction: float):
    """(ys, xs) of the pixels the orientation counted as dye on one core: its own stages, run again on the
    thumbnail (:func:`workflow_scripts.orient.end_evidence`); none where it finds no dye."""
    from workflow_scripts import orient
    from workflow_scripts.errors import InputError

    crop, mask, (x0, y0) = orient.isolate(rgb, labels, position, level_um)
    od = orient.optical_density(crop)
    try:
        shape = orient.core_shape(mask, level_um)
        core = orient.core_pixels(od, mask, shape, level_um)
        stain = orient.stain_model(od, core, level_um, frozenset())
        scale = max(core.width * min_dye_fraction, 1.0)
        ev = orient.end_evidence(od, mask, core, stain, scale, level_um, frozenset())
    except InputError:
        return np.zeros(0, int), np.zeros(0, int)
    return core.ys[ev.flagged] + y0, core.xs[ev.flagged] + x0


def evidence_overlay(thumb: Path, labels: Path, position: int, level_um: float, min_dye_fraction: float) -> np.ndarray:
    """RGBA over the slide thumbnail: the cores' outlines and this core's dye pixels."""
    lab = np.asarray(PIL.Image.open(labels))
    out = outlines(lab, position)
    rgb = np.asarray(PIL.Image.open(thumb).convert("RGB"))
    from scipy import ndimage

    ys, xs = dye_pixels(rgb, lab, position, level_um, min_dye_fraction)
    dyed = np.zeros(lab.shape, bool)
    dyed[ys, xs] = True
    out[dyed] = OUTLINE["dye_fill"]
    out[dyed & ~ndimage.binary_erosion(dyed, iterations=2)] = OUTLINE["dye"]
    return out


def read_json(path: Path) -> tuple[dict, bytes]:
    """A JSON record and its bytes (for the digest)."""
    raw = path.read_bytes()
    return json.loads(raw), raw
