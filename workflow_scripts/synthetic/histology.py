"""Rendering the H&E whole slide image (a tiled, pyramidal OME-TIFF) from the truth."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import tifffile

from .truth import (
    DYES,
    EOSIN,
    HEMATOXYLIN,
    VARIED_DYES,
    BiopsyTruth,
    cancer_inside,
    core_to_slide_px,
    core_to_us,
    edge_wobble,
    slide_to_core,
)

TILE = 256  # px, tiles of the OME-TIFF


def render_slide_tile(t: BiopsyTruth, y0: int, x0: int, h: int, w: int, um_per_px: float) -> np.ndarray:
    """RGB uint8 tile of the slide at ``um_per_px``, top-left pixel (y0, x0)."""
    yy, xx = np.mgrid[y0 : y0 + h, x0 : x0 + w].astype(float)
    u, v = slide_to_core(t, (xx + 0.5) * um_per_px, (yy + 0.5) * um_per_px)
    inside = (u >= 0) & (u <= t.throw_mm) & (np.abs(v) <= t.core_width_mm / 2 * edge_wobble(t, u))
    for g0, gw in t.gaps_mm:  # a core broken into fragments: the tissue between them is lost
        inside &= ~((u > g0) & (u < g0 + gw))
    if t.nuisance:
        return _render_varied_tile(t, u, v, inside, um_per_px)
    out = np.full((h, w, 3), 242, np.uint8)
    if not inside.any():
        return out
    x_us, y_us = core_to_us(t, u, v)
    cancer = cancer_inside(t, x_us, y_us)
    # nuclei: band-limited procedural noise evaluated in tissue um, attenuated when
    # the pixel is larger than a nucleus so low levels show the average colour
    xu, yu = u * 1000, v * 1000
    blur = np.exp(-((um_per_px / 6.0) ** 2))
    noise = (np.sin(xu * 0.71 + np.sin(yu * 0.37) * 3) * np.sin(yu * 0.83 + np.sin(xu * 0.29) * 3)) * blur
    nuc_cancer = np.clip(0.55 + 0.6 * noise, 0, 1)
    nuc_benign = np.clip(0.12 + 0.35 * (noise - 0.4), 0, 1)
    ch = np.where(cancer, 0.25 + 0.85 * nuc_cancer, 0.12 + 0.6 * nuc_benign)
    ce = np.where(cancer, 0.35, 0.55 + 0.1 * np.sin(xu * 0.05))
    od = ch[..., None] * HEMATOXYLIN + ce[..., None] * EOSIN
    dye = u > t.throw_mm - t.dye_length_mm
    od = np.where(dye[..., None], od * 0.4 + 0.9 * DYES[t.dye] / np.linalg.norm(DYES[t.dye]) * 1.6, od)
    rgb = 255 * np.exp(-od)
    out[inside] = np.clip(rgb[inside], 0, 255).astype(np.uint8)
    return out


def _render_varied_tile(
    t: BiopsyTruth, u: np.ndarray, v: np.ndarray, inside: np.ndarray, um_per_px: float
) -> np.ndarray:
    """A tile with the varied cohort's stains, dyes and slide artefacts (u, v: core mm of each pixel)."""
    nz = t.nuisance
    for g0, gw in nz["gaps"]:  # tissue lost between fragments
        inside &= ~((u > g0) & (u < g0 + gw))
    od = np.zeros(u.shape + (3,))
    if inside.any():
        x_us, y_us = core_to_us(t, u, v)
        cancer = cancer_inside(t, x_us, y_us)
        xu, yu = u * 1000, v * 1000
        blur = np.exp(-((um_per_px / 6.0) ** 2))
        noise = (np.sin(xu * 0.71 + np.sin(yu * 0.37) * 3) * np.sin(yu * 0.83 + np.sin(xu * 0.29) * 3)) * blur
        stroma = nz["stroma_amp"] * np.sin(xu * nz["stroma_freq"] + np.sin(yu * 0.01) * 2)
        ch = np.where(
            cancer, 0.3 + 0.8 * np.clip(0.55 + 0.6 * noise, 0, 1), 0.12 + 0.3 * np.clip(0.3 + 0.5 * noise, 0, 1)
        )
        ce = np.where(cancer, 0.35, 0.55 + stroma)
        for cu, cv, r, gain in nz["dense"]:  # dense cellular tumour anywhere, the ends included
            m = np.exp(-((u - cu) ** 2 + (v - cv) ** 2) / (2 * r * r))
            ch = ch + gain * m
            ce = ce - 0.2 * m
        for cu, cv, r in nz["fat"]:  # fat: nearly empty vacuoles
            f = np.hypot(u - cu, v - cv) < r
            ch, ce = np.where(f, 0.03, ch), np.where(f, 0.05, ce)
        hv, ev = np.array(nz["h_vec"]), np.array(nz["e_vec"])
        od = (nz["h_scale"] * ch)[..., None] * hv / np.linalg.norm(hv) + (nz["e_scale"] * np.maximum(ce, 0.05))[
            ..., None
        ] * ev / np.linalg.norm(ev)
        for fu, fw, tilt in nz["folds"]:  # a fold doubles the tissue
            od *= np.where((np.abs(u - fu - tilt * v) < fw / 2)[..., None], 2.0, 1.0)
        dye_vec = VARIED_DYES[t.dye] / np.linalg.norm(VARIED_DYES[t.dye]) * 1.44 * nz["dye_density"]
        end = u > t.throw_mm - t.dye_length_mm
        half = t.core_width_mm / 2
        if nz["dye_cover"] == "partial":
            end &= v * nz["bleed_side"] > half - nz["dye_cover_frac"] * 2 * half
        elif nz["dye_cover"] == "bleed":
            end |= (u > t.throw_mm - nz["bleed_mm"]) & (v * nz["bleed_side"] > half * 0.75)
        od = np.where(end[..., None], od * 0.4 + dye_vec, od)
        od = np.where(inside[..., None], od, 0.0)
    x_mm, y_mm = u * t.shrink, v * t.shrink  # slide mm, in the core's frame
    length = t.throw_mm * t.shrink
    for fu, fv, r in nz["bubbles"]:  # air bubbles: a dark rim, a slightly lighter inside
        d = np.hypot(x_mm - fu * length, y_mm - fv)
        od = od * np.where((d < r)[..., None], 0.7, 1.0) + (np.abs(d - r) < 0.03)[..., None] * 0.35
    for fu, fv, plen, curve, width, colour in nz["pen"]:  # pen marks beside the tissue
        a = x_mm - fu * length
        along = np.abs(a) < plen / 2
        mark = along & (np.abs(y_mm - fv - curve * (a / max(plen, 1e-3)) ** 2 * plen) < width / 2)
        ink = [VARIED_DYES["blue"], VARIED_DYES["green"], VARIED_DYES["black"]][colour]
        od = np.where(mark[..., None], od + ink / np.linalg.norm(ink) * 1.2, od)
    background = np.array(nz["background"], float)
    rgb = background * np.exp(-od)
    return np.clip(rgb, 0, 255).astype(np.uint8)


