"""Provenance: the versions of Python and of the packages a result was made with."""

from __future__ import annotations

import importlib.metadata
import platform


def versions(packages: tuple[str, ...]) -> dict[str, str]:
    """Python's and each installed package's version ("not installed" otherwise)."""
    out = {"python": platform.python_version()}
    for p in packages:
        try:
            out[p] = importlib.metadata.version(p)
        except importlib.metadata.PackageNotFoundError:
            out[p] = "not installed"
    return out
