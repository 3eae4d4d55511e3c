"""tractmap-review: confirm or correct the held biopsies of a results folder in the browser.

``tractmap-review RESULTS_DIR`` serves the review queue (``<results>/review.tsv``) on
127.0.0.1 at a free port and prints the URL with a random access token, as Jupyter does.
A person confirms, flips the dyed end, drags T0/T1, sets the gun stroke or excludes;
each decision is one row of the decisions file (:mod:`workflow_scripts.decisions`),
which the workflow reads as biopsies.tsv overrides (only that biopsy reruns).

Built on the standard library's ``http.server`` (no dependency): the app has a handful of
routes, and every byte it serves is looked up by (participant, biopsy) in the queue and a
fixed file name, or rendered once from the slide (full-resolution tiles read by region around the core's ends,
the evidence overlay) into ``<results>/.review_cache``; no request path or value reaches the file system.
Every request must carry the token (``?token=`` once, then the cookie it sets, or the ``X-Tractmap-Token`` header)
and name a Host the app serves; a write must come from the app's own Origin, or without one with the token header
(Jupyter's rules, against cross-site writes and DNS rebinding), and state the version it was made on (If-Match).
Every request gets an HTTP answer: bodies are bounded before they are parsed, and an unforeseen failure is a 500.
"""

from __future__ import annotations

import argparse
import csv
import getpass
import hashlib
import hmac
import html
import http.cookies
import http.server
import importlib
import io
import ipaddress
import json
import math
import os
import queue as queuelib
import re
import secrets
import socket
import sys
import threading
import time
import urllib.parse
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import PIL.Image

from workflow_scripts import decisions as decisionlib
from workflow_scripts.errors import InputError

# the pipeline's own steps (scipy, scikit-image) are imported by a thread once the server listens
# (warm_up), so that the app starts at once; a request that needs one waits for that import
STEPS = ("workflow_scripts.tract", "workflow_scripts.review")

STATIC = Path(__file__).with_name("review_static")
COOKIE = "tractmap_review_token"
HEADER = "X-Tractmap-Token"
MAX_BODY = 64 * 1024
# what a body may hold, checked before it is parsed or converted (a decision is one flat object of short values)
MAX_DEPTH = 4
MAX_NUMBER_CHARS = 24
MAX_MAGNITUDE = 1e9
NUMBER_REFUSED = (
    f"a number in the body is longer than {MAX_NUMBER_CHARS} characters or larger than {MAX_MAGNITUDE:,.0f}: "
    "send the values the page shows"
)
# connections the listening socket queues while every handler is busy (socketserver's default, 5, drops a
# browser's burst of parallel requests)
BACKLOG = 128
# the names under which the app answers when it binds loopback (or every interface): a request naming another
# Host is refused, so that a page of another site cannot reach it by DNS rebinding
LOOPBACK_NAMES = ("127.0.0.1", "localhost", "::1")
TEXT_FIELDS = ("exclude",)  # free text a reviewer types: kept on one line (decisions.one_line)
# what a page may ask for: its image's name -> the file under <results> ({p}/{b}: the queue's IDs)
IMAGES = {
    "prefire": "ingest/{p}/{b}/prefire.png",
    "postfire": "ingest/{p}/{b}/postfire.png",
    "wsi": "slides/{p}/{s}/wsi.png",  # {s}: the biopsy's slide, as its orientation record names it
    "oriented": "orient/{p}/{b}_oriented.png",
    "crop": "tract/{p}/{b}_crop.png",
    "qc": "qc/{p}/{b}.png",
}
JSONS = {
    "orient": "orient/{p}/{b}.json",
    "tract": "tract/{p}/{b}.json",
    "pre": "ingest/{p}/{b}/prefire.json",
    "post": "ingest/{p}/{b}/postfire.json",
    "state": "state/{p}/{b}.json",  # each step's state, as state.py decided it (what review.tsv holds)
}
# the biopsy's slide (its thumbnail level, its cores), for the slide panel and the tiles
SLIDE = {"meta": "slides/{p}/{s}/wsi.json", "cores": "slides/{p}/{s}/cores.json", "labels": "slides/{p}/{s}/cores.png"}
STATIC_FILES = {"app.js": "text/javascript", "style.css": "text/css"}
# gun strokes offered as one-click choices, besides this biopsy's and config tract.throw_mm: the two settings of
# the usual spring-loaded biopsy guns (e.g. BARD MAGNUM 15 / 22 mm); any other is typed
COMMON_STROKES_MM = (15.0, 22.0)
# what a browser may send in a decision; reviewer and time are the server's
CLIENT_FIELDS = {"participant_id", "biopsy_id", "decision", "warnings_seen", *decisionlib.VALUES}


# ------------------------------------------------------------------ images the app renders itself
# Full-resolution tiles around a core's ends and the slide's evidence overlay (every core's outline, the dye the
# orientation counted), each rendered once, on first request (or by Prefetch), into
# <results>/.review_cache/<participant>/<biopsy>/ under a name that carries a digest of what it was made from (a
# rerun of the pipeline makes a new name, so a stale image is never served).  Tiles are read by region from the
# slide file (slide.read_region), never the whole slide.  Nothing here takes a path from a request: the handler
# passes the queue's own biopsy key, a core end (0 or 1) and a pyramid level, each checked first.
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


class Refused(Exception):
    """A request the app answers with an error status and a message, changing nothing."""

    def __init__(self, status: int, message: str, more: dict | None = None):
        super().__init__(message)
        self.status, self.message, self.more = status, message, more or {}


