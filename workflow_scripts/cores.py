"""Cores on a slide: every core found as its own object, fragments joined, numbered and named.

A slide may carry several cores side by side (the cores of one lesion embedded in one
cassette), pointing either way, some broken into fragments.  On a low-resolution level:
- the absorbing parts (tissue, dye, pen, bubble rims) are found against the slide's own
  background, and thin rims are opened away;
- parts in line with a larger part (their pixels within its width of its axis, their own
  axis parallel) and at most ``max_gap_mm`` beyond its end are fragments of one core;
- a part that joins no core is a core of its own only if it is as thick as a core
  (``min_width_mm``: a pen line is thinner), large enough (``min_area_mm2``) and elongated
  (``ELONGATION``: a pen dot or a crumb is round); else it is debris;
- cores are numbered 1, 2, ... left to right by the x of their centres (the middle of each
  core's extent along its axis) at level 0;
- a QuPath annotation with a name, drawn around a core (any class), names that core, and
  marks of the dye class (a point, line or polygon) are assigned to the core they lie on.

The biopsy's row picks its core by name or position (:func:`select`).  Lengths are in µm
and converted with the level's resolution.
"""

from __future__ import annotations

import argparse
import json
from collections.abc import Callable
from pathlib import Path

import numpy as np
from scipy import ndimage
from skimage.draw import polygon as fill_polygon
from skimage.io import imread, imsave

from workflow_scripts import fat as fatlib
from workflow_scripts.errors import InputError, read_json, run_cli
from workflow_scripts.qc import slide_figure
from workflow_scripts.slide import read_region
from workflow_scripts.stain import optical_density
from workflow_scripts.transfer import class_name, parse_features  # the QuPath dialects are read in one place

TISSUE_OD = 0.15  # largest channel's optical density above which a pixel absorbs (tissue, dye, rims, pen)
OPEN_UM = 110.0  # parts thinner than this are opened away (bubble rims touching a core, hairline pen strokes)
DEBRIS_SHARE = 0.01  # parts smaller than this share of the largest part are dust, whatever their place
IN_LINE = 0.75  # a fragment's pixels lie within this many core widths of the core's axis (median)
PARALLEL_DEG = 20.0  # an elongated fragment's own axis lies within this angle of the core's
ELONGATION = 2.0  # a part that joins no core is a core only if this many times longer than thick
NAME_COVER = 0.5  # share of a core's pixels that a named annotation must enclose to name it
MARK_REACH_UM = 1000.0  # a dye mark off the tissue is assigned to the nearest core within this distance
GAP_UM = 32.0  # length along the axis without tissue that counts as a gap between fragments
CLOSE_UM = 32.0  # holes in the absorbing parts this small are closed
# below cores.min_width_mm (config, 0.4 mm): every core holds the disc, so no core is cut
# (the forward model draws pens 0.1-0.3 mm wide)
SPUR_UM = 320.0  # lines thinner than this that run out of a thicker part (pen lines, rims) are cut off it
EDGE_UM = 16.0  # ... beyond this from its thick body (its own ragged edge stays)
SPUR_REACH_UM = 400.0  # ... when they reach this far out of it (a pointed corner of an oblique end is shorter)
END_UM = 2500.0  # a piece beyond a core's end is judged on the core's last this many µm (its local axis: cores curve)
FAT_MAX_MM = 6.0  # pieces in line further apart than this are not one core, whatever lies between them
PIECE_UM2 = 0.01e6  # pieces of tissue at least this large are listed (accounted for) in cores.json
LEFTOVER_HOLD_MM = 1.0  # a left-over piece this long in line with a core's end holds that core's biopsy for review
CORE_HINT = "set core in biopsies.tsv to one of the names or positions listed"


def absorbing(od: np.ndarray, level_um: float) -> np.ndarray:
    """Pixels that absorb, closed over small holes, with thin rims and hairlines opened away, and thin lines
    cut off where they run out of a thicker part (:func:`without_spurs`)."""
    mask = ndimage.binary_closing(od.max(axis=-1) > TISSUE_OD, iterations=max(1, int(CLOSE_UM / level_um + 0.5)))
    size = max(3, int(round(OPEN_UM / level_um)) | 1)  # odd, at least 3
    return without_spurs(ndimage.binary_opening(mask, structure=np.ones((size, size), bool)), level_um)


