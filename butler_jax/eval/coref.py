"""The synthetic co-reference retrieval task (TokenButler paper §14), with our own text and names.

A sample is: an intro describing a fantastical place ending "The place is:", the place's invented
NAME, filler paragraphs (philosophy and food), an arithmetic statement with its worked answer,
and a question paraphrasing the intro, followed by the NAME again. The NAME is several sub-word
tokens; retrieving it at the end needs the tokens of its first occurrence.

Teacher-forced use: run `sample.token_ids`, take argmax predictions at
`name_prediction_rows(sample.final_name_span)` and call `location_metrics`; `head_hit_rate` takes
the keep mask at the row of the final NAME's first token. Free generation: decode greedily from
`sample.prompt_ids` (the text before the final NAME) and score with `exact_match`.
"""

from __future__ import annotations

import random
import string
from dataclasses import dataclass
from typing import Protocol, Sequence

import numpy as np
from tqdm import tqdm

from butler_jax.eval.ruler_fit import fit_size

MAX_NEW_TOKENS = 12  # free generation: enough for any name plus a period
DEFAULT_FILLER_SENTENCES = 10  # one philosophy and one food paragraph: about 250-350 tokens in all

ONSETS = ("b", "br", "d", "dr", "f", "g", "gl", "gr", "k", "kr", "l", "m", "n", "p", "ph", "qu", "r", "s", "sk",
          "st", "t", "th", "tr", "v", "vr", "z", "zh", "x")
NUCLEI = ("a", "e", "i", "o", "u", "ae", "ai", "ei", "ou", "y", "oa", "ui")
CODAS = ("", "", "", "n", "r", "l", "s", "th", "x", "m", "k", "sh")

ADJECTIVES = ("mist-wrapped", "sunken", "floating", "glass-roofed", "lantern-lit", "wind-carved", "copper-domed",
              "moss-covered", "ever-shifting", "star-watched", "salt-crusted", "whispering", "amber-walled",
              "cloud-bound")
PLACES = ("city", "village", "harbour", "citadel", "valley", "archipelago", "monastery", "market town",
          "fortress", "garden", "observatory", "canyon settlement")
LOCATIONS = ("beyond the northern ice fields", "at the bottom of a dried-up sea", "on the back of a sleeping tortoise",
             "between two waterfalls that flow upward", "inside the crater of a cold volcano",
             "at the edge of a desert of blue sand", "above a forest of crystal trees",
             "on an island that drifts with the tides", "under a sky with two moons", "behind a wall of singing reeds")
WONDERS = ("the streets rearrange themselves every night", "the rivers run with warm honey",
           "the clocks tick backwards at dusk", "the houses are carved from whale bone",
           "every window glows in a different colour", "the bells ring without anyone touching them",
           "the people trade in forgotten dreams", "the rain falls upward on holidays",
           "the shadows keep walking after sunset", "the lamps are fed with captured starlight")
TELLERS = ("Travellers", "Old sailors", "The mapmakers of the south", "Wandering merchants", "Desert nomads",
           "The poets of the lowlands", "Retired soldiers", "Pilgrims")

INTROS = (
    "Let me tell you about a {adj} {place} {loc}, where {wonder}. {teller} speak of it in hushed voices, and few "
    "have seen it with their own eyes. The place is:",
    "Far away, {loc}, lies a {adj} {place} in which {wonder}. {teller} still argue about whether it is real. "
    "The place is:",
    "There is a {adj} {place} {loc}. It is said that there {wonder}. {teller} who reached it never tired of "
    "describing it. The place is:",
)
QUESTIONS = (
    "Think back to the {adj} {place} {loc}, the one where {wonder}. What was it called? Its name is:",
    "Which {place} lies {loc} and is known because {wonder}? The {place} is called:",
    "Recall the {place} that {teller_lower} describe, {loc}, where {wonder}. That place is named:",
)

THINKERS = ("An old philosopher", "A wandering sceptic", "A teacher of logic", "A retired judge", "A monk of the hills",
            "A young student", "A stoic gardener", "A court astronomer")
CLAIMS = ("a life without questions is hardly worth living", "every certainty hides a small doubt",
          "happiness depends more on habits than on luck", "the mind is shaped by what it attends to",
          "justice begins with listening", "freedom is the ability to choose one's burdens",
          "we understand the present only by remembering the past", "courage is knowledge of what to fear",
          "a good argument changes the one who makes it", "time is measured by change, not by clocks")
REACTIONS = ("Others disagreed, pointing to the messiness of ordinary life.",
             "The idea spread slowly, one conversation at a time.",
             "Many found the thought comforting, a few found it troubling.",
             "Critics replied that such claims are easier to state than to live by.",
             "Students copied the saying into their notebooks for years.",
             "The debate that followed lasted well into the night.")