@dataclass
class Queue:
    """The held biopsies of a results folder, in review.tsv order, with their review rows."""

    results: Path
    rows: dict[tuple[str, str], list[dict]] = field(default_factory=dict)
    # the working directory's config.yaml (None: not found): where the sheet names the slide files
    workdir: Path | None = None
    config: dict = field(default_factory=dict)

    @classmethod
    def load(cls, results: Path) -> Queue:
        q = cls(results)
        q.workdir = workdir_of(results)
        if q.workdir:
            import yaml

            q.config = yaml.safe_load((q.workdir / "config.yaml").read_text()) or {}
        with open(results / "review.tsv", newline="", encoding="utf-8") as f:
            for r in csv.DictReader(f, delimiter="\t"):
                q.rows.setdefault((r["participant_id"], r["biopsy_id"]), []).append(r)
        return q

    def keys(self) -> list[tuple[str, str]]:
        return list(self.rows)

    def known(self, p: str, b: str) -> tuple[str, str]:
        """The queue's own key for (p, b); a biopsy not in the queue is refused."""
        for key in self.rows:
            if key == (p, b):
                return key
        raise Refused(404 if p and b else 400, f"biopsy {p[:40]}/{b[:40]} is not in the review queue")

    def file(self, key: tuple[str, str], pattern: str) -> Path:
        slide = json.loads(self.file(key, JSONS["orient"]).read_text())["slide"] if "{s}" in pattern else ""
        return self.results / pattern.format(p=key[0], b=key[1], s=slide)

    def data_one(self, key: tuple[str, str], name: str) -> dict:
        """One of a biopsy's records (:data:`JSONS`)."""
        return json.loads(self.file(key, JSONS[name]).read_text())

    def data(self, key: tuple[str, str]) -> dict:
        """A biopsy's orient, tract, ingest and state records (read per request: the pipeline may rerun meanwhile)."""
        return {k: json.loads(self.file(key, pat).read_text()) for k, pat in JSONS.items()}


def review_page(p: str, b: str) -> str:
    """The path of a biopsy's review page."""
    return f"/b/{urllib.parse.quote(p, safe='')}/{urllib.parse.quote(b, safe='')}"


def utc_now() -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())


def region(meta: dict) -> tuple[np.ndarray, np.ndarray]:
    """Origin (DICOM frame px of the tissue region's top-left) and inclusive far corner of an ingest record."""
    x0, y0, x1, y1 = meta["region_bounds_xyxy"]
    return np.array([x0, y0], float), np.array([x1, y1], float)


def tract_points(values: dict, data: dict) -> tuple[np.ndarray, np.ndarray]:
    """T0 and T1 in pre-fire tissue-region px: a decision's tip/axis/length through the tract step's own
    override path (``tract.pixel_overrides`` + ``tract.tract``), or the automatic result."""
    from workflow_scripts import tract as tractlib

    t = data["tract"]
    if "tip_x" not in values:
        return np.array(t["t0_px"], float), np.array(t["t1_px"], float)
    mm = tuple(data["pre"]["mm_per_px"])
    origin, _ = region(data["pre"])
    ov = tractlib.pixel_overrides([values["tip_x"], values["tip_y"]], values["axis_deg"], list(origin), mm)
    res = tractlib.tract(None, None, mm, t["stroke_mm"], {**ov, "length_mm": values["override_length_mm"]})
    return np.array(res["t0_px"], float), np.array(res["t1_px"], float)


def check(body: object, queue: Queue, reviewer: str) -> dict:
    """A decision from the browser, validated: known biopsy and fields, schema, tips inside the pre-fire frame."""
    if not isinstance(body, dict):
        raise Refused(400, "a decision is a JSON object")
    unknown = sorted(set(body) - CLIENT_FIELDS)
    if unknown:
        names = ", ".join(str(u)[:30] for u in unknown[:5]) + (", ..." if len(unknown) > 5 else "")
        raise Refused(400, f"unknown field(s): {names}")
    key = queue.known(str(body.get("participant_id", "")), str(body.get("biopsy_id", "")))
    for k, v in body.items():
        if k in decisionlib.NUMERIC and (isinstance(v, bool) or not isinstance(v, int | float) or not math.isfinite(v)):
            raise Refused(400, f"{k} must be a finite number")
    record = {
        **{k: v for k, v in body.items() if decisionlib.present(v)},
        "reviewer": reviewer,
        "decided_at": utc_now(),
    }
    problems = decisionlib.validate(record)
    if problems:
        raise Refused(400, "; ".join(problems))
    if "tip_x" in record:
        data = queue.data(key)
        lo, hi = region(data["pre"])
        origin = lo
        t0, t1 = tract_points(record, data)
        for name, pt in (("T0 (tip_x, tip_y)", t0), ("T1 (from axis_deg and override_length_mm)", t1)):
            frame_pt = pt + origin
            if not (np.all(frame_pt >= lo) and np.all(frame_pt <= hi)):
                raise Refused(
                    400,
                    f"{name} at ({frame_pt[0]:.1f}, {frame_pt[1]:.1f}) is outside the pre-fire image "
                    f"(x {lo[0]:.0f}-{hi[0]:.0f}, y {lo[1]:.0f}-{hi[1]:.0f})",
                )
    return record


def one_line_fields(body: object) -> tuple[object, list[str]]:
    """The body with its free-text fields on one line (:func:`decisions.one_line`), and the fields changed."""
    if not isinstance(body, dict):
        return body, []
    changed = [k for k in TEXT_FIELDS if isinstance(body.get(k), str) and decisionlib.one_line(body[k]) != body[k]]
    return {**body, **{k: decisionlib.one_line(body[k]) for k in changed}}, changed


# ------------------------------------------------------------------ the pipeline's own checks, before a save


