"""evaluate.py's work: load the model (and predictor), build the tasks, run, print the table."""

from __future__ import annotations

import dataclasses
import functools
import hashlib
import json
import sys
from pathlib import Path

import numpy as np

from butler_jax.config import ModelConfig, load_yaml, section
from butler_jax.eval.config import EvalConfig, check_eval_config
from butler_jax.eval.provenance import files_hash, provenance
from butler_jax.eval.runner import Interrupted, Task, run_tasks
from butler_jax.eval.tasks_perplexity import evaluate_windows, perplexity_samples
from butler_jax.models.llama import LlamaForCausalLM
from butler_jax.sparsity import METHODS, SparsityConfig
from butler_jax.text_source import read_documents
from butler_jax.weights import load_tokenizer, model_from_config

PACKAGE_DATA = Path(__file__).resolve().parent / "data"
NAMED_TEXTS = {
    "wikitext2-test": PACKAGE_DATA / "wikitext-2-raw" / "wiki.test.raw",
    "wikitext2-valid": PACKAGE_DATA / "wikitext-2-raw" / "wiki.valid.raw",
}


def read_text_source(source: str, max_chars: int | None = None) -> str:
    """Text of a named corpus (wikitext2-test / wikitext2-valid) or any butler_jax/text_source.py source
    (file, folder, JSONL, parquet, wikitext2:<split>, hf:<name>[:config[:split]]), documents joined by a
    blank line; only its first `max_chars` characters (None: all), reading no document past them."""
    if source in NAMED_TEXTS:
        return NAMED_TEXTS[source].read_text(encoding="utf-8")[:max_chars]
    parts, size = [], 0
    for doc in read_documents(source, hf_split="test"):
        parts.append(doc)
        size += len(doc) + 2
        if max_chars is not None and size >= max_chars:
            break
    return "\n\n".join(parts)[:max_chars]


FALLBACK_HAYSTACK = Path(__file__).resolve().parents[1] / "train" / "data" / "pg19-test-books"


def ruler_samples(eval_cfg: EvalConfig, tokenizer) -> dict[str, list]:
    """{task@length: samples}: generated for every configured length, plus those read from RULER JSONL files."""
    from butler_jax.eval.ruler import generate_ruler
    from butler_jax.eval.ruler_files import read_ruler_jsonl
    from butler_jax.weights.tokenizer import apply_chat_template

    template = lambda text: apply_chat_template(tokenizer, text)  # noqa: E731
    out: dict[str, list] = {}
    for length in eval_cfg.ruler_lengths or [eval_cfg.ruler_length]:
        generated = generate_ruler(tokenizer, length, eval_cfg.ruler_samples, eval_cfg.ruler_tasks, seed=eval_cfg.seed,
                                   chat_template=template, essay_path=eval_cfg.ruler_haystack or FALLBACK_HAYSTACK,
                                   qa_sources=eval_cfg.ruler_qa_files, progress=False)
        out.update({f"{task}@{length}": items for task, items in generated.items()})
    for task, path in eval_cfg.ruler_files.items():
        out[f"{task}@file"] = read_ruler_jsonl(task, path, tokenizer)
    return out


