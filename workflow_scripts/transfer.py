"""ROI transfer: QuPath GeoJSON tumour outlines -> Labelme JSON on the tract crop.

Vectors are transformed, never rasters: slide px -> canonical um (orientation)
-> crop px (core length onto tract length, across by physical width).  Holes
become ``_background_`` polygons of the same group, and pixels outside the
sampled core become ``__ignore__`` polygons when they are configured as void.
"""

from __future__ import annotations

import argparse
import base64
import json
from collections import Counter
from pathlib import Path

import numpy as np
from skimage.io import imread

from workflow_scripts import geometry as geo
from workflow_scripts.errors import InputError, read_json, run_cli

LABELME_VERSION = "5.1.0"
BACKGROUND, IGNORE = "_background_", "__ignore__"
Polygon = list[np.ndarray]  # exterior ring, then holes, each (N, 2) x/y


def parse_features(doc: object) -> list[dict]:
    """Features of any QuPath export shape: FeatureCollection, a bare Feature, or an array."""
    if isinstance(doc, list):
        return [f for f in doc if isinstance(f, dict)]
    if isinstance(doc, dict) and doc.get("type") == "FeatureCollection":
        return list(doc.get("features") or [])
    if isinstance(doc, dict) and doc.get("type") == "Feature":
        return [doc]
    raise InputError(
        "not a QuPath GeoJSON export (expected a FeatureCollection, a Feature or an array of Features)",
        "export the annotations from QuPath with File > Export objects as GeoJSON",
    )


QUPATH_02_KINDS = {
    "PathAnnotationObject": "annotation",
    "PathDetectionObject": "detection",
    "PathCellObject": "cell",
    "PathTileObject": "tile",
    "PathTMACoreObject": "tma_core",
    "PathRootObject": "root",
}


def object_kind(feature: dict) -> str:
    """The QuPath object type in any export dialect: 0.4+ ``objectType``, 0.3 ``object_type``, 0.2 ``id``."""
    props = feature.get("properties") or {}
    kind = props.get("objectType") or props.get("object_type")
    if kind is None and isinstance(feature.get("id"), str) and feature["id"] in QUPATH_02_KINDS:
        kind = QUPATH_02_KINDS[feature["id"]]
    return str(kind or "annotation").lower()


def class_name(feature: dict) -> str | None:
    """The QuPath classification name: a dict with ``name`` (every version) or a bare string."""
    c = (feature.get("properties") or {}).get("classification")
    return c.get("name") if isinstance(c, dict) else (c if isinstance(c, str) else None)


REPAIRS = ("invalid polygons repaired", "degenerate polygons dropped", "degenerate holes dropped")


def repaired(rings: list, counts: Counter) -> list[Polygon]:
    """Valid polygons from GeoJSON rings: degenerate rings dropped, self-intersections repaired (shapely make_valid)."""
    from shapely import make_valid
    from shapely.geometry import MultiPolygon as SMulti
    from shapely.geometry import Polygon as SPoly

    arrs = [np.asarray(r, float)[:, :2] for r in rings if len(r)]
    arrs = [r for r in arrs if len(np.unique(r, axis=0)) >= 3]
    if not arrs or len(np.unique(np.asarray(rings[0], float)[:, :2], axis=0)) < 3:
        counts["degenerate polygons dropped"] += 1
        return []
    if len(arrs) < len(rings):
        counts["degenerate holes dropped"] += len(rings) - len(arrs)
    poly = SPoly(arrs[0], arrs[1:])
    if poly.is_valid:
        return [arrs]
    fixed = make_valid(poly)
    parts = [g for g in getattr(fixed, "geoms", [fixed]) if isinstance(g, (SPoly, SMulti))]
    out = [
        [np.asarray(q.exterior.coords), *(np.asarray(h.coords) for h in q.interiors)]
        for g in parts
        for q in getattr(g, "geoms", [g])
        if q.area > 0
    ]
    counts["invalid polygons repaired" if out else "degenerate polygons dropped"] += 1
    return out