def without_spurs(mask: np.ndarray, level_um: float) -> np.ndarray:
    """``mask`` less the lines thinner than ``SPUR_UM`` that run on ``SPUR_REACH_UM`` or more out of a thicker
    part: a pen line or a bubble's rim drawn on over a core is not the core, and would lengthen it.  The parts'
    own ragged edges (within ``EDGE_UM`` of their thick body), a pointed corner of an obliquely cut end (short)
    and a part that is thin throughout stay."""
    r = max(1, int(round(SPUR_UM / level_um / 2)))
    padded = np.pad(mask, r + 1)  # outside the level is glass
    inner = ndimage.distance_transform_edt(padded) > r  # eroded by a disc of radius r (distances: fast at any r)
    if not inner.any():
        return mask
    wide = (ndimage.distance_transform_edt(~inner) <= r)[r + 1 : -r - 1, r + 1 : -r - 1] & mask  # ... dilated back
    near = ndimage.binary_dilation(wide, iterations=max(1, int(round(EDGE_UM / level_um))))
    spurs, n = ndimage.label(mask & ~near, structure=np.ones((3, 3), bool))
    if n == 0:
        return mask
    reach = ndimage.maximum(ndimage.distance_transform_edt(~near), spurs, range(1, n + 1))
    attached = ndimage.maximum(ndimage.binary_dilation(near), spurs, range(1, n + 1))
    cut = 1 + np.flatnonzero((np.asarray(reach) * level_um >= SPUR_REACH_UM) & (np.asarray(attached) > 0))
    return mask & ~np.isin(spurs, cut)


def axis_of(pts: np.ndarray) -> tuple[np.ndarray, np.ndarray, float]:
    """Centroid, long-axis unit vector and width (1-99 % across) of a point cloud (x, y)."""
    c = pts.mean(axis=0)
    if len(pts) < 3:
        return c, np.array([1.0, 0.0]), 1.0
    evals, evecs = np.linalg.eigh(np.cov((pts - c).T))
    axis = evecs[:, np.argmax(evals)]
    across = (pts - c) @ np.array([-axis[1], axis[0]])
    return c, axis, float(np.percentile(across, 99) - np.percentile(across, 1)) + 1.0


def thickness(part: np.ndarray) -> float:
    """Typical thickness (px) of a binary part, from its pixels' distances to its edge.

    In a band of width w those distances spread evenly from 0 to w/2, so twice their 90th percentile
    is 0.9 w.  Unlike the spread across a principal axis, it stays small for a curved pen line."""
    dist = ndimage.distance_transform_edt(np.pad(part, 1))
    return float(2 * np.percentile(dist[dist > 0], 90) / 0.9)


def _part(lab: np.ndarray, i: int, sl: tuple[slice, slice]) -> dict:
    """One labelled part: its pixels (x, y), axis, extent along it and thickness."""
    sub = lab[sl] == i
    ys, xs = np.nonzero(sub)
    pts = np.stack([xs + sl[1].start, ys + sl[0].start], 1).astype(float)
    c, axis, width = axis_of(pts)
    t = (pts - c) @ axis
    return {
        "ids": [int(i)],
        "pts": pts,
        "c": c,
        "axis": axis,
        "width": width,
        "extent": (t.min(), t.max()),
        "thick": thickness(sub),
    }


def parallel(part: dict, axis: np.ndarray, core_thick: float) -> bool:
    """Does an elongated part run along ``axis``?  A short piece has no direction to judge, and passes."""
    length = part["extent"][1] - part["extent"][0]
    elongated = length > 2 * part["thick"] and length > 3 * core_thick
    return not elongated or abs(part["axis"] @ axis) >= np.cos(np.radians(PARALLEL_DEG))