def length_warning(record: dict, tract: dict) -> str | None:
    """The tract step's length check (``tract.implausible_length``) on the length and stroke a decision
    leaves this biopsy with; None where the check passes or the decision sets neither."""
    from workflow_scripts import tract as tractlib

    if "override_length_mm" not in record and "stroke_mm" not in record:
        return None
    length = float(record.get("override_length_mm", tract["sampled_length_mm"]))
    stroke = float(record.get("stroke_mm", tract["stroke_mm"]))
    if not tractlib.implausible_length(length, stroke):
        return None
    if length > stroke:
        how = f"more than {tractlib.STROKE_OVERSHOOT_MM:g} mm longer than"
    else:
        how = f"shorter than {tractlib.STROKE_SHORT:.0%} of"
    return (
        f"T0 to T1 is {length:.2f} mm, {how} the {stroke:g} mm gun stroke: the tract step flags such a length "
        "(move T1, or set the stroke this gun was fired with)"
    )


def flip_warning(record: dict, data: dict, found_side: str) -> str | None:
    """A dyed end that the decision turns although the orientation was not held (the pipeline, or the sheet,
    had decided it): its call and confidence; None otherwise."""
    o, held = data["orient"], data["state"]["steps"].get("orient") == "review"
    if held or "dye_end" not in record or record["dye_end"] == found_side:
        return None
    who = "biopsies.tsv set" if data["state"]["steps"].get("orient") == "override" else "The pipeline accepted"
    conf = o.get("confidence")
    at = f" with confidence {conf:.2f}" if isinstance(conf, int | float) else ""
    return f"{who} the dyed end at {found_side}{at}; this decision flips it to {record['dye_end']}"


def warnings(record: dict, key: tuple[str, str], queue: Queue) -> list[str]:
    """What the pipeline's own checks say against a decision (an exclusion: nothing), each a sentence."""
    if record.get("decision") == "exclude":
        return []
    data = queue.data(key)
    found = flip_warning(record, data, dye_sides(key, queue, data["orient"])[0])
    return [w for w in (found, length_warning(record, data["tract"])) if w]


def pipeline_version(key: tuple[str, str], queue: Queue) -> str:
    """A digest of what the pipeline last wrote for a biopsy (orient, tract and state records): a rerun changes it."""
    return digest(*(queue.file(key, JSONS[k]).read_bytes() for k in ("orient", "tract", "state")))


def etag(key: tuple[str, str], queue: Queue, decisions_file: Path) -> str:
    """The version a page of this biopsy is made on: its decision's row and the pipeline's records."""
    return f'"{decisionlib.version(decisionlib.current(decisions_file, key))}-{pipeline_version(key, queue)}"'


# ------------------------------------------------------------------ request bodies, bounded before parsing

JSON_STRINGS = re.compile(rb'"(?:[^"\\]|\\.)*"', re.S)
JSON_BRACKETS = re.compile(rb"[\[\]{}]")


def nesting(raw: bytes) -> int:
    """How deep a JSON text nests arrays and objects (brackets inside strings not counted), without parsing it."""
    depth = deepest = 0
    for m in JSON_BRACKETS.finditer(JSON_STRINGS.sub(b'""', raw)):
        depth += 1 if m.group() in b"[{" else -1
        deepest = max(deepest, depth)
    return deepest


def _number(text: str, convert: Callable[[str], float]) -> float:
    """A JSON number, refused before conversion where its text is too long, after where it is too large."""
    if len(text) > MAX_NUMBER_CHARS:
        raise Refused(400, NUMBER_REFUSED)
    value = convert(text)
    if not abs(value) <= MAX_MAGNITUDE:
        raise Refused(400, NUMBER_REFUSED)
    return value


def _no_constant(name: str) -> None:
    raise Refused(400, "NaN and Infinity are not numbers a decision can hold: send a finite number")


def parse_json(raw: bytes) -> object:
    """A request body as JSON, its nesting and numbers bounded first (a 400, never an exception that drops
    the connection: Python's parser recurses, and a 400-digit integer overflows a float)."""
    if nesting(raw) > MAX_DEPTH:
        raise Refused(400, f"the body nests deeper than {MAX_DEPTH} levels: a decision is one flat JSON object")
    try:
        return json.loads(
            raw,
            parse_int=lambda t: _number(t, int),
            parse_float=lambda t: _number(t, float),
            parse_constant=_no_constant,
        )
    except (json.JSONDecodeError, UnicodeDecodeError):
        raise Refused(400, "the body is not JSON") from None


def preview_png(record: dict, queue: Queue) -> bytes:
    """The crop strip a decision would give, by the tract step's own crop (``tract.crop_strip``)."""
    from workflow_scripts import tract as tractlib

    key = queue.known(record["participant_id"], record["biopsy_id"])
    data = queue.data(key)
    t = data["tract"]
    t0, t1 = tract_points(record, data)
    pre = np.asarray(PIL.Image.open(queue.file(key, IMAGES["prefire"])).convert("L"))
    margin = t["tract_x_px"][0] * t["out_mm_per_px"]  # the crop's margin before T0, as the run set it
    crop, _ = tractlib.crop_strip(
        pre, {"t0_px": t0, "t1_px": t1}, tuple(t["mm_per_px"]), t["width_mm"], t["out_mm_per_px"], margin
    )
    buf = io.BytesIO()
    PIL.Image.fromarray(crop).save(buf, format="PNG")
    return buf.getvalue()


def evidence_png(key: tuple[str, str], queue: Queue) -> Path:
    """The slide's evidence overlay of a biopsy (every core's outline, the dye counted), rendered once."""
    raw = {k: queue.file(key, pat).read_bytes() for k, pat in (("orient", JSONS["orient"]), ("meta", SLIDE["meta"]))}
    o, meta = json.loads(raw["orient"]), json.loads(raw["meta"])
    frac = (queue.config.get("orient") or {}).get("min_dye_fraction")
    if frac is None:
        raise Refused(404, "the dye evidence needs the config.yaml that made the results: start the app there")
    name = f"evidence_{digest(raw['orient'], raw['meta'], str(frac))}.png"
    make = lambda: evidence_overlay(  # noqa: E731
        queue.file(key, IMAGES["wsi"]), queue.file(key, SLIDE["labels"]), o["core_position"],
        meta["level_um_per_px"], frac,
    )  # fmt: skip
    return cached(cache_dir(queue.results, key) / name, make)


