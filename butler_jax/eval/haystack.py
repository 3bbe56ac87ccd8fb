"""Haystacks for RULER: the repeated noise filler and essay text, plus needle insertion."""

from __future__ import annotations

import json
import random
import re
from functools import lru_cache
from pathlib import Path
from typing import Sequence

from butler_jax.text_source import strip_gutenberg

NOISE = "The grass is green. The sky is blue. The sun is yellow. Here we go. There and back again."
NOISE_SENTENCES: tuple[str, ...] = tuple(s + "." for s in NOISE[:-1].split(". "))
# 40 evenly spaced needle depths from 0% to 100%, rounded to whole percents
DEPTHS: tuple[int, ...] = tuple(round(100 * i / 39) for i in range(40))

_SENTENCE_END = re.compile(r"(?:(?<=[.!?])|(?<=[.!?][\"')\]]))\s+(?=[\"'(\[]?[A-Z0-9])")


def noise_lines(num_sentences: int) -> list[str]:
    """`num_sentences` filler sentences, five to a line (the last line may be shorter)."""
    cycle = [NOISE_SENTENCES[i % len(NOISE_SENTENCES)] for i in range(num_sentences)]
    step = len(NOISE_SENTENCES)
    return [" ".join(cycle[i:i + step]) for i in range(0, num_sentences, step)]


_ABBREVIATIONS = frozenset("mr mrs ms dr st jr sr prof gen col capt lt sgt rev hon vs etc no vol fig ed eds "
                           "inc ltd co corp dept univ jan feb mar apr jun jul aug sep sept oct nov dec e.g i.e".split())


def _ends_in_abbreviation(piece: str) -> bool:
    """True when `piece` ends with an initial ("M.") or a common abbreviation ("Mr.", "e.g.")."""
    last = piece.rsplit(None, 1)[-1] if piece.strip() else ""
    if not last.endswith("."):
        return False
    word = last[:-1].lstrip("\"'([")
    return (len(word) == 1 and word.isalpha()) or word.lower() in _ABBREVIATIONS


def split_sentences(text: str) -> list[str]:
    """Split at . ! ? (optionally closing a quote/bracket) followed by space and a capital or digit,
    except after an initial or a common abbreviation ("James M. Goodhue", "Mr. Smith").

    Our own rule instead of NLTK punkt (whose data is not shipped): a deviation from RULER that
    only moves where a needle may land; every RULER output names it (SENTENCE_SPLITTER_DEVIATION).
    """
    out: list[str] = []
    for piece in _SENTENCE_END.split(text):
        if not piece:
            continue
        if out and _ends_in_abbreviation(out[-1]):
            out[-1] = f"{out[-1]} {piece}"
        else:
            out.append(piece)
    return out


SENTENCE_SPLITTER_DEVIATION = "essay sentences split by butler_jax's own rule, not NLTK punkt"


RULER_ESSAY_FILE = "PaulGrahamEssays.json"


def essay_deviations(path: str | Path) -> tuple[str, ...]:
    """How an essay haystack from `path` differs from RULER's (named in every output)."""
    path = Path(path).expanduser()
    found = path / RULER_ESSAY_FILE if path.is_dir() else path
    own = () if found.name == RULER_ESSAY_FILE and found.is_file() else (
        f"FALLBACK essay haystack {path}, not RULER's {RULER_ESSAY_FILE}",)
    return own + (SENTENCE_SPLITTER_DEVIATION,)


def _read_essay_file(path: Path) -> str:
    if path.suffix == ".json":
        data = json.loads(path.read_text(encoding="utf-8"))
        if not isinstance(data, dict) or not isinstance(data.get("text"), str):
            raise ValueError(f"essay file {path} must be a JSON object with a string field 'text'")
        return data["text"]
    return strip_gutenberg(path.read_text(encoding="utf-8", errors="replace"))


@lru_cache(maxsize=4)
def load_essay_words(path: str | Path) -> tuple[str, ...]:
    """All words of an essay source, whitespace-collapsed.

    `path`: a .txt file, a JSON file `{"text": ...}` (RULER's PaulGrahamEssays.json), a folder holding
    PaulGrahamEssays.json (that file is read), or a folder (every .txt under it, sorted by path). Project Gutenberg headers and footers are removed from .txt files.
    """
    path = Path(path).expanduser()
    if path.is_dir() and (path / RULER_ESSAY_FILE).is_file():  # e.g. shared/data/paul-graham-essays
        path = path / RULER_ESSAY_FILE
    if path.is_dir():
        files = sorted(path.rglob("*.txt"))
        if not files:
            raise FileNotFoundError(f"essay folder {path} holds no .txt files; pass a folder of .txt essays "
                                    "(e.g. the Paul Graham essays or PG-19 books) or a JSON file {\"text\": ...}")
    elif path.is_file():
        files = [path]
    else:
        raise FileNotFoundError(f"essay path {path} does not exist; pass a folder of .txt essays or a JSON "
                                "file {\"text\": ...}")
    words = tuple(w for f in files for w in _read_essay_file(f).split())
    if not words:
        raise ValueError(f"essay source {path} holds no text")
    return words


def essay_sentences(words: Sequence[str], num_words: int) -> list[str]:
    """The first `num_words` words (the text repeats if it is shorter), split into sentences."""
    reps = -(-num_words // len(words))
    taken = (list(words) * reps)[:num_words] if reps > 1 else words[:num_words]
    return split_sentences(" ".join(taken))


def insert_at_random(items: list[str], inserts: Sequence[str], rng: random.Random) -> list[str]:
    """`items` with `inserts` placed, in order, at distinct random positions."""
    slots = sorted(rng.sample(range(len(items) + len(inserts)), len(inserts)))
    out, it, ins = [], iter(items), iter(inserts)
    slot_set = set(slots)
    for pos in range(len(items) + len(inserts)):
        out.append(next(ins) if pos in slot_set else next(it))
    return out


def insert_at_depths(sentences: list[str], inserts: Sequence[str], rng: random.Random) -> list[str]:
    """`sentences` with `inserts` placed, in order, at depths drawn without replacement from DEPTHS."""
    if len(inserts) > len(DEPTHS):
        raise ValueError(f"at most {len(DEPTHS)} needles fit the depth grid, got {len(inserts)}")
    depths = sorted(rng.sample(DEPTHS, len(inserts)))
    out = list(sentences)
    for offset, (depth, needle) in enumerate(zip(depths, inserts)):
        out.insert(int(len(sentences) * (depth / 100)) + offset, needle)  # floor, as RULER
    return out
