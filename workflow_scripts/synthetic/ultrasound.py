"""Rendering the pre-fire and post-fire ultrasound DICOMs from the truth."""

from __future__ import annotations

import zlib
from pathlib import Path

import numpy as np
import pydicom
from pydicom.dataset import FileDataset, FileMetaDataset
from pydicom.sequence import Sequence
from pydicom.uid import ExplicitVRLittleEndian, generate_uid
from scipy import ndimage

from .truth import BiopsyTruth, cancer_inside, lesion_inside, prefire_tip_positions

US_IMAGE_STORAGE = "1.2.840.10008.5.1.4.1.1.6.1"
US_MULTIFRAME_STORAGE = "1.2.840.10008.5.1.4.1.1.3.1"


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


def _frame(t: BiopsyTruth, region: np.ndarray, rng: np.random.Generator, ruler_mm: float | None = None) -> np.ndarray:
    """Place the tissue region in a scanner screen (RGB) with UI furniture around it.

    The depth scale beside the image has a tick every 25 px, or (``ruler_mm``) a physical depth
    ruler: a tick every ``ruler_mm`` mm, every fifth one longer, as scanners draw it.
    """
    f = np.zeros((t.frame_rows, t.frame_cols, 3), np.uint8)
    f[t.region_y0 : t.region_y0 + t.rows, t.region_x0 : t.region_x0 + t.cols] = region[..., None]
    x1 = t.region_x0 + t.cols + 10
    if ruler_mm is None:
        f[t.region_y0 : t.region_y0 + t.rows : 25, x1 : x1 + 8] = (220, 220, 220)  # depth scale ticks
    else:
        for k, y in enumerate(np.arange(t.region_y0, t.region_y0 + t.rows, ruler_mm / t.mm_per_px)):
            f[int(round(y)), x1 : x1 + (12 if k % 5 == 0 else 6)] = (220, 220, 220)
    f[10:22, 10 : 10 + int(rng.integers(60, 160))] = (240, 200, 40)  # annotation text box
    return f


def save_export(frame: np.ndarray, path: Path, fmt: str, quality: int, identities: dict) -> None:
    """Write a screen frame as a PNG or JPEG export: no DICOM header, no calibration.

    The file carries the identities an archive exporter may embed (PNG text chunks, JPEG EXIF), so
    that a test can check that none of them reaches an output.
    """
    import PIL.Image
    import PIL.PngImagePlugin

    img = PIL.Image.fromarray(frame)
    path.parent.mkdir(parents=True, exist_ok=True)
    if fmt == "png":
        info = PIL.PngImagePlugin.PngInfo()
        for key, value in identities.items():
            info.add_text(key, str(value))
        img.save(path, format="PNG", pnginfo=info)
    elif fmt == "jpeg":
        exif = PIL.Image.Exif()
        exif[0x010E] = " ".join(map(str, identities.values()))  # ImageDescription
        img.save(path, format="JPEG", quality=quality, exif=exif)
    else:
        raise ValueError(f"export format {fmt!r}: png or jpeg")


def write_export(
    t: BiopsyTruth,
    path: Path,
    region: np.ndarray,
    rng: np.random.Generator,
    fmt: str = "png",
    quality: int = 90,
    ruler_mm: float | None = 1.0,
) -> None:
    """The saved frame as a screen export with the scanner's furniture: a depth ruler at ``ruler_mm``
    (None: the DICOM screen's 25 px ticks) and a text box without text."""
    save_export(_frame(t, region, rng, ruler_mm), path, fmt, quality, t.canaries)


def export_dicom(dicom: Path, path: Path, fmt: str, quality: int = 90) -> None:
    """Export a rendered DICOM's saved (last) frame as an archive would: its pixels as RGB, its header
    identities embedded in the image file's metadata, its calibration lost."""
    from pydicom.pixels import pixel_array

    ds = pydicom.dcmread(dicom)
    n = int(ds.get("NumberOfFrames", 1) or 1)
    frame = pixel_array(ds, index=n - 1 if n > 1 else None)
    frame = np.repeat(frame[..., None], 3, axis=-1) if frame.ndim == 2 else frame
    identities = {k: str(ds[k].value) for k in ("PatientName", "PatientID", "StudyDescription") if k in ds}
    save_export(np.ascontiguousarray(frame, np.uint8), path, fmt, quality, identities)


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


def render_prefire(t: BiopsyTruth, first_noise_seed: int = 0) -> list[np.ndarray]:
    """The pre-fire cine: one frame per advancing tip position, the saved frame last."""
    tips = prefire_tip_positions(t)
    return [render_ultrasound(t, tip, noise_seed=first_noise_seed + k) for k, tip in enumerate(tips)]
