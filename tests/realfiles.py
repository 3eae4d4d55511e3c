"""Real public test files from other projects' source releases, fetched once and cached outside the repo.

Each archive is pinned by version and SHA-256; only the members the tests use are
extracted, into ``$TRACTMAP_TESTDATA`` (default ``~/.cache/tractmap-testdata``).
"""

from __future__ import annotations

import hashlib
import os
import subprocess
import sys
import tarfile
import tempfile
import urllib.request
from pathlib import Path

CACHE = Path(os.environ.get("TRACTMAP_TESTDATA", Path.home() / ".cache" / "tractmap-testdata"))
FILES = "https://files.pythonhosted.org/packages/"
SDISTS = {
    "openslide-python": (
        "4d/b3/83f1a3d593f3e2a0c569ec284881eafed3424819342ea41b599c2433adbf/openslide_python-1.4.7.tar.gz",
        "730fed798de683b00c8ef4d956f3d429cc02f2c449eb0d58944e1769ba7983cc",
        "tests/fixtures/",
    ),
    "imagecodecs": (
        "28/7d/1658ab284e024562f1fd3a684dded89b97125789743e0d1f57a494b64290/imagecodecs-2026.10.10.tar.gz",
        "cde6914505668196b15e0f99dbc236b779e3b61217f04d2e498cbae790965f9f",
        "tests/data/tiff/rgb",
    ),
    "labelme": (
        "b6/59/5c2bd58f47e4a3eb51cf89fdc964af504303f5ac532362afb89f239a7a9d/labelme-7.9.1.tar.gz",
        "d8cc51cde4dc8160284ed7f65ea417c9887ac7b0c4bf49ee1d7de974d0068a62",
        "examples/",
    ),
}


def _download(project: str, rel: str) -> bytes:
    """The sdist from PyPI's file host, else through pip (and whatever index pip is configured with)."""
    try:
        with urllib.request.urlopen(FILES + rel, timeout=120) as r:
            return r.read()
    except OSError:
        name = Path(rel).name
        version = name[: -len(".tar.gz")].rsplit("-", 1)[1]
        with tempfile.TemporaryDirectory() as d:
            subprocess.run(
                [
                    sys.executable,
                    "-m",
                    "pip",
                    "download",
                    "-q",
                    "--no-deps",
                    "--no-binary=:all:",
                    "--no-build-isolation",
                    "-d",
                    d,
                    f"{project}=={version}",
                ],
                check=True,
            )
            return next(Path(d).glob("*.tar.gz")).read_bytes()


def fetch(project: str) -> Path:
    """Folder holding the extracted test members of ``project``'s pinned sdist (downloaded on first use)."""
    rel, sha, prefix = SDISTS[project]
    out = CACHE / project
    done = out / ".complete"
    if done.exists():
        return out
    out.mkdir(parents=True, exist_ok=True)
    archive = out / Path(rel).name
    if not archive.exists() or hashlib.sha256(archive.read_bytes()).hexdigest() != sha:
        archive.write_bytes(_download(project, rel))
        if hashlib.sha256(archive.read_bytes()).hexdigest() != sha:
            raise RuntimeError(f"{archive.name}: checksum mismatch")
    with tarfile.open(archive) as tar:
        members = [m for m in tar.getmembers() if m.isfile() and m.name.split("/", 1)[-1].startswith(prefix)]
        for m in members:
            m.name = m.name.split("/", 1)[-1]
        tar.extractall(out, members=members, filter="data")
    archive.unlink()
    done.touch()
    return out
