"""evaluate.py's work: load the model (and predictor), build the tasks, run, print the table."""

from __future__ import annotations

import functools
import json
from pathlib import Path

import numpy as np

from butler_jax.config import ModelConfig, load_yaml, section
from butler_jax.errors import ConfigError
from butler_jax.eval.config import EvalConfig, check_eval_config
from butler_jax.eval.runner import Task, run_tasks
from butler_jax.eval.tasks_perplexity import evaluate_window, perplexity_samples
from butler_jax.models.llama import LlamaForCausalLM
from butler_jax.sparsity import METHODS, SparsityConfig
from butler_jax.weights import load_tokenizer, model_from_config

PACKAGE_DATA = Path(__file__).resolve().parent / "data"
NAMED_TEXTS = {
    "wikitext2-test": PACKAGE_DATA / "wikitext-2-raw" / "wiki.test.raw",
    "wikitext2-valid": PACKAGE_DATA / "wikitext-2-raw" / "wiki.valid.raw",
}


def read_text_source(source: str) -> str:
    """Text of a named corpus (wikitext2-test / wikitext2-valid), a file, or every .txt in a folder."""
    path = NAMED_TEXTS.get(source, Path(source).expanduser())
    if path.is_dir():
        files = sorted(path.glob("*.txt"))
        if not files:
            raise ConfigError(f"eval.ppl_source={source!r} is a folder without .txt files")
        return "\n\n".join(f.read_text(encoding="utf-8", errors="replace") for f in files)
    if not path.is_file():
        raise ConfigError(
            f"eval.ppl_source={source!r} is neither {sorted(NAMED_TEXTS)} nor an existing file or folder"
        )
    return path.read_text(encoding="utf-8", errors="replace")


def build_tasks(eval_cfg: EvalConfig, sparsity: SparsityConfig, model, params, tokenizer) -> list[Task]:
    tasks: list[Task] = []
    if "perplexity" in eval_cfg.tasks:
        ids = np.asarray(tokenizer.encode(read_text_source(eval_cfg.ppl_source)[: 40 * eval_cfg.ppl_context * eval_cfg.ppl_windows]))
        samples = perplexity_samples(ids, eval_cfg.ppl_context, eval_cfg.ppl_windows)
        name = f"ppl:{Path(eval_cfg.ppl_source).stem if eval_cfg.ppl_source not in NAMED_TEXTS else eval_cfg.ppl_source}"
        evaluate = lambda policy, pp, items: [evaluate_window(model, params, policy, pp, s, sparsity.dense_layers) for s in items]  # noqa: E731
        tasks.append((name, samples, evaluate, eval_cfg.budgets, 1))
    if "coref" in eval_cfg.tasks:
        from butler_jax.eval.coref import generate_coref
        from butler_jax.eval.tasks_generation import TaskSample, evaluate_coref

        coref = generate_coref(tokenizer, eval_cfg.coref_samples, seed=eval_cfg.seed, target_tokens=eval_cfg.coref_length or None, progress=False)
        samples = [TaskSample(f"coref{i}", c) for i, c in enumerate(coref)]
        evaluate = lambda policy, pp, items: [evaluate_coref(model, params, policy, pp, s) for s in items]  # noqa: E731
        tasks.append(("coref", samples, evaluate, eval_cfg.budgets, 1))
    if "ruler" in eval_cfg.tasks:
        from butler_jax.eval.ruler import generate_ruler
        from butler_jax.eval.tasks_generation import TaskSample, evaluate_ruler
        from butler_jax.weights.tokenizer import apply_chat_template

        template = lambda text: apply_chat_template(tokenizer, text)  # noqa: E731
        generated = generate_ruler(tokenizer, eval_cfg.ruler_length, eval_cfg.ruler_samples, eval_cfg.ruler_tasks,
                                   skip_unavailable=True, seed=eval_cfg.seed, chat_template=template,
                                   essay_path=eval_cfg.ruler_haystack_dir or None, progress=False)
        stops = [model.cfg.eos_token_id] if model.cfg.eos_token_id is not None else []
        every = [s for items in generated.values() for s in items]
        batch = max(1, min(eval_cfg.ruler_batch, len(every)))
        # one compiled shape for every task: the longest prompt and the largest output cap
        width = max(s.token_length for s in every)
        max_new = max(s.max_new_tokens for s in every)
        evaluate = functools.partial(evaluate_ruler, model, params, tokenizer, stops, batch=batch,
                                     prompt_width=-(-width // 64) * 64, max_new_tokens=max_new)
        for task, items in generated.items():
            samples = [TaskSample(f"{task}-{s.index}", s) for s in items]
            tasks.append((f"ruler:{task}@{eval_cfg.ruler_length}", samples, evaluate,
                          eval_cfg.ruler_budgets or eval_cfg.budgets, batch))
    return tasks


def run_from_config(config_path: str, overrides: list[str]) -> list[dict]:
    data = load_yaml(config_path, overrides)
    eval_cfg = section(data, "eval", EvalConfig)
    sparsity = section(data, "sparsity", SparsityConfig)
    check_eval_config(eval_cfg, section(data, "model", ModelConfig), METHODS)
    if "tokenbutler" in eval_cfg.methods:
        from butler_jax.eval.predictor_loading import predictor_path

        predictor_path(data)  # before the model loads
    cfg, params = model_from_config(section(data, "model", ModelConfig))
    tokenizer = load_tokenizer(cfg.source)
    model = LlamaForCausalLM(cfg)
    predictor = None
    if "tokenbutler" in eval_cfg.methods:
        from butler_jax.eval.predictor_loading import load_predictor_for_eval

        predictor = load_predictor_for_eval(data, cfg)
    tasks = build_tasks(eval_cfg, sparsity, model, params, tokenizer)
    print(f"evaluating {cfg.source}: methods {eval_cfg.methods}, budgets {eval_cfg.budgets}, "
          f"tasks {[t[0] for t in tasks]} ({sum(len(t[1]) for t in tasks)} samples each) -> {eval_cfg.output_dir}")
    rows = run_tasks(tasks, eval_cfg, sparsity, cfg, predictor)
    out = Path(eval_cfg.output_dir)
    print((out / "summary.md").read_text())
    print(f"wrote {out / 'samples.jsonl'}, {out / 'summary.csv'}, {out / 'summary.md'} and plots in {out}")
    (out / "config.json").write_text(json.dumps(data, indent=1, default=str))
    return rows
