"""Writing the pathologist's tumour outlines as a QuPath 0.4 GeoJSON export."""

from __future__ import annotations

import json
import uuid
from pathlib import Path

import numpy as np
from scipy import ndimage
from skimage import measure

from .truth import BiopsyTruth, cancer_inside, core_to_slide_px, core_to_us, edge_wobble


def mask_polygons(mask: np.ndarray) -> list[list[np.ndarray]]:
    """Polygons (exterior then holes, as (row, col) arrays) of a boolean mask."""
    out = []
    lab, n = ndimage.label(mask)
    for i in range(1, n + 1):
        comp = lab == i
        if comp.sum() < 4:
            continue
        rings = [_ring(comp)]
        holes, nh = ndimage.label(ndimage.binary_fill_holes(comp) & ~comp)
        for j in range(1, nh + 1):
            if (holes == j).sum() >= 4:
                rings.append(_ring(holes == j))
        out.append(rings)
    return out


def _ring(m: np.ndarray) -> np.ndarray:
    c = max(measure.find_contours(np.pad(m, 1).astype(float), 0.5), key=len) - 1
    return measure.approximate_polygon(c, tolerance=0.4)


def qupath_features(t: BiopsyTruth, rng: np.random.Generator) -> list[dict]:
    """QuPath-0.4-style features: tumour annotations plus objects to be ignored."""
    step = 0.01  # mm: the pathologist's drawing resolution
    u = np.arange(0, t.throw_mm, step)
    v = np.arange(-t.core_width_mm / 2, t.core_width_mm / 2, step)
    vv, uu = np.meshgrid(v, u, indexing="ij")
    x_us, y_us = core_to_us(t, uu, vv)
    inside = np.abs(vv) <= t.core_width_mm / 2 * edge_wobble(t, uu)
    polys = mask_polygons(cancer_inside(t, x_us, y_us) & inside)

    def to_slide(ring: np.ndarray) -> list[list[float]]:
        x, y = core_to_slide_px(t, u[0] + ring[:, 1] * step, v[0] + ring[:, 0] * step)
        pts = np.round(np.stack([x, y], 1), 2).tolist()
        return pts + [pts[0]]

    def feature(geom: dict, cls: str | None, kind: str = "annotation") -> dict:
        props: dict = {"objectType": kind}
        if cls:
            props["classification"] = {"name": cls, "color": [200, 0, 0]}
        return {
            "type": "Feature",
            "id": str(uuid.UUID(int=int(rng.integers(0, 2**63)))),
            "geometry": geom,
            "properties": props,
        }

    rings = [[to_slide(r) for r in p] for p in polys]
    feats = []
    if len(rings) > 1 and rng.random() < 0.6:
        feats.append(feature({"type": "MultiPolygon", "coordinates": rings[:2]}, "Tumor"))
        rings = rings[2:]
    feats += [feature({"type": "Polygon", "coordinates": r}, "Tumor") for r in rings]
    # objects that must be ignored: another class, an unclassified outline, detections
    cx, cy = core_to_slide_px(t, np.array([t.throw_mm * 0.3]), np.array([0.0]))
    box = [
        [cx[0] - 40, cy[0] - 20],
        [cx[0] + 40, cy[0] - 20],
        [cx[0] + 40, cy[0] + 20],
        [cx[0] - 40, cy[0] + 20],
        [cx[0] - 40, cy[0] - 20],
    ]
    feats.append(feature({"type": "Polygon", "coordinates": [box]}, "Stroma"))
    feats.append(feature({"type": "Polygon", "coordinates": [box]}, None))
    for k in range(5):
        ux, uy = core_to_slide_px(t, np.array([t.throw_mm * (0.1 + 0.15 * k)]), np.array([0.1]))
        cell = [[ux[0] + 3 * np.cos(a), uy[0] + 3 * np.sin(a)] for a in np.linspace(0, 2 * np.pi, 7)]
        feats.append(feature({"type": "Polygon", "coordinates": [cell]}, "Tumor", kind="detection"))
    return feats


def core_features(t: BiopsyTruth, rng: np.random.Generator) -> list[dict]:
    """A pathologist's outline around the core, named after it (class Region*), and a mark of its dyed end
    (class Dye: a point, a line across the end or a polygon around it), where the truth has them."""
    feats = []
    pt = lambda u, v: [round(float(c[0]), 2) for c in core_to_slide_px(t, np.array([u]), np.array([v]))]  # noqa: E731

    def feature(geom: dict, cls: str, name: str | None = None) -> dict:
        props = {"objectType": "annotation", "classification": {"name": cls, "color": [0, 120, 200]}}
        props.update({"name": name} if name else {})
        return {
            "type": "Feature",
            "id": str(uuid.UUID(int=int(rng.integers(0, 2**63)))),
            "geometry": geom,
            "properties": props,
        }

    if t.core_name:
        m, half = 0.3, t.core_width_mm / 2 + 0.3
        ring = [pt(u, v) for u, v in ((-m, -half), (t.throw_mm + m, -half), (t.throw_mm + m, half), (-m, half))]
        feats.append(feature({"type": "Polygon", "coordinates": [ring + ring[:1]]}, "Region*", t.core_name))
    u = t.throw_mm - min(t.dye_length_mm, 1.0) / 2  # in the dye, near the tip
    half = t.core_width_mm / 2
    if t.dye_mark == "Point":
        feats.append(feature({"type": "Point", "coordinates": pt(u, 0.0)}, "Dye"))
    elif t.dye_mark == "LineString":
        feats.append(feature({"type": "LineString", "coordinates": [pt(u, -half), pt(u, half)]}, "Dye"))
    elif t.dye_mark == "Polygon":
        ring = [pt(a, b) for a, b in ((u - 0.3, -half), (t.throw_mm, -half), (t.throw_mm, half), (u - 0.3, half))]
        feats.append(feature({"type": "Polygon", "coordinates": [ring + ring[:1]]}, "Dye"))
    return feats


def write_geojson(ts: list[BiopsyTruth], path: Path, rng: np.random.Generator) -> None:
    """Write the annotation export of a slide's cores (one core: in the biopsy's QuPath export shape)."""
    t = ts[0]
    feats = [f for c in ts for f in qupath_features(c, rng) + core_features(c, rng)]
    if t.geojson_shape == "FeatureCollection" or len(ts) > 1:
        doc: object = {"type": "FeatureCollection", "features": feats}
    elif t.geojson_shape == "array":
        doc = feats
    else:  # one selected object: all tumour outlines merged into a MultiPolygon
        polys = []
        for f in feats:
            props = f["properties"]
            if props["objectType"] == "annotation" and props.get("classification", {}).get("name") == "Tumor":
                g = f["geometry"]
                polys += g["coordinates"] if g["type"] == "MultiPolygon" else [g["coordinates"]]
        doc = {**feats[0], "geometry": {"type": "MultiPolygon", "coordinates": polys}}
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(doc))
