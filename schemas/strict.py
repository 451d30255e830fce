"""The base of every model a person writes, and the rule for names that become folders."""

from __future__ import annotations

import re
from typing import TypeVar

from pydantic import BaseModel, ConfigDict

SAFE_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,99}$")


class Strict(BaseModel):
    """Base of every model a person writes: frozen, unknown keys forbidden."""

    model_config = ConfigDict(extra="forbid", frozen=True)


def check_safe_name(value: str, what: str) -> str:
    if not SAFE_NAME.match(value) or value in (".", ".."):
        raise ValueError(
            f"{what} {value!r} is not a safe folder name: use letters, digits, '.', '_' or '-' "
            "(at most 100, starting with a letter or digit)"
        )
    return value


W = TypeVar("W", int, float)


def check_no_repeats(widths: list[W]) -> list[W]:
    """`widths` unchanged, or a ValueError naming the widths listed twice."""
    dup = sorted({w for w in widths if widths.count(w) > 1})
    if dup:
        raise ValueError(f"widths repeat {dup}: list each width once")
    return widths