def tile_png(key: tuple[str, str], queue: Queue, end: str, level: str) -> Path:
    """A full-resolution tile around end 0 or 1 of a biopsy's core at one of its slide's finer levels, read by
    region from the slide file that the sheet names, rendered once; any other end or level is refused."""
    if end not in ("0", "1"):
        raise Refused(400, f"end {end[:10]!r}: a core's end is 0 or 1")
    raw = queue.file(key, SLIDE["meta"]).read_bytes()
    meta = json.loads(raw)
    levels = zoom_levels(meta)
    if not (level.isascii() and level.isdigit() and int(level) in levels):
        raise Refused(400, f"level {level[:10]!r}: this slide's tiles are at level {', '.join(map(str, levels))}")
    box = tile_box(core_ends(queue.data_one(key, "orient"))[int(end)], meta, int(level))
    if queue.workdir is None:
        raise Refused(
            404, "the slide file is named in the sheet of config.yaml: start the app in the working directory"
        )
    name = f"tile_e{end}_l{level}_{digest(raw, json.dumps(box))}.png"
    try:
        slide = slide_file(queue.workdir, queue.config, key)
        return cached(
            cache_dir(queue.results, key) / name,
            lambda: render_tile(slide, meta, int(level), box),
        )
    except (LookupError, KeyError, OSError) as e:
        raise Refused(404, f"no tile of {key[0]}/{key[1]}: {e}") from None
    except InputError as e:
        raise Refused(404, f"no tile of {key[0]}/{key[1]}: {e.what} ({e.hint})") from None


def dye_sides(key: tuple[str, str], queue: Queue, orient: dict) -> tuple[str, str]:
    """The displayed side of the dyed end as found, and of the other end: as the review step wrote them into
    review.tsv (``review.dye_end_side``), read there so that a page needs no import of the pipeline's steps;
    computed by the same function for a biopsy held for its tract only."""
    row = next((r for r in queue.rows[key] if r["step"] == "orient"), None)
    if row and row["confirm"].startswith("dye_end=") and row["correct"].startswith("dye_end="):
        return row["confirm"].removeprefix("dye_end="), row["correct"].removeprefix("dye_end=")
    from workflow_scripts import review as reviewlib

    return reviewlib.dye_end_side(orient), reviewlib.dye_end_side(orient, flipped=True)


def with_points(decision: dict | None, data: dict) -> dict | None:
    """A decision with the T0/T1 its tip, axis and length give, as the tract step will place them (``points``,
    pre-fire tissue-region px), where it sets them."""
    if decision and "tip_x" in decision:
        decision["points"] = [p.tolist() for p in tract_points(decision, data)]
    return decision


def page_data(key: tuple[str, str], queue: Queue, decisions_file: Path) -> dict:
    """Everything one biopsy's page draws: reasons, the found core and tract, and the current decision."""
    data = queue.data(key)
    o, t = data["orient"], data["tract"]
    steps = data["state"]["steps"]  # a tract held for a calibration conflict is held here, not in its JSON
    ends = core_ends(o)
    sides = dye_sides(key, queue, o)
    tract_cfg = queue.config.get("tract") or {}
    keys = queue.keys()
    i = keys.index(key)
    held = {r["step"] for r in queue.rows[key]}
    decision = with_points(decisionlib.current(decisions_file, key), data)
    return {
        "participant_id": key[0],
        "biopsy_id": key[1],
        "reasons": [{"step": r["step"], "reason": r["reason"]} for r in queue.rows[key]],
        "held": sorted(held),
        "orient": {
            "state": steps.get("orient"),
            "confidence": o.get("confidence"),
            "ends": ends,
            "dyed": 1 if o["dye_at_positive_end"] else 0,
            "found_side": sides[0],
            "other_side": sides[1],
            "width": o.get("width", 20),
        },
        "tract": {
            "state": steps.get("tract"),
            "confidence": t.get("confidence", {}),
            "t0": t["t0_px"],
            "t1": t["t1_px"],
            "length_mm": t["sampled_length_mm"],
            "axis_deg": t["axis_deg"],
            "stroke_mm": t["stroke_mm"],
            "strokes": sorted(
                {*COMMON_STROKES_MM, float(t["stroke_mm"]), *[float(v) for v in [tract_cfg.get("throw_mm")] if v]}
            ),
            "mm_per_px": data["pre"]["mm_per_px"],
            "origin": data["pre"]["region_bounds_xyxy"][:2],
            "shape": data["pre"]["shape"],
            "post_shape": data["post"]["shape"],
            "post_shift": t.get("post_shift_px", [0.0, 0.0]),
        },
        "decision": decision,
        "version": etag(key, queue, decisions_file),  # what a save states it was made on (If-Match)
        # the ultrasound's DICOM-vs-sheet spacing conflicts (ingest), each once; the tract step holds the tract for them
        "calibration": list(
            dict.fromkeys(
                m["calibration_conflict"] for m in (data["pre"], data["post"]) if m.get("calibration_conflict")
            )
        ),
        "wsi_size": list(PIL.Image.open(queue.file(key, IMAGES["wsi"])).size),  # reads the header only
        "slide": slide_data(key, queue, ends, o),
        "prev": review_page(*keys[i - 1]) if i > 0 else None,
        "next": review_page(*keys[i + 1]) if i + 1 < len(keys) else None,
        "position": [i + 1, len(keys)],
    }


