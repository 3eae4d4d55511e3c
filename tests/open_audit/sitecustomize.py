"""Records what every Python process of a workflow run reads and writes inside the run's folder.

Put this folder first on PYTHONPATH and set ``TRACTMAP_OPEN_AUDIT`` to a folder outside the run; set
``TRACTMAP_OPEN_ROOT`` to the run's folder.  Each process appends one JSON line per file it opens, lists or
renames under that root, with its command line (forked data-loader workers share their parent's), to
``<audit>/<pid>.jsonl``.  Files that C libraries open themselves (e.g. OpenSlide) are not seen.
"""

import json
import os
import sys

_AUDIT = os.environ.get("TRACTMAP_OPEN_AUDIT")
_ROOT = os.path.realpath(os.environ.get("TRACTMAP_OPEN_ROOT", "/nonexistent")) + os.sep
_WRITE_FLAGS = os.O_WRONLY | os.O_RDWR | os.O_CREAT | os.O_APPEND | os.O_TRUNC
_busy = False


def _inside(path) -> str:
    """The real path if it lies under the run's folder, else ''."""
    if isinstance(path, bytes):
        path = os.fsdecode(path)
    if not isinstance(path, (str, os.PathLike)):
        return ""  # a file descriptor
    real = os.path.realpath(path)
    return real if real.startswith(_ROOT) else ""


def _kind(event: str, args: tuple) -> str:
    if event == "open":
        mode, flags = args[1], args[2]
        if isinstance(mode, str):
            return "write" if any(c in mode for c in "wax+") else "read"
        return "write" if flags & _WRITE_FLAGS else "read"
    return {"os.listdir": "list", "os.scandir": "list", "glob.glob": "list"}.get(event, "write")


def _hook(event: str, args: tuple) -> None:
    global _busy
    if _busy or event not in ("open", "os.listdir", "os.scandir", "glob.glob", "os.rename", "os.replace"):
        return
    _busy = True
    try:
        paths = [args[1]] if event in ("os.rename", "os.replace") else [args[0]]
        for real in filter(None, map(_inside, paths)):
            line = {"argv": sys.argv, "kind": _kind(event, args), "path": real[len(_ROOT) :]}
            with open(os.path.join(_AUDIT, f"{os.getpid()}.jsonl"), "a") as f:
                f.write(json.dumps(line) + "\n")
    except Exception:  # a recording problem must never change what the job does
        pass
    finally:
        _busy = False


if _AUDIT:
    sys.addaudithook(_hook)
