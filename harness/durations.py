"""Durations as the load tools take them (k6's style: 500ms, 30s, 2m, 1h; a bare number is seconds)."""

from __future__ import annotations

import re

_UNIT_S = {"ms": 0.001, "s": 1.0, "m": 60.0, "h": 3600.0, None: 1.0}


def seconds(duration: str) -> float:
    match = re.fullmatch(r"(\d+(?:\.\d+)?)(ms|s|m|h)?", duration.strip())
    if match is None:
        raise ValueError(f"duration: expected e.g. 500ms, 30s, 2m or 1h, got {duration!r}")
    return float(match[1]) * _UNIT_S[match[2]]