def core_ends(orient: dict) -> list[list[float]]:
    """The core's two ends (thumbnail px): end 0 at the negative extent, end 1 at the positive."""
    c, a = np.array(orient["centroid"]), np.array(orient["axis"])
    return [(c + a * e).tolist() for e in orient["extent"]]


def slide_data(key: tuple[str, str], queue: Queue, ends: list[list[float]], orient: dict) -> dict:
    """The slide panel's data: every core on the slide (thumbnail px), which is this biopsy's, the dye mass
    counted in from each end, and the full-resolution tiles around both ends at each finer pyramid level."""
    meta = json.loads(queue.file(key, SLIDE["meta"]).read_text())
    found = json.loads(queue.file(key, SLIDE["cores"]).read_text())
    px = found["level_um_per_px"] / 1000.0  # mm per thumbnail px
    cores = [
        {
            "position": c["position"],
            "names": c.get("names", []),
            "centre": c["centre_px"],
            "axis": c["axis"],
            "length": c["length_mm"] / px,
            "width": c["width_mm"] / px,
        }
        for c in found["cores"]
    ]
    levels = zoom_levels(meta)
    return {
        "cores": cores,
        "this": orient.get("core_position"),
        "dye_mass": orient.get("dye_mass_px") or [0.0, 0.0],
        "evidence": orient.get("evidence"),
        "um_per_px": meta["level_um_per_px"],
        "levels": [{"level": k, "um_per_px": meta["level_um"][k]} for k in levels],
        "level": levels[-1],  # the tiles first shown: the coarsest level finer than the thumbnail
        "tiles": {str(k): [tile_box(e, meta, k) for e in ends] for k in levels},
    }


def page_html(data: dict) -> str:
    """One biopsy's page: the data as JSON for app.js, which draws and acts."""
    title = html.escape(f"{data['participant_id']}/{data['biopsy_id']}")
    blob = json.dumps(data).replace("</", "<\\/")
    return (STATIC / "page.html").read_text().replace("{{title}}", title).replace("{{data}}", blob)


# after the first visit the token lives in the cookie: the address bar (and so the history) keeps the URL without it
FORGET_TOKEN = (
    "<script>if (location.search) history.replaceState(null, '', location.pathname + location.hash);</script>"
)


def held_reasons(key: tuple[str, str], queue: Queue) -> dict[str, str]:
    """Why a biopsy is held, step -> reason: its state file's ``reasons`` (what the pipeline decided last), and
    review.tsv's reason for a held step that the state file gives none."""
    try:
        reasons = queue.data_one(key, "state").get("reasons")
    except (OSError, ValueError):
        reasons = None
    found = {str(k): str(v) for k, v in reasons.items()} if isinstance(reasons, dict) else {}
    for r in queue.rows[key]:
        found[r["step"]] = found.get(r["step"]) or r.get("reason") or "held for review"
    return found


def index_html(queue: Queue, decisions_file: Path) -> str:
    """The queue page: each held biopsy, why it is held, and its current decision."""
    rows = []
    for key in queue.rows:
        d = decisionlib.current(decisions_file, key) or {}
        href = review_page(*key)
        why = "<br>".join(f"<b>{html.escape(k)}</b>: {html.escape(v)}" for k, v in held_reasons(key, queue).items())
        rows.append(
            f"<tr><td><a href='{html.escape(href)}'>{html.escape('/'.join(key))}</a></td><td class='why'>{why}</td>"
            f"<td>{html.escape(d.get('decision', 'open'))}</td><td>{html.escape(d.get('reviewer', ''))}</td></tr>"
        )
    return (
        "<!DOCTYPE html><html lang='en'><head><meta charset='utf-8'><title>tractmap review queue</title>"
        "<link rel='stylesheet' href='/static/style.css'><link rel='icon' href='data:,'>"
        f"{FORGET_TOKEN}</head>"
        "<body><h1>Review queue</h1>"
        f"<p>{len(queue.rows)} held biopsies; decisions go to {html.escape(str(decisions_file))}. "
        "The pipeline's <a href='/report'>report</a> (its links open these pages).</p>"
        "<table id='queue'><tr><th>biopsy</th><th>why it is held</th><th>decision</th><th>reviewer</th></tr>"
        + "".join(rows)
        + "</table></body></html>"
    )


class Prefetch:
    """Renders a biopsy's evidence overlay and its first tiles in the background (one worker): asked for the
    next biopsy while a person reviews this one, so that its images are ready when they press n."""

    def __init__(self, queue: Queue):
        self.queue, self.todo = queue, queuelib.SimpleQueue()
        threading.Thread(target=self.run, daemon=True).start()

    def ask(self, key: tuple[str, str]) -> None:
        self.todo.put(key)

    def render(self, key: tuple[str, str]) -> None:
        evidence_png(key, self.queue)
        meta = json.loads(self.queue.file(key, SLIDE["meta"]).read_text())
        for end in ("0", "1"):
            tile_png(key, self.queue, end, str(zoom_levels(meta)[-1]))

    def run(self) -> None:
        while True:
            key = self.todo.get()
            try:
                self.render(key)
            except (Refused, InputError, OSError, LookupError, ValueError):
                pass  # the page's own request for the image reports what is wrong


@dataclass
class App:
    queue: Queue
    decisions_file: Path
    token: str
    reviewer: str
    prefetch: Prefetch | None = None
    hosts: frozenset[str] = frozenset()  # the Host headers it answers (served_hosts)

    def token_in(self, *given: str) -> bool:
        """Whether any of ``given`` is the token (compared in constant time)."""
        return any(g and hmac.compare_digest(g.encode(), self.token.encode()) for g in given)


