"""The drug library: ``library.toml`` next to this file (data, not code; a source for every value)."""

from __future__ import annotations

import copy
import functools
import tomllib
from pathlib import Path

__all__ = ["LIBRARY_PATH", "class_defaults", "library_entry", "library_names"]

LIBRARY_PATH = Path(__file__).with_name("library.toml")


@functools.lru_cache(maxsize=1)
def _library() -> dict:
    with LIBRARY_PATH.open("rb") as f:
        return tomllib.load(f)


def library_names() -> list[str]:
    """Names of the drugs in the library."""
    return sorted(k for k in _library() if k != "defaults")


def library_entry(name: str) -> dict:
    """A copy of the library table of drug ``name``."""
    return copy.deepcopy(_library()[name])


def class_defaults(kind: str) -> dict:
    """Tissue-transport defaults of a drug class (``antibody`` or ``small_molecule``), without their sources."""
    entry = copy.deepcopy(_library()["defaults"][kind])
    entry.pop("sources", None)
    return entry
