"""Synthetic demo cohort: a forward model that renders images from a hidden truth.

Every biopsy gets a hidden ground truth (needle geometry, lesion, cancer
sub-regions, slide placement, dye colour).  From it we render what a hospital
would hand us: pre-fire and post-fire ultrasound DICOMs calibrated only through
``SequenceOfUltrasoundRegions``, a pyramidal tiled OME-TIFF of the H&E core with
dye on the distal end, and a QuPath 0.4 GeoJSON export.  The truth itself is
written to a separate folder and is read by scoring only.

This module deliberately owns its own geometry: the pipeline must recover the
truth from pixels and may not import anything from here.
"""

from __future__ import annotations

import argparse
import json
import uuid
import zlib
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd
import pydicom
import tifffile
from pydicom.dataset import FileDataset, FileMetaDataset
from pydicom.sequence import Sequence
from pydicom.uid import ExplicitVRLittleEndian, generate_uid
from scipy import ndimage
from skimage import measure

US_IMAGE_STORAGE = "1.2.840.10008.5.1.4.1.1.6.1"
US_MULTIFRAME_STORAGE = "1.2.840.10008.5.1.4.1.1.3.1"
# Optical densities (per unit concentration) of the stains the renderer uses.
HEMATOXYLIN = np.array([0.65, 0.70, 0.29])
EOSIN = np.array([0.07, 0.99, 0.11])
DYES = {  # tissue-marking dyes; colours lie outside the H&E stain plane
    "green": -np.log(np.array([40, 150, 70]) / 255.0),
    "yellow": -np.log(np.array([235, 205, 40]) / 255.0),
    "orange": -np.log(np.array([240, 125, 35]) / 255.0),
}
TILE = 256


def _od(rgb: tuple[int, int, int]) -> np.ndarray:
    return -np.log(np.array(rgb) / 255.0)


# The varied cohort's dyes, as the inks labs use, two of them close to haematoxylin.
VARIED_DYES = {
    "black": _od((45, 45, 50)),
    "blue": _od((40, 90, 190)),
    "green": _od((40, 150, 70)),
    "red": _od((200, 40, 45)),
    "orange": _od((240, 125, 35)),
    "yellow": _od((235, 205, 40)),
    "violet": _od((120, 60, 160)),
    "blue_near_h": _od((95, 110, 185)),
    "violet_near_h": _od((125, 95, 175)),
}


@dataclass
class BiopsyTruth:
    """Hidden ground truth of one synthetic biopsy (mm unless stated)."""

    participant_id: str
    biopsy_id: str
    seed: list[int]
    rows: int
    cols: int
    mm_per_px: float
    region_x0: int
    region_y0: int
    frame_rows: int
    frame_cols: int
    photometric: str
    frames: int
    entry_side: str
    t0_mm: list[float]
    t1_mm: list[float]
    throw_mm: float
    lesion_center_mm: list[float]
    lesion_radius_mm: float
    lesion_harmonics: list[list[float]]
    blobs: list[list[float]]  # cx, cy, sigma, weight of the cancer field
    cancer_threshold: float
    core_width_mm: float
    shrink: float
    slide_um_per_px: float
    slide_rotation_deg: float
    slide_shape: list[int] = field(default_factory=list)
    core_origin_um: list[float] = field(default_factory=list)
    dye: str = "green"
    dye_length_mm: float = 1.0
    geojson_shape: str = "FeatureCollection"
    canaries: dict = field(default_factory=dict)
    # domain randomisation (the varied cohort); empty for the demo, whose rendering it leaves unchanged
    nuisance: dict = field(default_factory=dict)


# --------------------------------------------------------------------------
# Sampling the hidden truth
# --------------------------------------------------------------------------


def biopsy_rng(seed: int, participant_id: str, biopsy_id: str) -> np.random.Generator:
    """A generator that depends only on the cohort seed and the two IDs."""
    return np.random.default_rng([seed, zlib.crc32(participant_id.encode()), zlib.crc32(biopsy_id.encode())])


