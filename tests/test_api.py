"""The Python API (butler_jax.load / Model.generate) and the generate CLI on the embedded SmolLM2 (CPU)."""

from __future__ import annotations

import pytest

import butler_jax
from butler_jax import generate as generate_cli

PROMPT = "What is the capital of France?"


@pytest.fixture(scope="module")
def model() -> butler_jax.Model:
    return butler_jax.load("embedded")  # + the shipped predictor (predictor="auto")


def test_load_defaults_to_the_shipped_predictor(model) -> None:
    from butler_jax.paths import SHIPPED_PREDICTOR

    assert model.predictor is not None
    assert model.cfg.num_hidden_layers == 30
    assert SHIPPED_PREDICTOR.is_dir()


def test_tokenbutler_at_full_budget_equals_dense(model) -> None:
    """keep=1 keeps every token, so TokenButler's greedy continuation is dense's, token for token."""
    dense = model.generate([PROMPT, "Name a colour."], method="dense", max_new_tokens=6)
    full = model.generate([PROMPT, "Name a colour."], method="tokenbutler", budget="keep=1", max_new_tokens=6)
    assert full.tokens == dense.tokens
    assert all(1 <= len(t) <= 6 for t in dense.tokens)
    assert "Paris" in dense.texts[0]
    assert dense.num_tokens == sum(map(len, dense.tokens)) and dense.tokens_per_s > 0


def test_bad_arguments_are_named(model) -> None:
    with pytest.raises(ValueError, match="ambiguous.*keep=0.3.*sparsity=0.3"):
        model.generate(PROMPT, method="tokenbutler", budget=0.3, max_new_tokens=2)
    with pytest.raises(TypeError, match="predict_intervall"):
        model.generate(PROMPT, method="tokenbutler", predict_intervall=2, max_new_tokens=2)


def test_cli_tokenbutler_prints_text_and_tokens_per_s(model, monkeypatch, capsys) -> None:
    """`python -m butler_jax.generate --method tokenbutler`, on the fixture's model and (for a warm jit
    cache) the shapes and settings of the full-budget test above."""
    seen = {}

    def fake_load(source, **kwargs):
        seen.update(kwargs, source=source)
        return model

    monkeypatch.setattr("butler_jax.api.load", fake_load)
    rc = generate_cli.main(["--prompt", PROMPT, "--prompt", "Name a colour.", "--method", "tokenbutler",
                            "--budget", "keep=1", "--max-new-tokens", "6"])
    out = capsys.readouterr().out
    assert rc == 0
    assert seen["predictor"] == "auto" and seen["source"] is None and seen["config"] == "smollm2-135m"
    assert f"### {PROMPT}" in out and "Paris" in out
    assert "[tokenbutler: " in out and " tokens/s (including compilation)]" in out


def test_cli_tokenbutler_options() -> None:
    args = generate_cli.build_parser().parse_args(["--prompt", "x", "--predict-interval", "4", "--neighbor-fetch"])
    assert generate_cli.sparsity_options(args) == {"predict_interval": 4, "neighbor_fetch": True}
    assert generate_cli.sparsity_options(generate_cli.build_parser().parse_args(["--prompt", "x"])) == {}


def test_cli_rejects_an_unknown_method(capsys) -> None:
    with pytest.raises(SystemExit) as exc:
        generate_cli.main(["--prompt", "x", "--method", "tokenbulter"])
    assert exc.value.code == 2
    assert "tokenbulter" in capsys.readouterr().err


def test_shipped_longctx_predictor_loads_by_name_and_decodes() -> None:
    """The long-context predictor is stored in bfloat16 and comes back as float32; at keep=1 its
    decode is dense's, token for token, and at half the budget it still runs."""
    import jax
    import numpy as np

    from butler_jax.models.predictor_longctx import LongctxPredictor

    model = butler_jax.load("embedded", predictor="shipped-longctx")
    module, params = model.predictor
    assert isinstance(module, LongctxPredictor)
    assert {leaf.dtype for leaf in jax.tree_util.tree_leaves(params)} == {np.dtype(np.float32)}
    dense = model.generate(PROMPT, method="dense", max_new_tokens=4)
    full = model.generate(PROMPT, method="tokenbutler", budget="keep=1", max_new_tokens=4)
    half = model.generate(PROMPT, method="tokenbutler", budget="keep=0.5", max_new_tokens=4)
    assert full.tokens == dense.tokens
    assert 1 <= len(half.tokens[0]) <= 4