class Handler(http.server.BaseHTTPRequestHandler):
    app: App  # set on the subclass made by serve()
    server_version = "tractmap-review"
    sys_version = ""
    timeout = 60  # s: a connection that sends nothing for this long is closed (it no longer holds a thread)

    def log_message(self, fmt: str, *args: object) -> None:  # no query strings (the token) in the log
        sys.stderr.write(f"{self.command} {urllib.parse.urlsplit(self.path).path} {args[1] if len(args) > 1 else ''}\n")

    def _send(self, status: int, body: bytes, ctype: str, extra: dict | None = None) -> None:
        self.send_response(status)
        self.send_header("Content-Type", ctype)
        self.send_header("Content-Length", str(len(body)))
        self.send_header("Cache-Control", "no-store")
        self.send_header("X-Content-Type-Options", "nosniff")
        self.send_header("Referrer-Policy", "no-referrer")
        for k, v in (extra or {}).items():
            self.send_header(k, v)
        self.end_headers()
        if self.command != "HEAD":
            self.wfile.write(body)

    def _json(self, status: int, obj: object, extra: dict | None = None) -> None:
        self._send(status, json.dumps(obj).encode(), "application/json", extra)

    def _route(self) -> None:
        url = urllib.parse.urlsplit(self.path)
        app = self.app
        host = self.headers.get("Host", "").strip().lower()
        if host not in app.hosts:
            raise Refused(403, "this app answers only at the address tractmap-review printed: open that URL")
        parts = [urllib.parse.unquote(s) for s in url.path.split("/")[1:]]
        if parts == ["favicon.ico"]:  # asked by every page (the pipeline's report too): no icon, no 404
            return self._send(204, b"", "image/x-icon")
        jar = http.cookies.SimpleCookie(self.headers.get("Cookie", ""))
        cookie = jar[COOKIE].value if COOKIE in jar else ""
        header = self.headers.get(HEADER, "")
        if self.command == "POST":
            self._writer(host, cookie, header)
            return self._post(parts)
        query = urllib.parse.parse_qs(url.query)
        if not app.token_in(query.get("token", [""])[0], cookie, header):
            raise Refused(403, "missing or wrong token: open the URL tractmap-review printed")
        extra = {}
        if query.get("token"):  # the first visit: the token moves into a cookie that only this site sends
            extra["Set-Cookie"] = f"{COOKIE}={app.token}; HttpOnly; SameSite=Strict; Path=/"
        self._get(parts, extra)

    def _writer(self, host: str, cookie: str, header: str) -> None:
        """A write comes from the app's own page (Origin: this very address, and the token's cookie or header)
        or from a script (no Origin, the token in the header); a token in the query string never writes."""
        origin = self.headers.get("Origin")
        if origin is None:
            if not self.app.token_in(header):
                raise Refused(
                    403,
                    f"a write without an Origin needs the token in the {HEADER} header (a cookie alone writes nothing)",
                )
        elif origin.strip().lower() != f"http://{host}":
            raise Refused(403, "a write from another site's page is refused: decide on the app's own page")
        elif not self.app.token_in(cookie, header):
            raise Refused(403, "missing or wrong token: open the URL tractmap-review printed")

    def _get(self, parts: list[str], extra: dict) -> None:
        app = self.app
        if parts in ([""], []):
            return self._send(200, index_html(app.queue, app.decisions_file).encode(), "text/html", extra)
        if len(parts) == 3 and parts[0] == "b":
            key = app.queue.known(parts[1], parts[2])
            body = page_html(page_data(key, app.queue, app.decisions_file))
            keys = app.queue.keys()
            if app.prefetch and keys.index(key) + 1 < len(keys):
                app.prefetch.ask(keys[keys.index(key) + 1])
            return self._send(200, body.encode(), "text/html; charset=utf-8", extra)
        if len(parts) == 4 and parts[0] == "img" and parts[3] == "evidence":
            path = evidence_png(app.queue.known(parts[1], parts[2]), app.queue)
            return self._send(200, path.read_bytes(), "image/png", extra)
        if len(parts) == 5 and parts[0] == "tile":
            path = tile_png(app.queue.known(parts[1], parts[2]), app.queue, parts[3], parts[4])
            return self._send(200, path.read_bytes(), "image/png", extra)
        if parts == ["report"]:
            report = app.queue.results / "report.html"
            if not report.is_file():
                raise Refused(404, f"no report yet: run snakemake {app.queue.results}/report.html")
            return self._send(200, report.read_bytes(), "text/html; charset=utf-8", extra)
        if len(parts) == 4 and parts[0] == "img" and parts[3] in IMAGES:
            key = app.queue.known(parts[1], parts[2])
            path = app.queue.file(key, IMAGES[parts[3]])
            if not path.is_file():
                raise Refused(404, f"{parts[3]} image of {key[0]}/{key[1]} is not in the results folder")
            return self._send(200, path.read_bytes(), "image/png", extra)
        if len(parts) == 2 and parts[0] == "static" and parts[1] in STATIC_FILES:
            return self._send(200, (STATIC / parts[1]).read_bytes(), STATIC_FILES[parts[1]], extra)
        if len(parts) == 4 and parts[:2] == ["api", "decision"]:
            key = app.queue.known(parts[2], parts[3])
            tag = {"ETag": etag(key, app.queue, app.decisions_file)}
            return self._json(200, decisionlib.current(app.decisions_file, key), {**extra, **tag})
        raise Refused(404, "no such page")

    def _body(self) -> object:
        if self.headers.get_content_type() != "application/json":
            raise Refused(415, "send JSON (Content-Type: application/json)")
        try:
            n = int(self.headers.get("Content-Length", "0"))
        except ValueError:
            raise Refused(400, "bad Content-Length") from None
        if not 0 < n <= MAX_BODY:
            raise Refused(413, f"a body of 1 to {MAX_BODY} bytes")
        self.body_read = True
        return parse_json(self.rfile.read(n))

    def _made_on(self, key: tuple[str, str]) -> str | None:
        """The version of the biopsy's decision a write was made on, from its If-Match (the page's ETag;
        ``*``: whatever is current, None); a page older than the pipeline's last run of the biopsy is refused."""
        tag = (self.headers.get("If-Match") or "").strip()
        if not tag:
            raise Refused(
                428, "a save must name the version of the decision it was made on (If-Match): reload the page"
            )
        if tag == "*":
            return None
        m = re.fullmatch(r'"([0-9a-f]{12}|none)-([0-9a-f]{12})"', tag)
        if not m:
            raise Refused(412, "If-Match is not a version this app gave: reload the page")
        if m[2] != pipeline_version(key, self.app.queue):
            raise Refused(
                409,
                f"the pipeline has rerun {key[0]}/{key[1]} since this page was read: reload the page to see its "
                "new result, then decide",
                {"reload": True},
            )
        return m[1]

    def _decide(self, body: object) -> None:
        """Save a decision: checked, made on the current version, its warnings seen; the row and its ETag."""
        app = self.app
        body, changed = one_line_fields(body)
        record = check(body, app.queue, app.reviewer)
        key = (record["participant_id"], record["biopsy_id"])
        made_on = self._made_on(key)
        record.pop("warnings_seen", None)
        warned = warnings(record, key, app.queue)
        seen = " | ".join(warned)
        if warned and (not isinstance(body, dict) or body.get("warnings_seen") != seen):
            raise Refused(
                422,
                f"the pipeline's checks warn: {seen}. Nothing was saved: save again to keep it anyway "
                "(the warning is recorded with the decision)",
                {"warnings": warned, "seen": seen},
            )
        if seen:
            record["warnings_seen"] = seen
        try:
            row = decisionlib.save(app.decisions_file, record, made_on)
        except decisionlib.Stale as e:
            raise stale(key, e.current) from None
        extra = {"ETag": etag(key, app.queue, app.decisions_file)}
        if changed:
            extra["X-Tractmap-Normalised"] = ", ".join(changed)
        return self._json(200, row, extra)

    def _undo(self, body: object) -> None:
        app = self.app
        if not isinstance(body, dict) or set(body) != {"participant_id", "biopsy_id"}:
            raise Refused(400, "undo takes participant_id and biopsy_id only")
        key = app.queue.known(str(body["participant_id"]), str(body["biopsy_id"]))
        made_on = self._made_on(key)
        try:
            left = decisionlib.undo(app.decisions_file, key, app.reviewer, utc_now(), made_on)
        except decisionlib.Stale as e:
            raise stale(key, e.current) from None
        if left is None:
            raise Refused(409, f"no decision of {key[0]}/{key[1]} to undo")
        left = with_points(left or None, app.queue.data(key))  # the page shows it without a reload
        return self._json(200, left, {"ETag": etag(key, app.queue, app.decisions_file)})

    def _post(self, parts: list[str]) -> None:
        app = self.app
        body = self._body()
        if parts == ["api", "decision"]:
            return self._decide(body)
        if parts == ["api", "preview"]:
            record = check(one_line_fields(body)[0], app.queue, app.reviewer)
            key = (record["participant_id"], record["biopsy_id"])
            said = json.dumps(warnings({**record, "decision": "correct"}, key, app.queue))  # ASCII: a header
            return self._send(200, preview_png(record, app.queue), "image/png", {"X-Tractmap-Warnings": said})
        if parts == ["api", "undo"]:
            return self._undo(body)
        raise Refused(404, "no such action")

    def _drain(self) -> None:
        """Read a refused write's body (up to MAX_BODY), so that closing the connection does not reset it
        before the client has read the answer."""
        try:
            n = int(self.headers.get("Content-Length", "0"))
        except ValueError:
            return
        if self.command == "POST" and not getattr(self, "body_read", False) and 0 < n <= MAX_BODY:
            self.rfile.read(n)

    def _answer(self) -> None:
        """Route the request; every failure becomes an answer (Refused), none a dropped connection."""
        try:
            self._route()
        except (ConnectionError, Refused):
            raise
        except (OSError, ValueError, LookupError, InputError) as e:  # a results file missing or half-written
            what = e.what if isinstance(e, InputError) else f"{type(e).__name__}: {e}"
            raise Refused(500, f"{what}; if the workflow is running, reload once it is done") from None
        except Exception as e:  # noqa: BLE001 - a bug must still answer, and not with a traceback
            sys.stderr.write(
                f"tractmap-review: {type(e).__name__} on {self.command} {urllib.parse.urlsplit(self.path).path}\n"
            )
            raise Refused(
                500,
                f"the review app failed unexpectedly ({type(e).__name__}): reload the page, and report it if it stays",
            ) from None

    def _handle(self) -> None:
        try:
            try:
                self._answer()
            except Refused as e:
                self._drain()
                if self.command == "GET" and "text/html" in self.headers.get("Accept", ""):  # a person, not app.js
                    page = f"<!DOCTYPE html><title>tractmap review</title><p>{html.escape(e.message)}</p>"
                    return self._send(e.status, page.encode(), "text/html; charset=utf-8")
                self._json(e.status, {"error": e.message, **e.more})
        except ConnectionError:  # the client went away: nobody to answer
            return

    do_GET = do_HEAD = do_POST = _handle  # noqa: N815


