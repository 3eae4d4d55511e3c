"""Dye-tip orientation: find the core on a low-resolution WSI level and its dyed end.

The tissue strip is segmented by optical density, its long axis by PCA, and
the dye by colour deconvolution: tissue-marking dye absorbs outside the plane
spanned by the haematoxylin and eosin optical-density vectors.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np
from scipy import ndimage
from skimage.io import imread, imsave

from workflow_scripts import geometry as geo
from workflow_scripts.errors import InputError, run_cli

STAINS = np.array([[0.65, 0.70, 0.29], [0.07, 0.99, 0.11]])  # H, E optical-density vectors (Ruifrok)
DIRECTIONS = {"left": (-1, 0), "right": (1, 0), "top": (0, -1), "bottom": (0, 1)}


def optical_density(rgb: np.ndarray) -> np.ndarray:
    """Per-pixel optical density (H, W, 3)."""
    return -np.log((rgb[..., :3].astype(float) + 1.0) / 256.0)


def tissue_mask(od: np.ndarray, threshold: float = 0.2) -> np.ndarray:
    """The core: large connected components of absorbing pixels."""
    mask = ndimage.binary_closing(od.max(axis=-1) > threshold, iterations=2)
    lab, n = ndimage.label(mask)
    if n == 0:
        raise InputError("no tissue found on the slide", "check that the WSI shows the core (not an empty or overexposed scan)")
    sizes = ndimage.sum(mask, lab, range(1, n + 1))
    return np.isin(lab, 1 + np.flatnonzero(sizes >= 0.1 * sizes.max()))


def dye_score(od: np.ndarray) -> np.ndarray:
    """Fraction of each pixel's optical density that lies outside the H&E stain plane."""
    basis = STAINS / np.linalg.norm(STAINS, axis=1, keepdims=True)
    q, _ = np.linalg.qr(basis.T)  # orthonormal basis of the H&E plane
    flat = od.reshape(-1, 3)
    resid = flat - (flat @ q) @ q.T
    coef = np.linalg.lstsq(basis.T, flat.T, rcond=None)[0].T
    norm = np.linalg.norm(flat, axis=1) + 1e-9
    score = np.linalg.norm(resid, axis=1) / norm + np.clip(-coef.min(axis=1), 0, None) / norm
    return score.reshape(od.shape[:2])


def find_orientation(
    rgb: np.ndarray, min_dye_fraction: float = 0.15, min_confidence: float = 0.5, dye_threshold: float = 0.3, end_fraction: float = 0.1,
    override: str | None = None,
) -> dict:
    """Strip axis, extent and dyed end on one pyramid level (coordinates in that level's px)."""
    od = optical_density(rgb)
    mask = tissue_mask(od)
    ys, xs = np.nonzero(mask)
    pts = np.stack([xs, ys], 1).astype(float)
    centroid = pts.mean(axis=0)
    evals, evecs = np.linalg.eigh(np.cov((pts - centroid).T))
    axis = evecs[:, np.argmax(evals)]
    t = (pts - centroid) @ axis
    across = (pts - centroid) @ np.array([-axis[1], axis[0]])
    lo, hi = t.min() - 0.5, t.max() + 0.5
    seg = end_fraction * (hi - lo)
    dye = dye_score(od)[ys, xs] > dye_threshold
    f_neg, f_pos = float(dye[t < lo + seg].mean()), float(dye[t > hi - seg].mean())
    conf = abs(f_pos - f_neg) / (f_pos + f_neg + 1e-9)
    if override:
        v = np.array(DIRECTIONS[override], float)
        positive, source = bool(axis @ v > 0), "override"
    else:
        if max(f_pos, f_neg) < min_dye_fraction:
            raise InputError(
                f"no dye found at either end of the core (dyed fraction {f_neg:.2f} / {f_pos:.2f}, need {min_dye_fraction})",
                "set dye_end (left/right/top/bottom, as the slide is displayed) in biopsies.tsv",
            )
        if conf < min_confidence:
            raise InputError(
                f"dyed end is ambiguous (confidence {conf:.2f} < {min_confidence}; dyed fraction {f_neg:.2f} / {f_pos:.2f})",
                "set dye_end (left/right/top/bottom, as the slide is displayed) in biopsies.tsv",
            )
        positive, source = f_pos > f_neg, "auto"
    return {
        "centroid": centroid.tolist(), "axis": axis.tolist(), "extent": [float(lo), float(hi)],
        "width": float(np.percentile(across, 99) - np.percentile(across, 1)) + 1.0,
        "dye_at_positive_end": positive, "dye_fraction": [f_neg, f_pos], "confidence": float(conf), "source": source,
    }


def canonical(found: dict, level_um: float, slide_um: float) -> dict:
    """Slide full-res px -> canonical um transform and the core's canonical extent."""
    scale = level_um / slide_um  # level px -> full-res px
    centroid = np.array(found["centroid"]) * scale + 0.5 * (scale - 1)  # pixel centres
    angle = float(np.arctan2(found["axis"][1], found["axis"][0]))
    m = geo.canonical_frame(centroid, angle, found["dye_at_positive_end"], slide_um)
    lo, hi = (np.array(found["extent"]) * level_um).tolist()
    x = [lo, hi] if found["dye_at_positive_end"] else [-hi, -lo]
    return {"slide_px_to_canonical_um": m.tolist(), "core_x_um": x, "core_width_um": found["width"] * level_um}


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description="find the dyed end of the core on a WSI level")
    p.add_argument("--thumb", required=True)
    p.add_argument("--meta", required=True)
    p.add_argument("--out", required=True)
    p.add_argument("--oriented", required=True, help="PNG of the level in the canonical frame")
    p.add_argument("--dye-end", default="", help="manual override: left/right/top/bottom")
    p.add_argument("--min-confidence", type=float, default=0.5)
    p.add_argument("--min-dye-fraction", type=float, default=0.15)
    p.add_argument("--participant")
    p.add_argument("--biopsy")
    a = p.parse_args(argv)

    def go() -> None:
        rgb = imread(a.thumb)
        meta = json.loads(Path(a.meta).read_text())
        found = find_orientation(rgb, a.min_dye_fraction, a.min_confidence, override=a.dye_end or None)
        res = {**found, **canonical(found, meta["level_um_per_px"], meta["um_per_px"])}
        Path(a.out).write_text(json.dumps(res, indent=1))
        # the level in the canonical frame, for QC: canonical um -> level px
        lvl = geo.compose(geo.invert(np.array(res["slide_px_to_canonical_um"])), geo.scaling(meta["um_per_px"] / meta["level_um_per_px"]))
        x0, x1 = res["core_x_um"]
        pad, h = 0.05 * (x1 - x0), res["core_width_um"] * 3
        px = meta["level_um_per_px"]
        out_to_canon = geo.compose(geo.scaling(px), geo.translation(x0 - pad, -h / 2))
        shape = (int(h / px), int((x1 - x0 + 2 * pad) / px))
        imsave(a.oriented, geo.warp(rgb, geo.compose(out_to_canon, lvl), shape, cval=242).astype(np.uint8), check_contrast=False)
        print(f"dye end found ({res['source']}), confidence {res['confidence']:.2f}, core {(x1 - x0) / 1000:.2f} mm")

    run_cli(go, a.participant, a.biopsy, a.thumb)


if __name__ == "__main__":
    main()
