"""RULER's 13 task configurations, prompt templates and answer prefixes."""

from __future__ import annotations

from dataclasses import dataclass

NIAH_TEMPLATE = ("Some special magic {type} are hidden within the following text. Make sure to memorize it. "
                 "I will quiz you about the {type} afterwards.\n{context}\n"
                 "What are all the special magic {type} for {query} mentioned in the provided text?")
NIAH_PREFIX = " The special magic {type} for {query} mentioned in the provided text are"
NIAH_TEMPLATE_ONE = ("A special magic {type} is hidden within the following text. Make sure to memorize it. "
                     "I will quiz you about the {type} afterwards.\n{context}\n"
                     "What is the special magic {type} for {query} mentioned in the provided text?")
NIAH_PREFIX_ONE = " The special magic {type} for {query} mentioned in the provided text is"
# the needle always names the plural type ("numbers"); only the question is made singular (as RULER)
NEEDLE = "One of the special magic {type} for {key} is: {value}."

VT_TEMPLATE = ("Memorize and track the chain(s) of variable assignment hidden in the following text.\n\n"
               "{context}\nQuestion: Find all variables that are assigned the value {query} in the text above.")
VT_PREFIX = (" Answer: According to the chain(s) of variable assignment in the text above, {num_v} variables "
             "are assigned the value {query}, they are: ")

CWE_TEMPLATE = ("Below is a numbered list of words. In these words, some appear more often than others. "
                "Memorize the ones that appear most often.\n{context}\n"
                "Question: What are the 10 most common words in the above list?")
CWE_PREFIX = " Answer: The top 10 words that appear most often in the list are:"

FWE_TEMPLATE = ("Read the following coded text and track the frequency of each coded word. Find the three most "
                "frequently appeared coded words. {context}\nQuestion: Do not provide any explanation. Please "
                "ignore the dots '....'. What are the three most frequently appeared words in the above coded text?")
FWE_PREFIX = " Answer: According to the coded text above, the three most frequently appeared words are:"

QA_TEMPLATE = ("Answer the question based on the given documents. Only give me the answer and do not output any "
               "other words.\n\nThe following are given documents.\n\n{context}\n\nAnswer the question based on "
               "the given documents. Only give me the answer and do not output any other words.\n\n"
               "Question: {query}")
QA_PREFIX = " Answer:"


@dataclass(frozen=True)
class TaskConfig:
    """One RULER task: generator kind, haystack, needle shape, output cap and metric."""

    name: str
    kind: str  # niah | vt | cwe | fwe | qa
    max_new_tokens: int
    metric: str  # string_match_all | string_match_part
    haystack: str | None = None  # noise | essay | needle (niah, vt)
    key_type: str = "words"
    value_type: str = "numbers"
    num_keys: int = 1
    num_values: int = 1
    num_queries: int = 1
    num_hops: int = 4  # vt
    dataset: str | None = None  # squad | hotpotqa (qa)


def _niah(name: str, haystack: str, key: str = "words", value: str = "numbers", k: int = 1, v: int = 1,
          q: int = 1) -> TaskConfig:
    return TaskConfig(name, "niah", 128, "string_match_all", haystack, key, value, max(k, q), v, q)


TASKS: dict[str, TaskConfig] = {t.name: t for t in [
    _niah("niah_single_1", "noise"),
    _niah("niah_single_2", "essay"),
    _niah("niah_single_3", "essay", value="uuids"),
    _niah("niah_multikey_1", "essay", k=4),
    _niah("niah_multikey_2", "needle"),
    _niah("niah_multikey_3", "needle", key="uuids", value="uuids"),
    _niah("niah_multivalue", "essay", v=4),
    _niah("niah_multiquery", "essay", q=4),
    TaskConfig("vt", "vt", 30, "string_match_all", haystack="noise"),
    TaskConfig("cwe", "cwe", 120, "string_match_all"),
    TaskConfig("fwe", "fwe", 50, "string_match_all"),
    TaskConfig("qa_1", "qa", 32, "string_match_part", dataset="squad"),
    TaskConfig("qa_2", "qa", 32, "string_match_part", dataset="hotpotqa"),
]}
ALL_TASKS: tuple[str, ...] = tuple(TASKS)
# NVIDIA RULER's task categories: retrieval (all niah_*), multi-hop tracing, aggregation, question answering
_FAMILY_OF_KIND = {"niah": "niah", "vt": "multi-hop tracing", "cwe": "aggregation", "fwe": "aggregation", "qa": "qa"}
FAMILIES: dict[str, tuple[str, ...]] = {
    family: tuple(t.name for t in TASKS.values() if _FAMILY_OF_KIND[t.kind] == family)
    for family in dict.fromkeys(_FAMILY_OF_KIND.values())}


def task_config(name: str) -> TaskConfig:
    if name not in TASKS:
        raise KeyError(f"unknown RULER task {name!r}; choose from {', '.join(TASKS)}")
    return TASKS[name]


@dataclass(frozen=True)
class Prompt:
    """A built task before the chat template: the user text, the answer prefix and the gold answers.

    `shots`: few-shot examples as (user text, completion), each rendered as a full templated turn
    (chat template, answer prefix, " " + completion, newline) before the task (RULER's cwe)."""

    body: str
    answer_prefix: str
    answers: list[str]
    shots: tuple[tuple[str, str], ...] = ()

    def render(self, wrap) -> str:
        """The prompt text: every shot turn, then `wrap(body)` and the answer prefix."""
        turns = "".join(f"{wrap(b)}{self.answer_prefix} {c}\n" for b, c in self.shots)
        return turns + wrap(self.body) + self.answer_prefix


def join_list(items: list[str]) -> str:
    """"a", "a and b"... written as RULER does: "a, b, and c"."""
    return items[0] if len(items) == 1 else ", ".join(items[:-1]) + ", and " + items[-1]
