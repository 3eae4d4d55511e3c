"""Registration QC: a figure per biopsy and a cohort table scored against truth when it exists.

Truth (demo cohort only) is read here and nowhere else in the pipeline.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402
import PIL.Image  # noqa: E402
from skimage.io import imread  # noqa: E402

from workflow_scripts import geometry as geo  # noqa: E402
from workflow_scripts.state import read_state  # noqa: E402


def dice(a: np.ndarray, b: np.ndarray) -> float:
    """Dice of two boolean masks (NaN when both are empty)."""
    s = a.sum() + b.sum()
    return float(2 * (a & b).sum() / s) if s else float("nan")


def score(tract: dict, orient: dict, label: np.ndarray, truth: dict, truth_mask: np.ndarray) -> dict:
    """Detected versus true tips (mm), axis angle (deg), orientation and transferred-mask Dice."""
    mm = np.array(tract["mm_per_px"])
    err = lambda a, b: float(np.linalg.norm((np.array(a) - np.array(b)) * mm))  # noqa: E731
    d_axis = (tract["axis_deg"] - truth["axis_deg"] + 180) % 360 - 180
    dye = geo.apply(np.array(orient["slide_px_to_canonical_um"]), [truth["dye_end_slide_px"]])[0]
    true_in_crop = geo.warp(truth_mask.astype(float), np.array(tract["crop_to_original"]), label.shape, order=0)
    return {
        "tip0_error_mm": err(tract["t0_px"], truth["t0_px"]),
        "tip1_error_mm": err(tract["t1_px"], truth["t1_px"]),
        "axis_error_deg": float(abs(d_axis)),
        "orientation_correct": bool(dye[0] > 0),
        "dice": dice(label == 1, true_in_crop == 2),
    }


def summarise(table: pd.DataFrame) -> pd.DataFrame:
    """Append median and 95th-percentile rows over the numeric columns."""
    num = table.select_dtypes("number")
    rows = [
        {"participant_id": "median", **num.median().to_dict()},
        {"participant_id": "p95", **num.quantile(0.95).to_dict()},
    ]
    if "orientation_correct" in table:
        for r in rows:
            r["orientation_correct"] = float(table["orientation_correct"].mean())
    return pd.concat([table, pd.DataFrame(rows)], ignore_index=True)


def summary_figure(table: pd.DataFrame, out: Path) -> None:
    """Cohort QC at a glance: a histogram per measure (truth-scored ones only when truth exists)."""
    cols = [
        c
        for c in (
            "sampled_length_mm",
            "shrinkage",
            "dye_confidence",
            "tip0_error_mm",
            "tip1_error_mm",
            "axis_error_deg",
            "dice",
        )
        if c in table and table[c].notna().any()
    ]
    per_biopsy = table[~table["participant_id"].isin(["median", "p95"])]
    fig, axes = plt.subplots(1, len(cols), figsize=(2.6 * len(cols), 2.6), squeeze=False)
    for ax, c in zip(axes[0], cols, strict=True):
        v = per_biopsy[c].astype(float).dropna()
        ax.hist(v, bins=15, color="0.4")
        ax.axvline(v.median(), color="r", lw=1)
        ax.set_title(f"{c}\nmedian {v.median():.3g}", fontsize=9)
        ax.tick_params(labelsize=7)
    fig.suptitle(f"Registration QC, {len(per_biopsy)} biopsies (red: median)", fontsize=10)
    fig.tight_layout()
    fig.savefig(out, dpi=90)
    plt.close(fig)


def decisions(state: dict, orient: dict, tract: dict) -> str:
    """The biopsy's review state, each step's state in it and the steps' confidences, for a figure title."""
    conf = ", ".join(f"{k} {v:.2f}" for k, v in tract.get("confidence", {}).items())
    steps = state["steps"]
    return f"{state['state']}; dye end: {steps['orient']} ({orient['confidence']:.2f}); needle: {steps['tract']}" + (
        f" ({conf})" if conf else ""
    )


PIECE_COLOURS = {"fragment": "c", "leftover": "orange"}


def pieces_panel(ax: plt.Axes, pieces: list[dict]) -> None:
    """Every piece of tissue that is not a core's seed: fragments (cyan) and left-overs (orange, dashed), each
    boxed with its number and length; a left-over in line with a core is marked '→ core k'."""
    for p in pieces:
        if p["role"] == "core" or p["length_mm"] < 0.3:
            continue
        x0, y0, x1, y1 = p["bbox_px"]
        colour = PIECE_COLOURS[p["role"]]
        ax.add_patch(
            plt.Rectangle(
                (x0 - 1, y0 - 1),
                x1 - x0 + 2,
                y1 - y0 + 2,
                fill=False,
                ec=colour,
                lw=0.8,
                ls="--" if p["role"] == "leftover" else ":",
            )
        )
        near = (p.get("in_line_with") or {}).get("core")
        label = f"{p['piece']}: {p['length_mm']:.1f} mm" + (f" → core {near}" if near else "")
        ax.text(x1 + 2, y0, label, color=colour, fontsize=6, va="top", clip_on=True)