def sample_truth(
    seed: int, participant_id: str, biopsy_id: str, large_slide: bool = False, varied: bool = False
) -> BiopsyTruth:
    """Draw every hidden parameter of one biopsy (``varied``: with the nuisances of real data)."""
    rng = biopsy_rng(seed, participant_id, biopsy_id)
    rows = int(rng.integers(420, 560))
    cols = int(rng.integers(560, 760))
    mm_per_px = float(rng.uniform(36.0, 44.0) / cols)
    throw = float(22.0 * rng.uniform(0.97, 1.0))
    angle = np.deg2rad(rng.uniform(8.0, 28.0))
    side = "left" if rng.random() < 0.5 else "right"
    nuisance: dict = {}
    if varied:  # a separate stream, so that the demo's draws stay as they were
        vr = biopsy_rng(seed + 7919, participant_id, biopsy_id)
        nuisance = sample_nuisance(vr)
        angle = np.deg2rad(vr.uniform(5.0, 45.0))
        mm_per_px = float(np.exp(vr.uniform(np.log(0.02), np.log(0.1))))
        half_x, half_y = throw / 2 * np.cos(angle), throw / 2 * np.sin(angle)
        width = max(vr.uniform(30.0, 45.0), 2 * half_x + 12.0)
        depth = max(vr.uniform(20.0, 35.0), 2 * half_y + 11.0)
        cols, rows = int(width / mm_per_px), int(depth / mm_per_px)
    depth = rows * mm_per_px
    width = cols * mm_per_px
    d = np.array([np.cos(angle) if side == "left" else -np.cos(angle), np.sin(angle)])
    half = throw / 2 * np.abs(d)
    cx = rng.uniform(max(width * 0.35, half[0] + 6.0), min(width * 0.65, width - half[0] - 3.0))
    cy = rng.uniform(half[1] + 5.0, depth - half[1] - 4.0)
    center = np.array([cx, cy])
    t0 = center - throw / 2 * d
    t1 = center + throw / 2 * d
    lesion_c = center + rng.normal(0, 1.0, 2)
    lesion_r = float(rng.uniform(7.0, 10.0))
    harmonics = [[float(rng.uniform(0, 0.12)), float(rng.uniform(0, 2 * np.pi))] for _ in range(5)]
    blobs = []
    for _ in range(int(rng.integers(3, 6))):
        s = rng.uniform(0.15, 0.85)
        p = t0 + s * (t1 - t0) + rng.normal(0, 0.8, 2)
        blobs.append([float(p[0]), float(p[1]), float(rng.uniform(1.2, 2.8)), float(rng.uniform(0.6, 1.0))])
    photometric = str(rng.choice(["MONOCHROME2", "RGB", "YBR_FULL"], p=[0.55, 0.3, 0.15]))
    frames = 3 if rng.random() < 0.12 else 1
    pad_x, pad_y = int(rng.integers(20, 90)), int(rng.integers(30, 80))
    if large_slide:
        um = 0.5
        rot = float(rng.choice([0.0, 180.0]) + rng.uniform(-6, 6))
    else:
        um = float(rng.choice([2.0, 4.0]))
        rot = float(rng.uniform(0, 360))
    token = uuid.UUID(int=int(rng.integers(0, 2**63))).hex[:12].upper()
    canaries = {
        "PatientName": f"CANARY^{token}",
        "PatientID": f"CNRYID{token}",
        "PatientBirthDate": "19510704",
        "AccessionNumber": f"ACC{token[:10]}",
        "StudyID": f"S{token[:8]}",
        "StudyDescription": f"CANARYSTUDY {token}",
        "InstitutionName": f"CANARY HOSPITAL {token}",
        "ReferringPhysicianName": f"DR^CANARY{token}",
        "StudyInstanceUID": f"2.25.{int(rng.integers(10**15, 10**16))}{int(rng.integers(10**9, 10**10))}",
    }
    return BiopsyTruth(
        participant_id=participant_id,
        biopsy_id=biopsy_id,
        seed=[seed],
        rows=rows,
        cols=cols,
        mm_per_px=mm_per_px,
        region_x0=pad_x,
        region_y0=pad_y,
        frame_rows=rows + pad_y + int(rng.integers(20, 60)),
        frame_cols=cols + pad_x + int(rng.integers(60, 140)),
        photometric=photometric,
        frames=frames,
        entry_side=side,
        t0_mm=t0.tolist(),
        t1_mm=t1.tolist(),
        throw_mm=throw,
        lesion_center_mm=lesion_c.tolist(),
        lesion_radius_mm=lesion_r,
        lesion_harmonics=harmonics,
        blobs=blobs,
        cancer_threshold=float(rng.uniform(0.35, 0.5)),
        core_width_mm=1.2,
        shrink=float(rng.uniform(0.82, 0.95)),
        slide_um_per_px=um,
        slide_rotation_deg=rot,
        dye=nuisance["dye"] if varied else str(rng.choice(list(DYES))),
        dye_length_mm=nuisance["dye_length_mm"] if varied else float(rng.uniform(0.8, 1.5)),
        geojson_shape=str(rng.choice(["FeatureCollection", "array", "Feature"])),
        canaries=canaries,
        nuisance=nuisance,
    )


