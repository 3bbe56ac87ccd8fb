"""The `eval:` config section."""

from __future__ import annotations

from dataclasses import dataclass, field


@dataclass(frozen=True)
class EvalConfig:
    """What `evaluate.py` runs: methods x budgets x tasks, and where it writes.

    tasks: `perplexity`, `coref`, `ruler`. Budgets use the sparsity syntax (`fixed_50pc`, 0.5, 2048);
    dense runs once. `ppl_source`: `wikitext2-test`, `wikitext2-valid`, or a text file / folder;
    `ppl_windows: 0` scores every non-overlapping `ppl_context` window of it.
    RULER: `ruler_lengths` (default [ruler_length]); `ruler_haystack`: RULER's PaulGrahamEssays.json or
    its folder (empty: the PG-19 books, a fallback named as a deviation in every output);
    `ruler_qa_files`: {qa_1: SQuAD v2 dev json, qa_2: HotpotQA dev json} (a listed qa task without its
    file is an error); `ruler_files`: {task: RULER-format JSONL} evaluates samples made by NVIDIA RULER.
    """

    methods: list[str] = field(default_factory=lambda: ["dense", "tokenbutler", "oracle", "h2o", "snapkv", "quest", "streamingllm"])
    budgets: list[str] = field(default_factory=lambda: ["fixed_50pc"])
    tasks: list[str] = field(default_factory=lambda: ["perplexity", "coref", "ruler"])
    output_dir: str = "outputs/eval"
    seed: int = 0
    ppl_source: str = "wikitext2-test"
    ppl_context: int = 1024
    ppl_windows: int = 4
    ruler_tasks: list[str] = field(default_factory=lambda: ["niah_single_1", "niah_multikey_1", "vt"])
    ruler_length: int = 1024
    ruler_samples: int = 2
    ruler_lengths: list[int] = field(default_factory=list)
    ruler_haystack: str = ""
    ruler_qa_files: dict[str, str] = field(default_factory=dict)
    ruler_files: dict[str, str] = field(default_factory=dict)
    ruler_budgets: list[str] = field(default_factory=list)  # default: the same as budgets
    ruler_batch: int = 8  # RULER prompts generated together (one compiled shape for every task)
    coref_samples: int = 4
    coref_budgets: list[str] = field(default_factory=list)  # default: the same as budgets
    coref_length: int = 0  # 0: natural length (about 250-400 tokens); else padded with filler