def tumour_polygons(features: list[dict], classes: dict[str, str]) -> tuple[list[tuple[str, str, Polygon]], Counter]:
    """(label, QuPath class, polygon) for tumour annotations; counts of what was ignored or repaired, by reason."""
    kept, ignored = [], Counter()
    for f in features:
        kind, cls = object_kind(f), class_name(f)
        geom = f.get("geometry") or {}
        if kind != "annotation":
            ignored[f"{kind}s"] += 1
        elif cls not in classes:
            ignored[f"class {cls or 'unclassified'}"] += 1
        elif geom.get("type") in ("Polygon", "MultiPolygon"):
            polys = [geom["coordinates"]] if geom["type"] == "Polygon" else geom["coordinates"]
            kept += [(classes[cls], cls, rings) for poly in polys for rings in repaired(poly, ignored)]
        else:
            ignored[f"geometry {geom.get('type')}"] += 1
    return kept, ignored


def void_polygons(
    crop_shape: tuple[int, int], tract_x: tuple[float, float], core_rows: tuple[float, float]
) -> list[np.ndarray]:
    """Rectangles covering the crop outside the sampled core (as 4-point polygons)."""
    h, w = crop_shape
    (x0, x1), (r0, r1) = tract_x, core_rows
    rect = lambda a, b, c, d: np.array([[a, b], [c, b], [c, d], [a, d]], float)  # noqa: E731
    boxes = [rect(-1, -1, w, r0 - 0.5), rect(-1, r1 + 0.5, w, h), rect(-1, -1, x0 - 0.5, h), rect(x1 + 0.5, -1, w, h)]
    return [b for b in boxes if (b[:, 0].max() - b[:, 0].min()) > 0.5 and (b[:, 1].max() - b[:, 1].min()) > 0.5]


SPAN_SHARE = 0.05  # share of a tumour outline's core pixels on a second core above which it spans two cores


def on_core(
    polys: list[tuple[str, str, Polygon]], labels: np.ndarray, position: int, scale: float, names: dict[int, str]
) -> tuple[list[tuple[str, str, Polygon]], Counter]:
    """The tumour outlines that lie on core ``position`` of the slide's label image (level px; ``scale``:
    level-0 px per level px), and counts of those left out (on another core, on no core).

    Each outline is assigned to the core that holds most of its pixels; one that holds more than
    ``SPAN_SHARE`` of them on a second core spans two cores, an error naming both (``names``:
    position -> description)."""
    from skimage.draw import polygon as fill

    kept, left = [], Counter()
    for label, cls, poly in polys:
        rr, cc = fill(poly[0][:, 1] / scale, poly[0][:, 0] / scale, labels.shape)
        hits = np.bincount(labels[rr, cc].ravel(), minlength=int(labels.max()) + 1)[1:]
        if hits.sum() == 0:
            left["tumour outlines on no core"] += 1
            continue
        first, second = np.argsort(hits)[::-1][:2] + 1 if len(hits) > 1 else (1, 0)
        if second and hits[second - 1] > SPAN_SHARE * hits.sum():
            raise InputError(
                f"a {cls} outline spans two cores: {names[first]} and {names[second]} "
                f"({hits[first - 1]} and {hits[second - 1]} level px)",
                "in QuPath, split the outline at the gap between the cores (one outline per core)",
            )
        if first == position:
            kept.append((label, cls, poly))
        else:
            left["tumour outlines on another core"] += 1
    return kept, left


def on_leftover(polys: list[tuple[str, str, Polygon]], pieces: list[dict], position: int, scale: float) -> list[str]:
    """Why the biopsy's label may miss tumour: an outline that reaches onto a left-over piece of tissue in line
    with this core (``cores.json`` pieces, level px; ``scale``: level-0 px per level px), a part of the core the
    finder could not join, so that the outline's tumour there lies outside the label."""
    reasons = []
    for p in pieces:
        if p["role"] != "leftover" or (p.get("in_line_with") or {}).get("core") != position:
            continue
        x0, y0, x1, y1 = np.asarray(p["bbox_px"]) + [-1, -1, 1, 1]
        hits = sum(
            1
            for _, _, poly in polys
            if (((v := poly[0] / scale)[:, 0] >= x0) & (v[:, 0] <= x1) & (v[:, 1] >= y0) & (v[:, 1] <= y1)).any()
        )
        if hits:
            reasons.append(
                f"{hits} tumour outline(s) reach onto a {p['length_mm']:.1f} mm piece of tissue in line with this core "
                f"that belongs to no biopsy (piece {p['piece']} in cores.json): its tumour is not in the label"
            )
    return reasons