def sample_nuisance(rng: np.random.Generator) -> dict:
    """Nuisances of real data: stain and dye variation, slide artefacts, ultrasound artefacts."""
    lam = rng.uniform()
    h = (
        (1 - lam) * np.array([0.80, 0.55, 0.22]) + lam * np.array([0.55, 0.80, 0.28]) + rng.normal(0, 0.03, 3)
    )  # blue..purple
    lam = rng.uniform()
    e = (
        (1 - lam) * np.array([0.05, 0.99, 0.20]) + lam * np.array([0.30, 0.95, 0.05]) + rng.normal(0, 0.02, 3)
    )  # pale pink..magenta
    u = lambda lo, hi: float(rng.uniform(lo, hi))  # noqa: E731
    throw = 22.0
    return {
        # slide
        "h_vec": np.abs(h).tolist(),
        "e_vec": np.abs(e).tolist(),
        "h_scale": u(0.45, 1.6),
        "e_scale": u(0.4, 1.5),
        "background": (242 + rng.integers(-14, 9, 3)).tolist(),
        "dye": str(rng.choice(list(VARIED_DYES))),
        "dye_length_mm": u(0.3, 1.5),
        "dye_density": u(0.6, 1.4),
        "dye_cover": str(rng.choice(["full", "full", "partial", "bleed"])),
        "dye_cover_frac": u(0.4, 0.75),
        "bleed_mm": u(1.5, 5.0),
        "bleed_side": float(rng.choice([-1.0, 1.0])),
        "dense": [[u(0.0, throw), u(-0.4, 0.4), u(0.3, 1.2), u(0.5, 1.0)] for _ in range(int(rng.integers(0, 4)))],
        "fat": [[u(0.0, throw), u(-0.5, 0.5), u(0.05, 0.25)] for _ in range(int(rng.integers(0, 12)))],
        "stroma_freq": u(0.004, 0.02),
        "stroma_amp": u(0.0, 0.35),
        "gaps": [[u(0.15, 0.85) * throw, u(0.1, 0.6)] for _ in range(int(rng.choice([0, 0, 1, 2])))],
        "folds": [[u(0.1, 0.9) * throw, u(0.1, 0.4), u(-0.5, 0.5)] for _ in range(int(rng.choice([0, 0, 1])))],
        "bubbles": [[u(-0.1, 1.1), u(-2.5, 2.5), u(0.2, 0.8)] for _ in range(int(rng.choice([0, 0, 1, 2])))],
        "pen": [
            [
                u(0.0, 1.0),
                float(rng.choice([-1.0, 1.0])) * u(1.8, 3.0),
                u(2.0, 6.0),
                u(-0.6, 0.6),
                u(0.1, 0.3),
                int(rng.integers(0, 3)),
            ]
            for _ in range(int(rng.choice([0, 0, 1])))
        ],
        # ultrasound
        "shaft_amp": u(2.0, 6.0),
        "reverb": [u(0.25, 0.9) * 0.8**k for k in range(int(rng.integers(0, 5)))],
        "reverb_mm": u(0.15, 1.4),
        "shadow": u(0.5, 1.0),
        "visible_mm": u(2.0, 6.0) if rng.random() < 0.3 else None,
        "ligaments": [
            [u(0.0, 1.0), u(0.1, 0.9), u(-70, 70), u(4.0, 15.0), u(0.8, 2.5), u(-0.08, 0.08)]
            for _ in range(int(rng.integers(1, 6)))
        ],
        "fascia": [u(0.75, 0.95), u(-6, 6), u(1.2, 3.0)] if rng.random() < 0.6 else None,
        "calcs": [[u(0, 1), u(0.1, 1), u(2.0, 5.0)] for _ in range(int(rng.integers(0, 25)))],
        "psf": u(0.7, 1.5),
        "gain_db": u(-16, -4),
        "range_db": u(40, 60),
        "tgc": [u(-5, 5), u(-5, 5)],
        "shift_mm": [u(-0.2, 0.2), u(-0.2, 0.2)] if rng.random() < 0.5 else [0.0, 0.0],
        "calipers": [[u(0.1, 0.9), u(0.1, 0.9)] for _ in range(int(rng.integers(0, 4)))],
        "border": float(rng.choice([0.0, 160.0, 255.0])),
    }


# --------------------------------------------------------------------------
# Anatomy fields, in ultrasound mm
# --------------------------------------------------------------------------


def lesion_inside(t: BiopsyTruth, x: np.ndarray, y: np.ndarray) -> np.ndarray:
    """Boolean: is (x, y) mm inside the irregular lesion outline."""
    dx, dy = x - t.lesion_center_mm[0], y - t.lesion_center_mm[1]
    phi = np.arctan2(dy, dx)
    r = t.lesion_radius_mm * (1 + sum(a * np.cos((k + 2) * phi + p) for k, (a, p) in enumerate(t.lesion_harmonics)))
    return np.hypot(dx, dy) < r


def cancer_inside(t: BiopsyTruth, x: np.ndarray, y: np.ndarray) -> np.ndarray:
    """Boolean: is (x, y) mm cancer (thresholded blob field inside the lesion)."""
    f = np.zeros(np.broadcast(x, y).shape)
    for bx, by, s, w in t.blobs:
        f += w * np.exp(-((x - bx) ** 2 + (y - by) ** 2) / (2 * s * s))
    # a ring-shaped benign island inside the strongest blob gives annotations holes
    bx, by, s, _ = t.blobs[0]
    hole = np.hypot(x - bx, y - by) < 0.35 * s
    return lesion_inside(t, x, y) & (f > t.cancer_threshold) & ~hole