def _reaches(t: BiopsyTruth, y0: int, x0: int, h: int, w: int, um_per_px: float) -> bool:
    """Whether a core (with the room its artefacts take beside it) can reach a tile."""
    u = np.array([0.0, t.throw_mm, 0.0, t.throw_mm])
    v = np.array([-1.0, -1.0, 1.0, 1.0]) * t.core_width_mm
    x, y = core_to_slide_px(t, u, v)
    room = (4000.0 if t.nuisance else 200.0) / t.slide_um_per_px
    f = um_per_px / t.slide_um_per_px  # tile px -> level-0 px
    return not (
        x.max() + room < x0 * f
        or x.min() - room > (x0 + w) * f
        or y.max() + room < y0 * f
        or y.min() - room > (y0 + h) * f
    )


def render_slide(ts: list[BiopsyTruth], y0: int, x0: int, h: int, w: int, um_per_px: float) -> np.ndarray:
    """RGB uint8 tile of a slide carrying one or several cores: their transmittances multiply."""
    if len(ts) == 1:
        return render_slide_tile(ts[0], y0, x0, h, w, um_per_px)
    bg = np.array(ts[0].nuisance.get("background", [242, 242, 242]), float)
    out = np.broadcast_to(bg, (h, w, 3)).copy()
    for t in ts:
        if _reaches(t, y0, x0, h, w, um_per_px):
            out *= render_slide_tile(t, y0, x0, h, w, um_per_px) / bg
    return np.clip(np.round(out), 0, 255).astype(np.uint8)


def write_wsi(ts: list[BiopsyTruth], path: Path) -> None:
    """Write a pyramidal tiled OME-TIFF of a slide's cores tile by tile (never the whole plane in memory)."""
    t = ts[0]
    levels = [1]
    while max(t.slide_shape) / levels[-1] > 1024:
        levels.append(levels[-1] * 2)

    def tiles(f: int):
        h, w = -(-t.slide_shape[0] // f), -(-t.slide_shape[1] // f)
        for ty in range(0, h, TILE):
            for tx in range(0, w, TILE):
                yield render_slide(ts, ty, tx, TILE, TILE, t.slide_um_per_px * f)

    path.parent.mkdir(parents=True, exist_ok=True)
    with tifffile.TiffWriter(path, bigtiff=True, ome=True) as tif:
        for i, f in enumerate(levels):
            shape = (-(-t.slide_shape[0] // f), -(-t.slide_shape[1] // f), 3)
            kw = dict(subifds=len(levels) - 1) if i == 0 else dict(subfiletype=1)
            meta = (
                dict(
                    PhysicalSizeX=t.slide_um_per_px,
                    PhysicalSizeXUnit="µm",
                    PhysicalSizeY=t.slide_um_per_px,
                    PhysicalSizeYUnit="µm",
                    axes="YXS",
                )
                if i == 0
                else None
            )
            tif.write(
                tiles(f),
                shape=shape,
                dtype=np.uint8,
                tile=(TILE, TILE),
                photometric="rgb",
                compression="jpeg",
                compressionargs={"level": 90},
                metadata=meta,
                **kw,
            )