def shrinkage_reason(core_mm: float, tract_mm: float, plausible: tuple[float, float]) -> str:
    """Why a core's length contradicts the tract it was sampled from ('' when it does not): the core on the
    slide against the sampled tract length, outside the ``plausible`` ratio (shrinkage, lost tissue)."""
    ratio = core_mm / tract_mm
    if plausible[0] <= ratio <= plausible[1]:
        return ""
    what = "shorter" if ratio < plausible[0] else "longer"
    return (
        f"the core on the slide ({core_mm:.1f} mm) is {what} than the sampled tract ({tract_mm:.1f} mm) allows: "
        f"ratio {ratio:.2f}, plausible {plausible[0]:.2f}-{plausible[1]:.2f}; check that the whole core was found "
        "(cores.json) and the tract's tips"
    )


def gap_voids(gaps_x_um: list[list[float]], canon_to_crop: np.ndarray, crop_shape: tuple[int, int]) -> list:
    """Void rectangles over the crop where the core has no tissue between its fragments (canonical um)."""
    h = crop_shape[0]
    out = []
    for a, b in gaps_x_um:
        x0, x1 = sorted(geo.apply(canon_to_crop, [[a, 0.0], [b, 0.0]])[:, 0])
        out.append(np.array([[x0, -1], [x1, -1], [x1, h], [x0, h]], float))
    return out


def labelme_shapes(polys: list[tuple[str, str, Polygon]], voids: list[np.ndarray]) -> list[dict]:
    """Labelme shapes in drawing order: tumour exteriors, their holes, then void."""

    def shape(label: str, ring: np.ndarray, group: int | None, description: str = "") -> dict:
        pts = ring[:-1] if len(ring) > 3 and np.allclose(ring[0], ring[-1]) else ring
        return {
            "label": label,
            "points": np.round(pts, 3).tolist(),
            "group_id": group,
            "description": description,
            "shape_type": "polygon",
            "flags": {},
            "mask": None,
        }

    out = []
    for g, (label, cls, poly) in enumerate(polys):
        out.append(shape(label, poly[0], g, f"QuPath class: {cls}"))
        out += [shape(BACKGROUND, hole, g, f"hole in {cls}") for hole in poly[1:]]
    out += [shape(IGNORE, v, None, "outside the sampled core: truth unknown") for v in voids]
    return out


def labelme_document(shapes: list[dict], image_name: str, image_bytes: bytes, shape: tuple[int, int]) -> dict:
    """A Labelme JSON document with the crop image embedded."""
    return {
        "version": LABELME_VERSION,
        "flags": {},
        "shapes": shapes,
        "imagePath": image_name,
        "imageData": base64.b64encode(image_bytes).decode(),
        "imageHeight": int(shape[0]),
        "imageWidth": int(shape[1]),
    }


def registered_canonical_to_crop(orient: dict, tract: dict, across: str) -> np.ndarray:
    """Affine from canonical um to crop px for one registered biopsy (its core ends onto its tract ends).

    ``across="shrinkage"`` also undoes, across the axis, the shrinkage measured along it; "physical" keeps um."""
    to_crop = geo.canonical_to_crop(
        orient["core_x_um"], tract["tract_x_px"], tract["crop_shape"][0], tract["out_mm_per_px"]
    )
    if across == "shrinkage":
        (c0, c1), (x0, x1) = orient["core_x_um"], tract["tract_x_px"]
        factor = (x1 - x0) * tract["out_mm_per_px"] * 1000 / (c1 - c0)
        cy = (tract["crop_shape"][0] - 1) / 2
        to_crop = geo.compose(to_crop, geo.translation(0, -cy), geo.scaling(1, factor), geo.translation(0, cy))
    return to_crop


def core_rows(orient: dict, canon_to_crop: np.ndarray) -> tuple[float, float]:
    """Crop rows of the sampled core's two long edges."""
    half = orient["core_width_um"] / 2
    ys = geo.apply(canon_to_crop, [[0.0, -half], [0.0, half]])[:, 1]
    return float(ys.min()), float(ys.max())


