"""VOC conversion: Labelme JSON -> Pascal VOC segmentation (labelme2voc layout), via imgviz.

Layout under the dataset root: JPEGImages/ (``voc.image_format``: jpg, quality 95,
as Labelme's labelme2voc writes it, or png), SegmentationClass/ (palette PNG:
0 background, 1 cancer, 255 void), SegmentationClassVisualization/,
class_names.txt and ImageSets/Segmentation/{train,val,test,trainval}.txt (one
list per split, each depending only on that split's images).

PNGImages/ holds the same image, grey and lossless: the pixels the label was drawn
on.  Every tractmap consumer (training, prediction, figures, the nnU-Net export)
reads it through ``read_image``, never a decoded JPEG; JPEGImages/ is for VOC tools.
"""

from __future__ import annotations

import argparse
import base64
import io
from pathlib import Path

import imgviz
import numpy as np
import PIL.Image

from workflow_scripts.errors import InputError, read_json, run_cli
from workflow_scripts.state import USABLE, read_state

CLASS_NAMES = ("_background_", "cancer")
VOID = 255  # the label value of unknown pixels: the one definition (train and evaluate import it)
IMAGE_FORMATS = ("jpg", "png")  # config voc.image_format: the JPEGImages/ files
LOSSLESS = "PNGImages"  # the lossless grey copy every consumer reads


def read_image(root: Path, image_id: str) -> np.ndarray:
    """The grey, lossless image of ``image_id`` (PNGImages/), as its label was drawn on."""
    path = Path(root) / LOSSLESS / f"{image_id}.png"
    if not path.is_file():
        raise InputError(f"no lossless image {path}", "rerun the voc_image rule for this biopsy")
    return np.asarray(PIL.Image.open(path).convert("L"))


def label_values(class_names: tuple[str, ...] = CLASS_NAMES) -> dict[str, int]:
    """Label name -> class value; ``__ignore__`` is void."""
    return {"__ignore__": VOID, **{n: i for i, n in enumerate(class_names)}}


AREAS = ("polygon", "rectangle", "circle", "oriented_rectangle")  # Labelme shapes that enclose pixels


def rasterize(shapes: list[dict], shape: tuple[int, int], values: dict[str, int]) -> np.ndarray:
    """Paint Labelme's area shapes in order (later shapes win), drawn by Labelme's own shape_to_mask."""
    from labelme.utils import shape_to_mask  # here: labelme pulls in Qt, which train/predict/evaluate never need

    canvas = np.zeros(shape[:2], np.uint8)
    for i, s in enumerate(shapes, 1):
        kind = s.get("shape_type") or "polygon"
        if s["label"] not in values:
            raise InputError(
                f"unknown label {s['label']!r} (shape {i}) in Labelme file", f"use one of {sorted(values)}"
            )
        if kind not in AREAS:
            raise InputError(
                f"shape {i} is a {kind}, which encloses no pixels", f"draw labels as one of {', '.join(AREAS)}"
            )
        try:
            mask = shape_to_mask(shape[:2], s["points"], kind)
        except (AssertionError, ValueError) as e:
            raise InputError(
                f"shape {i} ({kind} {s['label']!r}) is malformed: {e}", "redraw that shape in Labelme"
            ) from None
        canvas[mask] = values[s["label"]]
    return canvas


def decode_image(doc: dict, crop: Path | None = None, base: Path | None = None) -> np.ndarray:
    """The grayscale image of a Labelme document.

    Embedded imageData first; without it (Labelme's "Save With Image Data" off), the
    file named by imagePath (relative to the Labelme file's folder ``base``), else the crop.
    """
    if doc.get("imageData"):
        return np.asarray(PIL.Image.open(io.BytesIO(base64.b64decode(doc["imageData"]))).convert("L"))
    named = Path(base or ".", doc["imagePath"]) if doc.get("imagePath") else None
    source = named if named is not None and named.is_file() else crop
    if source is not None and Path(source).is_file():
        image = np.asarray(PIL.Image.open(source).convert("L"))
        if (doc.get("imageHeight"), doc.get("imageWidth")) in ((None, None), image.shape):
            return image
        raise InputError(
            f"Labelme file has no imageData and is {doc.get('imageWidth')}x{doc.get('imageHeight')} px, "
            f"but {source} is {image.shape[1]}x{image.shape[0]}",
            "re-save the correction from the automatic file",
        )
    raise InputError(
        f"Labelme file has no embedded imageData and its imagePath {doc.get('imagePath')!r} is not found",
        "save it in Labelme with 'Save With Image Data' on",
    )


