"""RULER samples made by NVIDIA RULER (or any tool writing its format), read from JSONL.

RULER's `prepare.py` writes one JSON object per line with the fields `index`, `input` (the prompt,
model template applied, answer prefix cut off), `outputs` (the gold strings), `length` (prompt plus
generation tokens, RULER's tokenizer), `length_w_model_temp` and `answer_prefix`; niah adds
`token_position_answer`. The prompt evaluated is `input + answer_prefix`, as RULER's `call_api.py`.
"""

from __future__ import annotations

import json
from pathlib import Path

from butler_jax.eval.ruler import RulerSample, Tokenizer
from butler_jax.eval.ruler_tasks import task_config

REQUIRED = ("input", "outputs")


def read_ruler_jsonl(task: str, path: str | Path, tokenizer: Tokenizer) -> list[RulerSample]:
    """Samples of `task` (one of RULER's 13 names: sets the metric and output cap) from a RULER JSONL;
    `token_length` is counted with `tokenizer` (the evaluated model's). Sample i is line i (RULER's niah
    overwrites `index` with the answer's character position, so it is not used)."""
    cfg = task_config(task)
    path = Path(path).expanduser()
    if not path.is_file():
        raise FileNotFoundError(f"eval.ruler_files[{task!r}]={str(path)!r} does not exist; give RULER's "
                                f"<save_dir>/{task}/validation.jsonl")
    samples = []
    for n, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1):
        if not line.strip():
            continue
        row = json.loads(line)
        missing = [f for f in REQUIRED if f not in row]
        if missing or not isinstance(row.get("outputs"), list):
            raise ValueError(f"{path}:{n} is not in RULER's format: needs 'input' (str) and 'outputs' (list); "
                             f"missing {missing}")
        text = row["input"] + row.get("answer_prefix", "")
        samples.append(RulerSample(task, len(samples), text, [str(o) for o in row["outputs"]], cfg.max_new_tokens,
                                   len(tokenizer.encode(text))))
    if not samples:
        raise ValueError(f"{path} holds no samples")
    return samples