def end_frame(core: dict, sign: int) -> tuple[np.ndarray, np.ndarray, float, float]:
    """The core's end on the ``sign`` side of its axis, fitted on its last ``END_UM`` (a core curves): a point on
    the local axis, the local axis pointing out of the core, the end's place along it and the half-width there."""
    t = (core["pts"] - core["c"]) @ core["axis"]
    lo, hi = core["extent"]
    reach = core["end_px"]
    near = core["pts"][(t >= hi - reach) if sign > 0 else (t <= lo + reach)] if hi - lo > 2 * reach else core["pts"]
    c, axis, width = axis_of(near)
    out = axis * (1.0 if axis @ core["axis"] * sign > 0 else -1.0)
    return c, out, float(((near - c) @ out).max()), 0.5 * width


def link(core: dict, part: dict) -> dict | None:
    """How ``part`` lies against ``core``: None when it is not in line; else the along-axis gap (level px) from
    the core's end (0 for a part beside the core, within its extent), and the end's local frame."""
    lim = max(IN_LINE * core["thick"], 3.0)
    t = (part["pts"] - core["c"]) @ core["axis"]
    lo, hi = core["extent"]
    if t.max() > lo and t.min() < hi:  # beside the core: judged on its whole axis
        off = np.median(np.abs((part["pts"] - core["c"]) @ fatlib.perpendicular(core["axis"])))
        return {"gap_px": 0.0} if off < lim and parallel(part, core["axis"], core["thick"]) else None
    sign = 1 if t.min() >= hi else -1
    local = end_frame(core, sign)  # a bent core: its end's own line
    whole = (core["c"], core["axis"] * sign, (hi if sign > 0 else -lo), 0.5 * core["width"])  # a sliver off-centre
    for c, out, t_end, half_w in (local, whole):  # at its end tilts the local line: the core's whole line
        off = np.median(np.abs((part["pts"] - c) @ fatlib.perpendicular(out)))
        if off < lim and parallel(part, out, core["thick"]):
            start = float(((part["pts"] - c) @ out).min())
            return {"gap_px": max(start - t_end, 0.0), "c": c, "axis": out, "t0": t_end, "t1": start, "half_w": half_w}
    return None


def band_pixels(c: np.ndarray, axis: np.ndarray, t0: float, t1: float, half_w: float) -> np.ndarray:
    """Level pixels (x, y) of the band from ``t0`` to ``t1`` along ``axis`` from ``c``, ``half_w`` either side."""
    n = fatlib.perpendicular(axis)
    corners = np.array([c + t * axis + s * half_w * n for t in (t0, t1) for s in (-1, 1)])
    (x0, y0), (x1, y1) = np.floor(corners.min(axis=0)), np.ceil(corners.max(axis=0))
    yy, xx = np.mgrid[int(y0) : int(y1) + 1, int(x0) : int(x1) + 1]
    pts = np.stack([xx.ravel(), yy.ravel()], 1).astype(float)
    t, s = (pts - c) @ axis, (pts - c) @ n
    return pts[(t >= t0) & (t <= t1) & (np.abs(s) <= half_w)]


def merged(core: dict, part: dict, fat_pts: np.ndarray | None = None) -> dict:
    """A core with one more fragment (and the fat between them, as tissue): axis and extent refitted."""
    extra = [] if fat_pts is None or not len(fat_pts) else [fat_pts]
    pts = np.concatenate([core["pts"], part["pts"], *extra])
    c, axis, width = axis_of(pts)
    t = (pts - c) @ axis
    return {
        **core,
        "ids": core["ids"] + part["ids"],
        "pts": pts,
        "c": c,
        "axis": axis,
        "width": width,
        "extent": (t.min(), t.max()),
        "fat": core["fat"] + extra,
        "tissue_px": core["tissue_px"] + len(part["pts"]),
    }


