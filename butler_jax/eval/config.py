"""The `eval:` config section."""

from __future__ import annotations

from dataclasses import dataclass, field

from butler_jax.sparsity import METHODS


@dataclass(frozen=True)
class EvalConfig:
    """What `evaluate.py` runs: methods x budgets x tasks, and where it writes.

    tasks: `perplexity`, `coref`, `ruler`. Budgets use the sparsity syntax (`fixed_50pc`, 0.5, 2048);
    dense runs once. `ppl_source`: `wikitext2-test`, `wikitext2-valid`, or a text file / folder;
    `ppl_windows: 0` scores every non-overlapping `ppl_context` window of it, `ppl_batch` of them a pass.
    RULER: `ruler_lengths` (default [ruler_length]); `ruler_haystack`: RULER's PaulGrahamEssays.json or
    its folder (empty: the PG-19 books, a fallback named as a deviation in every output);
    `ruler_qa_files`: {qa_1: SQuAD v2 dev json, qa_2: HotpotQA dev json} (a listed qa task without its
    file is an error); `ruler_files`: {task: RULER-format JSONL} evaluates samples made by NVIDIA RULER.
    """

    methods: list[str] = field(default_factory=lambda: list(METHODS))  # every registered method
    budgets: list[str] = field(default_factory=lambda: ["fixed_50pc"])
    tasks: list[str] = field(default_factory=lambda: ["perplexity", "coref", "ruler"])
    output_dir: str = "outputs/eval"
    seed: int = 0
    ppl_source: str = "wikitext2-test"
    ppl_context: int = 1024
    ppl_windows: int = 4
    ppl_batch: int = 8  # perplexity windows per decode-simulated pass (one compiled shape for the set)
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
    coref_batch: int = 8  # co-reference samples per decode-simulated pass (one compiled shape for the set)


def check_eval_config(ev: EvalConfig, model_cfg, methods: tuple[str, ...]) -> None:
    """Raise ConfigError naming the first bad `eval.*` value (checked before any model or data loads).

    Lists non-empty and known, counts >= 1 (ppl_windows >= 0, 0: every window), contexts within the
    model's positions, and token budgets within the context they select from.
    """
    from butler_jax.errors import ConfigError
    from butler_jax.sparsity.budget import parse_budget

    tasks = ("perplexity", "coref", "ruler")
    for name, allowed in (("methods", methods), ("tasks", tasks)):
        values = getattr(ev, name)
        if not values:
            raise ConfigError(f"eval.{name} is empty", fix=f"list at least one of {list(allowed)}")
        unknown = [v for v in values if v not in allowed]
        if unknown:
            raise ConfigError(f"eval.{name} has unknown entry {unknown[0]!r}", fix=f"choose from {list(allowed)}")
    if any(m != "dense" for m in ev.methods) and not ev.budgets:
        raise ConfigError("eval.budgets is empty", fix="list at least one budget, e.g. [fixed_50pc]")
    if "perplexity" in ev.tasks and ev.ppl_windows < 0:
        raise ConfigError(f"eval.ppl_windows={ev.ppl_windows} is negative",
                          fix="use 0 for every window of eval.ppl_source, or a window count >= 1")
    counts = {"ppl_batch": "perplexity", "coref_samples": "coref", "coref_batch": "coref", "ruler_samples": "ruler", "ruler_batch": "ruler"}
    for name, task in counts.items():
        if task in ev.tasks and getattr(ev, name) < 1:
            raise ConfigError(f"eval.{name}={getattr(ev, name)} must be >= 1")
    positions = model_cfg.max_position_embeddings
    contexts = {"ppl_context": ("perplexity", ev.budgets), "ruler_length": ("ruler", ev.ruler_budgets or ev.budgets)}
    for name, (task, budgets) in contexts.items():
        context = getattr(ev, name)
        if task not in ev.tasks:
            continue
        if not 2 <= context <= positions:
            raise ConfigError(f"eval.{name}={context} must be in [2, {positions}] (the model's "
                              "max_position_embeddings)")
        which = "eval.ruler_budgets" if task == "ruler" and ev.ruler_budgets else "eval.budgets"
        for spec in budgets:
            try:
                budget = parse_budget(spec)
            except ValueError as exc:
                raise ConfigError(f"{which} entry {spec!r}: {exc}") from None
            if budget.tokens is not None and budget.tokens >= context:
                raise ConfigError(f"{which} entry {spec!r} keeps {budget.tokens} tokens, not fewer than "
                                  f"eval.{name}={context}: it would run dense",
                                  fix="use a smaller budget or a fraction such as fixed_50pc")
