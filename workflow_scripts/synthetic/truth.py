"""The hidden ground truth of a synthetic biopsy: sampling it, the anatomy fields, the core on the slide."""

from __future__ import annotations

import uuid
import zlib
from dataclasses import asdict, dataclass, field

import numpy as np

# Optical densities (per unit concentration) of the stains the renderer uses.
HEMATOXYLIN = np.array([0.65, 0.70, 0.29])
EOSIN = np.array([0.07, 0.99, 0.11])
DYES = {  # tissue-marking dyes; colours lie outside the H&E stain plane
    "green": -np.log(np.array([40, 150, 70]) / 255.0),
    "yellow": -np.log(np.array([235, 205, 40]) / 255.0),
    "orange": -np.log(np.array([240, 125, 35]) / 255.0),
}


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
    throw_mm: float  # the sampled length: the gun's stroke, or up to 3% short of it
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
    # several cores on one slide: the slide's file stem, this core's name (a named QuPath outline around it;
    # "" for none) and its position left to right; fragments: gaps (u from, length; mm) in the core
    slide_id: str = ""
    core_name: str = ""
    core_position: int = 1
    gaps_mm: list = field(default_factory=list)
    dye_mark: str = ""  # a pathologist's QuPath mark of the dyed end: "", Point, LineString or Polygon
    # domain randomisation (the varied cohort); empty for the demo, whose rendering it leaves unchanged
    nuisance: dict = field(default_factory=dict)
    stroke_mm: float = 22.0  # the gun's stroke setting (what biopsies.tsv stroke_mm says)
    # fat lobules in the core (both cohorts; ``sample_fat``): tissue, never a gap; {} draws none
    fat: dict = field(default_factory=dict)


# --------------------------------------------------------------------------
# Sampling the hidden truth
# --------------------------------------------------------------------------


def biopsy_rng(seed: int, participant_id: str, biopsy_id: str) -> np.random.Generator:
    """A generator that depends only on the cohort seed and the two IDs."""
    return np.random.default_rng([seed, zlib.crc32(participant_id.encode()), zlib.crc32(biopsy_id.encode())])


def varied_frame(vr: np.random.Generator, throw: float) -> tuple[float, float, int, int]:
    """The varied cohort's needle angle (rad), pixel size (mm) and frame size (cols, rows), wide and deep
    enough for the whole throw."""
    angle = np.deg2rad(vr.uniform(5.0, 45.0))
    mm_per_px = float(np.exp(vr.uniform(np.log(0.02), np.log(0.1))))
    half_x, half_y = throw / 2 * np.cos(angle), throw / 2 * np.sin(angle)
    width = max(vr.uniform(30.0, 45.0), 2 * half_x + 12.0)
    depth = max(vr.uniform(20.0, 35.0), 2 * half_y + 11.0)
    return angle, mm_per_px, int(width / mm_per_px), int(depth / mm_per_px)


def sample_lesion(rng: np.random.Generator, center: np.ndarray, t0: np.ndarray, t1: np.ndarray) -> dict:
    """The lesion around the tract: an irregular outline near its centre, and cancer blobs along it."""
    lesion_c = center + rng.normal(0, 1.0, 2)
    lesion_r = float(rng.uniform(7.0, 10.0))
    harmonics = [[float(rng.uniform(0, 0.12)), float(rng.uniform(0, 2 * np.pi))] for _ in range(5)]
    blobs = []
    for _ in range(int(rng.integers(3, 6))):
        s = rng.uniform(0.15, 0.85)
        p = t0 + s * (t1 - t0) + rng.normal(0, 0.8, 2)
        blobs.append([float(p[0]), float(p[1]), float(rng.uniform(1.2, 2.8)), float(rng.uniform(0.6, 1.0))])
    return {
        "lesion_center_mm": lesion_c.tolist(),
        "lesion_radius_mm": lesion_r,
        "lesion_harmonics": harmonics,
        "blobs": blobs,
    }


