"""Synthetic co-reference task: structure, token spans, length, scoring and metrics (SmolLM2 tokenizer)."""

from __future__ import annotations

import numpy as np
import pytest

from butler_jax.eval.coref import (exact_match, generate_coref, head_hit_rate, location_metrics,
                                   name_prediction_rows)


@pytest.fixture(scope="module")
def samples(smollm2_tok):
    return generate_coref(smollm2_tok, 11, progress=False)


def test_structure_and_spans(smollm2_tok, samples):
    assert len({s.name for s in samples}) == len(samples)
    for s in samples:
        ids = smollm2_tok.encode(s.text)
        assert s.token_ids.tolist() == ids and s.token_ids.dtype == np.int32
        assert 200 <= len(ids) <= 400
        assert s.text.count(s.name) == 2 and s.text.split(s.name)[0].endswith("The place is: ")
        (a, b), (c, d) = s.first_name_span, s.final_name_span
        assert b - a >= 2 and d == len(ids) and 0 < a < b < c < d
        assert smollm2_tok.decode(ids[a:b]).strip() == s.name == smollm2_tok.decode(ids[c:d]).strip()
        assert s.token_ids[a:b].tolist() == s.token_ids[c:d].tolist()
        # free generation: the prompt stops right before the final name
        assert s.prompt.endswith(":") and s.prompt + " " + s.name == s.text
        assert s.prompt_ids.tolist() == smollm2_tok.encode(s.prompt)


def test_deterministic_from_seed(smollm2_tok, samples):
    again = generate_coref(smollm2_tok, 3, progress=False)
    other = generate_coref(smollm2_tok, 3, seed=1, progress=False)
    assert [s.text for s in again] == [s.text for s in samples[:3]]
    assert [s.text for s in other] != [s.text for s in again]


@pytest.mark.parametrize("target", [1024, 4096])
def test_target_length_pads_with_filler(smollm2_tok, target):
    for s in generate_coref(smollm2_tok, 2, target_tokens=target, progress=False):
        assert 0.98 * target <= len(s.token_ids) <= target
        assert s.final_name_span[0] - s.first_name_span[1] > 0.9 * target
        assert s.text.count(s.name) == 2


def test_target_below_the_minimum_is_a_clear_error(smollm2_tok):
    with pytest.raises(ValueError, match="over the budget of 100 tokens"):
        generate_coref(smollm2_tok, 1, target_tokens=100, progress=False)


def test_exact_match(samples):
    name = samples[0].name
    assert exact_match(f" {name}.", name) == 1.0
    assert exact_match(f"{name}\nThe end", name) == 1.0
    assert exact_match(f" {name[:-1]}.", name) == 0.0
    assert exact_match(f" {samples[1].name}", name) == 0.0
    assert exact_match("", name) == 0.0


def test_location_metrics_from_logits(samples):
    # a fake model that predicts every next token right, except one token of sample 1's final name
    golds, preds = [], []
    for i, s in enumerate(samples[:3]):
        rows = name_prediction_rows(s.final_name_span)
        logits = np.zeros((len(s.token_ids), 50_000), np.float32)
        logits[np.arange(len(s.token_ids) - 1), s.token_ids[1:]] = 1.0
        if i == 1:
            logits[rows.start, s.token_ids[rows.start + 1]] = 0.0
            logits[rows.start, 7] = 2.0
        preds.append(logits[rows].argmax(-1))
        golds.append(s.token_ids[slice(*s.final_name_span)])
    n_tokens = sum(len(g) for g in golds)
    inaccuracy, miss = location_metrics(preds, golds)
    assert inaccuracy == pytest.approx(100.0 / n_tokens) and miss == pytest.approx(1 / 3)
    assert location_metrics(golds[0], golds[0]) == (0.0, 0.0)
    with pytest.raises(ValueError, match="equal-length"):
        location_metrics([golds[0][:-1]], [golds[0]])


def test_head_hit_rate():
    mask = np.zeros((2, 3, 20), bool)  # layers, heads, keys
    mask[0, :, 5:8] = True  # layer 0 keeps the whole span [5, 9) but one token
    mask[1, 0, 5] = True
    assert head_hit_rate(mask, (5, 9)) == pytest.approx((3 * 3 + 1) / 24)
    assert head_hit_rate(np.ones(20, bool), (5, 9)) == 1.0
    with pytest.raises(ValueError, match="not inside"):
        head_hit_rate(mask, (18, 25))
