"""Reading a row's reference answer: dotted keys into nested fields, and MATH's last \\boxed{}."""

from __future__ import annotations

from typing import Any, Mapping, Optional

MISSING = object()


def dig(row: Mapping[str, Any], dotted: str) -> Any:
    """``row['a']['b']`` for ``'a.b'``; ``MISSING`` where a level is absent or not a mapping.

    A key that itself contains dots is found first as a whole (flat columns win)."""
    if dotted in row:
        return row[dotted]
    value: Any = row
    for part in dotted.split("."):
        if not isinstance(value, Mapping) or part not in value:
            return MISSING
        value = value[part]
    return value


def last_boxed(text: str) -> Optional[str]:
    """Content of the last ``\\boxed{...}`` (or ``\\fbox{...}``) in ``text``, braces balanced.

    None when there is none, or its braces never close. ``\\boxed{\\frac{1}{2}}`` gives
    ``\\frac{1}{2}``.
    """
    starts = [i for marker in ("\\boxed", "\\fbox") for i in _find_all(text, marker)]
    for start in sorted(starts, reverse=True):
        open_at = start + (len("\\boxed") if text.startswith("\\boxed", start) else len("\\fbox"))
        while open_at < len(text) and text[open_at] == " ":
            open_at += 1
        if open_at >= len(text) or text[open_at] != "{":
            continue
        depth = 0
        for i in range(open_at, len(text)):
            if text[i] == "{" and text[i - 1] != "\\":
                depth += 1
            elif text[i] == "}" and text[i - 1] != "\\":
                depth -= 1
                if depth == 0:
                    return text[open_at + 1:i]
        return None  # the last box never closes: no answer, rather than a wrong one
    return None


def _find_all(text: str, marker: str):
    at = text.find(marker)
    while at != -1:
        yield at
        at = text.find(marker, at + 1)
