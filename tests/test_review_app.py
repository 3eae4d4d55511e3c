"""tractmap-review: the decisions file (locking, undo, precedence) and the app in a real (headless) browser."""

from __future__ import annotations

import concurrent.futures
import http.client
import io
import json
import multiprocessing
import re
import shutil
import subprocess
import sys
import threading
import urllib.error
import urllib.request
from pathlib import Path

import numpy as np
import pandas as pd
import PIL.Image
import pytest
import yaml
from conftest import ROOT, snakemake

from workflow_scripts import decisions as decisionlib
from workflow_scripts import report
from workflow_scripts import review_app as reviewapp
from workflow_scripts.review_app import IMAGES, decisions_path, review_page
from workflow_scripts.slide import read_region

# ------------------------------------------------------------------ the decisions file (fast)


def decision(p: str, b: str, **values) -> dict:
    return {"participant_id": p, "biopsy_id": b, "reviewer": "tester", "decided_at": "2026-01-01T00:00:00Z", **values}


def save_many(path: str, who: str, n: int) -> None:
    for i in range(n):
        decisionlib.save(Path(path), decision(who, f"B{i}", decision="flip", dye_end="left"))


def test_two_processes_saving_at_once_lose_nothing(tmp_path):
    path = tmp_path / "reviews/decisions.tsv"
    ctx = multiprocessing.get_context("spawn")  # two real processes, each re-reading under the lock
    procs = [ctx.Process(target=save_many, args=(str(path), who, 30)) for who in ("PA", "PB")]
    for p in procs:
        p.start()
    for p in procs:
        p.join(60)
        assert p.exitcode == 0
    table = decisionlib.read(path)
    assert sorted(zip(table["participant_id"], table["biopsy_id"], strict=True)) == sorted(
        (who, f"B{i}") for who in ("PA", "PB") for i in range(30)
    )
    assert len(pd.read_csv(decisionlib.history_path(path), sep="\t")) == 60
    assert not list(path.parent.glob(".*.tmp"))  # every temporary file was renamed into place


def test_latest_decision_wins_and_undo_steps_back_through_the_history(tmp_path):
    path = tmp_path / "decisions.tsv"
    decisionlib.save(path, decision("P1", "B1", decision="flip", dye_end="left"))
    decisionlib.save(path, decision("P2", "B1", decision="exclude", exclude="bubble over the core"))
    decisionlib.save(path, decision("P1", "B1", decision="confirm", dye_end="right", stroke_mm=15))
    assert len(decisionlib.read(path)) == 2
    assert decisionlib.current(path, ("P1", "B1"))["dye_end"] == "right"
    assert decisionlib.current(path, ("P1", "B1"))["stroke_mm"] == 15.0
    assert decisionlib.undo(path, ("P1", "B1"), "tester", "2026-01-02T00:00:00Z")["dye_end"] == "left"
    assert decisionlib.undo(path, ("P1", "B1"), "tester", "2026-01-02T00:00:00Z") == {}  # none left
    assert decisionlib.undo(path, ("P1", "B1"), "tester", "2026-01-02T00:00:00Z") is None  # nothing to undo
    assert decisionlib.current(path, ("P1", "B1")) is None
    assert decisionlib.current(path, ("P2", "B1"))["exclude"] == "bubble over the core"  # the other biopsy's stays


def test_a_decision_wins_over_the_sheet_group_by_group():
    sheet = pd.DataFrame(
        [
            {
                "participant_id": "P1",
                "biopsy_id": "B1",
                "tip_x": 10.0,
                "tip_y": 20.0,
                "axis_deg": 5.0,
                "dye_end": "top",
            },
            {"participant_id": "P1", "biopsy_id": "B2", "tip_x": float("nan"), "dye_end": "left"},
            {"participant_id": "P1", "biopsy_id": "B3"},
        ]
    )
    table = pd.DataFrame(
        [decision("P1", "B1", decision="correct", tip_x=30.0, tip_y=40.0, axis_deg=90.0, override_length_mm=18.0)]
    )
    merged, sources = decisionlib.apply(sheet, table)
    rows = merged.set_index("biopsy_id").to_dict("index")
    # the review's tract group replaces the sheet's whole group; the sheet's dye end stays
    assert {k: rows["B1"][k] for k in decisionlib.TRACT} == dict(
        tip_x=30.0, tip_y=40.0, axis_deg=90.0, override_length_mm=18.0
    )
    assert rows["B1"]["dye_end"] == "top"
    assert sources == {("P1", "B1"): "review (tester) + sheet", ("P1", "B2"): "sheet", ("P1", "B3"): "auto"}


def test_override_source_counts_only_overrides_not_the_guns_stroke_or_a_calibration():
    """``stroke_mm`` is the gun's stroke and ``us_mm_per_px`` / ``wsi_um_per_px`` are calibration facts: a sheet that
    gives only these has no override (``auto``); a dye end or a tract override in the sheet is one (``sheet``)."""
    facts = {"stroke_mm": 15.0, "us_mm_per_px": "0.05", "wsi_um_per_px": 0.25}
    sheet = pd.DataFrame(
        [
            {"participant_id": "P1", "biopsy_id": "B1", **facts},
            {"participant_id": "P1", "biopsy_id": "B2", **facts, "dye_end": "left"},
            {"participant_id": "P1", "biopsy_id": "B3", **facts, "override_length_mm": 14.5},
            {"participant_id": "P1", "biopsy_id": "B4", **facts},
        ]
    )
    table = pd.DataFrame([decision("P1", "B4", decision="confirm", stroke_mm=22.0)])  # a person set the stroke
    merged, sources = decisionlib.apply(sheet, table)
    assert sources == {
        ("P1", "B1"): "auto",
        ("P1", "B2"): "sheet",
        ("P1", "B3"): "sheet",
        ("P1", "B4"): "review (tester)",
    }
    assert merged.set_index("biopsy_id").loc["B1", "stroke_mm"] == 15.0  # still the gun's stroke the tract reads


def test_bad_decisions_are_named_by_file_and_line(tmp_path):
    table = pd.DataFrame(
        [
            decision("P1", "B1", decision="flip", dye_end="sideways"),
            decision("P1", "B2", decision="exclude"),  # no reason
            decision("P9", "B1", decision="confirm", dye_end="left"),  # not in the sheet
            decision("P1", "B3", decision="correct", tip_x=3.0),  # a tip without its axis and length
        ]
    )
    problems = decisionlib.problems(table, "reviews/decisions.tsv", {("P1", "B1"), ("P1", "B2"), ("P1", "B3")})
    text = "\n".join(problems)
    assert "line 2 (P1, B1): column dye_end" in text and "sideways" in text
    assert "line 3 (P1, B2)" in text and "exclude" in text
    assert "line 4: biopsy P9/B1 is not in the biopsies sheet" in text
    assert "line 5 (P1, B3)" in text and "tip_y" in text
    assert {re.search(r" line (\d+)", p).group(1) for p in problems} == {"2", "3", "4", "5"}  # each row, no other