def joined(core: dict, part: dict, lk: dict, geometry: dict) -> dict | None:
    """``core`` with ``part`` joined, or None: a part in line beyond the core's end joins when the glass between
    them (the gap less the fat found there at a fine level, :mod:`workflow_scripts.fat`) is at most the maximum
    gap, and the whole stretch at most ``FAT_MAX_MM``; the fat is painted in as tissue."""
    gap = lk["gap_px"]
    if gap > geometry["fat_max_px"]:
        return None
    fat, evidence = [], {"fine_um": None}
    if gap >= GAP_UM / geometry["level_um"]:
        args = (lk["c"], lk["axis"], lk["t0"], lk["t1"], lk["half_w"], geometry["level_um"])
        fat, evidence = fatlib.fat_bins(geometry["read"], *args)
    fat_px = sum(b - a for a, b in fat)
    if gap - fat_px > geometry["max_gap_px"]:
        return None
    band = [band_pixels(lk["c"], lk["axis"], a, b, lk["half_w"]) for a, b in fat]
    out = merged(core, part, np.concatenate(band) if band else None)
    um = geometry["level_um"] / 1000
    out["joins"] = core["joins"] + [
        {"piece": part["ids"][0], "gap_mm": round(gap * um, 3), "fat_mm": round(fat_px * um, 3), **evidence}
    ]
    return out


def grow(core: dict, pool: list[dict], geometry: dict) -> dict:
    """A core grown from its seed: the part in line nearest an end joins (:func:`joined`), the core is refitted
    (its axis, extent and ends), and again, until no part joins.  Joined parts leave ``pool``."""
    refused: set[tuple[int, float]] = set()  # (part, the core's extent when it was refused): no second read
    while True:
        links = [(lk["gap_px"], i, lk) for i, p in enumerate(pool) if (lk := link(core, p)) is not None]
        for _, i, lk in sorted(links, key=lambda x: x[:2]):
            key = (pool[i]["ids"][0], round(float(core["extent"][1] - core["extent"][0]), 1))
            if key in refused:
                continue
            if lk["gap_px"] > 0:
                grown = joined(core, pool[i], lk, geometry)
            else:  # beside the core, within its extent
                grown = merged(core, pool[i])
                grown["joins"] = core["joins"] + [{"piece": pool[i]["ids"][0], "gap_mm": 0.0, "fat_mm": 0.0}]
            if grown is not None:
                core = grown
                pool.pop(i)
                break
            refused.add(key)
        else:
            return core


def group(parts: list[dict], geometry: dict, is_core: Callable[[dict], bool]) -> tuple[list[dict], list[dict]]:
    """Cores from parts: the largest part not yet in a core seeds one and grows (:func:`grow`).  A group that
    is not core-like (``is_core``) is not a core: its parts are left over.  Returns (cores, left-over groups)."""
    pool = sorted(parts, key=lambda p: -len(p["pts"]))
    cores, left = [], []
    while pool:
        seed = pool.pop(0)
        core = grow(
            {**seed, "fat": [], "joins": [], "tissue_px": len(seed["pts"]), "end_px": geometry["end_px"]},
            pool,
            geometry,
        )
        (cores if is_core(core) else left).append(core)
    return cores, left


def gaps(t: np.ndarray, min_px: float) -> list[list[float]]:
    """Stretches along the axis (from, to) with no tissue between fragments, at least ``min_px`` long."""
    s = np.sort(t)
    jump = np.flatnonzero(np.diff(s) >= min_px)
    return [[float(s[i]), float(s[i + 1])] for i in jump]


def why_not_core(p: dict, level_um: float, min_width_mm: float, min_area_px: float) -> str:
    """Why a group of parts is not a core, in words."""
    if p["thick"] * level_um < min_width_mm * 1000:
        return f"thinner than a core ({p['thick'] * level_um / 1000:.2f} < {min_width_mm} mm): a pen line or a rim"
    if p["tissue_px"] < min_area_px:
        return "smaller than a core (cores.min_area_mm2): debris"
    return "round, not elongated: a crumb or a pen dot"