def build_tasks(eval_cfg: EvalConfig, sparsity: SparsityConfig, model, params, tokenizer,
                common: dict | None = None) -> list[Task]:
    """The configured tasks; each carries its result-changing settings (`common`: model and predictor)."""
    common = common or {}
    tasks: list[Task] = []
    if "perplexity" in eval_cfg.tasks:
        # a prefix long enough for the windows asked for (a hub source is read no further)
        text = read_text_source(eval_cfg.ppl_source, 40 * eval_cfg.ppl_context * eval_cfg.ppl_windows or None)
        ids = np.asarray(tokenizer.encode(text))
        samples = perplexity_samples(ids, eval_cfg.ppl_context, eval_cfg.ppl_windows or len(ids))
        name = f"ppl:{Path(eval_cfg.ppl_source).stem if eval_cfg.ppl_source not in NAMED_TEXTS else eval_cfg.ppl_source}"
        batch = max(1, min(eval_cfg.ppl_batch, len(samples)))
        evaluate = functools.partial(evaluate_windows, model, params, batch=batch, dense_layers=sparsity.dense_layers)
        settings = dict(common, task="perplexity", source=eval_cfg.ppl_source, text_sha=_sha(text),
                        context=eval_cfg.ppl_context)
        tasks.append((name, samples, evaluate, eval_cfg.budgets, batch, settings))
    if "coref" in eval_cfg.tasks:
        from butler_jax.eval.coref import generate_coref
        from butler_jax.eval.tasks_generation import TaskSample, evaluate_coref

        coref = generate_coref(tokenizer, eval_cfg.coref_samples, seed=eval_cfg.seed, target_tokens=eval_cfg.coref_length or None, progress=False)
        samples = [TaskSample(f"coref{i}", c) for i, c in enumerate(coref)]
        batch = max(1, min(eval_cfg.coref_batch, len(samples)))
        # one compiled shape for the set: its longest sample rounded up to 64 tokens (within the positions)
        width = min(-(-max(len(c.token_ids) for c in coref) // 64) * 64, model.cfg.max_position_embeddings)
        evaluate = functools.partial(evaluate_coref, model, params, batch=batch, width=width)
        settings = dict(common, task="coref", seed=eval_cfg.seed, length=eval_cfg.coref_length)
        tasks.append(("coref", samples, evaluate, eval_cfg.coref_budgets or eval_cfg.budgets, batch, settings))
    if "ruler" in eval_cfg.tasks:
        from butler_jax.eval.tasks_generation import RULER_RECORD, TaskSample, evaluate_ruler

        generated = ruler_samples(eval_cfg, tokenizer)
        stops = [model.cfg.eos_token_id] if model.cfg.eos_token_id is not None else []
        every = [s for items in generated.values() for s in items]
        batch = max(1, min(eval_cfg.ruler_batch, len(every)))
        # one compiled shape per RULER length (or file): its longest prompt and largest output cap, so a
        # 4K prompt is not padded to the 8K one's width
        length_of = lambda task: task.rsplit("@", 1)[1]  # noqa: E731 - "task@4096" -> "4096" ("file" for JSONL)
        groups: dict[str, list] = {}
        for task, items in generated.items():
            groups.setdefault(length_of(task), []).extend(items)
        evaluators = {group: functools.partial(evaluate_ruler, model, params, tokenizer, stops, batch=batch,
                                               prompt_width=-(-max(s.token_length for s in items) // 64) * 64,
                                               max_new_tokens=max(s.max_new_tokens for s in items))
                      for group, items in groups.items()}
        for task, items in generated.items():
            evaluate = evaluators[length_of(task)]
            samples = [TaskSample(f"{task}-{s.index}", s) for s in items]
            # the prompts themselves are the task settings (haystack, qa file, seed, template, code)
            settings = dict(common, task="ruler", record=RULER_RECORD,
                            prompts=_sha("\x00".join(s.input + "\x01" + "|".join(s.answers) for s in items)))
            tasks.append((f"ruler:{task}", samples, evaluate, eval_cfg.ruler_budgets or eval_cfg.budgets, batch,
                          settings))
    return tasks


def _sha(text: str) -> str:
    return hashlib.sha256(text.encode()).hexdigest()[:16]


def run_from_config(config_path: str, overrides: list[str]) -> list[dict]:
    data = load_yaml(config_path, overrides)
    eval_cfg = section(data, "eval", EvalConfig)
    sparsity = section(data, "sparsity", SparsityConfig)
    check_eval_config(eval_cfg, section(data, "model", ModelConfig), METHODS)
    if "tokenbutler" in eval_cfg.methods:
        from butler_jax.eval.predictor_loading import predictor_path

        predictor_path(data)  # before the model loads
    model_cfg = section(data, "model", ModelConfig)
    cfg, params = model_from_config(model_cfg)
    tokenizer = load_tokenizer(cfg.source)
    model = LlamaForCausalLM(cfg)
    predictor = None
    common: dict = {"model": dataclasses.asdict(model_cfg), "model_files": files_hash(cfg.source)}
    if "tokenbutler" in eval_cfg.methods:
        from butler_jax.eval.predictor_loading import load_predictor_for_eval

        predictor = load_predictor_for_eval(data, cfg)
        common.update(predictor=data.get("predictor"), predictor_files=files_hash(data["predictor"]["checkpoint"]))
    started = provenance()  # the tree that runs: a checkout changed mid-run is reported, not recorded as this
    tasks = build_tasks(eval_cfg, sparsity, model, params, tokenizer, common)
    plan = ", ".join(f"{name} ({len(samples)} samples at {'/'.join(budgets)})" for name, samples, _, budgets, *_ in tasks)
    print(f"evaluating {cfg.source}: methods {eval_cfg.methods}; tasks {plan} -> {eval_cfg.output_dir}")
    reuse: dict[str, int] = {}
    out = Path(eval_cfg.output_dir)
    try:
        rows = run_tasks(tasks, eval_cfg, sparsity, cfg, predictor, reuse)
    except Interrupted as stop:
        result = write_results(out, data, stop.rows, reuse, [config_path, *overrides], started, interrupted=True)
        print(f"\ninterrupted: {reuse['computed']} samples computed and stored, {reuse['reused']} reused; the summary "
              f"of what is stored: {out / 'summary.md'}, {result}; rerun the same command to continue",
              file=sys.stderr)
        raise SystemExit(130) from None
    print((out / "summary.md").read_text())
    print(f"samples: {reuse['computed']} computed, {reuse['reused']} reused from {out / 'samples.jsonl'} "
          "(same settings hash)")
    result = write_results(out, data, rows, reuse, [config_path, *overrides], started)
    print(f"wrote {out / 'samples.jsonl'}, {out / 'summary.csv'}, {out / 'summary.md'}, {result} and plots in {out}")
    (out / "config.json").write_text(json.dumps(data, indent=1, default=str))
    return rows


def write_results(out: Path, data: dict, rows: list[dict], reuse: dict[str, int], command: list[str],
                  started: dict, interrupted: bool = False) -> Path:
    """results_<UTC start time>.json: the resolved config, provenance taken when the run `started`
    (commit, dirty, versions, device), the finish time, the reuse counts and the summary rows. A commit
    or dirty flag that changed before the finish is kept as `tree_changed_during_run`. Never overwrites
    an earlier run's file. `interrupted`: the run stopped early (its summary covers the samples stored)."""
    now = provenance()
    prov = {**started, "finished_utc": now["time_utc"]}
    moved = {k: now[k] for k in ("git_commit", "git_dirty") if now[k] != started[k]}
    if moved:
        prov["tree_changed_during_run"] = moved
    path = out / f"results_{prov['time_utc'].replace(':', '').replace('-', '')}.json"
    n = 1
    while path.exists():
        path, n = path.with_name(f"{path.stem.split('.')[0]}.{n}.json"), n + 1
    path.write_text(json.dumps({"command": ["python", "evaluate.py", "--config", *command], "provenance": prov,
                                "config": data, "samples": reuse, "interrupted": interrupted, "summary": rows}, indent=1, default=str))
    return path
