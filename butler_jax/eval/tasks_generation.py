"""The co-reference and RULER tasks of evaluate.py.

Co-reference: teacher-forced through the policy's decode-simulated pass (dense included); a sample scores 1 when
every token of the final place NAME is the argmax prediction (1 - location miss), and the
record keeps the location inaccuracy. RULER: real greedy generation through the jitted
decode loop with the policy, scored with RULER's string-match metric of the task.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import jax.numpy as jnp
import numpy as np

from butler_jax.decode import generate
from butler_jax.eval.coref import location_metrics, name_prediction_rows
from butler_jax.eval.ruler import score_prediction
from butler_jax.sparsity.simulate import simulated_logits
from butler_jax.sparsity.stats import sparse_layer_means


@dataclass(frozen=True)
class TaskSample:
    sample: str
    payload: Any


def evaluate_coref(model, params, policy, policy_params, item: TaskSample) -> dict:
    s = item.payload
    tokens = jnp.asarray(np.asarray(s.token_ids)[None])
    logits, stats = simulated_logits(model, params, tokens, policy, policy_params)
    rows = name_prediction_rows(s.final_name_span)
    preds = np.asarray(logits[0, rows].argmax(-1))
    gold = np.asarray(s.token_ids)[s.final_name_span[0]:s.final_name_span[1]]
    inaccuracy, miss = location_metrics([preds.tolist()], [gold.tolist()])
    return {"metric": "coref_exact", "score": 1.0 - miss, "location_inaccuracy": inaccuracy,
            **sparse_layer_means(list(stats), policy.settings.dense_layers)}


def evaluate_ruler(model, params, tokenizer, stop_tokens, policy, policy_params, items: list[TaskSample], *,
                   batch: int, prompt_width: int, max_new_tokens: int) -> list[dict]:
    """Greedy generation for up to `batch` RULER samples at once, one compiled shape for all tasks.

    Every call pads to `batch` rows (repeating the last prompt) and `prompt_width` tokens and
    generates up to `max_new_tokens`; each row's output is then cut to its task's own cap.
    """
    ids = [tokenizer.encode(item.payload.input, add_special_tokens=False) for item in items]
    rows = ids + [ids[-1]] * (batch - len(ids))
    out = generate(model, params, rows, max_new_tokens, policy=policy, policy_params=policy_params, stop_tokens=stop_tokens,
                   prompt_width=prompt_width).rows()
    records = []
    for item, prompt, tokens in zip(items, ids, out):
        s = item.payload
        prediction = tokenizer.decode(tokens[: s.max_new_tokens], skip_special_tokens=True)
        records.append({"metric": "ruler", "score": score_prediction(s.task, prediction, s.answers),
                        "prediction": prediction, "answers": s.answers, "input_tokens": len(prompt),
                        "deviations": list(getattr(s, "deviations", ()))})
    return records