def piece_record(p: dict, level_um: float) -> dict:
    """One piece the finder saw: its number (its label in the level's components), size and place."""
    lo, hi = p["extent"]
    return {
        "piece": p["ids"][0],
        "length_mm": round(float((hi - lo) * level_um / 1000), 3),
        "width_mm": round(float(p["thick"] * level_um / 1000), 3),
        "area_mm2": round(float(len(p["pts"]) * level_um**2 / 1e6), 4),
        "centre_px": [round(float(v), 1) for v in p["c"] + p["axis"] * 0.5 * (lo + hi)],
        "bbox_px": [float(v) for v in (*p["pts"].min(axis=0), *p["pts"].max(axis=0))],
    }


def in_line(piece: dict, cores: list[dict], geometry: dict) -> dict | None:
    """The core a left-over piece lies in line with, beyond one of its ends and within ``FAT_MAX_MM``: its
    position, the gap and the end (level px); None for none."""
    for k in cores:
        lk = link(k, piece)
        if lk is not None and lk["gap_px"] > 0 and lk["gap_px"] <= geometry["fat_max_px"]:
            end = lk["c"] + lk["axis"] * lk["t0"]
            return {
                "core": k["position"],
                "gap_mm": round(lk["gap_px"] * geometry["level_um"] / 1000, 3),
                "core_end_px": [round(float(v), 1) for v in end],
            }
    return None


def find_cores(
    od: np.ndarray,
    level_um: float,
    *,
    max_gap_mm: float,
    min_width_mm: float,
    min_area_mm2: float,
    read: fatlib.Reader | None = None,
) -> tuple[np.ndarray, list[dict], list[dict]]:
    """Label image (0: none, k: core k), the cores, numbered left to right by their centres' x, and every
    piece of tissue seen (joined into a core, a core's seed, or left over, with why).  ``read``: a finer
    pyramid level, where fat and glass between pieces in line are told apart (:mod:`workflow_scripts.fat`)."""
    lab, n = ndimage.label(absorbing(od, level_um))
    if n == 0:
        raise InputError(
            "no tissue found on the slide", "check that the WSI shows the cores (not an empty or overexposed scan)"
        )
    sizes = ndimage.sum(np.ones_like(lab), lab, range(1, n + 1))
    boxes = ndimage.find_objects(lab)
    listed = np.flatnonzero(sizes * level_um**2 >= PIECE_UM2)
    parts = {i + 1: _part(lab, i + 1, boxes[i]) for i in listed}
    dust = {i for i, p in parts.items() if len(p["pts"]) < DEBRIS_SHARE * sizes.max()}
    min_area_px = min_area_mm2 * 1e6 / level_um**2
    geometry = {
        "level_um": level_um,
        "max_gap_px": max_gap_mm * 1000 / level_um,
        "fat_max_px": FAT_MAX_MM * 1000 / level_um,
        "end_px": END_UM / level_um,
        "read": read,
    }

    def is_core(p: dict) -> bool:
        long = p["extent"][1] - p["extent"][0] >= ELONGATION * p["thick"]  # a pen dot or a crumb is round
        return long and p["thick"] * level_um >= min_width_mm * 1000 and p["tissue_px"] >= min_area_px

    found, left = group([p for i, p in parts.items() if i not in dust], geometry, is_core)
    if not found:
        raise InputError(
            f"no core found on the slide: no absorbing part is at least {min_width_mm} mm thick and "
            f"{min_area_mm2} mm² large",
            "check the WSI, or lower cores.min_width_mm / cores.min_area_mm2 in config.yaml",
        )
    centre = lambda k: k["c"] + k["axis"] * 0.5 * sum(k["extent"])  # noqa: E731 - the middle of the extent
    found.sort(key=lambda k: (centre(k)[0], centre(k)[1]))
    labels = np.zeros(lab.shape, np.uint16)
    cores, pieces = [], []
    for pos, k in enumerate(found, start=1):
        k["position"] = pos
        labels[np.isin(lab, k["ids"])] = pos
        for fat in k["fat"]:
            x, y = fat.astype(int).T
            keep = (y >= 0) & (y < labels.shape[0]) & (x >= 0) & (x < labels.shape[1])
            labels[y[keep], x[keep]] = np.where(labels[y[keep], x[keep]] == 0, pos, labels[y[keep], x[keep]])
        lo, hi = k["extent"]
        glass = gaps((k["pts"] - k["c"]) @ k["axis"], GAP_UM / level_um)  # fat painted in: glass gaps only
        joins = {j["piece"]: j for j in k["joins"]}
        for i in k["ids"]:
            j = joins.get(i)
            how = (
                "the core's largest piece"
                if j is None
                else (
                    f"in line with the core, {j['gap_mm'] - j['fat_mm']:.2f} mm of glass"
                    + (f" and {j['fat_mm']:.2f} mm of fat" if j["fat_mm"] else "")
                    + " between"
                )
            )
            pieces.append(
                {
                    **piece_record(parts[i], level_um),
                    "role": "core" if j is None else "fragment",
                    "core": pos,
                    "why": how,
                }
            )
        cores.append(
            {
                "position": pos,
                "centre_px": centre(k).tolist(),
                "axis": k["axis"].tolist(),
                "length_mm": float((hi - lo) * level_um / 1000),
                "width_mm": float(k["thick"] * level_um / 1000),
                "fragments": 1 + len(glass),  # pieces apart across fat are one fragment of tissue
                "gaps_mm": [round((b - a) * level_um / 1000, 3) for a, b in glass],
                "fat_mm": round(sum(j["fat_mm"] for j in k["joins"]), 3),
                "names": [],
                "dye_marks_px": [],
            }
        )
    for g in left:
        why = why_not_core(g, level_um, min_width_mm, min_area_px)
        for i in g["ids"]:
            pieces.append({**piece_record(parts[i], level_um), "role": "leftover", "core": None, "why": why})
    for i in sorted(dust):
        pieces.append(
            {
                **piece_record(parts[i], level_um),
                "role": "leftover",
                "core": None,
                "why": "dust: smaller than 1% of the largest piece",
            }
        )
    for p in pieces:
        if p["role"] == "leftover":
            p["in_line_with"] = in_line(parts[p["piece"]], found, geometry)
    for k, rec in zip(found, cores, strict=True):  # a core in line with another: perhaps one core, split
        rec["in_line_with"] = in_line(k, [o for o in found if o is not k], geometry)
    pieces.sort(key=lambda p: p["piece"])
    return labels, cores, pieces


