"""Question answering tasks (qa_1: SQuAD v2 dev, qa_2: HotpotQA distractor dev) over distractor documents."""

from __future__ import annotations

import importlib.util
import json
import random
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator

from butler_jax.eval.ruler_tasks import QA_PREFIX, QA_TEMPLATE, Prompt, TaskConfig

SOURCES = {
    "squad": dict(file="dev-v2.0.json", url="https://rajpurkar.github.io/SQuAD-explorer/dataset/dev-v2.0.json",
                  sha256="80a5225e94905956a6446d296ca1093975c4d3b3260f1d6c8f68bc2ab77182d8",
                  hub=("rajpurkar/squad_v2", None)),
    "hotpotqa": dict(file="hotpot_dev_distractor_v1.json",
                     url="http://curtis.ml.cmu.edu/datasets/hotpot/hotpot_dev_distractor_v1.json",
                     sha256="e3da074df24e8369009918aa5cdbdd254dadcde4c63f7569d36afd6f2268caa8",
                     hub=("hotpotqa/hotpot_qa", "distractor")),
}


class QaDataUnavailable(FileNotFoundError):
    """The SQuAD v2 / HotpotQA file a qa task needs is neither given nor reachable."""


@dataclass(frozen=True)
class QaItem:
    question: str
    answers: list[str]
    gold_docs: list[int]  # documents that must be in the prompt
    near_docs: list[int]  # preferred distractors (SQuAD: other paragraphs of the same article)


@dataclass(frozen=True)
class QaSet:
    docs: list[str]
    items: list[QaItem]


def _squad(articles: list[dict]) -> QaSet:
    docs = sorted({p["context"] for a in articles for p in a["paragraphs"]})
    doc_id = {d: i for i, d in enumerate(docs)}
    items = []
    for article in articles:
        article_docs = [doc_id[p["context"]] for p in article["paragraphs"]]
        for p in article["paragraphs"]:
            for qa in p["qas"]:
                answers = [a["text"] for a in qa["answers"]]
                if qa.get("is_impossible") or not answers:
                    continue
                own = doc_id[p["context"]]
                items.append(QaItem(qa["question"], answers, [own], [d for d in article_docs if d != own]))
    return QaSet(docs, items)


def _hotpot(rows: list[dict]) -> QaSet:
    def doc(title: str, sentences: list[str]) -> str:
        return f"{title}\n{''.join(sentences)}"

    per_row = [[doc(t, s) for t, s in row["context"]] for row in rows]
    docs = sorted({d for ds in per_row for d in ds})
    doc_id = {d: i for i, d in enumerate(docs)}
    items = [QaItem(row["question"], [row["answer"]], [doc_id[d] for d in ds], []) for row, ds in zip(rows, per_row)]
    return QaSet(docs, items)


def _unavailable(task: str, dataset: str, why: str) -> QaDataUnavailable:
    src = SOURCES[dataset]
    return QaDataUnavailable(
        f"{task} needs {dataset} ({src['file']}, sha256 {src['sha256']}) but {why}. Download it from "
        f"{src['url']} and pass qa_sources={{'{task}': '/path/to/{src['file']}'}}, or install `datasets` "
        f"with Hugging Face hub access ({src['hub'][0]}).")


def _from_hub(dataset: str) -> list[dict]:
    import datasets

    name, config = SOURCES[dataset]["hub"]
    rows = datasets.load_dataset(name, config, split="validation")
    if dataset == "hotpotqa":
        return [dict(question=r["question"], answer=r["answer"],
                     context=list(zip(r["context"]["title"], r["context"]["sentences"]))) for r in rows]
    articles: dict[str, list[dict]] = {}
    for r in rows:
        paragraphs = articles.setdefault(r["title"], [])
        if not paragraphs or paragraphs[-1]["context"] != r["context"]:
            paragraphs.append(dict(context=r["context"], qas=[]))
        paragraphs[-1]["qas"].append(dict(question=r["question"], answers=[{"text": t} for t in r["answers"]["text"]]))
    return [dict(title=t, paragraphs=p) for t, p in articles.items()]


def load_qa(task: str, dataset: str, path: str | Path | None = None) -> QaSet:
    """The qa documents and questions from a local JSON file, else from the hub through `datasets`."""
    if path is not None:
        path = Path(path).expanduser()
        if not path.is_file():
            raise _unavailable(task, dataset, f"the file {path} does not exist")
        data = json.loads(path.read_text(encoding="utf-8"))
        raw = data["data"] if dataset == "squad" else data
    elif importlib.util.find_spec("datasets") is None:
        raise _unavailable(task, dataset, "no local file was given and `datasets` is not installed")
    else:
        try:
            raw = _from_hub(dataset)
        except Exception as exc:  # offline hub, missing dataset: tell the user what to do
            raise _unavailable(task, dataset, f"the hub could not be read ({type(exc).__name__}: {exc})") from exc
    qa = _squad(raw) if dataset == "squad" else _hotpot(raw)
    if not qa.items:
        raise ValueError(f"{task}: {path or dataset} holds no answerable questions")
    return qa


def _first_words(text: str, n: int) -> str:
    """`text` cut after its first `n` words (its own whitespace kept)."""
    end = 0
    for k, match in enumerate(re.finditer(r"\S+", text)):
        if k == n:
            break
        end = match.end()
    return text[:end]


class QaBuilder:
    """Size unit: words of distractor documents. The gold documents are always whole; distractors follow
    (SQuAD: the same article's other paragraphs first, then random documents) and the last one is cut to
    the remaining words, so the prompt can land within 2% of the budget. Sample i asks question i."""

    min_size = 0

    def __init__(self, cfg: TaskConfig, qa: QaSet):
        self.cfg, self.qa = cfg, qa
        self.doc_words = [len(d.split()) for d in qa.docs]
        self.max_size = sum(self.doc_words)

    def _distractors(self, item: QaItem, rng: random.Random) -> Iterator[int]:
        used = set(item.gold_docs)
        for d in item.near_docs:
            if d not in used:
                used.add(d)
                yield d
        while len(used) < len(self.qa.docs):
            d = rng.randrange(len(self.qa.docs))
            if d not in used:
                used.add(d)
                yield d

    def build(self, index: int, size: int, rng: random.Random) -> Prompt:
        item = self.qa.items[index % len(self.qa.items)]
        docs = [self.qa.docs[d] for d in item.gold_docs]
        left = size
        for d in self._distractors(item, random.Random(rng.getrandbits(64))):
            if left <= 0:
                break
            docs.append(self.qa.docs[d] if self.doc_words[d] <= left else _first_words(self.qa.docs[d], left))
            left -= self.doc_words[d]
        rng.shuffle(docs)
        context = "\n\n".join(f"Document {i}:\n{doc}" for i, doc in enumerate(docs, 1))
        return Prompt(QA_TEMPLATE.format(context=context, query=item.question), QA_PREFIX, list(item.answers))