def core_coords(t: BiopsyTruth, x: np.ndarray, y: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Ultrasound mm -> core coordinates (u from T0 towards T1, v across), mm."""
    t0, t1 = np.array(t.t0_mm), np.array(t.t1_mm)
    d = (t1 - t0) / np.linalg.norm(t1 - t0)
    n = np.array([-d[1], d[0]])
    return (x - t0[0]) * d[0] + (y - t0[1]) * d[1], (x - t0[0]) * n[0] + (y - t0[1]) * n[1]


def core_to_us(t: BiopsyTruth, u: np.ndarray, v: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Core coordinates (mm) -> ultrasound mm."""
    t0, t1 = np.array(t.t0_mm), np.array(t.t1_mm)
    d = (t1 - t0) / np.linalg.norm(t1 - t0)
    n = np.array([-d[1], d[0]])
    return t0[0] + u * d[0] + v * n[0], t0[1] + u * d[1] + v * n[1]


def truth_label(t: BiopsyTruth) -> np.ndarray:
    """Label on the pre-fire tissue-region grid: 0 outside core, 1 benign core, 2 cancer core."""
    yy, xx = np.mgrid[0 : t.rows, 0 : t.cols].astype(float) * t.mm_per_px
    u, v = core_coords(t, xx, yy)
    core = (u >= 0) & (u <= t.throw_mm) & (np.abs(v) <= t.core_width_mm / 2)
    lab = core.astype(np.uint8)
    lab[core & cancer_inside(t, xx, yy)] = 2
    return lab


# --------------------------------------------------------------------------
# Ultrasound rendering
# --------------------------------------------------------------------------


def _echogenicity(t: BiopsyTruth, xx: np.ndarray, yy: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """Mean backscatter of the tissue: skin, fat lobules, gland, lesion, cancer."""
    e = np.full(xx.shape, 0.55)
    e += 0.25 * np.sin(xx * rng.uniform(0.3, 0.6) + yy * 0.9 + rng.uniform(0, 6)) ** 2  # gland striation
    e[yy < 1.2] = 1.3  # skin line
    for _ in range(6):  # fat lobules in the subcutis
        cx, cy = rng.uniform(0, xx.max()), rng.uniform(2.5, 6.0)
        e[((xx - cx) / rng.uniform(2, 4)) ** 2 + ((yy - cy) / rng.uniform(0.8, 1.5)) ** 2 < 1] = 0.3
    les = lesion_inside(t, xx, yy)
    e[les] = 0.42
    e[cancer_inside(t, xx, yy)] = 0.16
    # posterior acoustic shadowing behind the lesion
    lx, ly, r = t.lesion_center_mm[0], t.lesion_center_mm[1], t.lesion_radius_mm
    e *= np.where((np.abs(xx - lx) < 0.6 * r) & (yy > ly + r), 0.75, 1.0)
    return e


def _distractors(t: BiopsyTruth, xx: np.ndarray, yy: np.ndarray) -> np.ndarray:
    """Bright structures that are not the needle: Cooper's ligaments, pectoral fascia, microcalcifications."""
    nz, w, h = t.nuisance, t.cols * t.mm_per_px, t.rows * t.mm_per_px
    out = np.zeros_like(xx)
    for fx, fy, deg, length, amp, curve in nz["ligaments"]:
        a = np.deg2rad(deg)
        cx, cy = fx * w, 2.0 + fy * (h - 2.0)
        u = (xx - cx) * np.cos(a) + (yy - cy) * np.sin(a)
        v = -(xx - cx) * np.sin(a) + (yy - cy) * np.cos(a) - curve * u**2
        out += amp * np.exp(-(v**2) / (2 * 0.12**2)) * (np.abs(u) < length / 2)
    if nz["fascia"]:
        fy, deg, amp = nz["fascia"]
        v = yy - fy * h - np.tan(np.deg2rad(deg)) * (xx - w / 2)
        out += amp * np.exp(-(v**2) / (2 * 0.2**2))
    for fx, fy, amp in nz["calcs"]:
        out += amp * np.exp(-((xx - fx * w) ** 2 + (yy - fy * h) ** 2) / (2 * 0.08**2))
    return out


def render_ultrasound(
    t: BiopsyTruth, tip_mm: np.ndarray, noise_seed: int, shift_mm: tuple[float, float] = (0.0, 0.0)
) -> np.ndarray:
    """B-mode uint8 image of the tissue region with the needle tip at ``tip_mm``.

    ``shift_mm`` moves the whole scene (tissue and needle) by that much, as a
    probe or patient that moved between pre- and post-fire would.
    """
    rng = np.random.default_rng([*t.seed, zlib.crc32(t.biopsy_id.encode()), zlib.crc32(t.participant_id.encode()), 7])
    nz = t.nuisance
    yy, xx = np.mgrid[0 : t.rows, 0 : t.cols].astype(float) * t.mm_per_px
    sx, sy = shift_mm
    xx, yy = xx - sx, yy - sy
    e = _echogenicity(t, xx, yy, rng)
    if nz:
        e = e + _distractors(t, xx, yy)
    # speckle: complex scatterers through an anisotropic point-spread function;
    # mostly the same scatterers in pre- and post-fire, partly decorrelated
    base = rng.normal(size=(2, t.rows, t.cols))
    if sx or sy:
        base = ndimage.shift(base, (0, sy / t.mm_per_px, sx / t.mm_per_px), order=1, mode="nearest")
    fresh = np.random.default_rng(noise_seed).normal(size=(2, t.rows, t.cols))
    sc = 0.9 * base + 0.44 * fresh
    k = nz.get("psf", 1.0)
    psf = (k * 0.12 / t.mm_per_px, k * 0.25 / t.mm_per_px)
    env = np.hypot(ndimage.gaussian_filter(sc[0], psf), ndimage.gaussian_filter(sc[1], psf))
    env /= env.mean()
    img = e * env
    # needle: bright specular shaft from the entry edge to the tip, reverberations below
    t0, t1 = np.array(t.t0_mm), np.array(t.t1_mm)
    d = (t1 - t0) / np.linalg.norm(t1 - t0)
    n = np.array([-d[1], d[0]])
    if n[1] < 0:
        n = -n
    u = (xx - tip_mm[0]) * d[0] + (yy - tip_mm[1]) * d[1]
    v = (xx - tip_mm[0]) * n[0] + (yy - tip_mm[1]) * n[1]
    shaft = u <= 0
    needle = np.zeros_like(img)
    if not nz:
        for k, amp in enumerate((5.0, 1.1, 0.5)):
            needle += amp * np.exp(-((v - 0.9 * k) ** 2) / (2 * 0.18**2))
    else:
        if nz["visible_mm"]:  # partly out of plane: only the part near the tip echoes
            shaft &= (xx - t0[0]) * d[0] + (yy - t0[1]) * d[1] >= -nz["visible_mm"]
        needle += nz["shaft_amp"] * np.exp(-(v**2) / (2 * 0.18**2))
        for k, amp in enumerate(nz["reverb"], 1):  # reverberation copies below the shaft (comet tail when close)
            needle += nz["shaft_amp"] * amp * np.exp(-((v - k * nz["reverb_mm"] * n[1]) ** 2) / (2 * 0.15**2))
        # acoustic shadow under the shaft, along the beam (down)
        img = img * np.where((v > 0.3) & shaft, nz["shadow"], 1.0)
    img = img + needle * shaft * (1 + 0.08 * fresh[0])
    img = ndimage.gaussian_filter(img, (0.05 / t.mm_per_px, 0.08 / t.mm_per_px))
    if not nz:
        img *= np.exp(-0.025 * yy)  # residual depth attenuation after TGC
        db = 20 * np.log10(np.maximum(img, 1e-6) / 1.8)
        return (np.clip((db + 45.0) / 45.0, 0, 1) * 255).astype(np.uint8)
    depth = yy / (t.rows * t.mm_per_px)
    tgc_db = nz["tgc"][0] * depth + nz["tgc"][1] * depth**2 - 0.2 * yy  # imperfect time-gain compensation
    db = 20 * np.log10(np.maximum(img, 1e-6) / 1.8) + tgc_db + nz["gain_db"]
    out = np.clip((db + nz["range_db"]) / nz["range_db"], 0, 1) * 255
    return _overlays(t, out).astype(np.uint8)


def _overlays(t: BiopsyTruth, img: np.ndarray) -> np.ndarray:
    """Scanner furniture inside the tissue region: caliper crosses and a border line."""
    img = img.copy()
    h, w = img.shape
    arm = max(int(1.0 / t.mm_per_px), 3)
    for fx, fy in t.nuisance["calipers"]:
        x, y = int(fx * w), int(fy * h)
        img[y, max(x - arm, 0) : x + arm] = 235
        img[max(y - arm, 0) : y + arm, x] = 235
    if t.nuisance["border"]:
        img[:2], img[-2:], img[:, :2], img[:, -2:] = (t.nuisance["border"],) * 4
    return img


def _frame(t: BiopsyTruth, region: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """Place the tissue region in a scanner screen (RGB) with UI furniture around it."""
    f = np.zeros((t.frame_rows, t.frame_cols, 3), np.uint8)
    f[t.region_y0 : t.region_y0 + t.rows, t.region_x0 : t.region_x0 + t.cols] = region[..., None]
    x1 = t.region_x0 + t.cols + 10
    f[t.region_y0 : t.region_y0 + t.rows : 25, x1 : x1 + 8] = (220, 220, 220)  # depth scale ticks
    f[10:22, 10 : 10 + int(rng.integers(60, 160))] = (240, 200, 40)  # annotation text box
    return f


def write_dicom(t: BiopsyTruth, path: Path, regions: list[np.ndarray], rng: np.random.Generator) -> None:
    """Write one ultrasound DICOM (single or multi-frame) with the tissue region calibrated."""
    frames = [_frame(t, r, rng) for r in regions]
    multi = len(frames) > 1
    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = US_MULTIFRAME_STORAGE if multi else US_IMAGE_STORAGE
    meta.MediaStorageSOPInstanceUID = generate_uid()
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds = FileDataset(str(path), {}, file_meta=meta, preamble=b"\0" * 128)
    ds.SOPClassUID = meta.MediaStorageSOPClassUID
    ds.SOPInstanceUID = meta.MediaStorageSOPInstanceUID
    ds.Modality = "US"
    ds.Manufacturer = "tractmap synthetic scanner"
    for key, value in t.canaries.items():
        setattr(ds, key, value)
    ds.StudyDate = "20230117"
    ds.StudyTime = "101500"
    ds.SeriesInstanceUID = generate_uid()
    ds.Rows, ds.Columns = t.frame_rows, t.frame_cols
    ds.BitsAllocated = ds.BitsStored = 8
    ds.HighBit = 7
    ds.PixelRepresentation = 0
    stack = np.stack(frames)
    if t.photometric == "MONOCHROME2":
        ds.SamplesPerPixel = 1
        ds.PhotometricInterpretation = "MONOCHROME2"
        pixels = stack.mean(axis=-1).astype(np.uint8)
    else:
        ds.SamplesPerPixel = 3
        ds.PlanarConfiguration = 0
        ds.PhotometricInterpretation = t.photometric
        pixels = stack
        if t.photometric == "YBR_FULL":
            from pydicom.pixels import convert_color_space

            pixels = convert_color_space(stack, "RGB", "YBR_FULL")
    if multi:
        ds.NumberOfFrames = len(frames)
        ds.FrameIncrementPointer = pydicom.tag.Tag("FrameTime")
        ds.FrameTime = 33.3
    else:
        pixels = pixels[0]
    ds.PixelData = np.ascontiguousarray(pixels).tobytes()
    region = pydicom.Dataset()
    region.RegionSpatialFormat = 1
    region.RegionDataType = 1
    region.RegionFlags = 0
    region.RegionLocationMinX0 = t.region_x0
    region.RegionLocationMinY0 = t.region_y0
    region.RegionLocationMaxX1 = t.region_x0 + t.cols - 1
    region.RegionLocationMaxY1 = t.region_y0 + t.rows - 1
    region.PhysicalUnitsXDirection = 3  # cm
    region.PhysicalUnitsYDirection = 3
    region.PhysicalDeltaX = t.mm_per_px / 10.0
    region.PhysicalDeltaY = t.mm_per_px / 10.0
    region.ReferencePixelX0 = 0
    region.ReferencePixelY0 = 0
    bar = pydicom.Dataset()  # a non-tissue region (grey bar), as scanners add
    bar.RegionSpatialFormat = 0
    bar.RegionDataType = 0
    bar.RegionFlags = 0
    bar.RegionLocationMinX0 = t.region_x0 + t.cols + 10
    bar.RegionLocationMinY0 = t.region_y0
    bar.RegionLocationMaxX1 = t.region_x0 + t.cols + 17
    bar.RegionLocationMaxY1 = t.region_y0 + t.rows - 1
    bar.PhysicalUnitsXDirection = 0
    bar.PhysicalUnitsYDirection = 0
    bar.PhysicalDeltaX = 0.0
    bar.PhysicalDeltaY = 0.0
    ds.SequenceOfUltrasoundRegions = Sequence([region, bar])
    path.parent.mkdir(parents=True, exist_ok=True)
    ds.save_as(path, enforce_file_format=True)


# --------------------------------------------------------------------------
# Whole slide image and annotations
# --------------------------------------------------------------------------


def _slide_frame(t: BiopsyTruth) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Core placement on the slide: origin (um), unit vector along u, unit vector along v."""
    a = np.deg2rad(t.slide_rotation_deg)
    du = np.array([np.cos(a), np.sin(a)])
    dv = np.array([-np.sin(a), np.cos(a)])
    return np.array(t.core_origin_um), du, dv


def place_on_slide(t: BiopsyTruth, rng: np.random.Generator) -> None:
    """Choose slide size and the core's position on it (fills slide_shape, core_origin_um)."""
    length = t.throw_mm * t.shrink * 1000
    width = t.core_width_mm * t.shrink * 1000
    a = np.deg2rad(t.slide_rotation_deg)
    corners = np.array([[0, -width / 2], [0, width / 2], [length, -width / 2], [length, width / 2]])
    rot = np.array([[np.cos(a), -np.sin(a)], [np.sin(a), np.cos(a)]])
    pts = corners @ rot.T
    room = 3500.0 if t.nuisance else 0.0  # the varied cohort's pen marks and bubbles lie beside the core
    margin = np.array([rng.uniform(400, 1500), rng.uniform(400, 1500)]) + room
    lo = pts.min(axis=0)
    size = pts.max(axis=0) - lo + margin + np.array([rng.uniform(400, 1500), rng.uniform(400, 1500)]) + room
    t.core_origin_um = (-lo + margin).tolist()
    t.slide_shape = [int(size[1] / t.slide_um_per_px), int(size[0] / t.slide_um_per_px)]


def slide_to_core(t: BiopsyTruth, x_um: np.ndarray, y_um: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Slide um -> core coordinates in ultrasound mm (undoing shrinkage)."""
    o, du, dv = _slide_frame(t)
    px, py = x_um - o[0], y_um - o[1]
    return (px * du[0] + py * du[1]) / (1000 * t.shrink), (px * dv[0] + py * dv[1]) / (1000 * t.shrink)


def core_to_slide_px(t: BiopsyTruth, u: np.ndarray, v: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Core coordinates (ultrasound mm) -> full-resolution slide pixels."""
    o, du, dv = _slide_frame(t)
    s = 1000 * t.shrink
    x = o[0] + s * (u * du[0] + v * dv[0])
    y = o[1] + s * (u * du[1] + v * dv[1])
    return x / t.slide_um_per_px, y / t.slide_um_per_px


def _edge_wobble(t: BiopsyTruth, u: np.ndarray) -> np.ndarray:
    return 1 + 0.05 * np.sin(u * 2.1 + t.shrink * 10) + 0.03 * np.sin(u * 5.3)


def render_slide_tile(t: BiopsyTruth, y0: int, x0: int, h: int, w: int, um_per_px: float) -> np.ndarray:
    """RGB uint8 tile of the slide at ``um_per_px``, top-left pixel (y0, x0)."""
    yy, xx = np.mgrid[y0 : y0 + h, x0 : x0 + w].astype(float)
    u, v = slide_to_core(t, (xx + 0.5) * um_per_px, (yy + 0.5) * um_per_px)
    inside = (u >= 0) & (u <= t.throw_mm) & (np.abs(v) <= t.core_width_mm / 2 * _edge_wobble(t, u))
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


def write_wsi(t: BiopsyTruth, path: Path) -> None:
    """Write a pyramidal tiled OME-TIFF tile by tile (never the whole plane in memory)."""
    levels = [1]
    while max(t.slide_shape) / levels[-1] > 1024:
        levels.append(levels[-1] * 2)

    def tiles(f: int):
        h, w = -(-t.slide_shape[0] // f), -(-t.slide_shape[1] // f)
        for ty in range(0, h, TILE):
            for tx in range(0, w, TILE):
                yield render_slide_tile(t, ty, tx, TILE, TILE, t.slide_um_per_px * f)

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


def geojson_features(t: BiopsyTruth, rng: np.random.Generator) -> list[dict]:
    """QuPath-0.4-style features: tumour annotations plus objects to be ignored."""
    step = 0.01  # mm: the pathologist's drawing resolution
    u = np.arange(0, t.throw_mm, step)
    v = np.arange(-t.core_width_mm / 2, t.core_width_mm / 2, step)
    vv, uu = np.meshgrid(v, u, indexing="ij")
    x_us, y_us = core_to_us(t, uu, vv)
    inside = np.abs(vv) <= t.core_width_mm / 2 * _edge_wobble(t, uu)
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


def write_geojson(t: BiopsyTruth, path: Path, rng: np.random.Generator) -> None:
    """Write the annotation export in the biopsy's QuPath export shape."""
    feats = geojson_features(t, rng)
    if t.geojson_shape == "FeatureCollection":
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


# --------------------------------------------------------------------------
# Entry points
# --------------------------------------------------------------------------


def tip_fraction_frames(t: BiopsyTruth) -> list[np.ndarray]:
    """Tip positions of the cine frames before the saved pre-fire frame (needle advancing)."""
    t0, t1 = np.array(t.t0_mm), np.array(t.t1_mm)
    d = (t1 - t0) / np.linalg.norm(t1 - t0)
    return [t0 - (t.frames - 1 - k) * 3.0 * d for k in range(t.frames)]


def generate_biopsy(
    seed: int,
    participant_id: str,
    biopsy_id: str,
    out: dict[str, Path],
    large_slide: bool = False,
    varied: bool = False,
) -> BiopsyTruth:
    """Render every file of one biopsy and its truth."""
    t = sample_truth(seed, participant_id, biopsy_id, large_slide, varied)
    rng = biopsy_rng(seed + 1, participant_id, biopsy_id)
    place_on_slide(t, rng)
    pre = [render_ultrasound(t, tip, noise_seed=100 + k) for k, tip in enumerate(tip_fraction_frames(t))]
    write_dicom(t, out["prefire"], pre, rng)
    post_t = BiopsyTruth(**{**asdict(t), "frames": 1})
    shift = tuple(t.nuisance.get("shift_mm", (0.0, 0.0)))
    write_dicom(post_t, out["postfire"], [render_ultrasound(t, np.array(t.t1_mm), noise_seed=200, shift_mm=shift)], rng)
    write_wsi(t, out["wsi"])
    write_geojson(t, out["annotation"], rng)
    out["truth_mask"].parent.mkdir(parents=True, exist_ok=True)
    from skimage.io import imsave

    imsave(out["truth_mask"], truth_label(t), check_contrast=False)
    out["truth"].write_text(json.dumps(truth_record(t), indent=1))
    return t


def truth_record(t: BiopsyTruth) -> dict:
    """The truth as scoring reads it: every hidden parameter plus tips, axis and dye end in pixels."""
    dx, dy = core_to_slide_px(t, np.array([t.throw_mm]), np.array([0.0]))
    px = lambda p: [p[0] / t.mm_per_px, p[1] / t.mm_per_px]  # noqa: E731
    return {
        **asdict(t),
        "t0_px": px(t.t0_mm),
        "t1_px": px(t.t1_mm),
        "axis_deg": float(np.degrees(np.arctan2(t.t1_mm[1] - t.t0_mm[1], t.t1_mm[0] - t.t0_mm[0]))),
        "dye_end_slide_px": [float(dx[0]), float(dy[0])],
        "mask_values": {"0": "outside core", "1": "benign core", "2": "cancer core"},
    }


def cohort_sheets(n: int, seed: int, data_dir: str) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Participants (Table 1 characteristics) and biopsies sheets for a demo cohort."""
    rng = np.random.default_rng(seed)
    cat = lambda opts, p=None: str(rng.choice(opts, p=p))  # noqa: E731
    parts, biops = [], []
    for i in range(1, n + 1):
        pid = f"P{i:03d}"
        parts.append(
            {
                "participant_id": pid,
                "age": int(np.clip(rng.normal(53, 11), 28, 85)),
                "lesion_number": cat(["solitary", "numerous"], [0.88, 0.12]),
                "birads": cat(["4a", "4b", "4c", "5"], [0.07, 0.12, 0.22, 0.59]),
                "side": cat(["left", "right"]),
                "quadrant": cat(["UOQ", "LOQ", "UIQ", "LIQ"], [0.58, 0.12, 0.19, 0.11]),
                "volume_mm3": round(float(rng.lognormal(1.0, 0.8)), 2),
                "orientation": cat(["parallel", "not parallel"], [0.87, 0.13]),
                "echo_pattern": cat(["hypoechoic", "heterogeneous"], [0.94, 0.06]),
                "margin": cat(["circumscribed", "not circumscribed"], [0.1, 0.9]),
                "shape": cat(["oval/round", "irregular"], [0.05, 0.95]),
                "calcification": cat(["absent", "in mass"], [0.52, 0.48]),
                "vascularity": cat(["absent", "internal", "rim"], [0.19, 0.7, 0.11]),
                "histology": cat(["invasive", "DCIS"], [0.87, 0.13]),
            }
        )
        for b in range(1, int(rng.integers(1, 5)) + 1):
            bid = f"B{b}"
            stem = f"{data_dir}/{pid}/{bid}"
            biops.append(
                {
                    "participant_id": pid,
                    "biopsy_id": bid,
                    "prefire": f"{stem}_prefire.dcm",
                    "postfire": f"{stem}_postfire.dcm",
                    "wsi": f"{stem}_wsi.ome.tif",
                    "annotation": f"{stem}_annotations.geojson",
                }
            )
    return pd.DataFrame(parts), pd.DataFrame(biops)


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    sub = p.add_subparsers(dest="cmd", required=True)
    s = sub.add_parser("sheets", help="write participants.tsv and biopsies.tsv for a demo cohort")
    s.add_argument("--n", type=int, default=24)
    s.add_argument("--seed", type=int, default=2026)
    s.add_argument("--data-dir", default="demo/data")
    s.add_argument("--outdir", default="demo")
    b = sub.add_parser("biopsy", help="render one biopsy")
    b.add_argument("--seed", type=int, required=True)
    b.add_argument("--participant", required=True)
    b.add_argument("--biopsy", required=True)
    b.add_argument("--large-slide", action="store_true")
    b.add_argument("--varied", action="store_true", help="domain-randomised: the nuisances of real data")
    for k in ("prefire", "postfire", "wsi", "annotation", "truth", "truth_mask"):
        b.add_argument(f"--{k.replace('_', '-')}", required=True, type=Path)
    a = p.parse_args(argv)
    if a.cmd == "sheets":
        parts, biops = cohort_sheets(a.n, a.seed, a.data_dir)
        Path(a.outdir).mkdir(parents=True, exist_ok=True)
        parts.to_csv(Path(a.outdir) / "participants.tsv", sep="\t", index=False)
        biops.to_csv(Path(a.outdir) / "biopsies.tsv", sep="\t", index=False)
    else:
        out = {k: getattr(a, k) for k in ("prefire", "postfire", "wsi", "annotation", "truth", "truth_mask")}
        t = generate_biopsy(a.seed, a.participant, a.biopsy, out, a.large_slide, a.varied)
        print(
            f"rendered {a.participant}/{a.biopsy}: slide {t.slide_shape[1]}x{t.slide_shape[0]} px at "
            f"{t.slide_um_per_px} um/px"
        )


if __name__ == "__main__":
    main()
