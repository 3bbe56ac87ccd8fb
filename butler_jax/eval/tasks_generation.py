"""The co-reference and RULER tasks of evaluate.py.

Co-reference: teacher-forced (decode-simulated for sparse policies); a sample scores 1 when
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
from butler_jax.sparsity.dense import DensePolicy
from butler_jax.sparsity.simulate import simulated_logits


@dataclass(frozen=True)
class TaskSample:
    sample: str
    payload: Any


def evaluate_coref(model, params, policy, item: TaskSample) -> dict:
    s = item.payload
    tokens = jnp.asarray(np.asarray(s.token_ids)[None])
    if isinstance(policy, DensePolicy):
        logits, _ = model.apply({"params": params}, tokens, jnp.arange(tokens.shape[1])[None])
    else:
        logits, _ = simulated_logits(model, params, tokens, policy)
    rows = name_prediction_rows(s.final_name_span)
    preds = np.asarray(logits[0, rows].argmax(-1))
    gold = np.asarray(s.token_ids)[s.final_name_span[0]:s.final_name_span[1]]
    inaccuracy, miss = location_metrics([preds.tolist()], [gold.tolist()])
    return {"metric": "coref_exact", "score": 1.0 - miss, "location_inaccuracy": inaccuracy}


def evaluate_ruler(model, params, tokenizer, stop_tokens, policy, item: TaskSample) -> dict:
    s = item.payload
    ids = tokenizer.encode(s.input, add_special_tokens=False)
    out = generate(model, params, [ids], s.max_new_tokens, policy=policy, stop_tokens=stop_tokens).rows()[0]
    prediction = tokenizer.decode(out, skip_special_tokens=True)
    return {"metric": "ruler", "score": score_prediction(s.task, prediction, s.answers), "prediction": prediction,
            "answers": s.answers, "input_tokens": len(ids)}