# ------------------------------------------------------------------ QuPath names and dye marks


def _rings(geom: dict) -> list[np.ndarray]:
    """Exterior rings (or the vertices of points and lines) of a GeoJSON geometry, as (N, 2) x/y arrays."""
    kind, co = geom.get("type"), geom.get("coordinates")
    if kind == "Point":
        return [np.array([co], float)[:, :2]]
    if kind in ("LineString", "MultiPoint"):
        return [np.array(co, float)[:, :2]]
    if kind == "MultiLineString":
        return [np.array(line, float)[:, :2] for line in co]
    if kind == "Polygon":
        return [np.array(co[0], float)[:, :2]]
    if kind == "MultiPolygon":
        return [np.array(p[0], float)[:, :2] for p in co]
    return []


def enclosed(labels: np.ndarray, ring: np.ndarray) -> np.ndarray:
    """Per core (index k-1): the share of core k's pixels inside a polygon ring given in level px."""
    inside = np.zeros(labels.shape, bool)
    rr, cc = fill_polygon(ring[:, 1], ring[:, 0], labels.shape)
    inside[rr, cc] = True
    n = int(labels.max())
    total = np.bincount(labels.ravel(), minlength=n + 1)[1:]
    within = np.bincount(labels[inside], minlength=n + 1)[1:]
    return within / np.maximum(total, 1)


def nearest_core(labels: np.ndarray, pts: np.ndarray, reach_px: float) -> int:
    """The core (1-based) whose pixels lie nearest the points' mean, within ``reach_px``; 0 for none."""
    dist, (iy, ix) = ndimage.distance_transform_edt(labels == 0, return_indices=True)
    x, y = np.clip(np.round(pts.mean(axis=0)).astype(int), 0, np.array(labels.shape[::-1]) - 1)
    return int(labels[iy[y, x], ix[y, x]]) if dist[y, x] <= reach_px else 0


