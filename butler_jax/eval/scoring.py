"""RULER's scoring: `string_match_all` (niah, vt, cwe, fwe) and `string_match_part` (qa)."""

from __future__ import annotations

import re
from typing import Callable, Sequence

_CONTROL = re.compile(r"[\x00-\x1f]")

Metric = Callable[[str, Sequence[str]], float]


def postprocess(prediction: str) -> str:
    """Strip the prediction and turn control characters into newlines, as RULER does."""
    return _CONTROL.sub("\n", prediction.strip())


def string_match_all(prediction: str, answers: Sequence[str]) -> float:
    """Fraction of the gold strings found (case-insensitive substring) in the prediction."""
    if not answers:
        raise ValueError("string_match_all needs at least one gold answer, got none")
    text = postprocess(prediction).lower()
    return sum(a.lower() in text for a in answers) / len(answers)


def string_match_part(prediction: str, answers: Sequence[str]) -> float:
    """1.0 when any gold string occurs (case-insensitive substring) in the prediction, else 0.0."""
    if not answers:
        raise ValueError("string_match_part needs at least one gold answer, got none")
    text = postprocess(prediction).lower()
    return float(any(a.lower() in text for a in answers))


METRICS: dict[str, Metric] = {"string_match_all": string_match_all, "string_match_part": string_match_part}
