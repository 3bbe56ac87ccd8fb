"""Flax predictors vs the PyTorch references (tests/torch_reference) on the same random weights.

Weights go torch -> Flax through the converter (butler_jax.weights.predictor_torch), so these tests
also pin the name mapping and the head-major slot permutation.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import torch

from butler_jax.config import ModelConfig, PredictorConfig
from butler_jax.models.predictor import PaperPredictor, importance_logits, init_predictor, paper_param_count
from butler_jax.models.predictor_longctx import LongctxPredictor, longctx_param_count, longctx_scores, serving
from butler_jax.sparsity.select import group_reduce
from butler_jax.weights.predictor_torch import PRED, longctx_from_torch, paper_from_torch
from butler_jax.weights.tensors import torch_to_numpy
from tests.torch_reference.predictors import LongctxPredictorRef, PaperPredictorRef

TOL = dict(rtol=1e-5, atol=1e-5)

# (name, model dims, predictor sizes, batch lengths): the paper's configs at short sequences.
PAPER_CASES = [
    ("tiny", dict(hidden_size=64, num_attention_heads=4, num_hidden_layers=3, rope_theta=10000.0),
     dict(dDash=8, intdim=32, attn_reduce_factor=2), (9, 6)),
    ("smollm2", dict(hidden_size=576, num_attention_heads=9, num_hidden_layers=30, rope_theta=100000.0),
     dict(dDash=16, intdim=256, attn_reduce_factor=4), (7, 5)),
    ("llama3.2-1b", dict(hidden_size=2048, num_attention_heads=32, num_hidden_layers=16, rope_theta=500000.0),
     dict(dDash=16, intdim=512, attn_reduce_factor=8), (4, 3)),
]


def _model(dims: dict, kv_heads: int | None = None) -> ModelConfig:
    h = dims["num_attention_heads"]
    return ModelConfig(vocab_size=8, intermediate_size=8, num_key_value_heads=kv_heads or h, **dims)


def _randomize_norms(module: torch.nn.Module, seed: int) -> None:
    """LayerNorm weights/biases away from 1/0, so a swapped or missing mapping shows."""
    gen = torch.Generator().manual_seed(seed)
    for m in module.modules():
        if isinstance(m, torch.nn.LayerNorm):
            m.weight.data = 1 + 0.3 * torch.randn(m.weight.shape, generator=gen)
            m.bias.data = 0.3 * torch.randn(m.bias.shape, generator=gen)


def _paper_pair(dims: dict, sizes: dict, variant: str, seed: int = 0):
    torch.manual_seed(seed)
    mcfg = _model(dims)
    ref = PaperPredictorRef(dims["hidden_size"], dims["num_attention_heads"], dims["num_hidden_layers"],
                            sizes["attn_reduce_factor"], sizes["dDash"], sizes["intdim"], dims["rope_theta"], variant).eval()
    _randomize_norms(ref, seed)
    params, pcfg = paper_from_torch({k: torch_to_numpy(v) for k, v in ref.state_dict().items()}, mcfg, variant)
    assert pcfg == PredictorConfig(kind="paper", variant=variant, **sizes)
    return ref, mcfg, pcfg, params


def _ref_layer_head(ref: PaperPredictorRef, out: torch.Tensor) -> np.ndarray:
    """Reference output [B, L, S, d'] -> [B, L, N, H, d'] by the slot each (layer, head) reads."""
    idx = [ref.slot(layer, head) for layer in range(ref.layers) for head in range(ref.heads)]
    return out[:, :, idx].reshape(*out.shape[:2], ref.layers, ref.heads, -1).numpy()


@pytest.mark.parametrize("variant", ["v1", "v2"])
@pytest.mark.parametrize("name,dims,sizes,lengths", PAPER_CASES, ids=[c[0] for c in PAPER_CASES])
def test_paper_full_prefill_decode_match_reference(name, dims, sizes, lengths, variant):
    """Full sequence, prefill and step-by-step decode all equal the reference per row (ragged batch)."""
    ref, mcfg, pcfg, params = _paper_pair(dims, sizes, variant)
    module = PaperPredictor(pcfg, mcfg)
    b, length = len(lengths), max(lengths)
    x = torch.randn(b, length, dims["hidden_size"], generator=torch.Generator().manual_seed(1))
    want_q, want_k = [], []
    with torch.no_grad():
        for row, n in enumerate(lengths):  # the reference at each row's own length
            q, k = ref(x[row:row + 1, :n], torch.arange(n)[None])
            want_q.append(_ref_layer_head(ref, q)[0])
            want_k.append(_ref_layer_head(ref, k)[0])
    xj = jnp.asarray(x.numpy())
    pos = jnp.broadcast_to(jnp.arange(length), (b, length))

    q_full, k_full = jax.jit(module.apply)({"params": params}, xj, pos)
    for row, n in enumerate(lengths):
        np.testing.assert_allclose(q_full[row, :n], want_q[row], **TOL)
        np.testing.assert_allclose(k_full[row, :n], want_k[row], **TOL)

    steps = min(lengths) - 1  # prefill a ragged block (each row its first n - steps tokens), then decode
    p_lens = jnp.asarray(lengths) - steps
    prompt = int(p_lens.max())
    cache = module.init_cache(b, length)
    q_pre, cache = jax.jit(lambda p, xx, pp, ll, c: module.apply({"params": p}, xx, pp, ll, c, method="prefill"))(
        params, xj[:, :prompt], pos[:, :prompt], p_lens, cache)
    for row in range(b):
        np.testing.assert_allclose(q_pre[row, : int(p_lens[row])], want_q[row][: int(p_lens[row])], **TOL)
    step = jax.jit(lambda p, xx, pp, c: module.apply({"params": p}, xx, pp, c, method="step"))
    for t in range(steps):
        at = p_lens + t  # per-row positions
        q_step, cache = step(params, xj[jnp.arange(b), at][:, None], at[:, None], cache)
        for row in range(b):
            np.testing.assert_allclose(q_step[row, 0], want_q[row][int(at[row])], **TOL)
    for row, n in enumerate(lengths):  # the cached importance keys [B, N, H, T, d'] are the reference's K
        np.testing.assert_allclose(np.transpose(cache.imp_k[row, :, :, :n], (2, 0, 1, 3)), want_k[row], **TOL)


def test_importance_logits_match_reference():
    """s = Q.K/sqrt(d') for a consumer layer, over a chunk of query rows."""
    name, dims, sizes, _ = PAPER_CASES[0]
    ref, mcfg, pcfg, params = _paper_pair(dims, sizes, "v2")
    x = torch.randn(1, 8, dims["hidden_size"])
    with torch.no_grad():
        q, k = ref(x, torch.arange(8)[None])
    layer = 2
    q_all, k_all = PaperPredictor(pcfg, mcfg).apply({"params": params}, jnp.asarray(x.numpy()), jnp.arange(8)[None])
    got = importance_logits(q_all[:, 3:6, layer], k_all[:, :, layer])  # rows 3..5 against all keys
    for head in range(ref.heads):
        s = ref.slot(layer, head)
        want = (q[0, 3:6, s] @ k[0, :, s].T).numpy() / np.sqrt(sizes["dDash"])
        np.testing.assert_allclose(got[0, head], want, **TOL)


def test_slot_layout_rows_encode_their_head_and_layer():
    """Row block s of the torch importance weight is read by (layer s % N, head s // N)."""
    dims, sizes = PAPER_CASES[0][1], PAPER_CASES[0][2]
    ref, mcfg, pcfg, _ = _paper_pair(dims, sizes, "v1")
    state = {k: torch_to_numpy(v) for k, v in ref.state_dict().items()}
    n, h, dd, i = mcfg.num_hidden_layers, mcfg.num_attention_heads, pcfg.dDash, pcfg.intdim
    encoded = np.zeros((h * n * dd, i), np.float32)
    for head in range(h):
        for layer in range(n):
            encoded[(head * n + layer) * dd:(head * n + layer + 1) * dd] = 100 * head + layer
    state["q_proj_importance.2.weight"] = encoded
    params, _ = paper_from_torch(state, mcfg, "v1")
    kernel = params["q_proj_importance_2"]["kernel"].reshape(i, n, h, dd)  # Flax layout [N, H, d']
    for head in range(h):
        for layer in range(n):
            assert np.all(kernel[:, layer, head] == 100 * head + layer)


def test_paper_param_count_matches_flax_tree_and_paper_table():
    """Formula == the Flax tree's size; the paper's 1PC rows exactly."""
    for _, dims, sizes, _ in PAPER_CASES[:2]:
        for variant in ("v1", "v2"):
            pcfg, mcfg = PredictorConfig(variant=variant, **sizes), _model(dims)
            tree = jax.eval_shape(lambda: init_predictor(pcfg, mcfg))  # noqa: B023
            assert sum(a.size for a in jax.tree_util.tree_leaves(tree)) == paper_param_count(pcfg, mcfg)
    llama1b = _model(dict(hidden_size=2048, num_attention_heads=32, num_hidden_layers=16))
    assert paper_param_count(PredictorConfig(variant="v1", dDash=16, intdim=512, attn_reduce_factor=8), llama1b) == 12_393_472
    llama8b = _model(dict(hidden_size=4096, num_attention_heads=32, num_hidden_layers=32))
    assert paper_param_count(PredictorConfig(variant="v1", dDash=32, intdim=1024, attn_reduce_factor=8), llama8b) == 83_113_984


def test_longctx_scores_match_reference_and_param_count():
    """Per-KV-head scores (max over the group of <q, P^T k>/sqrt(d')) for every consumer layer."""
    torch.manual_seed(0)
    d, h, hkv, layers, hd, g, dd, i = 64, 8, 2, 6, 16, 2, 8, 32
    mcfg = ModelConfig(vocab_size=8, intermediate_size=8, hidden_size=d, num_attention_heads=h, num_key_value_heads=hkv,
                       num_hidden_layers=layers, head_dim=hd)
    ref = LongctxPredictorRef(d, h, hkv, layers, hd, g, dd, i)
    _randomize_norms(ref, 0)
    dicts = [{k[len(PRED):]: torch_to_numpy(v) for k, v in s.items()} for s in ref.producer_state_dicts()]
    params, pcfg, _ = longctx_from_torch(dicts, mcfg)
    module = LongctxPredictor(pcfg, mcfg)
    assert sum(a.size for a in jax.tree_util.tree_leaves(params)) == longctx_param_count(pcfg, mcfg)
    residual, keys = torch.randn(2, 5, d), torch.randn(2, 7, hkv, hd)
    for layer in range(1, layers):
        producer, slot = serving(layer, g)
        with torch.no_grad():
            want = ref.scores(layer, residual, keys).numpy()
        q = module.apply({"params": params}, producer, jnp.asarray(residual.numpy()), method="queries")[:, :, slot]
        k = module.apply({"params": params}, layer, jnp.asarray(keys.numpy()), method="project_keys")
        np.testing.assert_allclose(group_reduce(longctx_scores(q, k), hkv, "kv"), want, **TOL)


def test_longctx_param_count_llama_8b():
    """The long-context predictor for Llama-3.1-8B: 8 producers x 3,153,920 + 524,288 per-KV-head key projections."""
    mcfg = ModelConfig(vocab_size=8, intermediate_size=8, hidden_size=4096, num_attention_heads=32, num_key_value_heads=8,
                       num_hidden_layers=32, head_dim=128)
    assert longctx_param_count(PredictorConfig(kind="longctx", dDash=16, intdim=512, producer_frequency=4), mcfg) == 25_231_360 + 524_288


@pytest.mark.parametrize("config,d_dash,intdim,percent", [("llama-3.2-1b", 16, 512, 1.003), ("llama-3.1-8b", 32, 1024, 1.035)])
def test_paper_predictor_is_about_one_percent_of_the_llm(config, d_dash, intdim, percent):
    """The paper's claim (1-1.2 % of the LLM) for its 1B (1PC) and 8B configs."""
    from butler_jax.config import load_yaml, section
    from butler_jax.models.llama import init_params
    from butler_jax.models.predictor_io import count_params

    mcfg = section(load_yaml(f"configs/{config}.yaml"), "model", ModelConfig)
    llm = sum(a.size for a in jax.tree_util.tree_leaves(jax.eval_shape(lambda: init_params(mcfg))))
    share = 100 * count_params(PredictorConfig(variant="v1", dDash=d_dash, intdim=intdim, attn_reduce_factor=8), mcfg) / llm
    assert 1.0 <= share <= 1.2 and round(share, 3) == percent


def test_int8_keys_round_trip_and_scores():
    """Per-KV-head symmetric int8: error <= scale/2, padding ignored, later tokens clip."""
    from butler_jax.models.predictor_longctx import dequantize_keys, int8_scale, quantize_keys

    keys = jax.random.normal(jax.random.PRNGKey(0), (2, 6, 3, 8))
    valid = jnp.arange(6)[None] < jnp.asarray([[6], [4]])
    keys = keys.at[1, 5].set(100.0)  # padding: must not set the scale
    scale = int8_scale(keys, valid)
    np.testing.assert_allclose(scale, jnp.max(jnp.abs(jnp.where(valid[:, :, None, None], keys, 0)), axis=(0, 1, 3)) / 127)
    q = quantize_keys(keys, scale)
    assert q.dtype == jnp.int8
    err = jnp.abs(dequantize_keys(q, scale) - keys)
    assert bool(jnp.all(jnp.where(valid[:, :, None, None], err <= scale[:, None] / 2 + 1e-7, True)))
    assert int(q[1, 5].min()) == 127  # out-of-range later tokens clip
    queries = jax.random.normal(jax.random.PRNGKey(1), (2, 1, 6, 8))
    exact, approx = longctx_scores(queries, keys[:, :4]), longctx_scores(queries, dequantize_keys(q, scale)[:, :4])
    assert float(jnp.max(jnp.abs(exact - approx))) < 0.05


def test_converted_longctx_predictor_loads_for_evaluation(tmp_path):
    """A `predictor-to-jax --format longctx` directory loads through predictor_io (the evaluate.py path)."""
    from butler_jax.models.predictor_io import load_predictor
    from butler_jax.weights.predictor_torch import read_longctx, save_jax_predictor

    mcfg = ModelConfig(vocab_size=8, intermediate_size=8, hidden_size=32, num_attention_heads=4, num_key_value_heads=2,
                       num_hidden_layers=5, head_dim=8)
    torch.save(LongctxPredictorRef(32, 4, 2, 5, 8, 2, 4, 16).producer_state_dicts(), tmp_path / "pf.pt")
    save_jax_predictor(read_longctx(tmp_path / "pf.pt", mcfg), tmp_path / "jax")
    module, params, pcfg = load_predictor(tmp_path / "jax", mcfg)
    assert isinstance(module, LongctxPredictor) and pcfg.producer_frequency == 2 and "producer_2" in params
