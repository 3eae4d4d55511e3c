"""Peak memory and time of reading a 100,000 x 100,000 px slide at the orientation resolution.

Writes two pyramidal JPEG-tiled TIFFs of that size (pre-encoded tiles, so writing
is fast and small on disk): one with a full pyramid down to 16 µm/px, one whose
coarsest level is 1 µm/px, which forces tile-by-tile averaging of a
25,000 x 25,000 px level.  Each read runs in a fresh process; its peak RSS is printed.

    python benchmarks/slide_memory.py [--dir /tmp/slides] [--px 100000]
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from pathlib import Path

import imagecodecs
import numpy as np
import tifffile

TILE = 512
UM = 0.25  # 40x


def tile_bytes(seed: int) -> bytes:
    """A JPEG tile of pink, textured 'tissue'."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[:TILE, :TILE]
    base = np.array([225, 160, 200]) + 15 * np.sin(xx / (20 + seed) + yy / 33)[..., None]
    return imagecodecs.jpeg8_encode(np.clip(base + rng.normal(0, 6, base.shape), 0, 255).astype(np.uint8), level=85)


def write(path: Path, px: int, factors: list[int]) -> None:
    variants = [tile_bytes(s) for s in range(8)]
    with tifffile.TiffWriter(path, bigtiff=True) as tw:
        for i, f in enumerate(factors):
            n = -(-px // f)
            count = (-(-n // TILE)) ** 2
            tw.write(
                (variants[k % 8] for k in range(count)),
                shape=(n, n, 3),
                dtype=np.uint8,
                tile=(TILE, TILE),
                compression="jpeg",
                photometric="rgb",
                subfiletype=0 if i == 0 else 1,
                resolution=(1e4 / (UM * f), 1e4 / (UM * f)),
                resolutionunit="CENTIMETER",
            )


CHILD = """
import json, resource, sys, time
from workflow_scripts import slide
path, reader = sys.argv[1], sys.argv[2]
t = time.perf_counter()
fn = slide.read_openslide if reader == "openslide" else slide.read_tiff
img, meta = fn(path, 16.0, 0.25 if reader == "openslide" else None)
print(json.dumps({"s": time.perf_counter() - t, "peak_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
                  "out": list(img.shape), "level": meta["level"], "averaged": meta["averaged"]}))
"""


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--dir", type=Path, default=Path("/tmp/tractmap-slides"))
    p.add_argument("--px", type=int, default=100_000)
    a = p.parse_args()
    a.dir.mkdir(parents=True, exist_ok=True)
    files = {
        "full pyramid (to 16 µm/px)": (a.dir / "full.tif", [1, 4, 16, 64]),
        "shallow pyramid (to 1 µm/px)": (a.dir / "shallow.tif", [1, 4]),
    }
    print(f"slide: {a.px} x {a.px} px at {UM} µm/px, JPEG tiles {TILE} px; target 16 µm/px")
    print(f"{'file':30s} {'reader':9s} {'level':>5s} {'avg':>4s} {'output':>12s} {'time s':>7s} {'peak RSS MB':>12s}")
    for name, (path, factors) in files.items():
        if not path.exists():
            t = time.perf_counter()
            write(path, a.px, factors)
            print(f"  (wrote {path.name}: {path.stat().st_size / 1e6:.0f} MB in {time.perf_counter() - t:.0f} s)")
        for reader in ("tifffile", "openslide"):
            res = subprocess.run(
                [sys.executable, "-c", CHILD, str(path), reader],
                capture_output=True,
                text=True,
                cwd=Path(__file__).resolve().parents[1],
                check=True,
            )
            r = json.loads(res.stdout.strip().splitlines()[-1])
            print(
                f"{name:30s} {reader:9s} {r['level']:5d} {r['averaged']:4d} {'x'.join(map(str, r['out'][:2])):>12s} "
                f"{r['s']:7.1f} {r['peak_mb']:12.0f}"
            )


if __name__ == "__main__":
    main()