# ------------------------------------------------------------------ the app in a browser (a real pipeline run)


def dice(a: np.ndarray, b: np.ndarray) -> float:
    """Dice of the tumour (label 1) of two labels."""
    return float(2 * ((a == 1) & (b == 1)).sum() / max((a == 1).sum() + (b == 1).sum(), 1))


def dry_run_jobs(workdir: Path, *targets: str) -> set[tuple[str, str]]:
    """(rule, participant/biopsy or '') of every job a dry run plans."""
    out = snakemake(workdir, "-n", *targets).stdout
    jobs = set()
    for block in re.split(r"\n(?=\s*(?:local)?rule \w+:)", out):
        m = re.match(r"\s*(?:local)?rule (\w+):", block)
        if m:
            w = re.search(r"wildcards: participant=([^,\s]+), biopsy=([^,\s]+)", block)
            jobs.add((m.group(1), f"{w.group(1)}/{w.group(2)}" if w else ""))
    return jobs


@pytest.fixture
def held_run(copy_run) -> Path:
    """The cohort run (5 biopsies) with every orientation held for review, run up to results/review.tsv."""
    sheet = copy_run / "sheets/biopsies.tsv"
    pd.read_csv(sheet, sep="\t", dtype=str).head(5).to_csv(sheet, sep="\t", index=False)
    cfg = yaml.safe_load((copy_run / "config.yaml").read_text())
    cfg["orient"]["accept_confidence"] = cfg["orient"]["accept_novelty"] = 0.99
    (copy_run / "config.yaml").write_text(yaml.safe_dump(cfg))
    snakemake(copy_run, "--cores", "2", "results/review.tsv", "results/qc/registration_qc.tsv")
    return copy_run