DISHES = ("a thick lentil soup", "fresh bread with olive oil", "a stew of beans and smoked paprika",
          "grilled fish with lemon", "rice cooked slowly with saffron", "a salad of tomatoes and basil",
          "dumplings filled with mushrooms", "roasted vegetables with garlic", "a pie of apples and cinnamon",
          "flatbread baked on hot stones")
COOKS = ("A careful cook", "A grandmother", "The owner of a small inn", "A street vendor", "A patient baker",
         "A farmer's family")
FOOD_NOTES = ("The secret is to let it rest before serving.", "Good salt makes more difference than people expect.",
              "It tastes even better on the second day.", "Fresh herbs are added only at the very end.",
              "Most people eat it with a cup of strong tea.", "The recipe changes a little in every village.")
ARITHMETIC = (
    ("A merchant buys {a} baskets of figs and then {b} more. He now has {a} + {b} = {r} baskets.", "+"),
    ("A library holds {a} books and lends out {b} of them. It keeps {a} - {b} = {r} books on its shelves.", "-"),
    ("A garden has {a} rows with {b} plants in each row, which makes {a} x {b} = {r} plants.", "x"),
)


def place_name(rng: random.Random) -> str:
    """An invented name of 2-4 syllables from the grammar onset + nucleus + coda, capitalised."""
    return "".join(rng.choice(ONSETS) + rng.choice(NUCLEI) + rng.choice(CODAS)
                   for _ in range(rng.randint(2, 4))).capitalize()


def scene(rng: random.Random) -> dict[str, str]:
    """The slots describing one fantastical place (shared by the intro and the final question)."""
    teller = rng.choice(TELLERS)
    return dict(adj=rng.choice(ADJECTIVES), place=rng.choice(PLACES), loc=rng.choice(LOCATIONS),
                wonder=rng.choice(WONDERS), teller=teller, teller_lower=teller.lower())


def filler_sentence(rng: random.Random, topic: str) -> str:
    """One philosophy or food sentence, built combinatorially."""
    if topic == "philosophy":
        return rng.choice((f"{rng.choice(THINKERS)} once argued that {rng.choice(CLAIMS)}.",
                           f"It is often said that {rng.choice(CLAIMS)}.",
                           rng.choice(REACTIONS)))
    return rng.choice((f"{rng.choice(COOKS)} prepares {rng.choice(DISHES)} every week.",
                       f"In cold months nothing beats {rng.choice(DISHES)}.",
                       rng.choice(FOOD_NOTES)))