def save_palette_png(label: np.ndarray, path: Path) -> None:
    """Save a label as a VOC palette PNG (imgviz colormap, 255 = void)."""
    img = PIL.Image.fromarray(label, mode="P")
    cmap = imgviz.label_colormap().copy()  # 256 VOC colours
    cmap[VOID] = (224, 224, 192)  # the VOC void colour
    img.putpalette(cmap.flatten().tolist())
    img.save(path)


def convert(
    doc: dict,
    image_id: str,
    root: Path,
    *,
    image_format: str,
    class_names: tuple[str, ...] = CLASS_NAMES,
    crop: Path | None = None,
    base: Path | None = None,
) -> np.ndarray:
    """Write one image's VOC files (JPEGImages/ in ``image_format``, config voc.image_format, and the lossless
    PNGImages/); returns its label."""
    if image_format not in IMAGE_FORMATS:
        raise InputError(f"unknown image format {image_format!r}", f"set voc.image_format to one of {IMAGE_FORMATS}")
    image = decode_image(doc, crop, base)
    label = rasterize(doc["shapes"], image.shape, label_values(class_names))
    for sub in ("JPEGImages", LOSSLESS, "SegmentationClass", "SegmentationClassVisualization"):
        (root / sub).mkdir(parents=True, exist_ok=True)
    rgb = np.repeat(image[..., None], 3, -1)
    PIL.Image.fromarray(rgb).save(root / "JPEGImages" / f"{image_id}.{image_format}", quality=95)
    PIL.Image.fromarray(image).save(root / LOSSLESS / f"{image_id}.png")
    save_palette_png(label, root / "SegmentationClass" / f"{image_id}.png")
    viz = imgviz.label2rgb(
        np.where(label == VOID, 0, label),
        np.repeat(image[..., None], 3, -1),
        label_names=list(class_names),
        font_size=10,
        loc="rb",
    )
    PIL.Image.fromarray(viz).save(root / "SegmentationClassVisualization" / f"{image_id}.jpg")
    return label


def write_list(labels: list[str], states: list[str], out: Path) -> None:
    """An ImageSets list: the images whose biopsy's review state is usable (accepted or override); the held
    ones are named, not listed."""
    held = {}
    for f, st in zip(labels, states, strict=True):
        pid, bid = Path(f).stem.split("_", 1)  # <participant>_<biopsy>: participant IDs hold no '_'
        state = read_state(st, pid, bid)["state"]
        if state not in USABLE:
            held[Path(f).stem] = state
    ids = sorted(Path(f).stem for f in labels if Path(f).stem not in held)
    out.write_text("".join(f"{i}\n" for i in ids))
    named = " ".join(f"{k} ({v})" for k, v in sorted(held.items()))
    print(f"{len(ids)} images in {out}" + (f"; {len(held)} held out: {named}" if held else ""))


def parser() -> argparse.ArgumentParser:
    """The command line; every setting that config.yaml carries is a required option the rule passes."""
    p = argparse.ArgumentParser(description="Labelme JSON -> VOC")
    sub = p.add_subparsers(dest="cmd", required=True)
    c = sub.add_parser("image")
    c.add_argument("labelme")
    c.add_argument("--root", required=True)
    c.add_argument("--image-id", required=True)
    c.add_argument("--crop", help="the tract crop: the image when the Labelme file holds none")
    c.add_argument("--image-format", choices=IMAGE_FORMATS, required=True, help="config voc.image_format")
    c.add_argument("--participant")
    c.add_argument("--biopsy")
    s = sub.add_parser("list", help="an ImageSets/Segmentation list from the split's label files")
    s.add_argument("labels", nargs="*", help="SegmentationClass PNGs of the split's images")
    s.add_argument("--state", nargs="*", default=[], help="review state JSONs (state/<p>/<b>.json), same order")
    s.add_argument("--out", required=True)
    n = sub.add_parser("names", help="class_names.txt")
    n.add_argument("--out", required=True)
    return p


def main(argv: list[str] | None = None) -> None:
    a = parser().parse_args(argv)
    if a.cmd == "image":

        def go() -> None:
            doc = read_json(
                a.labelme, "the Labelme file", "re-save it in Labelme, or delete it to use the automatic one"
            )
            label = convert(
                doc,
                a.image_id,
                Path(a.root),
                crop=Path(a.crop) if a.crop else None,
                base=Path(a.labelme).parent,
                image_format=a.image_format,
            )
            known = label != VOID
            print(
                f"VOC {a.image_id}: {known.mean():.0%} labelled, cancer "
                f"{(label[known] == 1).mean() if known.any() else 0:.0%} of labelled"
            )

        run_cli(go, a.participant, a.biopsy, a.labelme)
    elif a.cmd == "list":
        run_cli(lambda: write_list(a.labels, a.state, Path(a.out)))
    else:
        Path(a.out).write_text("\n".join(CLASS_NAMES) + "\n")


if __name__ == "__main__":
    main()