def stale(key: tuple[str, str], now: dict | None) -> Refused:
    """The refusal of a write made on a decision that another tab or reviewer has changed since."""
    what = f"now {now['decision']} by {now.get('reviewer', '?')} at {now.get('decided_at', '?')}" if now else "now none"
    return Refused(
        409,
        f"{key[0]}/{key[1]} was decided in another tab or by another reviewer since this page was read ({what}): "
        "reload the page to see it, then decide again",
        {"reload": True},
    )


def warm_up() -> threading.Thread:
    """Import the pipeline's steps in the background (a page that needs one before then waits for it)."""
    t = threading.Thread(target=lambda: [importlib.import_module(m) for m in STEPS], daemon=True)
    t.start()
    return t


def free_port(host: str) -> int:
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    with socket.socket(family) as s:
        s.bind((host, 0))
        return s.getsockname()[1]


def loopback(host: str) -> bool:
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return host == "localhost"


def every_interface(host: str) -> bool:
    """Whether ``host`` is the wildcard address (0.0.0.0, ::), which loopback reaches too."""
    try:
        return ipaddress.ip_address(host).is_unspecified
    except ValueError:
        return False


def served_hosts(host: str, port: int, allow: Sequence[str] = ()) -> frozenset[str]:
    """The Host headers the app answers (lower case, with the port): the address it binds and the names of
    ``--allow-host``, and on loopback (or every interface) 127.0.0.1, localhost and [::1]."""
    names = {host, *allow} | (set(LOOPBACK_NAMES) if loopback(host) or every_interface(host) else set())
    return frozenset((f"[{n}]" if ":" in n else n).lower() + f":{port}" for n in names)