def parser() -> argparse.ArgumentParser:
    """The command line; every setting that config.yaml carries is a required option the rule passes."""
    p = argparse.ArgumentParser(description="transfer QuPath tumour outlines onto the tract crop as Labelme JSON")
    for k in ("annotation", "orient", "tract", "crop", "out", "summary", "cores", "labels", "slide-meta"):
        p.add_argument(f"--{k}", required=True)
    # settings that config.yaml carries have no second default here: the rule always passes them
    p.add_argument("--classes", required=True, help="JSON {QuPath class: label} (config transfer.classes)")
    p.add_argument("--outside-core", choices=["void", "background"], required=True, help="config transfer.outside_core")
    p.add_argument("--across", choices=["physical", "shrinkage"], required=True, help="config transfer.across")
    p.add_argument(
        "--plausible-shrinkage", type=float, nargs=2, required=True, help="config transfer.plausible_shrinkage"
    )
    p.add_argument("--participant")
    p.add_argument("--biopsy")
    return p


def main(argv: list[str] | None = None) -> None:
    a = parser().parse_args(argv)

    def go() -> None:
        doc = read_json(a.annotation, "the annotation file", "re-export it from QuPath as GeoJSON")
        classes = json.loads(a.classes)
        polys, ignored = tumour_polygons(parse_features(doc), classes)
        orient, tract = json.loads(Path(a.orient).read_text()), json.loads(Path(a.tract).read_text())
        meta, slide = json.loads(Path(a.slide_meta).read_text()), json.loads(Path(a.cores).read_text())
        cores = slide["cores"]
        names = {
            c["position"]: f"core {c['position']}" + (f" ({', '.join(c['names'])})" if c["names"] else "")
            for c in cores
        }
        scale = meta["level_um_per_px"] / meta["um_per_px"]
        reasons = on_leftover(polys, slide.get("pieces", []), orient["core_position"], scale)
        polys, left = on_core(polys, imread(a.labels), orient["core_position"], scale, names)
        ignored.update(left)
        to_crop = registered_canonical_to_crop(orient, tract, a.across)
        m = geo.compose(np.array(orient["slide_px_to_canonical_um"]), to_crop)
        polys = [(label, cls, geo.apply_polygons(m, [poly])[0]) for label, cls, poly in polys]
        voids = (
            void_polygons(tract["crop_shape"], tract["tract_x_px"], core_rows(orient, to_crop))
            + gap_voids(orient.get("core_gaps_x_um", []), to_crop, tract["crop_shape"])
            if a.outside_core == "void"
            else []
        )
        shapes = labelme_shapes(polys, voids)
        crop = Path(a.crop)
        Path(a.out).write_text(
            json.dumps(labelme_document(shapes, crop.name, crop.read_bytes(), tract["crop_shape"]), indent=1)
        )
        core_mm = (orient["core_x_um"][1] - orient["core_x_um"][0]) / 1000
        shrink = core_mm / tract["sampled_length_mm"]
        reasons += [r for r in [shrinkage_reason(core_mm, tract["sampled_length_mm"], a.plausible_shrinkage)] if r]
        fixes = {k: v for k, v in ignored.items() if k in REPAIRS}
        ignored = Counter({k: v for k, v in ignored.items() if k not in REPAIRS})
        summary = {
            "tumour_polygons": len(polys),
            "holes": sum(len(pl) - 1 for _, _, pl in polys),
            "ignored": dict(ignored),
            "ignored_total": sum(ignored.values()),
            "repaired": fixes,
            "core_length_mm": core_mm,
            "tract_length_mm": tract["sampled_length_mm"],
            "shrinkage": shrink,
            "shrinkage_plausible": a.plausible_shrinkage[0] <= shrink <= a.plausible_shrinkage[1],
            "review_reasons": reasons,  # the label's own evidence against it: state.py holds the biopsy
            "outside_core": a.outside_core,
            "across": a.across,
        }
        Path(a.summary).write_text(json.dumps(summary, indent=1))
        print(
            f"transferred {len(polys)} tumour polygons ({summary['holes']} holes); ignored "
            f"{summary['ignored_total']} objects: {dict(ignored)}; core/tract length {shrink:.2f}"
        )

    run_cli(go, a.participant, a.biopsy, a.annotation)


if __name__ == "__main__":
    main()