def filler_paragraphs(rng: random.Random, num_sentences: int, per_paragraph: int = 5) -> list[str]:
    """`num_sentences` filler sentences in paragraphs that alternate philosophy and food."""
    topics = ("philosophy", "food")
    sentences = [filler_sentence(rng, topics[(i // per_paragraph) % 2]) for i in range(num_sentences)]
    return [" ".join(sentences[i:i + per_paragraph]) for i in range(0, num_sentences, per_paragraph)]


def arithmetic(rng: random.Random) -> str:
    """An arithmetic statement with its worked answer."""
    template, op = rng.choice(ARITHMETIC)
    a, b = rng.randint(12, 99), rng.randint(2, 11)
    r = a + b if op == "+" else a - b if op == "-" else a * b
    return template.format(a=a, b=b, r=r)


class Tokenizer(Protocol):
    def encode(self, text: str) -> list[int]: ...


@dataclass(frozen=True)
class CorefSample:
    """One co-reference sample. Spans are token index ranges [start, end) into `token_ids`."""

    index: int
    text: str
    token_ids: np.ndarray  # int32 [T]: the whole text, final NAME included
    name: str
    first_name_span: tuple[int, int]
    final_name_span: tuple[int, int]

    @property
    def prompt(self) -> str:
        """Free generation: the text up to the final NAME (it ends with ':')."""
        return self.text[:len(self.text) - len(self.name) - 1]

    @property
    def prompt_ids(self) -> np.ndarray:
        return self.token_ids[:self.final_name_span[0]]


def _compose(rng: random.Random, name: str, filler_sentences: int) -> tuple[str, int, int]:
    """(text, character offset of the first NAME, of the final NAME)."""
    slots = scene(rng)
    intro = rng.choice(INTROS).format(**slots) + " "
    body = ".\n\n" + "\n\n".join(filler_paragraphs(rng, filler_sentences) + [arithmetic(rng)])
    question = "\n\n" + rng.choice(QUESTIONS).format(**slots) + " "
    first = len(intro)
    final = first + len(name) + len(body) + len(question)
    return intro + name + body + question + name, first, final


def _token_span(tokenizer: Tokenizer, text: str, ids: list[int], start: int, end: int) -> tuple[int, int]:
    """The token range of characters [start, end), checked to be a clean split of `ids`."""
    a, b = tokenizer.encode(text[:start].rstrip(" ")), tokenizer.encode(text[:end])
    if ids[:len(a)] != a or ids[:len(b)] != b or len(b) <= len(a):
        raise ValueError("the tokenizer merges the place name with its neighbours; the co-reference task needs "
                         "a tokenizer whose tokens split at spaces and punctuation (BPE with a space prefix)")
    return len(a), len(b)


def _draw_name(rng: random.Random, tokenizer: Tokenizer, min_tokens: int) -> str:
    while True:
        name = place_name(rng)
        if len(tokenizer.encode(" " + name)) - len(tokenizer.encode("")) >= min_tokens:
            return name


def generate_coref(tokenizer: Tokenizer, num_samples: int, *, seed: int = 42, target_tokens: int | None = None,
                   min_name_tokens: int = 2, progress: bool = True) -> list[CorefSample]:
    """`num_samples` seeded samples; with `target_tokens`, filler is added until each sample is within 2%
    of (and not over) that many tokens, which pushes the first NAME further from the question."""
    samples = []
    for index in tqdm(range(num_samples), desc="coref", disable=not progress, leave=False):
        key = f"{seed}/coref/{index}"
        name = _draw_name(random.Random(key + "/name"), tokenizer, min_name_tokens)

        def compose(n: int) -> tuple[str, int, int]:
            return _compose(random.Random(key), name, n)

        filler = DEFAULT_FILLER_SENTENCES
        if target_tokens is not None:
            filler = fit_size(lambda n: len(tokenizer.encode(compose(n)[0])), target_tokens, 1, None,
                              name=f"coref sample {index}")
        text, first, final = compose(filler)
        ids = tokenizer.encode(text)
        first_span = _token_span(tokenizer, text, ids, first, first + len(name))
        final_span = _token_span(tokenizer, text, ids, final, final + len(name))
        if final_span[1] != len(ids):
            raise ValueError("the tokenizer appends tokens after the text (an EOS?); pass one that does not")
        samples.append(CorefSample(index, text, np.asarray(ids, np.int32), name, first_span, final_span))
    return samples


def exact_match(prediction: str, name: str) -> float:
    """1.0 when the first word of the generated text, without surrounding punctuation, is the name."""
    words = prediction.split()
    return float(bool(words) and words[0].strip(string.punctuation) == name)


def name_prediction_rows(final_name_span: tuple[int, int]) -> slice:
    """Logit rows whose argmax predicts the final NAME tokens (row t predicts token t + 1)."""
    start, end = final_name_span
    return slice(start - 1, end - 1)


def location_metrics(pred_token_ids_at_name_rows: Sequence[Sequence[int]] | Sequence[int],
                     gold_name_ids: Sequence[Sequence[int]] | Sequence[int]) -> tuple[float, float]:
    """(location inaccuracy in % of all final-NAME tokens predicted wrong, location miss: share of samples
    with at least one wrong NAME token). Takes one sample's ids or a list of samples' ids (ragged)."""
    preds, golds = pred_token_ids_at_name_rows, gold_name_ids
    if len(preds) and np.ndim(preds[0]) == 0:
        preds, golds = [preds], [golds]
    if len(preds) != len(golds) or not len(preds):
        raise ValueError(f"need the same, non-zero number of predicted and gold samples, got {len(preds)} and "
                         f"{len(golds)}")
    wrong = []
    for p, g in zip(preds, golds):
        p, g = np.asarray(p), np.asarray(g)
        if p.shape != g.shape or p.ndim != 1:
            raise ValueError(f"predicted ids {p.shape} and gold ids {g.shape} must be equal-length 1-D arrays")
        wrong.append(p != g)
    inaccuracy = 100.0 * float(np.concatenate(wrong).mean())
    miss = float(np.mean([w.any() for w in wrong]))
    return inaccuracy, miss


def head_hit_rate(keep_mask_row: np.ndarray, first_name_span: tuple[int, int]) -> float:
    """Share of the first NAME's tokens kept, averaged over the leading axes (e.g. layers, heads).

    `keep_mask_row`: bool [..., T], which keys the query row of the final NAME's first token attends to.
    """
    mask = np.asarray(keep_mask_row, bool)
    start, end = first_name_span
    if not 0 <= start < end <= mask.shape[-1]:
        raise ValueError(f"first_name_span {first_name_span} is not inside a mask row of length {mask.shape[-1]}")
    return float(mask[..., start:end].mean())