def make_server(
    results: Path,
    decisions_file: Path,
    host: str,
    port: int,
    reviewer: str,
    token: str,
    allow_hosts: Sequence[str] = (),
) -> http.server.ThreadingHTTPServer:
    """The app's server (not yet serving): the queue is read once here; pages read their biopsy's files."""
    q = Queue.load(results)
    app = App(q, decisions_file, token, decisionlib.one_line(reviewer), Prefetch(q))
    handler = type("BoundHandler", (Handler,), {"app": app})
    attrs = {"request_queue_size": BACKLOG, "daemon_threads": True}
    if ":" in host:
        attrs["address_family"] = socket.AF_INET6
    server = type("Server", (http.server.ThreadingHTTPServer,), attrs)((host, port or free_port(host)), handler)
    app.hosts = served_hosts(host, server.server_address[1], allow_hosts)
    return server


def workdir_of(results: Path) -> Path | None:
    """The working directory that made ``results``: its parent, else the current folder, where either holds
    config.yaml; None where neither does."""
    return next((w for w in (results.resolve().parent, Path.cwd()) if (w / "config.yaml").is_file()), None)


def decisions_path(results: Path) -> Path:
    """The decisions file of the working directory that made ``results`` (:func:`workdir_of`):
    review.decisions of its config.yaml, relative to it, or the config schema's default."""
    import yaml

    workdir = workdir_of(results)
    if workdir is None:
        return Path.cwd() / decisionlib.default_path()
    name = ((yaml.safe_load((workdir / "config.yaml").read_text()) or {}).get("review") or {}).get("decisions")
    return workdir / (name or decisionlib.default_path())


def parser() -> argparse.ArgumentParser:
    """tractmap-review's options: the results folder, and where and as whom it serves."""
    p = argparse.ArgumentParser(prog="tractmap-review", description=__doc__.splitlines()[0])
    p.add_argument("results", type=Path, help="the results folder (holds review.tsv)")
    p.add_argument(
        "--decisions",
        type=Path,
        help="decisions file (default: review.decisions of the config.yaml beside RESULTS_DIR, else in this folder)",
    )
    p.add_argument("--reviewer", default=None, help="who decides (default: the OS user name)")
    p.add_argument("--host", default="127.0.0.1", help="interface to bind (another than loopback needs --expose)")
    p.add_argument("--expose", action="store_true", help="allow --host other than loopback (anyone reaching it "
                   "with the token can write decisions)")  # fmt: skip
    p.add_argument(
        "--allow-host",
        action="append",
        default=[],
        metavar="NAME",
        help="with --expose: another name to answer at (e.g. this machine's DNS name); repeatable",
    )
    p.add_argument("--port", type=int, default=0, help="port (default: a free one)")
    return p


def main(argv: list[str] | None = None) -> None:
    p = parser()
    a = p.parse_args(argv)
    if not (a.results / "review.tsv").is_file():
        p.error(f"{a.results}/review.tsv does not exist: run the workflow first (snakemake {a.results}/review.tsv)")
    if not loopback(a.host) and not a.expose:
        p.error(f"--host {a.host} is not loopback: add --expose to serve the review app on another interface")
    if a.allow_host and not a.expose:
        p.error("--allow-host names another address to answer at: add --expose (and --host) if you mean it")
    if not loopback(a.host):
        print(f"WARNING: serving on {a.host}: anyone who can reach it and has the token can change decisions",
              file=sys.stderr)  # fmt: skip
    decisions_file = a.decisions or decisions_path(a.results)
    reviewer = a.reviewer or getpass.getuser()
    server = make_server(a.results, decisions_file, a.host, a.port, reviewer, secrets.token_urlsafe(24), a.allow_host)
    if decisionlib.one_line(reviewer) != reviewer:
        print("note: tabs and line breaks in --reviewer are written as single spaces", file=sys.stderr)
    host = f"[{a.host}]" if ":" in a.host else a.host
    n = len(server.RequestHandlerClass.app.queue.rows)
    print(f"tractmap-review: {n} held biopsies of {a.results}; decisions to {decisions_file}", flush=True)
    url = f"http://{host}:{server.server_address[1]}"
    print(f"    {url}/?token={server.RequestHandlerClass.app.token}", flush=True)
    print(f"    then the report, with a link to each held biopsy: {url}/report", flush=True)
    warm_up()
    try:
        server.serve_forever()
    except KeyboardInterrupt:
        pass
    finally:
        server.server_close()


if __name__ == "__main__":
    main()
