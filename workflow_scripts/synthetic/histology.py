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
    fat_inside,
    slide_to_core,
)

TILE = 256  # px, tiles of the OME-TIFF
NET_UM = 7.0  # pixel size (um) at which the adipocytes' net fades to its area average (1/e)


def _hash01(i: np.ndarray, j: np.ndarray, salt: int) -> np.ndarray:
    """A deterministic pseudo-random number in [0, 1) per integer pair (a 64-bit mix)."""
    with np.errstate(over="ignore"):
        h = i.astype(np.int64).astype(np.uint64) * np.uint64(0x9E3779B97F4A7C15)
        h ^= j.astype(np.int64).astype(np.uint64) * np.uint64(0xC2B2AE3D27D4EB4F) + np.uint64(salt)
        h ^= h >> np.uint64(33)
        h *= np.uint64(0xFF51AFD7ED558CCD)
        h ^= h >> np.uint64(33)
    return (h >> np.uint64(11)).astype(float) / 2.0**53


def _cell_walls(x: np.ndarray, y: np.ndarray, spacing: float, salt: int) -> np.ndarray:
    """Distance (um) from each point (slide um in the core's frame) to the nearest wall of a Voronoi net of
    cells whose centres jitter about a square grid of ``spacing`` (half the gap between the two nearest)."""
    gi, gj = np.floor(x / spacing), np.floor(y / spacing)
    f1, f2 = np.full(x.shape, np.inf), np.full(x.shape, np.inf)
    for di in (-1, 0, 1):
        for dj in (-1, 0, 1):
            ci, cj = gi + di, gj + dj
            cx = (ci + 0.5 + 0.8 * (_hash01(ci, cj, salt) - 0.5)) * spacing
            cy = (cj + 0.5 + 0.8 * (_hash01(ci, cj, salt + 1) - 0.5)) * spacing
            d = np.hypot(x - cx, y - cy)
            f2 = np.where(d < f1, f1, np.minimum(f2, d))
            f1 = np.minimum(f1, d)
    return (f2 - f1) / 2


def _line_cover(dist: np.ndarray, lo: float, hi: float, um_per_px: float) -> np.ndarray:
    """The share of a pixel (centred ``dist`` um from a line) that the band [lo, hi] um about the line covers."""
    a, b = dist - um_per_px / 2, dist + um_per_px / 2
    return np.clip(np.minimum(b, hi) - np.maximum(a, lo), 0, None) / um_per_px


def fat_stain(t: BiopsyTruth, u: np.ndarray, v: np.ndarray, um_per_px: float) -> tuple[np.ndarray, np.ndarray]:
    """Where a tile's pixels (core mm u, v) are fat, and the eosin concentration there (0 elsewhere).

    Fat is nearly empty adipocytes bounded by thin eosin membranes.  The membranes are rendered
    resolution-aware: at 2-4 um/px as a net (each pixel's share of a wall), fading with the pixel size to
    the area average (membrane share 2 x thickness / cell spacing, times the membrane's density), so that
    at 16 um/px fat is nearly as pale as glass.  Where a lobule meets the core's outline, a slightly denser
    rim (fat bounded by tissue) runs along it.  The small round vacuoles of the varied cohort are fat too."""
    fat = t.fat
    mask, conc = np.zeros(u.shape, bool), np.zeros(u.shape)
    near = (np.abs(v) < t.core_width_mm) & (u > -0.1) & (u < t.throw_mm + 0.1)  # the core and a margin
    if not near.any():
        return mask, conc
    un, vn = u[near], v[near]
    inner = fat_inside(fat, un, vn) if fat.get("lobules") else np.zeros(un.shape, bool)
    for cu, cv, r in t.nuisance.get("vacuoles", []):
        inner |= np.hypot(un - cu, vn - cv) < r
    mask[near] = inner
    if not inner.any():
        return mask, conc
    cell, wall, dens = fat.get("cell_um", 80.0), fat.get("membrane_um", 3.0), fat.get("membrane_od", 0.4)
    uf, vf = u[mask], v[mask]
    mean = min(2 * wall / cell, 1.0)  # the walls' area share
    vis = float(np.exp(-((um_per_px / NET_UM) ** 2)))
    share = np.full(uf.shape, mean)
    if vis > 0.01:  # finer than about 15 um/px: the net shows
        x, y = uf * t.shrink * 1000, vf * t.shrink * 1000
        near = _line_cover(_cell_walls(x, y, cell, fat.get("texture", 0)), -wall / 2, wall / 2, um_per_px)
        share = vis * near + (1 - vis) * mean
    rim = (t.core_width_mm / 2 * edge_wobble(t, uf) - np.abs(vf)) * t.shrink * 1000  # um inside the outline
    conc[mask] = fat.get("interior_od", 0.01) + dens * share + 0.6 * dens * _line_cover(rim, 0, 1.5 * wall, um_per_px)
    return mask, conc


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
    fat, conc = fat_stain(t, u, v, um_per_px)  # fat holds no tumour: nearly empty cells, pink walls
    ch, ce = np.where(fat, 0.1 * conc, ch), np.where(fat, conc, ce)
    od = ch[..., None] * HEMATOXYLIN + ce[..., None] * EOSIN
    od[fat] += np.log(255 / 242)  # fat lets through what glass does, less its walls' stain
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
        fat, conc = fat_stain(t, u, v, um_per_px)  # lobules and vacuoles: nearly empty cells, pink walls
        ch, ce = np.where(fat, 0.1 * conc, ch), np.where(fat, conc, np.maximum(ce, 0.05))
        hv, ev = np.array(nz["h_vec"]), np.array(nz["e_vec"])
        od = (nz["h_scale"] * ch)[..., None] * hv / np.linalg.norm(hv) + (nz["e_scale"] * ce)[
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


def region_reader(ts: list[BiopsyTruth], level_um: float, fine_um: float = 4.0):
    """A slide's finer pyramid level read by region, as a slide file is read: ``read(x0, y0, x1, y1)`` (a box in
    px of the ``level_um`` level) -> the box rendered at ``fine_um`` (clipped at the slide's top-left edge), that
    resolution, and the level px of its top-left corner."""

    def read(x0: float, y0: float, x1: float, y1: float) -> tuple[np.ndarray, float, tuple[float, float]]:
        f = level_um / fine_um
        ix0, iy0 = max(int(np.floor(x0 * f)), 0), max(int(np.floor(y0 * f)), 0)
        h, w = max(int(np.ceil(y1 * f)) - iy0, 0), max(int(np.ceil(x1 * f)) - ix0, 0)
        return render_slide(ts, iy0, ix0, h, w, fine_um), fine_um, (ix0 / f, iy0 / f)

    return read


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
