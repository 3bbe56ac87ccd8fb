"""The co-reference and RULER tasks of evaluate.py.

Co-reference: teacher-forced through the policy's decode-simulated pass (dense included), several
right-padded samples per jitted call; a sample scores 1 when
every token of the final place NAME is the argmax prediction (1 - location miss), and the
record keeps the location inaccuracy. RULER: real greedy generation through the jitted
decode loop with the policy, scored with RULER's string-match metric of the task; each record
also carries the selection the decode steps really made (`ruler_selection`).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import jax.numpy as jnp
import numpy as np

from butler_jax.decode import GenerationResult, generate
from butler_jax.eval.coref import location_metrics, name_prediction_rows
from butler_jax.eval.ruler import score_prediction
from butler_jax.sparsity.simulate import simulated_predictions
from butler_jax.sparsity.stats import decode_means, sequence_stats, sparse_layer_means

# what a RULER record holds, part of its settings hash: records stored before the decode steps
# measured their selection (no `sparsity` / `kept_tokens`) never match and are recomputed
RULER_RECORD = "decode-selection-measured"


@dataclass(frozen=True)
class TaskSample:
    sample: str
    payload: Any


def evaluate_coref(model, params, policy, policy_params, items: list[TaskSample], *, batch: int,
                   width: int) -> list[dict]:
    """Co-reference records of up to `batch` samples from one jitted decode-simulated pass.

    Every call pads to `batch` rows (repeating the last sample) and `width` tokens (right padding,
    which changes no real row's prediction, `simulate.simulated_predictions`), so a sample set runs
    one compiled shape; `sparsity`, `kept_tokens` and `oracle_recall` count each sample's own rows.
    """
    ids = [np.asarray(item.payload.token_ids, np.int32) for item in items]
    if len(ids) > batch or max(len(i) for i in ids) > width:
        raise ValueError(f"{len(ids)} co-reference samples of up to {max(len(i) for i in ids)} tokens do not fit "
                         f"batch={batch} x width={width}; pass a larger batch / width")
    rows = ids + [ids[-1]] * (batch - len(ids))
    tokens = np.zeros((batch, width), np.int32)
    for row, seq in enumerate(rows):
        tokens[row, :len(seq)] = seq
    preds, stats = simulated_predictions(model, params, jnp.asarray(tokens), jnp.asarray([len(r) for r in rows]),
                                         policy, policy_params)
    preds = np.asarray(preds)
    records = []
    for row, (item, seq) in enumerate(zip(items, ids)):
        span = item.payload.final_name_span
        inaccuracy, miss = location_metrics([preds[row, name_prediction_rows(span)].tolist()],
                                            [seq[span[0]:span[1]].tolist()])
        records.append({"metric": "coref_exact", "score": 1.0 - miss, "location_inaccuracy": inaccuracy,
                        **sparse_layer_means(sequence_stats(stats, row), policy.settings.dense_layers)})
    return records


def evaluate_ruler(model, params, tokenizer, stop_tokens, policy, policy_params, items: list[TaskSample], *,
                   batch: int, prompt_width: int, max_new_tokens: int) -> list[dict]:
    """Greedy generation for up to `batch` RULER samples at once, one compiled shape for all tasks.

    Every call pads to `batch` rows (repeating the last prompt) and `prompt_width` tokens and
    generates up to `max_new_tokens`; each row's output is then cut to its task's own cap.
    """
    ids = [tokenizer.encode(item.payload.input, add_special_tokens=False) for item in items]
    rows = ids + [ids[-1]] * (batch - len(ids))
    result = generate(model, params, rows, max_new_tokens, policy=policy, policy_params=policy_params,
                      stop_tokens=stop_tokens, prompt_width=prompt_width)
    records = []
    for row, (item, prompt, tokens) in enumerate(zip(items, ids, result.rows())):
        s = item.payload
        used = tokens[: s.max_new_tokens]
        prediction = tokenizer.decode(used, skip_special_tokens=True)
        records.append({"metric": "ruler", "score": score_prediction(s.task, prediction, s.answers),
                        "prediction": prediction, "answers": s.answers, "input_tokens": len(prompt),
                        "deviations": list(getattr(s, "deviations", ())),
                        **ruler_selection(result, row, len(prompt), len(used), policy.settings.dense_layers)})
    return records


def ruler_selection(result: GenerationResult, row: int, prompt_length: int, tokens: int,
                    dense_layers: int) -> dict:
    """The measured selection of one RULER answer: `sparsity` (1 - kept / visible keys) and
    `kept_tokens` (keys attended per step and selection head), pooled over the layers >=
    dense_layers, and their per-layer lists (`stats.decode_means`).

    Measured over the decode steps that produced tokens 1 .. tokens - 1 of the `tokens` the answer
    keeps (its task's cap, or up to its stop token): the step producing token j attends from
    position prompt_length + j - 1 and sees prompt_length + j keys; kept is what each layer's
    attention read (valid selected indices, an eviction policy's alive tokens, every visible key
    for dense layers and dense), so TokenButler's reuse steps and neighbour fetch count what they
    add beyond the budget. Token 0 comes from the prompt's pass, dense causal attention for every
    method (H2O and SnapKV compress the cache after it), so the prefill is not counted; an answer
    of one token has no decode step: every value None (not measured)."""
    steps = np.arange(1, tokens)
    return decode_means(result.kept_tokens[row, steps], prompt_length + steps, dense_layers)