def slide_figure(slide: np.ndarray, labels: np.ndarray, doc: dict, path: str | Path) -> None:
    """The slide's cores and every piece the finder saw (``cores.json``), with the list of pieces and why."""
    cores, pieces = doc["cores"], doc.get("pieces", [])
    listed = [p for p in pieces if p["length_mm"] >= 0.3]
    fig, (ax, tx) = plt.subplots(1, 2, figsize=(13, 6), gridspec_kw={"width_ratios": [3, 2]})
    ax.imshow(slide)
    for c in cores:
        ax.contour(labels == c["position"], levels=[0.5], colors="r", linewidths=1.0)
        ax.text(
            *c["centre_px"],
            str(c["position"]),
            color="r",
            fontsize=11,
            fontweight="bold",
            ha="center",
            va="center",
            bbox={"facecolor": "white", "alpha": 0.6, "lw": 0},
        )
    pieces_panel(ax, pieces)
    ax.set_title(f"{len(cores)} core(s); {len(listed)} piece(s) of at least 0.3 mm", fontsize=9)
    ax.axis("off")
    lines = [
        f"{p['piece']}: {p['length_mm']:.1f} mm, "
        + (
            f"core {p['core']}"
            if p["role"] == "core"
            else f"fragment of core {p['core']}"
            if p["core"]
            else "left over"
        )
        + f" ({p['why']})"
        for p in listed
    ]
    tx.text(
        0,
        1,
        "\n".join(lines[:40]) + (f"\n... {len(lines) - 40} more in cores.json" if len(lines) > 40 else ""),
        fontsize=7,
        va="top",
        family="monospace",
        wrap=True,
    )
    tx.axis("off")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def slide_panel(
    ax: plt.Axes, slide: np.ndarray, labels: np.ndarray, cores: list[dict], orient: dict, pieces: list[dict] = ()
) -> None:
    """The whole slide level with every core outlined and numbered, and the other pieces of tissue boxed
    (:func:`pieces_panel`); this biopsy's core and its dyed end in red."""
    ax.imshow(slide)
    pieces_panel(ax, list(pieces))
    mine = orient["core_position"]
    for c in cores:
        k = c["position"]
        ax.contour(labels == k, levels=[0.5], colors="r" if k == mine else "c", linewidths=1.6 if k == mine else 0.7)
        ax.text(
            *c["centre_px"],
            str(k),
            color="r" if k == mine else "c",
            fontsize=11,
            fontweight="bold",
            ha="center",
            va="center",
            bbox={"facecolor": "white", "alpha": 0.6, "lw": 0},
        )
    v = np.asarray(orient["axis"]) * (1 if orient["dye_at_positive_end"] else -1)
    end = np.asarray(orient["centroid"]) + v * max(abs(e) for e in orient["extent"])
    ax.plot(*end, "o", ms=12, mfc="none", mec="r", mew=2, label="dyed end")
    ax.legend(loc="lower right", fontsize=8)
    ax.set_title(f"slide: core {mine} of {len(cores)} ({orient.get('source', '?')} dye end)", fontsize=9)
    ax.axis("off")


def figure(
    pre: np.ndarray,
    tract: dict,
    oriented: np.ndarray,
    crop: np.ndarray,
    label: np.ndarray,
    title: str,
    out: Path,
    slide: tuple[np.ndarray, np.ndarray, list[dict], dict],
) -> None:
    """Pre-fire with axis, T0, T1 and crop box; the slide and its cores; the oriented core; ROI on the crop."""
    fig = plt.figure(figsize=(14, 7), constrained_layout=True)
    gs = fig.add_gridspec(3, 2, height_ratios=[4, 1, 1.2], width_ratios=[3, 2])
    slide_panel(fig.add_subplot(gs[0, 1]), *slide)
    ax = fig.add_subplot(gs[0, 0])
    ax.imshow(pre, cmap="gray")
    t0, t1 = np.array(tract["t0_px"]), np.array(tract["t1_px"])
    d = (t1 - t0) / np.linalg.norm(t1 - t0)
    ax.plot(*np.stack([t0 - 400 * d, t1 + 50 * d]).T, "c--", lw=0.8, label="needle axis")
    h, w = tract["crop_shape"]
    box = geo.apply(np.array(tract["crop_to_original"]), [[0, 0], [w - 1, 0], [w - 1, h - 1], [0, h - 1], [0, 0]])
    ax.plot(box[:, 0], box[:, 1], "y-", lw=1, label="crop")
    ax.plot(*t0, "r+", ms=14, mew=2, label="T0 (pre-fire tip)")
    ax.plot(*t1, "gx", ms=12, mew=2, label="T1 (post-fire tip)")
    ax.set_xlim(0, pre.shape[1])
    ax.set_ylim(pre.shape[0], 0)
    ax.legend(loc="lower right", fontsize=8)
    ax.set_title(f"{title}: tract {tract['sampled_length_mm']:.1f} mm at {tract['axis_deg']:.1f} deg")
    ax = fig.add_subplot(gs[1, :])
    ax.imshow(oriented)
    ax.annotate(
        "dye end",
        xy=(oriented.shape[1] * 0.97, oriented.shape[0] / 2),
        xytext=(oriented.shape[1] * 0.8, oriented.shape[0] * 0.1),
        color="k",
        arrowprops={"arrowstyle": "->"},
    )
    ax.set_title("WSI in the canonical frame (dye end right)", fontsize=9)
    ax.axis("off")
    ax = fig.add_subplot(gs[2, :])
    ax.imshow(crop, cmap="gray", aspect="auto")
    ax.imshow(np.ma.masked_where(label != 1, label), cmap="autumn", alpha=0.45, aspect="auto")
    ax.contour(label == 255, levels=[0.5], colors="w", linewidths=0.5)
    ax.set_title("transferred cancer ROI on the crop (white line: edge of the sampled core)", fontsize=9)
    ax.axis("off")
    fig.savefig(out, dpi=80)
    plt.close(fig)