def annotate(
    cores: list[dict], labels: np.ndarray, features: list[dict], scale: float, level_um: float, dye_class: str
) -> None:
    """Add each named annotation drawn around a core to its names, and each dye mark to its marks (level px).

    ``scale``: level-0 px per level px (QuPath coordinates are level-0 px)."""
    for f in features:
        rings = [r / scale for r in _rings(f.get("geometry") or {}) if len(r)]
        if not rings:
            continue
        name = (f.get("properties") or {}).get("name")
        if class_name(f) == dye_class:
            k = nearest_core(labels, np.concatenate(rings), MARK_REACH_UM / level_um)
            if k:
                cores[k - 1]["dye_marks_px"].append(np.concatenate(rings).mean(axis=0).tolist())
        elif (
            isinstance(name, str) and name.strip() and f.get("geometry", {}).get("type") in ("Polygon", "MultiPolygon")
        ):
            cover = np.max([enclosed(labels, r) for r in rings], axis=0)
            k = int(np.argmax(cover))
            if cover[k] >= NAME_COVER and name.strip() not in cores[k]["names"]:
                cores[k]["names"].append(name.strip())


def listing(cores: list[dict]) -> str:
    """The cores found, as an error message lists them: position, names, length."""
    return "; ".join(
        f"{c['position']}"
        + (f" ({', '.join(repr(n) for n in c['names'])})" if c["names"] else "")
        + f": {c['length_mm']:.1f} mm"
        + (f", {c['fragments']} fragments" if c["fragments"] > 1 else "")
        for c in cores
    )


def select(cores: list[dict], value: str) -> dict:
    """The core a biopsy's ``core`` value picks: an annotation name, else a 1-based position; empty with one core."""
    found = f"{len(cores)} core(s) on the slide, left to right: {listing(cores)}"
    value = (value or "").strip()
    if not value:
        if len(cores) == 1:
            return cores[0]
        raise InputError(f"the slide carries several cores and biopsies.tsv gives no core: {found}", CORE_HINT)
    named = [c for c in cores if value in c["names"]]
    if len(named) == 1:
        return named[0]
    if len(named) > 1:
        raise InputError(
            f"core {value!r} names several cores ({', '.join(str(c['position']) for c in named)}): {found}",
            "give each core's annotation a unique name in QuPath, or set core to a position",
        )
    if value.isdigit():
        if 1 <= int(value) <= len(cores):
            return cores[int(value) - 1]
        raise InputError(f"core position {value} is past the {len(cores)} core(s) found: {found}", CORE_HINT)
    raise InputError(f"no annotation named {value!r} is drawn around a core on this slide: {found}", CORE_HINT)


def unaccounted(pieces: list[dict], cores: list[dict], found: dict) -> list[str]:
    """Why the tissue on the slide does not add up for the biopsy whose orientation is ``found`` (its core's
    ``core_position``, axis, centroid and dyed end): a left-over piece longer than ``LEFTOVER_HOLD_MM``, or
    another core, in line with one of its ends (a part of it the finder could not join).  (More cores than
    biopsies.tsv has rows for the slide is judged in :func:`state.label_decision`, so that a row added to a slide
    reruns only its neighbours' review state.)"""
    position = found["core_position"]
    axis, centre = np.asarray(found["axis"], float), np.asarray(found["centroid"], float)
    sign = 1.0 if found.get("dye_at_positive_end") else -1.0
    reasons = []
    others = [{**c, "piece": f"core {c['position']}", "role": "core"} for c in cores if c["position"] != position]
    for p in [*pieces, *others]:
        near = (p.get("in_line_with") or {}).get("core")
        if p["role"] not in ("leftover", "core") or near != position or p["length_mm"] <= LEFTOVER_HOLD_MM:
            continue
        beyond = float((np.asarray(p["centre_px"]) - centre) @ axis) * sign > 0
        what = f"another core ({p['piece']})" if p["role"] == "core" else f"a {p['length_mm']:.1f} mm piece of tissue"
        reasons.append(
            f"{what} in line with the {'dyed (distal)' if beyond else 'undyed (proximal)'} end of this core, "
            f"{p['in_line_with']['gap_mm']:.1f} mm beyond it, belongs to no biopsy of its own"
            + (f" (piece {p['piece']} in cores.json)" if p["role"] == "leftover" else "")
            + ": check that the core is whole"
        )
    return reasons