class App:
    """tractmap-review on a results folder, as a user starts it."""

    def __init__(self, workdir: Path):
        cmd = [sys.executable, "-m", "workflow_scripts.review_app", "results", "--reviewer", "tester"]
        self.proc = subprocess.Popen(cmd, cwd=workdir, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
        self.proc.stdout.readline()
        self.url = self.proc.stdout.readline().strip()
        self.base, self.token = self.url.split("/?token=")

    def request(self, path: str, body: object = None, token: bool = True) -> tuple[int, bytes]:
        headers = {"Content-Type": "application/json"} | ({"X-Tractmap-Token": self.token} if token else {})
        data = None if body is None else json.dumps(body).encode()
        req = urllib.request.Request(self.base + path, data=data, headers=headers)
        try:
            with urllib.request.urlopen(req, timeout=30) as r:
                return r.status, r.read()
        except urllib.error.HTTPError as e:
            return e.code, e.read()

    def close(self) -> None:
        self.proc.terminate()
        self.proc.wait(10)


@pytest.fixture
def chromium() -> str:
    """The system Chromium for Playwright (checked before the cohort is prepared)."""
    pytest.importorskip("playwright.sync_api")
    path = shutil.which("chromium")
    if not path:
        pytest.skip("no system Chromium (tests/run.sh installs Debian's chromium as root)")
    return path


LAPTOP = {"width": 1366, "height": 768}
FULL_HD = {"width": 1920, "height": 1080}
ACTIONS = ("#confirm", "#flip", "#save", "#undo", "#stroke", "#exclude-reason", "#exclude")


def actions_in_view(page, shot: Path) -> None:
    """A screenshot of the page as first shown; every action inside the window without scrolling, and the
    slide's end labels inside the slide image (none cut at its edge)."""
    shot.parent.mkdir(parents=True, exist_ok=True)
    page.screenshot(path=shot)
    size = page.viewport_size
    for sel in ACTIONS:
        box = page.locator(sel).bounding_box()
        assert box and box["x"] >= 0 and box["y"] >= 0, (sel, box)
        assert box["x"] + box["width"] <= size["width"] and box["y"] + box["height"] <= size["height"], (sel, box, size)
    outside = page.evaluate(
        """() => { const [w, h] = JSON.parse(document.getElementById('data').textContent).wsi_size;
        return [...document.querySelectorAll('#slide-overlay text')].map((t) => t.getBBox())
          .filter((b) => b.x < 0 || b.y < 0 || b.x + b.width > w || b.y + b.height > h).length; }"""
    )
    assert outside == 0


@pytest.mark.slow
def test_review_in_the_browser_reruns_only_the_decided_biopsies(chromium, held_run, tmp_path):
    from playwright import sync_api

    w = held_run
    queue = pd.read_csv(w / "results/review.tsv", sep="\t", dtype=str)
    keys = list(dict.fromkeys(zip(queue["participant_id"], queue["biopsy_id"], strict=True)))
    confirm = {(r.participant_id, r.biopsy_id): r.confirm for r in queue.itertuples() if r.step == "orient"}
    assert len(keys) >= 4
    labels = {k: np.asarray(PIL.Image.open(w / f"results/voc/SegmentationClass/{k[0]}_{k[1]}.png")) for k in keys}
    # the flipped core: the one whose tumour is least like itself turned end over end, so that a flip shows
    tumour = [k for k in keys if (labels[k] == 1).sum() > 50]
    flip = min(tumour, key=lambda k: dice(labels[k], labels[k][::-1, ::-1]))
    assert dice(labels[flip], labels[flip][::-1, ::-1]) < 0.6
    i = keys.index(flip)
    drag = keys[i + 1] if i + 1 < len(keys) else keys[0]  # reached with the n key where it is the next one
    excl = next(k for k in keys if k not in (flip, drag))
    untouched = [k for k in keys if k not in (flip, drag, excl)]
    decisions = w / "reviews/decisions.tsv"
    tract_before = json.loads((w / "results/tract/{}/{}.json".format(*drag)).read_text())

    app = App(w)
    try:
        # refused and nothing written: no token, a wrong one, a bad value, an unknown field, a biopsy not held
        assert app.request("/", token=False)[0] == 403
        assert app.request(review_page(*flip), token=False)[0] == 403
        good = {"participant_id": flip[0], "biopsy_id": flip[1], "decision": "flip", "dye_end": "left"}
        assert app.request("/api/decision", good, token=False)[0] == 403
        app.token, token = "x" + app.token[1:], app.token
        assert app.request("/api/decision", good)[0] == 403
        app.token = token
        far = {**good, "decision": "correct", "tip_x": 1e6, "tip_y": 10.0, "axis_deg": 0.0, "override_length_mm": 20.0}
        status, body = app.request("/api/decision", far)
        assert status == 400 and b"outside the pre-fire image" in body
        assert app.request("/api/decision", {**good, "dye_end": "sideways"})[0] == 400
        assert app.request("/api/decision", {**good, "reviewer": "mallory"})[0] == 400
        assert app.request("/api/decision", {**good, "decision": "exclude"})[0] == 400  # no reason
        assert app.request("/api/decision", {**good, "biopsy_id": "B99"})[0] == 404
        assert app.request("/img/{}/{}/..%2F..%2Fconfig.yaml".format(*flip))[0] == 404
        assert not decisions.exists()

        with sync_api.sync_playwright() as pw:
            browser = pw.chromium.launch(executable_path=chromium)
            page = browser.new_page(viewport=LAPTOP)
            errors = []
            page.on("pageerror", lambda e: errors.append(str(e)))
            page.on("console", lambda m: m.type == "error" and errors.append(m.text))  # a 404, an aborted request
            failed = []  # requests cut off (a navigation away from a loading page cuts some: counted around undo)
            page.on("requestfailed", lambda r: failed.append(f"{r.url}: {r.failure}"))
            page.goto(app.url)  # the token becomes a cookie, and leaves the address bar (and the history)
            assert "token" not in page.url and page.url.rstrip("/") == app.base
            why = page.locator("#queue td.why").all_text_contents()  # the queue says why each biopsy is held
            assert len(why) == len(keys) and all(w.strip() for w in why), why
            # flip the dyed end: one key, with the actions in view on a laptop screen
            page.goto(app.base + review_page(*flip))
            page.wait_for_selector("body[data-ready]")
            actions_in_view(page, tmp_path / "screens/review_1366x768.png")
            side = json.loads(page.locator("#data").text_content())["orient"]["other_side"]
            page.keyboard.press("f")
            page.wait_for_function("document.getElementById('current').textContent.includes('flip')")
            # drag T1 20% of the way towards T0 (the axis follows), see the preview, save
            if i + 1 < len(keys):
                page.keyboard.press("n")
                page.wait_for_url(f"**/b/{drag[0]}/{drag[1]}")
            else:
                page.goto(app.base + review_page(*drag))
            box0, box1 = page.locator("#t0").bounding_box(), page.locator("#t1").bounding_box()
            c0 = np.array([box0["x"] + box0["width"] / 2, box0["y"] + box0["height"] / 2])
            c1 = np.array([box1["x"] + box1["width"] / 2, box1["y"] + box1["height"] / 2])
            to = c1 + 0.2 * (c0 - c1)
            page.mouse.move(*c1)
            page.mouse.down()
            page.mouse.move(*(c1 + 0.1 * (c0 - c1)), steps=3)
            page.mouse.move(*to, steps=3)
            page.mouse.up()
            page.wait_for_function("document.getElementById('preview-label').textContent.includes('preview')")
            page.fill("#stroke", "18")  # the gun's stroke, kept with the correction
            page.locator("#stroke").blur()
            page.keyboard.press("s")
            page.wait_for_function("document.getElementById('current').textContent.includes('correct')")
            # confirm (c), then take it back (u): the page comes back undecided
            page.goto(app.base + review_page(*excl))
            page.keyboard.press("c")
            page.wait_for_function("document.getElementById('current').textContent.includes('confirm')")
            page.wait_for_load_state("networkidle")
            failed.clear()
            page.keyboard.press("u")
            page.wait_for_function("document.getElementById('current').textContent === 'No decision yet.'")
            page.wait_for_load_state("networkidle")
            assert failed == []  # undo redraws in place: nothing in flight is cut off (no net::ERR_ABORTED)
            # exclude: refused without a reason, kept with one
            page.click("#exclude")
            assert "reason" in page.locator("#status").text_content()
            page.fill("#exclude-reason", "air bubble over the tract")
            page.click("#exclude")
            page.wait_for_function("document.getElementById('current').textContent.includes('exclude')")
            # a full-HD screen; the pipeline's report (no favicon 404)
            page.set_viewport_size(FULL_HD)
            actions_in_view(page, tmp_path / "screens/review_1920x1080.png")
            page.goto(app.base + "/report")
            page.wait_for_load_state("networkidle")
            assert not errors, errors
            browser.close()
        # nothing the app serves holds a DICOM patient or study header value (the demo plants them)
        canaries = set()
        for t in (w / "demo/truth").rglob("*.json"):
            canaries |= set(json.loads(t.read_text())["canaries"].values())
        needles = [c.encode() for c in canaries] + [c.replace("^", " ").encode() for c in canaries]
        images = [f"/img/{k[0]}/{k[1]}/{n}" for k in keys for n in [*IMAGES, "evidence"]]
        paths = ["/", "/report"] + [review_page(*k) for k in keys] + images
        served = [app.request(p) for p in paths]
        assert canaries and all(status == 200 for status, _ in served)
        assert not [n for _, body in served for n in needles if n in body]
    finally:
        app.close()

    table = decisionlib.read(decisions).set_index(["participant_id", "biopsy_id"])
    assert set(table.index) == {flip, drag, excl}
    assert table.loc[flip, "decision"] == "flip" and table.loc[flip, "dye_end"] == side
    assert table.loc[drag, "stroke_mm"] == 18.0 and "stroke_mm" not in decisionlib.clean(table.loc[flip].to_dict())
    assert table.loc[excl, "decision"] == "exclude" and table.loc[excl, "exclude"] == "air bubble over the tract"
    history = pd.read_csv(decisionlib.history_path(decisions), sep="\t", dtype=str)
    steps = history.loc[(history["participant_id"] == excl[0]) & (history["biopsy_id"] == excl[1]), "decision"]
    assert list(steps) == ["confirm", "undo", "exclude"]
    d = table.loc[drag]
    assert d["decision"] == "correct" and (table["reviewer"] == "tester").all()
    assert d["override_length_mm"] == pytest.approx(0.8 * tract_before["sampled_length_mm"], rel=0.1)
    assert d["axis_deg"] == pytest.approx(tract_before["axis_deg"], abs=3)

    # only the decided biopsies' jobs and the aggregates are planned; the excluded one has none
    jobs = dry_run_jobs(w, "results/review.tsv", "results/qc/registration_qc.tsv")
    per_biopsy = {b for _, b in jobs if b}
    assert per_biopsy == {"{}/{}".format(*flip), "{}/{}".format(*drag)}, jobs
    # the flip reruns the orientation only; the drag reruns the tract (and the orientation, held too here,
    # which the same save confirmed as the page showed it)
    assert ("orient", "{}/{}".format(*flip)) in jobs and ("tract", "{}/{}".format(*flip)) not in jobs
    assert ("tract", "{}/{}".format(*drag)) in jobs and f"dye_end={d['dye_end']}" == confirm[drag]
    assert {r for r, b in jobs if not b} == {"review", "qc_table"}
    assert untouched  # and none of theirs is planned (per_biopsy above)

    # the rerun follows the decisions: the flipped core's label is turned end over end along the tract
    snakemake(w, "--cores", "2", "results/review.tsv", "results/qc/registration_qc.tsv")
    after = np.asarray(PIL.Image.open(w / f"results/voc/SegmentationClass/{flip[0]}_{flip[1]}.png"))
    before = labels[flip]
    assert after.shape == before.shape
    assert dice(after, before[::-1, ::-1]) > 0.9 > 0.6 > dice(after, before)
    orient = json.loads((w / "results/orient/{}/{}.json".format(*flip)).read_text())
    assert orient["state"] == "override"
    tract = json.loads((w / "results/tract/{}/{}.json".format(*drag)).read_text())
    assert tract["sampled_length_mm"] == pytest.approx(d["override_length_mm"], abs=0.01)
    qc = pd.read_csv(w / "results/qc/registration_qc.tsv", sep="\t", dtype=str).set_index(
        ["participant_id", "biopsy_id"]
    )
    assert qc.loc[flip, "override_source"] == qc.loc[drag, "override_source"] == "review (tester)"
    assert excl not in qc.index and qc.loc[untouched[0], "override_source"] == "auto"
    review = pd.read_csv(w / "results/review.tsv", sep="\t", dtype=str)
    assert not ((review["participant_id"] == flip[0]) & (review["biopsy_id"] == flip[1])).any()


def test_the_report_links_each_held_biopsy_to_its_review_page():
    rev = pd.DataFrame(
        {"participant_id": ["P1", "P1", "P2"], "biopsy_id": ["B1", "B1", "B_2"], "step": ["orient", "tract", "orient"]}
    )
    text = report.review_links(rev, Path("out/results"))
    assert "<code>tractmap-review out/results</code>" in text and "/report" in text
    # relative: they open the pages of the app that serves this report at /report, whatever port it took
    assert re.findall(r'href="([^"]+)"', text) == ["b/P1/B1", "b/P2/B_2"]
    assert report.review_links(rev.head(0), Path("results")) == ""


# ------------------------------------------------------------------ full-resolution tiles, read by region


@pytest.mark.parametrize(
    "layout",
    [
        {"tile": (64, 64), "compression": "jpeg"},
        {"rowsperstrip": 40, "compression": "zlib"},
        {"tile": (64, 64), "planarconfig": "separate", "compression": "zlib"},
    ],
    ids=["jpeg-tiles", "strips", "planar-tiles"],
)
def test_a_region_is_read_from_the_tiles_that_overlap_it_only(tmp_path, layout):
    import tifffile

    rng = np.random.default_rng(3)
    rgb = rng.integers(0, 255, (300, 500, 3), dtype=np.uint8)
    path = tmp_path / "slide.tif"
    data = np.moveaxis(rgb, -1, 0) if layout.get("planarconfig") else rgb
    tifffile.imwrite(path, data, photometric="rgb", **layout)
    whole = tifffile.imread(path)
    whole = np.moveaxis(whole, 0, -1) if layout.get("planarconfig") else whole
    for x, y, w, h in [(0, 0, 500, 300), (37, 61, 200, 150), (450, 250, 50, 50), (63, 63, 2, 2)]:
        region, shapes = read_region(path, 0, x, y, w, h)
        assert shapes == [[300, 500]] and np.array_equal(region, whole[y : y + h, x : x + w]), (x, y, w, h)
    # a damaged segment far from the region is never read: the region still reads, the whole level does not
    with tifffile.TiffFile(path) as tif:
        page = tif.pages[0]
        offset, count = page.dataoffsets[-1], page.databytecounts[-1]
    with open(path, "r+b") as f:
        f.seek(offset)
        f.write(b"\xff" * count)
    region, _ = read_region(path, 0, 10, 10, 40, 30)
    assert np.array_equal(region, whole[10:40, 10:50])
    # the whole level reaches the damaged segment: the very codec error tifffile's own full read raises
    try:
        tifffile.imread(path)
    except RuntimeError as e:  # imagecodecs' errors (Jpeg8Error, DeflateError) are RuntimeErrors
        codec_error = e
    else:
        pytest.fail("tifffile decoded the damaged segment: the check below would prove nothing")
    with pytest.raises(type(codec_error), match=re.escape(str(codec_error))):
        read_region(path, 0, 0, 0, 500, 300)


def test_a_tile_stays_inside_its_level_and_marks_the_end():
    meta = {
        "level_um_per_px": 16.0,
        "level_um": [4.0, 8.0, 16.0],
        "level_shapes": [[800, 1200], [400, 600], [200, 300]],
    }
    assert reviewapp.zoom_levels(meta) == [0, 1]
    box = reviewapp.tile_box([150.0, 100.0], meta, 0, size=256)  # thumbnail px -> level 0 px: x4
    assert box["size"] == [256, 256] and box["um_per_px"] == 4.0
    end = np.array(box["origin"]) + box["end"]
    assert end == pytest.approx([(150.5 * 4) - 0.5, (100.5 * 4) - 0.5])
    corner = reviewapp.tile_box([0.0, 199.0], meta, 0, size=256)  # at the slide's corner the tile shifts, in
    assert corner["origin"] == [0, 800 - 256] and corner["end"][0] == pytest.approx(1.5)
    small = reviewapp.tile_box([10.0, 10.0], meta, 1, size=1000)  # larger than the level: the level
    assert small["origin"] == [0, 0] and small["size"] == [600, 400]


def test_the_app_writes_the_decisions_file_the_workflow_reads(tmp_path):
    (tmp_path / "results").mkdir()
    (tmp_path / "config.yaml").write_text(yaml.safe_dump({"review": {"decisions": "elsewhere/d.tsv"}}))
    assert decisions_path(tmp_path / "results") == tmp_path / "elsewhere/d.tsv"
    (tmp_path / "config.yaml").write_text(yaml.safe_dump({"results": "results"}))  # the schema's default
    schema = yaml.safe_load((ROOT / "schemas/config.schema.yaml").read_text())
    default = schema["properties"]["review"]["properties"]["decisions"]["default"]
    assert decisions_path(tmp_path / "results") == tmp_path / default == tmp_path / "reviews/decisions.tsv"


def test_host_other_than_loopback_needs_an_explicit_option(tmp_path):
    (tmp_path / "review.tsv").write_text("participant_id\tbiopsy_id\tstep\treason\tconfirm\tcorrect\tqc_figure\n")
    cmd = [sys.executable, "-m", "workflow_scripts.review_app", str(tmp_path), "--host", "0.0.0.0"]
    res = subprocess.run(cmd, capture_output=True, text=True, cwd=ROOT, timeout=60)
    assert res.returncode == 2 and "--expose" in res.stderr


def page_json(app: App, key: tuple[str, str]) -> dict:
    """The data a biopsy's page embeds (what app.js draws)."""
    status, body = app.request(review_page(*key))
    assert status == 200
    return json.loads(re.search(rb'<script type="application/json" id="data">(.*?)</script>', body, re.S).group(1))


def check_slide_and_ultrasound_views(w: Path, chromium: str) -> None:
    """Tiles and the evidence overlay only with the token, bad ends and levels refused, tiles the slide's own
    pixels at the core's end and rendered once; every core drawn; the ultrasound blended."""
    import tifffile
    from playwright import sync_api

    queue = pd.read_csv(w / "results/review.tsv", sep="\t", dtype=str)
    keys = list(dict.fromkeys(zip(queue["participant_id"], queue["biopsy_id"], strict=True)))
    slides = {k: json.loads((w / "results/orient/{}/{}.json".format(*k)).read_text())["slide"] for k in keys}
    n_cores = {
        k: len(json.loads((w / f"results/slides/{k[0]}/{s}/cores.json").read_text())["cores"])
        for k, s in slides.items()
    }
    key = max(keys, key=lambda k: n_cores[k])  # a slide with several cores, where the cohort has one
    cache = w / "results/.review_cache" / key[0] / key[1]
    app = App(w)
    try:
        data = page_json(app, key)
        level = data["slide"]["level"]
        tile = f"/tile/{key[0]}/{key[1]}/0/{level}"
        for path in (tile, f"/img/{key[0]}/{key[1]}/evidence", "/report"):
            assert app.request(path, token=False)[0] == 403, path
        finest = max(x["level"] for x in data["slide"]["levels"])
        bad = ["2", "-1", "x", "..%2F..%2Fconfig.yaml"]
        for path in [f"/tile/{key[0]}/{key[1]}/{e}/{level}" for e in bad] + [
            f"/tile/{key[0]}/{key[1]}/0/{lv}" for lv in [*bad, str(finest + 1), "0.5", "%D9%A0"]
        ]:
            assert app.request(path)[0] == 400, path
        assert app.request(f"/tile/{key[0]}/B99/0/{level}")[0] == 404
        assert not cache.exists()  # nothing refused rendered anything

        # the tile is the slide's own pixels at that level, around the core's end
        status, body = app.request(tile)
        assert status == 200
        got = np.asarray(PIL.Image.open(io.BytesIO(body)).convert("RGB"))
        box = data["slide"]["tiles"][str(level)][0]
        (x, y), (tw, th) = box["origin"], box["size"]
        sheet = pd.read_csv(w / "sheets/biopsies.tsv", sep="\t", dtype=str).set_index(["participant_id", "biopsy_id"])
        slide_file = w / sheet.loc[key, "wsi"]
        assert np.array_equal(got, tifffile.imread(slide_file, level=level)[y : y + th, x : x + tw])
        end = np.array(data["orient"]["ends"][0])
        meta = json.loads((w / f"results/slides/{key[0]}/{slides[key]}/wsi.json").read_text())
        ratio = meta["level_um_per_px"] / meta["level_um"][level]
        assert np.array([x, y]) + box["end"] == pytest.approx((end + 0.5) * ratio - 0.5)
        # rendered once: served from the cache with the slide file gone
        moved = slide_file.rename(slide_file.with_name("away.tif"))
        try:
            assert app.request(tile) == (200, body)
            assert app.request(f"/tile/{key[0]}/{key[1]}/1/{level}")[0] == 404  # never rendered: needs the slide
        finally:
            moved.rename(slide_file)
        assert [p.name.startswith("tile_e0_") for p in cache.iterdir()] == [True]

        status, body = app.request(f"/img/{key[0]}/{key[1]}/evidence")
        overlay = np.asarray(PIL.Image.open(io.BytesIO(body)))
        assert status == 200 and overlay.shape == (*data["wsi_size"][::-1], 4)
        colours = {tuple(c) for c in overlay.reshape(-1, 4)[::7]}
        assert reviewapp.OUTLINE["this"] in colours and (n_cores[key] == 1 or reviewapp.OUTLINE["other"] in colours)

        with sync_api.sync_playwright() as pw:
            browser = pw.chromium.launch(executable_path=chromium)
            page = browser.new_page(viewport={"width": 1300, "height": 1000})
            errors = []
            page.on("pageerror", lambda e: errors.append(str(e)))
            page.goto(app.url)
            page.goto(app.base + review_page(*key))
            page.wait_for_selector("body[data-ready]")
            assert page.locator("#slide-cores rect").count() == n_cores[key]
            assert page.locator("#slide-cores rect.this").count() == 1
            assert page.get_attribute("#tile-1 image", "href").endswith(f"/1/{level}")
            # blended: the post-fire frame over the pre-fire one, by the slider; b switches to the post-fire frame
            op = lambda i: float(page.get_attribute(f"#us-{i}", "opacity"))  # noqa: E731
            assert (op("pre"), op("post")) == (1.0, 0.0)
            page.fill("#blend", "40")
            page.dispatch_event("#blend", "input")
            assert (op("pre"), op("post")) == (1.0, 0.4)
            page.keyboard.press("b")
            assert (op("pre"), op("post")) == (0.0, 1.0)
            # the gun stroke by one click (nothing typed), a second click clears it
            page.click("#strokes button[data-mm='15']")
            assert page.input_value("#stroke") == "15"
            page.click("#strokes button[data-mm='15']")
            assert page.input_value("#stroke") == ""
            # a finer level: its tiles
            page.click(f"#levels button[data-level='{finest}']")
            assert page.get_attribute("#tile-0 image", "href").endswith(f"/0/{finest}")
            page.wait_for_load_state("networkidle")
            # a stroke that the found length breaks (the tract step's check): the page says so before saving,
            # the line above the actions says what the save keeps, and the row records the warning seen
            page.click("#strokes button[data-mm='15']")
            assert "a gun stroke of 15 mm" in page.locator("#keeps").text_content()
            page.keyboard.press("c")
            page.wait_for_selector("#warnings:not([hidden])")
            assert "15 mm gun stroke" in page.locator("#warning-list").text_content()
            decisions = w / "reviews/decisions.tsv"
            assert not decisions.exists()
            page.click("#save-anyway")
            page.wait_for_function("document.getElementById('current').textContent.includes('confirm')")
            assert "15 mm gun stroke" in decisionlib.current(decisions, key)["warnings_seen"]
            # another biopsy whose orientation the pipeline has since accepted (its state file, as a rerun writes
            # it): f first names the accepted call and its confidence; Cancel turns the flip back, saving nothing
            other = next(k for k in keys if k != key)
            state_file = w / "results/state/{}/{}.json".format(*other)
            doc = json.loads(state_file.read_text())
            state_file.write_text(json.dumps({**doc, "steps": {**doc["steps"], "orient": "accepted"}}))
            page.goto(app.base + review_page(*other))
            page.wait_for_selector("body[data-ready]")
            legend = page.locator("#slide-legend").text_content()
            page.keyboard.press("f")
            page.wait_for_selector("#warnings:not([hidden])")
            assert re.search(
                r"accepted the dyed end at \w+ with confidence \d\.\d\d", page.text_content("#warning-list")
            )
            page.click("#cancel-warning")
            assert page.locator("#slide-legend").text_content() == legend and page.is_hidden("#warnings")
            assert decisionlib.current(decisions, other) is None
            assert not errors, errors
            browser.close()
        assert any(p.name.startswith(f"tile_e0_l{finest}_") for p in cache.iterdir())
    finally:
        app.close()


@pytest.mark.slow
def test_the_slide_and_ultrasound_views(chromium, held_run):
    check_slide_and_ultrasound_views(held_run, chromium)


# ------------------------------------------------------------------ hostile input and busy reviewers (fast)

STROKE = 22.0
HELD = {  # (participant, biopsy): the held step(s), the orientation's confidence, the found tract's length (mm)
    ("P1", "B1"): ("orient", 0.62, 20.0),
    ("P1", "B2"): ("tract", 0.89, 22.57),  # the case: flagged too long, the orientation accepted
    ("P2", "B1"): ("orient", 0.55, 21.0),
}


def small_results(root: Path) -> Path:
    """A results folder with what the app reads for a decision (review.tsv and each biopsy's records), 0.1 mm px."""
    res = root / "results"
    rows = ["participant_id\tbiopsy_id\tstep\treason\tconfirm\tcorrect\tqc_figure"]
    for (p, b), (step, conf, length) in HELD.items():
        orient = {"slide": "S1", "state": "review" if step == "orient" else "accepted", "confidence": conf}
        orient |= {"dye_at_positive_end": True, "axis": [1.0, 0.0]}  # the dyed end at the right
        t0 = [50.0, 100.0]
        tract = {"t0_px": t0, "t1_px": [t0[0] + length * 10, t0[1]], "sampled_length_mm": length, "axis_deg": 0.0}
        tract |= {"stroke_mm": STROKE, "state": "review" if step == "tract" else "accepted", "length_flag": False}
        tract |= {"mm_per_px": [0.1, 0.1], "width_mm": 4.0, "out_mm_per_px": 0.2, "tract_x_px": [10, 120]}
        steps = {"orient": orient["state"], "tract": tract["state"]}
        reason = {"orient": "dyed end uncertain", "tract": f"a length a {STROKE:g} mm stroke cannot give"}[step]
        state = {"participant_id": p, "biopsy_id": b, "state": "review", "steps": steps, "reasons": {step: reason}}
        pre = {"mm_per_px": [0.1, 0.1], "region_bounds_xyxy": [0, 0, 399, 299], "shape": [300, 400]}
        for name, doc in [(f"orient/{p}/{b}.json", orient), (f"tract/{p}/{b}.json", tract),
                          (f"state/{p}/{b}.json", state), (f"ingest/{p}/{b}/prefire.json", pre),
                          (f"ingest/{p}/{b}/postfire.json", pre)]:  # fmt: skip
            (res / name).parent.mkdir(parents=True, exist_ok=True)
            (res / name).write_text(json.dumps(doc))
        confirm, correct = ("dye_end=right", "dye_end=left") if step == "orient" else ("tip_x=50", "")
        rows.append(f"{p}\t{b}\t{step}\t{reason}\t{confirm}\t{correct}\t")
        PIL.Image.fromarray(np.full((300, 400), 90, np.uint8)).save(res / f"ingest/{p}/{b}/prefire.png")
    (res / "review.tsv").write_text("\n".join(rows) + "\n")
    (root / "config.yaml").write_text("{}\n")
    return res


class Served:
    """tractmap-review's server in this process, on a small results folder; raw HTTP requests to it."""

    def __init__(self, root: Path, allow_hosts: tuple[str, ...] = ()):
        self.decisions = root / "reviews/decisions.tsv"
        self.log = decisionlib.history_path(self.decisions)
        self.token = "t0ken-" + "x" * 20
        res = small_results(root)
        self.server = reviewapp.make_server(res, self.decisions, "127.0.0.1", 0, "tester", self.token, allow_hosts)
        self.port = self.server.server_address[1]
        self.host = f"127.0.0.1:{self.port}"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def call(self, method: str, path: str, body: object = None, raw: bytes | None = None, **headers: str):
        """(status, headers, JSON or bytes) of one request; ``headers`` replace the defaults (a script's: its
        own Host, the token header, If-Match: *); a value of None leaves that header out."""
        h = {"Host": self.host, "Content-Type": "application/json", "X-Tractmap-Token": self.token, "If-Match": "*"}
        h |= {k.replace("_", "-"): v for k, v in headers.items()}
        data = raw if raw is not None else (None if body is None else json.dumps(body).encode())
        conn = http.client.HTTPConnection("127.0.0.1", self.port, timeout=30)
        try:
            conn.request(method, path, data, {k: v for k, v in h.items() if v is not None})
            r = conn.getresponse()
            out = r.read()
        finally:
            conn.close()
        is_json = r.headers.get_content_type() == "application/json"
        return r.status, r.headers, json.loads(out) if is_json else out

    def post(self, path: str, body: object = None, **headers: str):
        return self.call("POST", path, body, **headers)

    def lines(self) -> list[str]:
        return self.decisions.read_text().splitlines() if self.decisions.exists() else []

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture
def served(tmp_path):
    s = Served(tmp_path)
    yield s
    s.close()


def flip(p: str = "P1", b: str = "B1", **more) -> dict:
    return {"participant_id": p, "biopsy_id": b, "decision": "flip", "dye_end": "left", **more}


def test_every_hostile_body_gets_an_http_answer(served):
    """Bodies that made the parser recurse or a float overflow are a 400 with a short sentence, never a dropped
    connection; a failure the app did not foresee is a 500."""
    long_int = b'{"participant_id": "P1", "biopsy_id": "B1", "decision": "correct", "tip_x": 1' + b"0" * 400
    bodies = {
        "401-digit integer": long_int + b', "tip_y": 1, "axis_deg": 0, "override_length_mm": 20}',
        "[ x 30000": b"[" * 30000,
        "{ x 10000": b'{"a":' * 10000,
        "deep valid JSON": b"[" * 40 + b"]" * 40,
        "300-digit float": b'{"participant_id": "P1", "biopsy_id": "B1", "decision": "flip", "stroke_mm": 1.'
        + b"5" * 300
        + b"}",
        "1e400": b'{"participant_id": "P1", "biopsy_id": "B1", "decision": "flip", "stroke_mm": 1e400}',
        "1e308": json.dumps(flip(stroke_mm=1e308)).encode(),
        "NaN": b'{"participant_id": "P1", "biopsy_id": "B1", "decision": "flip", "stroke_mm": NaN}',
        "-Infinity": b'{"participant_id": "P1", "biopsy_id": "B1", "decision": "flip", "stroke_mm": -Infinity}',
        "a dict where a number goes": json.dumps(flip(stroke_mm={"a": [1, 2]})).encode(),
        "a dye end of 300 digits": json.dumps(flip(dye_end="9" * 300)).encode(),
    }
    for what, raw in bodies.items():
        for path in ("/api/decision", "/api/preview"):
            status, _, answer = served.post(path, raw=raw)
            assert status == 400, (what, path, status)
            message = answer["error"]
            assert len(message) < 200 and not re.search(r"\d{25}|\{'|\['", message), (what, message)
    assert served.lines() == [] and not served.log.exists()
    # a results record the app cannot use (a stroke of null): an answer, 500, with the error's kind
    tract = served.decisions.parent.parent / "results/tract/P1/B2.json"
    tract.write_text(json.dumps({**json.loads(tract.read_text()), "stroke_mm": None}))
    status, _, body = served.post("/api/decision", flip("P1", "B2", **tract_values(20.0)))
    assert status == 500 and "failed unexpectedly (TypeError)" in body["error"] and served.lines() == []


def test_writes_only_from_the_apps_own_page(served):
    """A foreign Host, a foreign Origin, a cookie without Origin, a token in the query: 403, nothing written."""
    cookie = f"{reviewapp.COOKIE}={served.token}"
    own = f"http://{served.host}"
    refused = {
        "Host of another site, token header": dict(Host=f"evil.example:{served.port}"),
        "Host of another site, own Origin": dict(Host="evil.example", Origin="http://evil.example"),
        "Origin of another site, cookie": dict(Origin="http://evil.example", Cookie=cookie, X_Tractmap_Token=None),
        "Origin of another site, token header": dict(Origin="http://evil.example"),
        "Origin null, cookie": dict(Origin="null", Cookie=cookie, X_Tractmap_Token=None),
        "own Origin on another port": dict(Origin=f"http://127.0.0.1:{served.port + 1}", Cookie=cookie),
        "cookie alone, no Origin": dict(Cookie=cookie, X_Tractmap_Token=None),
        "own Origin, no token": dict(Origin=own, X_Tractmap_Token=None),
    }
    for what, headers in refused.items():
        for path, body in (("/api/decision", flip()), ("/api/undo", {"participant_id": "P1", "biopsy_id": "B1"})):
            assert served.post(path, body, **headers)[0] == 403, (what, path)
    # the token in a write's query string counts for nothing, with or without an Origin
    for origin in (None, own):
        path = f"/api/decision?token={served.token}"
        assert served.post(path, flip(), X_Tractmap_Token=None, Origin=origin)[0] == 403
    # a page asked for under a foreign Host (DNS rebinding) is refused too, token or not
    assert served.call("GET", f"/?token={served.token}", Host=f"evil.example:{served.port}")[0] == 403
    assert served.lines() == [] and not served.log.exists()
    # the app's own page (its Origin, the cookie), and a script (no Origin, the token header), write
    assert served.post("/api/decision", flip(), Origin=own, Cookie=cookie, X_Tractmap_Token=None)[0] == 200
    assert served.post("/api/decision", flip("P2", "B1"))[0] == 200
    assert served.call("GET", f"/?token={served.token}", Host=f"localhost:{served.port}")[0] == 200
    assert len(served.lines()) == 3
    # the names it answers at: loopback's three, and under --expose the address and --allow-host's names
    assert reviewapp.served_hosts("127.0.0.1", 8000) == {"127.0.0.1:8000", "localhost:8000", "[::1]:8000"}
    assert reviewapp.served_hosts("10.1.2.3", 80, ["Lab-PC.example"]) == {"10.1.2.3:80", "lab-pc.example:80"}


def test_allow_host_needs_expose(tmp_path):
    small_results(tmp_path)
    cmd = [sys.executable, "-m", "workflow_scripts.review_app", "results", "--allow-host", "lab-pc"]
    res = subprocess.run(cmd, capture_output=True, text=True, cwd=tmp_path, timeout=60)
    assert res.returncode == 2 and "--expose" in res.stderr


def test_a_burst_of_writes_is_answered_in_full(served):
    """50 writes at once on three biopsies: each answered with the row it wrote; the file keeps each biopsy's
    last write and the log every one."""
    keys = list(HELD)
    start = threading.Barrier(50)

    def write(i: int):
        start.wait()
        p, b = keys[i % len(keys)]
        body = {"participant_id": p, "biopsy_id": b, "decision": "exclude", "exclude": f"burst write {i}"}
        try:
            return served.post("/api/decision", body)
        except OSError as e:  # a reset or refused connection: what the test is for
            return e

    with concurrent.futures.ThreadPoolExecutor(50) as pool:
        answers = list(pool.map(write, range(50)))
    lost = [a for a in answers if isinstance(a, Exception)]
    assert lost == [], f"{len(lost)} of 50 connections lost: {lost[:3]}"
    assert [a[0] for a in answers] == [200] * 50
    assert [a[2]["exclude"] for a in answers] == [f"burst write {i}" for i in range(50)]
    log = pd.read_csv(served.log, sep="\t", dtype=str)
    assert sorted(log["exclude"]) == sorted(f"burst write {i}" for i in range(50))
    table = decisionlib.read(served.decisions).set_index(["participant_id", "biopsy_id"])
    last = log.groupby(["participant_id", "biopsy_id"])["exclude"].last()
    assert len(table) == 3 and all(table.loc[k, "exclude"] == last[k] for k in keys)


def test_a_save_on_a_stale_page_is_refused(served):
    """A save states the version it was made on (the page's ETag): another tab's decision, or a rerun of the
    biopsy by the pipeline, since then is a 409 that says so; a save that names no version is refused."""
    tag = served.call("GET", "/api/decision/P1/B1")[1]["ETag"]
    assert served.post("/api/decision", flip(), If_Match=None)[0] == 428
    assert served.post("/api/decision", flip(), If_Match='"made-up"')[0] == 412
    status, headers, row = served.post("/api/decision", flip(), If_Match=tag)
    assert status == 200 and row["decision"] == "flip" and headers["ETag"] != tag
    # a second tab, still on the first version: refused, and the first tab's decision stays
    status, _, body = served.post("/api/decision", flip(decision="confirm", dye_end="right"), If_Match=tag)
    assert status == 409 and "another tab or by another reviewer" in body["error"] and body["reload"]
    assert served.post("/api/undo", {"participant_id": "P1", "biopsy_id": "B1"}, If_Match=tag)[0] == 409
    assert decisionlib.current(served.decisions, ("P1", "B1"))["decision"] == "flip"
    # the pipeline reran the biopsy since the page was read: refused, though nobody decided since
    tag = served.call("GET", "/api/decision/P1/B1")[1]["ETag"]
    state = served.decisions.parent.parent / "results/state/P1/B1.json"
    state.write_text(json.dumps({**json.loads(state.read_text()), "state": "override"}))
    status, _, body = served.post("/api/decision", flip(decision="confirm", dye_end="right"), If_Match=tag)
    assert status == 409 and "the pipeline has rerun P1/B1" in body["error"]
    assert len(served.lines()) == 2 and len(served.log.read_text().splitlines()) == 2
    # on the current version: saved; undone on the version that save answered, the flip before is current again
    tag = served.call("GET", "/api/decision/P1/B1")[1]["ETag"]
    status, headers, _ = served.post("/api/decision", flip(decision="confirm", dye_end="right"), If_Match=tag)
    assert status == 200
    status, _, left = served.post("/api/undo", {"participant_id": "P1", "biopsy_id": "B1"}, If_Match=headers["ETag"])
    assert status == 200 and left["decision"] == "flip"


def tract_values(length_mm: float) -> dict:
    """T0 where the run found it, T1 ``length_mm`` along the same axis (DICOM frame px of the small results)."""
    return {"tip_x": 50.0, "tip_y": 100.0, "axis_deg": 0.0, "override_length_mm": length_mm}


def test_decisions_are_checked_like_the_pipeline_checks(served):
    """A flip of an accepted orientation, and a T0/T1 the tract step's length check flags for this stroke, are
    refused until the page has shown the warning; the row records it."""
    from workflow_scripts import tract as tractlib

    body = flip("P1", "B2", **tract_values(22.57))  # the case: Flip on a biopsy held for its tract only
    status, _, answer = served.post("/api/decision", body)
    assert status == 422 and served.lines() == []
    warned = answer["warnings"]
    assert len(warned) == 2 and "accepted the dyed end at right with confidence 0.89" in warned[0]
    assert "22.57 mm, more than 0.5 mm longer than the 22 mm gun stroke" in warned[1]
    assert served.post("/api/decision", {**body, "warnings_seen": "seen something else"})[0] == 422
    status, _, row = served.post("/api/decision", {**body, "warnings_seen": answer["seen"]})
    assert status == 200 and row["warnings_seen"] == answer["seen"]
    assert decisionlib.read(served.decisions)["warnings_seen"].tolist() == [answer["seen"]]
    # the length check is the tract step's own, for the stroke the decision leaves (its own, else the run's)
    for length, stroke in [(23.9, None), (22.4, None), (22.6, None), (16.4, None), (16.6, None), (16.4, 18.0)]:
        body = {**flip("P1", "B1", decision="correct", dye_end="right"), **tract_values(length)}
        body |= {"stroke_mm": stroke} if stroke else {}
        status, _, answer = served.post("/api/decision", body)
        flagged = tractlib.implausible_length(length, stroke or STROKE)
        assert status == (422 if flagged else 200), (length, stroke, answer)
        assert not flagged or f"{length:.2f} mm" in answer["error"]
    # the preview says the same before anything is saved
    body = {**flip("P1", "B1", decision="correct", dye_end="right"), **tract_values(23.9)}
    status, headers, _ = served.post("/api/preview", body)
    assert status == 200 and "23.90 mm" in json.loads(headers["X-Tractmap-Warnings"])[0]
    # an old decisions file, without the column, still reads and takes new rows
    old = "\t".join(c for c in decisionlib.COLUMNS if c != "warnings_seen")
    served.decisions.write_text(old + "\nP2\tB1\tflip\tleft" + "\t" * 7 + "tester\t2026-01-01T00:00:00Z\n")
    assert decisionlib.current(served.decisions, ("P2", "B1"))["dye_end"] == "left"
    assert served.post("/api/decision", flip("P1", "B1"))[0] == 200 and len(decisionlib.read(served.decisions)) == 2


def test_free_text_is_kept_on_one_line(tmp_path):
    """Tabs and line breaks in a reason (and in --reviewer) become single spaces; the page is told which field;
    the decisions file and its log keep one line per row."""
    s = Served(tmp_path)
    try:
        s.server.RequestHandlerClass.app.reviewer = decisionlib.one_line("Dr\tWho\n")
        reason = "air\tbubble\r\nover the\u2028tract\x00 "
        body = {"participant_id": "P1", "biopsy_id": "B1", "decision": "exclude", "exclude": reason}
        status, headers, row = s.post("/api/decision", body)
        assert status == 200 and row["exclude"] == "air bubble over the tract" and row["reviewer"] == "Dr Who"
        assert headers["X-Tractmap-Normalised"] == "exclude"
        status, headers, _ = s.post("/api/decision", {**body, "biopsy_id": "B2", "exclude": "plain reason"})
        assert status == 200 and "X-Tractmap-Normalised" not in headers
        for path in (s.decisions, s.log):
            lines = path.read_text().splitlines()
            assert len(lines) == 3 and all(line.count("\t") == len(decisionlib.COLUMNS) - 1 for line in lines)
        assert s.post("/api/decision", {**body, "exclude": "\t\n"})[0] == 400  # nothing left: no reason
    finally:
        s.close()
