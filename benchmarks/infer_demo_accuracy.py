"""How well does `tractmap-infer` find cancer along the planned tract of never-seen demo DICOMs?

Renders new pre-fire DICOMs with the demo forward model (participants the pipeline
never saw), runs the inference command with a trained model, and scores the
predicted cancer (probability >= 0.5) inside the strip's central core band against
the generator's hidden truth (scoring only).

    python benchmarks/infer_demo_accuracy.py --model results/train/fcn_resnet101/model.pt --n 10
"""

from __future__ import annotations

import argparse
import json
import tempfile
from pathlib import Path

import numpy as np

from workflow_scripts import infer, ingest, synthetic


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--model", required=True)
    p.add_argument("--n", type=int, default=10)
    p.add_argument("--seed", type=int, default=5000)
    a = p.parse_args()
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for k in range(a.n):
            t = synthetic.sample_truth(a.seed + k, f"N{k:03d}", "B1")
            frames = synthetic.render_prefire(t)
            dcm = Path(tmp) / f"N{k:03d}.dcm"
            synthetic.write_dicom(t, dcm, frames, np.random.default_rng(k))
            s = infer.infer(Path(a.model), dcm, Path(tmp) / "out")
            prob = np.load(Path(tmp) / "out" / f"N{k:03d}_prob.npy")
            image, meta = ingest.read_ultrasound(dcm, frame=None)  # one frame, as infer read it
            ys, xs = np.nonzero(np.isfinite(prob))
            # score the central band (the sampled core is ~1 mm wide around the axis)
            t0, t1 = np.array(s["t0_px"]), np.array(s["t1_px"])
            d = (t1 - t0) / np.linalg.norm(t1 - t0)
            rel = np.stack([xs, ys], 1) - t0
            along, across = rel @ d, np.abs(rel @ np.array([-d[1], d[0]]))
            band = (across * t.mm_per_px < 0.4) & (along >= 0) & (along <= np.linalg.norm(t1 - t0))
            truth = synthetic.cancer_inside(t, xs[band] * t.mm_per_px, ys[band] * t.mm_per_px)
            pred = prob[ys[band], xs[band]] >= 0.5
            tip_err = float(np.linalg.norm(t0 * t.mm_per_px - np.array(t.t0_mm)))
            inter = (truth & pred).sum()
            dice = 2 * inter / (truth.sum() + pred.sum()) if truth.sum() + pred.sum() else float("nan")
            rows.append(
                {"case": k, "tip_error_mm": tip_err, "dice": dice, "truth_cancer_fraction": float(truth.mean())}
            )
            print(json.dumps(rows[-1]))
    dices = np.array([r["dice"] for r in rows])
    tips = np.array([r["tip_error_mm"] for r in rows])
    print(
        f"{a.n} new DICOMs: median tip error {np.median(tips):.3f} mm, median Dice along the tract "
        f"{np.nanmedian(dices):.3f} "
        f"(min {np.nanmin(dices):.3f})"
    )


if __name__ == "__main__":
    main()