def slide_pose(rng: np.random.Generator, large_slide: bool) -> tuple[float, float]:
    """The slide's pixel size (um) and the core's rotation on it (deg): a large slide is a 0.5 um/px scan of
    a core laid roughly level; a small one is 2 or 4 um/px at any angle."""
    if large_slide:
        return 0.5, float(rng.choice([0.0, 180.0]) + rng.uniform(-6, 6))
    return float(rng.choice([2.0, 4.0])), float(rng.uniform(0, 360))


def sample_canaries(rng: np.random.Generator) -> dict:
    """Patient and study header values planted in the DICOM, which no output may contain."""
    token = uuid.UUID(int=int(rng.integers(0, 2**63))).hex[:12].upper()
    return {
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


def sample_truth(
    seed: int,
    participant_id: str,
    biopsy_id: str,
    large_slide: bool = False,
    varied: bool = False,
    strokes: tuple[float, ...] = (22.0,),
) -> BiopsyTruth:
    """Draw every hidden parameter of one biopsy (``varied``: with the nuisances of real data).

    The gun's stroke is one of ``strokes`` (mm; each equally likely, drawn from a stream of its own
    so that the other draws stay as they were); the sampled length is 97-100% of it."""
    rng = biopsy_rng(seed, participant_id, biopsy_id)
    rows = int(rng.integers(420, 560))
    cols = int(rng.integers(560, 760))
    mm_per_px = float(rng.uniform(36.0, 44.0) / cols)
    stroke = float(
        strokes[0] if len(strokes) == 1 else biopsy_rng(seed + 104729, participant_id, biopsy_id).choice(strokes)
    )
    throw = float(stroke * rng.uniform(0.97, 1.0))
    angle = np.deg2rad(rng.uniform(8.0, 28.0))
    side = "left" if rng.random() < 0.5 else "right"
    nuisance: dict = {}
    if varied:  # a separate stream, so that the demo's draws stay as they were
        vr = biopsy_rng(seed + 7919, participant_id, biopsy_id)
        nuisance = sample_nuisance(vr, stroke)
        angle, mm_per_px, cols, rows = varied_frame(vr, throw)
    depth = rows * mm_per_px
    width = cols * mm_per_px
    d = np.array([np.cos(angle) if side == "left" else -np.cos(angle), np.sin(angle)])
    half = throw / 2 * np.abs(d)
    cx = rng.uniform(max(width * 0.35, half[0] + 6.0), min(width * 0.65, width - half[0] - 3.0))
    cy = rng.uniform(half[1] + 5.0, depth - half[1] - 4.0)
    center = np.array([cx, cy])
    t0 = center - throw / 2 * d
    t1 = center + throw / 2 * d
    lesion = sample_lesion(rng, center, t0, t1)
    photometric = str(rng.choice(["MONOCHROME2", "RGB", "YBR_FULL"], p=[0.55, 0.3, 0.15]))
    frames = 3 if rng.random() < 0.12 else 1
    pad_x, pad_y = int(rng.integers(20, 90)), int(rng.integers(30, 80))
    um, rot = slide_pose(rng, large_slide)
    canaries = sample_canaries(rng)
    t = BiopsyTruth(
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
        **lesion,
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
        stroke_mm=stroke,
    )
    t.fat = sample_fat(biopsy_rng(seed + FAT_STREAM, participant_id, biopsy_id), t)
    return t


def sample_nuisance(rng: np.random.Generator, stroke_mm: float = 22.0) -> dict:
    """Nuisances of real data: stain and dye variation, slide artefacts, ultrasound artefacts.

    Positions along the core are drawn over ``stroke_mm`` (the same draws for any stroke)."""
    lam = rng.uniform()
    h = (
        (1 - lam) * np.array([0.80, 0.55, 0.22]) + lam * np.array([0.55, 0.80, 0.28]) + rng.normal(0, 0.03, 3)
    )  # blue..purple
    lam = rng.uniform()
    e = (
        (1 - lam) * np.array([0.05, 0.99, 0.20]) + lam * np.array([0.30, 0.95, 0.05]) + rng.normal(0, 0.02, 3)
    )  # pale pink..magenta
    u = lambda lo, hi: float(rng.uniform(lo, hi))  # noqa: E731
    throw = stroke_mm
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
        # small round fat vacuoles (u, v, r; mm) inside the tissue; the lobules are ``BiopsyTruth.fat``
        "vacuoles": [[u(0.0, throw), u(-0.5, 0.5), u(0.05, 0.25)] for _ in range(int(rng.integers(0, 12)))],
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
# Fat lobules in the core
# --------------------------------------------------------------------------

FAT_STREAM = 3701  # the seed offset of the fat draws' own stream: every other draw stays as it was
FAT_RICHNESS = {"none": 0.3, "some": 0.4, "rich": 0.3}  # share of cores


def sample_fat(rng: np.random.Generator, t: BiopsyTruth) -> dict:
    """The core's fat: a richness, its adipocytes and its lobules (core mm, as ``gaps_mm``), clustered.

    A lobule is a ``band`` across the core's full width with wavy ends, or a ``blob`` (an irregular oval)
    across part of it, at most 0.8 of it, touching an edge or not.  ``u0_mm``/``length_mm`` and
    ``v_lo_mm``/``v_hi_mm`` are its extent along the core (from T0) and across it (v; the blob's before
    the core's outline clips it).  Lobules keep clear of the dyed end (its ink covers fat and tissue alike);
    bands also leave at least 0.8 mm of tissue to the undyed end and between each other.  ``crossings_mm``:
    the stretches (u from, u to) where fat fills the core's whole width, the union of all lobules, which
    is what splits the stained tissue into pieces in line."""
    u = lambda lo, hi: float(rng.uniform(lo, hi))  # noqa: E731
    richness = str(rng.choice(list(FAT_RICHNESS), p=list(FAT_RICHNESS.values())))
    fat = {
        "richness": richness,
        "cell_um": u(65.0, 100.0),  # the adipocytes' mean spacing on the slide; jitter gives cells of 50-120 um
        "membrane_um": u(2.0, 4.0),  # their membranes' thickness on the slide
        "membrane_od": u(0.35, 0.5),  # the eosin concentration of a membrane seen edge-on
        "interior_od": u(0.0, 0.02),  # the nearly empty inside of a cell (unstained to faintly pink)
        "texture": int(rng.integers(0, 2**31)),  # the seed of the cells' jitter
        "lobules": [],
        "crossings_mm": [],
    }
    if richness == "none":
        return fat
    half = t.core_width_mm / 2
    lo, hi = 0.1, t.throw_mm - t.dye_length_mm - 0.3  # along the core, clear of the dyed end
    clusters = [u(lo + 1.0, hi - 1.0) for _ in range(1 if richness == "some" else int(rng.integers(1, 4)))]
    n_band = int(rng.choice([0, 1, 1, 2])) if richness == "some" else int(rng.integers(1, 4))
    n_blob = int(rng.integers(0 if n_band else 1, 3)) if richness == "some" else int(rng.integers(2, 6))
    for _ in range(n_band):
        length = float(np.exp(rng.uniform(np.log(0.3), np.log(4.0))))  # up to past cores.max_gap_mm
        for _try in range(20):  # tissue of 0.8 mm at least to the undyed end and between bands
            u0 = float(np.clip(clusters[int(rng.integers(len(clusters)))] + rng.normal(0, 1.0), 0.8, hi - length))
            bands = [b for b in fat["lobules"] if b["kind"] == "band"]
            if all(u0 > b["u0_mm"] + b["length_mm"] + 0.8 or u0 + length + 0.8 < b["u0_mm"] for b in bands):
                break
        else:
            continue
        fat["lobules"].append(
            {
                "kind": "band",
                "u0_mm": u0,
                "length_mm": length,
                "v_lo_mm": -half,
                "v_hi_mm": half,
                "full_width": True,
                # each end's waviness: depth (mm, at most a quarter of the length), wavelength (mm), phase
                "ends": [[u(0.05, 0.25) * length, u(0.3, 1.2), u(0, 2 * np.pi)] for _ in range(2)],
            }
        )
    for _ in range(n_blob):
        ru, rv = float(np.exp(rng.uniform(np.log(0.15), np.log(0.75)))), u(0.15, 0.4)
        uc = float(np.clip(clusters[int(rng.integers(len(clusters)))] + rng.normal(0, 1.0), lo + ru, hi - ru))
        vc = u(-half, half)
        fat["lobules"].append(
            {
                "kind": "blob",
                "u0_mm": uc - ru,
                "length_mm": 2 * ru,
                "v_lo_mm": vc - rv,
                "v_hi_mm": vc + rv,
                "full_width": False,
                "centre_mm": [uc, vc],
                "radii_mm": [ru, rv],
                "harmonics": [[u(0, 0.05), u(0, 2 * np.pi)] for _ in range(3)],  # of the outline, orders 2-4
            }
        )
    fat["lobules"].sort(key=lambda b: b["u0_mm"])
    fat["crossings_mm"] = fat_crossings(t, fat)
    return fat


def fat_inside(fat: dict, u: np.ndarray, v: np.ndarray) -> np.ndarray:
    """Boolean: is core point (u, v) mm in one of the fat lobules (the core's outline not applied)."""
    u, v = np.broadcast_arrays(u, v)
    out = np.zeros(u.shape, bool)
    for b in fat.get("lobules", []):
        near = (u > b["u0_mm"] - 0.2 * b["length_mm"]) & (u < b["u0_mm"] + 1.2 * b["length_mm"])
        if not near.any():
            continue
        un, vn = u[near], v[near]
        if b["kind"] == "band":
            lo, hi = b["u0_mm"] + _wavy(vn, *b["ends"][0]), b["u0_mm"] + b["length_mm"] - _wavy(vn, *b["ends"][1])
            out[near] |= (un > lo) & (un < hi)
        else:
            (uc, vc), (ru, rv) = b["centre_mm"], b["radii_mm"]
            du, dv = (un - uc) / ru, (vn - vc) / rv
            phi = np.arctan2(dv, du)
            edge = 1 + sum(a * np.cos((k + 2) * phi + p) for k, (a, p) in enumerate(b["harmonics"]))
            out[near] |= np.hypot(du, dv) < edge
    return out


def _wavy(v: np.ndarray, depth: float, wavelength: float, phase: float) -> np.ndarray:
    """How far (mm, 0..depth) a band's end lies inside its extent at v: a wave with an overtone."""
    x = v / wavelength
    return depth * (0.5 + 0.3 * np.sin(2 * np.pi * x + phase) + 0.2 * np.sin(5 * x + 2 * phase))


def fat_crossings(t: BiopsyTruth, fat: dict, step: float = 0.01) -> list[list[float]]:
    """The stretches along the core (u from, u to; mm) where fat fills its whole width."""
    u = np.arange(0.0, t.throw_mm, step)
    v = np.arange(-t.core_width_mm / 2, t.core_width_mm / 2 + step / 2, step)
    vv, uu = np.meshgrid(v, u)
    core = np.abs(vv) <= t.core_width_mm / 2 * edge_wobble(t, uu)
    across = (fat_inside(fat, uu, vv) | ~core).all(axis=1)
    edges = np.flatnonzero(np.diff(np.concatenate([[0], across.astype(int), [0]])))
    return [[float(u[a]), float(u[b - 1] + step)] for a, b in zip(edges[::2], edges[1::2], strict=True)]


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


def place_cores_on_slide(ts: list[BiopsyTruth], rng: np.random.Generator) -> None:
    """Several cores side by side on one slide, pointing either way (fills each one's slide fields).

    They share the first core's pixel size (and background); core positions are numbered left to right
    by the x of their centres, as a lab sheet records them."""
    um = ts[0].slide_um_per_px
    a0 = float(rng.uniform(0, 360))
    along, across = (
        np.array([np.cos(np.radians(a0)), np.sin(np.radians(a0))]),
        np.array([-np.sin(np.radians(a0)), np.cos(np.radians(a0))]),
    )
    centres, spans = [], []
    offset = 0.0
    for k, t in enumerate(ts):
        t.slide_um_per_px = um
        if t.nuisance:
            t.nuisance["background"] = ts[0].nuisance["background"]
        t.slide_rotation_deg = float((a0 + rng.choice([0.0, 180.0]) + rng.uniform(-5, 5)) % 360)
        length = t.throw_mm * t.shrink * 1000
        du = np.array([np.cos(np.radians(t.slide_rotation_deg)), np.sin(np.radians(t.slide_rotation_deg))])
        shift, clear = rng.uniform(-1500.0, 1500.0), rng.uniform(1000.0, 2500.0)
        offset += (t.core_width_mm * 1000 + clear) if k else 0.0
        while True:  # side by side, never touching: each core clears the others by ``clear``
            centre = offset * across + shift * along
            ends = (centre - du * length / 2, centre + du * length / 2)
            if all(_segment_distance(*ends, a, b) > t.core_width_mm * 1000 + clear for a, b, _ in spans):
                break
            offset += 200.0
        centres.append(centre)
        spans.append((*ends, du))
    pts = np.concatenate([[a, b] for a, b, _ in spans])
    margin = np.array([rng.uniform(800, 1500), rng.uniform(800, 1500)]) + (3500.0 if ts[0].nuisance else 0.0)
    lo = pts.min(axis=0) - margin
    size = pts.max(axis=0) - lo + margin
    order = np.lexsort(([c[1] for c in centres], [c[0] for c in centres]))
    for rank, k in enumerate(order, start=1):
        ts[k].core_position = rank
    for t, (start, _, _) in zip(ts, spans, strict=True):
        t.core_origin_um = (start - lo).tolist()
        t.slide_shape = [int(size[1] / um), int(size[0] / um)]


def _segment_distance(p0: np.ndarray, p1: np.ndarray, q0: np.ndarray, q1: np.ndarray) -> float:
    """Least distance between two line segments (they do not cross here: side-by-side cores)."""

    def to_segment(x: np.ndarray, a: np.ndarray, b: np.ndarray) -> float:
        s = np.clip((x - a) @ (b - a) / max((b - a) @ (b - a), 1e-9), 0, 1)
        return float(np.linalg.norm(x - (a + s * (b - a))))

    return min(to_segment(p0, q0, q1), to_segment(p1, q0, q1), to_segment(q0, p0, p1), to_segment(q1, p0, p1))


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


def edge_wobble(t: BiopsyTruth, u: np.ndarray) -> np.ndarray:
    return 1 + 0.05 * np.sin(u * 2.1 + t.shrink * 10) + 0.03 * np.sin(u * 5.3)


def prefire_tip_positions(t: BiopsyTruth) -> list[np.ndarray]:
    """Tip positions of the cine frames before the saved pre-fire frame (needle advancing)."""
    t0, t1 = np.array(t.t0_mm), np.array(t.t1_mm)
    d = (t1 - t0) / np.linalg.norm(t1 - t0)
    return [t0 - (t.frames - 1 - k) * 3.0 * d for k in range(t.frames)]


def truth_record(t: BiopsyTruth) -> dict:
    """The truth as scoring reads it: every hidden parameter plus tips, axis and dye end in pixels."""
    dx, dy = core_to_slide_px(t, np.array([t.throw_mm]), np.array([0.0]))
    cx, cy = core_to_slide_px(t, np.array([t.throw_mm / 2]), np.array([0.0]))
    px = lambda p: [p[0] / t.mm_per_px, p[1] / t.mm_per_px]  # noqa: E731
    return {
        **asdict(t),
        "t0_px": px(t.t0_mm),
        "t1_px": px(t.t1_mm),
        "axis_deg": float(np.degrees(np.arctan2(t.t1_mm[1] - t.t0_mm[1], t.t1_mm[0] - t.t0_mm[0]))),
        "dye_end_slide_px": [float(dx[0]), float(dy[0])],
        "core_centre_slide_px": [float(cx[0]), float(cy[0])],
        "mask_values": {"0": "outside core", "1": "benign core", "2": "cancer core"},
    }
