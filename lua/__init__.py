"""The Redis scripts, kept as .lua files and loaded by SHA at start."""

from __future__ import annotations

from importlib import resources


def source(name: str) -> str:
    return resources.files(__name__).joinpath(f"{name}.lua").read_text(encoding="utf-8")
