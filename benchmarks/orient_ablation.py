"""Orientation ablation: each evidence stage and doubt of the dyed-end call switched off in turn, on held-out seeds.

Slides are rendered once by the varied forward model (as ``registration_sweep.py`` renders them: the WSI
level at 16 um/px through a JPEG round trip, one to several cores each) and cached; their cores are found
once.  Then every biopsy's orientation runs with nothing removed, and again with each element of
``orient.ABLATABLE`` removed.  The truth (the dyed end) is read only to score.  Prints, per element removed:
orientation automatic and correct, wrong accepted, sent to review, failed; and how many calls change.

    python benchmarks/orient_ablation.py --seeds 13 14 --n 40 --cores 1 2 3 4
    python benchmarks/orient_ablation.py --seeds 13 14 --n 40 --cores 1 2 3 4 --levels 8 16 32   # resolution

``--levels``: the same slides rendered at 8 um/px and read at each level (area-averaged), nothing removed:
the calls and confidences per level (physical units: the call must not depend on the level read).
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

import numpy as np
import pandas as pd
from skimage.io import imread, imsave
from skimage.transform import downscale_local_mean

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
sys.path.insert(0, str(Path(__file__).resolve().parent))

import registration_sweep as sweep  # noqa: E402

from workflow_scripts import cores, orient, synthetic  # noqa: E402
from workflow_scripts import geometry as geo  # noqa: E402
from workflow_scripts.errors import InputError  # noqa: E402


def render_cached(job: tuple) -> Path:
    """Render one slide (its level, its cores' truth for scoring, the features) once into ``cache``."""
    seed, pid, n_cores, level_um, cache, compress = job
    out = Path(cache) / f"{seed}_{pid}_{n_cores}_{level_um:g}{'' if compress else '_raw'}"
    if (out / "slide.json").exists():
        return out
    out.mkdir(parents=True, exist_ok=True)
    sweep.LEVEL_UM = level_um  # the level the forward model renders (the sweep's is 16 um/px)
    ts, thumb, feats = sweep.render(seed, pid, compress, n_cores, False)
    imsave(out / "level.png", thumb, check_contrast=False)
    truth = [
        {
            "biopsy": f"{t.participant_id}/{t.biopsy_id}",
            "core": "" if not t.slide_id else (t.core_name or str(t.core_position)),
            "dye_end_slide_px": synthetic.truth_record(t)["dye_end_slide_px"],
            "dye": t.dye,
            "cores_on_slide": n_cores,
        }
        for t in ts
    ]
    slide = {"slide_um_per_px": ts[0].slide_um_per_px, "level_um": level_um, "biopsies": truth, "features": feats}
    (out / "slide.json").write_text(json.dumps(slide))
    return out


def orient_slide(job: tuple) -> list[dict]:
    """Every biopsy of one cached slide oriented with each element set of ``disabled_sets`` removed, read at
    ``read_um`` (the rendered level, area-averaged by an integer factor)."""
    path, disabled_sets, read_um = job
    slide = json.loads((Path(path) / "slide.json").read_text())
    seed = Path(path).name.split("_")[0]
    rgb = imread(Path(path) / "level.png")[..., :3]
    factor = int(round(read_um / slide["level_um"]))
    if factor > 1:
        rgb = downscale_local_mean(rgb, (factor, factor, 1)).round().astype(np.uint8)
    level = slide["level_um"] * factor
    cfg = sweep.CONFIG
    rows = []
    try:
        labels, found, _ = cores.find_cores(orient.optical_density(rgb), level, **sweep.CORES)
        scale = level / slide["slide_um_per_px"]  # the annotations name the cores, as in the pipeline
        cores.annotate(found, labels, slide["features"], scale, level, cfg["cores"]["dye_class"])
    except InputError as e:
        return [
            {"biopsy": f"{seed}:{b['biopsy']}", "removed": "-", "state": "failed", "error": e.what}
            for b in slide["biopsies"]
        ]
    for b in slide["biopsies"]:
        for removed in disabled_sets:
            row = {
                "biopsy": f"{seed}:{b['biopsy']}",
                "dye": b["dye"],
                "cores_on_slide": b["cores_on_slide"],
                "level_um": level,
            }
            row["removed"] = removed or "(none)"
            try:
                mine = cores.select(found, b["core"])
                off = frozenset([removed]) if removed else frozenset()
                res = orient.orient_core(rgb, labels, mine, level, None, **cfg["orient"], **disabled(off))
                can = orient.canonical(res, level, slide["slide_um_per_px"])
                dye = geo.apply(np.array(can["slide_px_to_canonical_um"]), [b["dye_end_slide_px"]])[0]
                row.update(
                    state=res["state"],
                    correct=bool(dye[0] > 0),
                    confidence=res["confidence"],
                    evidence=res.get("evidence"),
                    reason=res.get("review_reason", ""),
                    features=json.dumps(res.get("features", {})),
                )
            except InputError as e:
                row.update(state="failed", error=e.what)
            rows.append(row)
    return rows


def disabled(off: frozenset) -> dict:
    """The ``disabled`` keyword where something is removed (so that code without it runs the baseline)."""
    return {"disabled": off} if off else {}


def table(df: pd.DataFrame) -> pd.DataFrame:
    """Per element removed: the figures, and how many calls differ from nothing removed."""
    base = df[df["removed"] == "(none)"].set_index("biopsy")
    out = []
    for removed, g in df.groupby("removed", sort=False):
        g = g.set_index("biopsy")
        acc = g["state"] == "accepted"
        correct = g["correct"].fillna(False).astype(bool)
        changed = (g["state"] != base["state"].reindex(g.index)) | (
            correct != base["correct"].reindex(g.index).fillna(False).astype(bool)
        )
        out.append(
            {
                "removed": removed,
                "n": len(g),
                "auto_correct_%": 100 * float((acc & correct).mean()),
                "wrong_accepted": int((acc & ~correct).sum()),
                "review": int((g["state"] == "review").sum()),
                "failed": int((g["state"] == "failed").sum()),
                "calls_changed": int(changed.sum()),
            }
        )
    return pd.DataFrame(out)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--n", type=int, default=40, help="slides per seed")
    p.add_argument("--seeds", type=int, nargs="+", default=[13, 14])
    p.add_argument("--cores", type=int, nargs="+", default=[1, 2, 3, 4], help="cores per slide, cycled")
    p.add_argument("--workers", type=int, default=1)
    p.add_argument("--cache", default="benchmarks/out/orient_cache")
    p.add_argument("--out", default="benchmarks/out/orient_ablation.tsv")
    p.add_argument("--only", nargs="*", help="these elements only (default: every one in orient.ABLATABLE)")
    p.add_argument("--levels", type=float, nargs="+", help="render at the first, read at each (no ablation)")
    p.add_argument(
        "--cases",
        nargs="+",
        metavar="SEED:PID",
        help="these one-core slides as rendered (no JPEG), instead of --seeds/--n: e.g. the cases a rule was made for",
    )
    a = p.parse_args()
    t0 = time.time()
    render_um = a.levels[0] if a.levels else sweep.LEVEL_UM
    if a.cases:
        jobs = [(int(c.split(":")[0]), c.split(":")[1], 1, render_um, a.cache, False) for c in a.cases]
    else:
        jobs = [
            (s, f"V{i:04d}", a.cores[i % len(a.cores)], render_um, a.cache, True) for s in a.seeds for i in range(a.n)
        ]
    with ProcessPoolExecutor(a.workers) as ex:
        paths = list(ex.map(render_cached, jobs))
    print(f"{len(paths)} slides rendered or cached, {time.time() - t0:.0f} s", file=sys.stderr, flush=True)
    sets = [None] if a.levels else [None, *(a.only if a.only is not None else orient.ABLATABLE)]
    reads = a.levels or [sweep.LEVEL_UM]
    work = [(path, sets, um) for um in reads for path in paths]
    rows = []
    with ProcessPoolExecutor(a.workers) as ex:
        for k, r in enumerate(ex.map(orient_slide, work), 1):
            rows += r
            if k % 10 == 0:
                el = time.time() - t0
                print(f"  {k}/{len(work)} slides, {el:.0f} s", file=sys.stderr, flush=True)
    df = pd.DataFrame(rows)
    Path(a.out).parent.mkdir(parents=True, exist_ok=True)
    df.to_csv(a.out, sep="\t", index=False, float_format="%.4g")
    pd.set_option("display.width", 200, "display.max_columns", 20, "display.max_rows", 200)
    what = f"cases {' '.join(a.cases)}" if a.cases else f"seeds {a.seeds}"
    print(f"Orientation on {df['biopsy'].nunique()} biopsies, {what}, {time.time() - t0:.0f} s\n")
    if a.levels:
        wide = df.pivot_table(index="biopsy", columns="level_um", values="confidence")
        calls = df.pivot_table(index="biopsy", columns="level_um", values="correct", aggfunc="first")
        states = df.pivot_table(index="biopsy", columns="level_um", values="state", aggfunc="first")
        for um, g in df.groupby("level_um"):
            print(f"read at {um:g} um/px: {table(g.assign(removed='(none)')).to_string(index=False)}")
        spread = (wide.max(axis=1) - wide.min(axis=1)).dropna()
        print(
            f"\ncalls that differ between levels: {int((calls.nunique(axis=1) > 1).sum())}; states that differ: "
            f"{int((states.nunique(axis=1) > 1).sum())}; confidence spread p50 {spread.median():.3f} "
            f"p95 {spread.quantile(0.95):.3f} max {spread.max():.3f}"
        )
        return
    print(table(df).to_string(index=False, float_format=lambda v: f"{v:.1f}"))


if __name__ == "__main__":
    main()