# ------------------------------------------------------------------ entry point


def parser() -> argparse.ArgumentParser:
    """The command line; every setting that config.yaml carries is a required option the rule passes."""
    p = argparse.ArgumentParser(description="find every core on a slide level, number and name them")
    for k in ("thumb", "meta", "wsi", "annotation", "out", "labels", "figure"):
        p.add_argument(f"--{k}", required=True)
    p.add_argument("--max-gap-mm", type=float, required=True, help="config cores.max_gap_mm")
    p.add_argument("--min-width-mm", type=float, required=True, help="config cores.min_width_mm")
    p.add_argument("--min-area-mm2", type=float, required=True, help="config cores.min_area_mm2")
    p.add_argument("--dye-class", required=True, help="config cores.dye_class")
    p.add_argument("--participant")
    return p


def slide_reader(path: str, meta: dict) -> fatlib.Reader | None:
    """A reader of the slide's fine level (:func:`fat.fine_level`) by region, boxes given in the thumbnail's px;
    None when the slide has no level fine enough to show fat's membranes."""
    level = fatlib.fine_level(meta["level_um"])
    if level is None:
        return None
    um = meta["level_um"][level]
    f = meta["level_um_per_px"] / um  # fine px per thumbnail px
    h, w = meta["level_shapes"][level]
    k = max(1, int(fatlib.FINE_UM * 1.1 / um))  # a much finer level: averaged down to about FINE_UM

    def read(x0: float, y0: float, x1: float, y1: float) -> tuple[np.ndarray, float, tuple[float, float]]:
        ix0, iy0 = max(int(np.floor(x0 * f)), 0), max(int(np.floor(y0 * f)), 0)
        ix1, iy1 = min(int(np.ceil(x1 * f)), w), min(int(np.ceil(y1 * f)), h)
        if ix1 - ix0 < k or iy1 - iy0 < k:
            return np.zeros((0, 0, 3), np.uint8), um, (x0, y0)
        rgb, _ = read_region(path, level, ix0, iy0, ix1 - ix0, iy1 - iy0)
        if k > 1:
            bh, bw = rgb.shape[0] // k * k, rgb.shape[1] // k * k
            rgb = rgb[:bh, :bw].reshape(bh // k, k, bw // k, k, 3).mean(axis=(1, 3)).round().astype(np.uint8)
        return rgb, um * k, (ix0 / f, iy0 / f)

    return read


def main(argv: list[str] | None = None) -> None:
    a = parser().parse_args(argv)

    def go() -> None:
        doc = read_json(a.annotation, "the annotation file", "re-export it from QuPath as GeoJSON")
        features = parse_features(doc)
        rgb, meta = imread(a.thumb), json.loads(Path(a.meta).read_text())
        level_um = meta["level_um_per_px"]
        labels, cores, pieces = find_cores(
            optical_density(rgb),
            level_um,
            max_gap_mm=a.max_gap_mm,
            min_width_mm=a.min_width_mm,
            min_area_mm2=a.min_area_mm2,
            read=slide_reader(a.wsi, meta),
        )
        annotate(cores, labels, features, level_um / meta["um_per_px"], level_um, a.dye_class)
        imsave(a.labels, labels, check_contrast=False)
        doc = {"level_um_per_px": level_um, "cores": cores, "pieces": pieces}
        Path(a.out).write_text(json.dumps(doc, indent=1))
        slide_figure(rgb, labels, doc, a.figure)
        print(f"{len(cores)} core(s), left to right: {listing(cores)}")
        for p in pieces:
            print(
                f"piece {p['piece']}: {p['length_mm']:.2f} mm, {p['role']}"
                + (f" of core {p['core']}" if p["core"] else "")
                + f": {p['why']}"
            )

    run_cli(go, a.participant, None, a.annotation)


if __name__ == "__main__":
    main()