def table_row(tract: dict, orient: dict, state: dict) -> dict:
    """One biopsy's QC measures and its review state (read from ``state/<p>/<b>.json``, never re-derived)."""
    return {
        "sampled_length_mm": tract["sampled_length_mm"],
        "length_flag": tract["length_flag"],
        "stroke_mm": tract.get("stroke_mm"),
        "stroke_source": tract.get("stroke_source", ""),
        "override_length_mm": tract.get("override_length_mm"),
        "length_source": tract.get("length_source", ""),
        "dye_confidence": orient["confidence"],
        "dye_p_correct": orient.get("p_correct"),  # the calibrated probability (docs/calibration_orient.md)
        "state": state["state"],
        "orient_state": state["steps"]["orient"],
        "orient_source": orient.get("source", ""),
        "core": orient.get("core_position", ""),
        "tract_state": state["steps"]["tract"],
        "override_source": state["override_source"],
        **{f"tract_conf_{k}": v for k, v in tract.get("confidence", {}).items()},
    }


def parser() -> argparse.ArgumentParser:
    """The command line; every setting that config.yaml carries is a required option the rule passes."""
    p = argparse.ArgumentParser(description="registration QC")
    sub = p.add_subparsers(dest="cmd", required=True)
    f = sub.add_parser("figure")
    for k in (
        "pre",
        "tract",
        "orient",
        "state",
        "oriented",
        "crop",
        "label",
        "out",
        "title",
        "slide",
        "cores",
        "labels",
    ):
        f.add_argument(f"--{k}", required=True)
    t = sub.add_parser("table")
    for k in ("tract", "orient", "state", "transfer", "label"):
        t.add_argument(f"--{k}", nargs="+", required=True, help=f"per-biopsy {k} files, in the same biopsy order")
    t.add_argument("--truth", nargs="*", default=[], help="demo truth JSONs, same biopsy order (scoring only)")
    t.add_argument("--truth-mask", nargs="*", default=[], help="demo truth masks (<b>_mask.png), same order")
    t.add_argument("--out", required=True)
    t.add_argument("--figure", help="summary figure PNG")
    return p


def main(argv: list[str] | None = None) -> None:
    a = parser().parse_args(argv)
    if a.cmd == "figure":
        load = lambda k: json.loads(Path(getattr(a, k)).read_text())  # noqa: E731
        title = f"{a.title} [{decisions(load('state'), load('orient'), load('tract'))}]"
        figure(
            imread(a.pre),
            load("tract"),
            imread(a.oriented),
            imread(a.crop),
            np.array(PIL.Image.open(a.label)),
            title,
            Path(a.out),
            (
                imread(a.slide),
                imread(a.labels),
                load("cores")["cores"],
                load("orient"),
                load("cores").get("pieces", []),
            ),
        )
        return
    rows = []
    truths = zip(a.truth, a.truth_mask, strict=True) if a.truth else [None] * len(a.tract)
    for tract_f, orient_f, state_f, transfer_f, label_f, truth in zip(
        a.tract, a.orient, a.state, a.transfer, a.label, truths, strict=True
    ):
        pid, bid = Path(tract_f).parent.name, Path(tract_f).stem  # <results>/tract/<participant>/<biopsy>.json
        tract, orient, transfer = (json.loads(Path(x).read_text()) for x in (tract_f, orient_f, transfer_f))
        row = {"participant_id": pid, "biopsy_id": bid, **table_row(tract, orient, read_state(state_f, pid, bid))}
        row["shrinkage"], row["ignored_objects"] = transfer["shrinkage"], transfer["ignored_total"]
        if truth:
            found = json.loads(Path(truth[0]).read_text())
            row.update(score(tract, orient, np.array(PIL.Image.open(label_f)), found, imread(truth[1])))
        rows.append(row)
    table = summarise(pd.DataFrame(rows))
    table.to_csv(a.out, sep="\t", index=False, float_format="%.4g")
    if a.figure:
        summary_figure(table, Path(a.figure))
    print(table.tail(2).to_string())


if __name__ == "__main__":
    main()
