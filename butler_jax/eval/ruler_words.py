"""Random keys and values for RULER needles (wonderwords word lists, 7-digit numbers, UUIDs)."""

from __future__ import annotations

import random
import string
import uuid
from functools import lru_cache
from importlib.resources import files


@lru_cache(maxsize=None)
def wonderwords_list(name: str) -> tuple[str, ...]:
    """Sorted, de-duplicated words of wonderwords' `{name}list.txt` (noun, adjective or verb)."""
    try:
        text = files("wonderwords").joinpath(f"assets/{name}list.txt").read_text(encoding="utf-8")
    except ModuleNotFoundError as exc:
        raise ModuleNotFoundError("RULER needs `wonderwords`: pip install wonderwords==3.0.1") from exc
    return tuple(sorted({line.rstrip() for line in text.splitlines() if line.strip()}))


def common_word_pool() -> tuple[str, ...]:
    """Nouns, adjectives and verbs together, de-duplicated and sorted (the cwe word pool)."""
    return tuple(sorted(set(wonderwords_list("noun")) | set(wonderwords_list("adjective"))
                        | set(wonderwords_list("verb"))))


def random_number(rng: random.Random) -> str:
    """A 7-digit decimal number, uniform over 1,000,000..9,999,999."""
    return str(rng.randint(1_000_000, 9_999_999))


def random_word(rng: random.Random) -> str:
    """An "adjective-noun" key such as "noisy-orchestra"."""
    return f"{rng.choice(wonderwords_list('adjective'))}-{rng.choice(wonderwords_list('noun'))}"


def random_uuid(rng: random.Random) -> str:
    """A version-4 UUID from 128 random bits, in the 8-4-4-4-12 hex form."""
    return str(uuid.UUID(int=rng.getrandbits(128), version=4))


def random_letters(rng: random.Random, n: int, alphabet: str = string.ascii_uppercase) -> str:
    return "".join(rng.choices(alphabet, k=n))


DRAW = {"numbers": random_number, "words": random_word, "uuids": random_uuid}


def distinct(rng: random.Random, kind: str, n: int, exclude: set[str] | frozenset[str] = frozenset()) -> list[str]:
    """`n` distinct random `kind` strings ("numbers", "words" or "uuids") not in `exclude`."""
    out: list[str] = []
    while len(out) < n:
        x = DRAW[kind](rng)
        if x not in exclude and x not in out:
            out.append(x)
    return out
