"""Sharded decode on 8 simulated CPU devices equals one-device decode: the tokens of dense, Quest
and TokenButler (paper v2 and long-context predictors) on 2, 4 and 8 sequence shards (and a
KV-head split), and the sharded top-K index for index (ties, short rows, both selection paths),
also as long-context TokenButler's grouped selection (one top-K per producer group) runs it in decode.

XLA_FLAGS must name the device count before JAX starts its backend: run alone
(`pytest tests/test_sharded_decode.py`) this module sets it; in a process where JAX started
already (the whole suite), `test_in_its_own_process` reruns this file in a fresh process.
"""

from __future__ import annotations

import dataclasses
import os
import re
import subprocess
import sys
from functools import partial
from pathlib import Path

FLAG = "--xla_force_host_platform_device_count=8"
_OUTER_FLAGS = os.environ.get("XLA_FLAGS")
if "jax" not in sys.modules:
    os.environ["XLA_FLAGS"] = f"{_OUTER_FLAGS or ''} {FLAG}".strip()

import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
import numpy as np  # noqa: E402
import pytest  # noqa: E402
from jax.sharding import PartitionSpec as P  # noqa: E402

from butler_jax.config import ModelConfig, PredictorConfig  # noqa: E402
from butler_jax.decode import generate  # noqa: E402
from butler_jax.errors import ConfigError  # noqa: E402
from butler_jax.models.llama import LlamaForCausalLM, init_params  # noqa: E402
from butler_jax.models.predictor import PaperPredictor, init_predictor  # noqa: E402
from butler_jax.models.predictor_longctx import LongctxPredictor  # noqa: E402
from butler_jax.sharding import attention as sharded_attention  # noqa: E402
from butler_jax.sharding.decode import shard_policy  # noqa: E402
from butler_jax.sharding.local import Shard  # noqa: E402
from butler_jax.sharding.mesh import SEQ, MeshConfig, on_mesh  # noqa: E402
from butler_jax.sharding.placement import place_cache  # noqa: E402
from butler_jax.sharding.select import global_selection, sharded_select  # noqa: E402
from butler_jax.cache import init_cache  # noqa: E402
from butler_jax.decode_attention import dense_attend  # noqa: E402
from butler_jax.sparsity import SparsityConfig, make_policy  # noqa: E402
from butler_jax.sparsity.budget import parse_budget  # noqa: E402
from butler_jax.sparsity.select import decode_select  # noqa: E402

EIGHT = len(jax.devices()) >= 8  # the backend has started: later subprocesses must not inherit the flag
if _OUTER_FLAGS is None:
    os.environ.pop("XLA_FLAGS", None)
else:
    os.environ["XLA_FLAGS"] = _OUTER_FLAGS
needs8 = pytest.mark.skipif(not EIGHT, reason="needs 8 devices: test_in_its_own_process runs this file")

CFG = ModelConfig(vocab_size=128, hidden_size=64, intermediate_size=96, num_hidden_layers=3,
                  num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=512)
PROMPTS = [list(np.random.default_rng(0).integers(0, 128, 40)), list(np.random.default_rng(1).integers(0, 128, 23))]
NEW = 8


@pytest.mark.skipif(EIGHT, reason="this process sees 8 devices: the tests run here")
def test_in_its_own_process() -> None:
    env = dict(os.environ, XLA_FLAGS=f"{os.environ.get('XLA_FLAGS', '')} {FLAG}".strip(), JAX_PLATFORMS="cpu")
    proc = subprocess.run([sys.executable, "-m", "pytest", "-o", "addopts=", "-q", "-p", "no:cacheprovider", __file__],
                          cwd=Path(__file__).resolve().parents[1], env=env, capture_output=True, text=True, timeout=900)
    assert proc.returncode == 0, proc.stdout[-4000:] + proc.stderr[-2000:]
    summary = proc.stdout.strip().splitlines()[-1]  # e.g. "22 passed, 1 skipped in 95.1s" (this test skips there)
    assert re.match(r"\d+ passed, 1 skipped", summary) and int(summary.split()[0]) >= 20, proc.stdout[-500:]


@pytest.fixture(scope="module")
def tiny():
    return LlamaForCausalLM(CFG), init_params(CFG, seed=1)


def _predictor(kind: str):
    if kind == "paper":
        pcfg = PredictorConfig(variant="v2", dDash=8, intdim=32, attn_reduce_factor=2)
        return PaperPredictor(pcfg, CFG), init_predictor(pcfg, CFG, seed=2)
    pcfg = PredictorConfig(kind="longctx", dDash=8, intdim=16, producer_frequency=2)
    module = LongctxPredictor(pcfg, CFG)
    return module, module.init(jax.random.PRNGKey(3), jnp.ones((1, 2, CFG.hidden_size)), jnp.ones((1, 2, 2, 16)))["params"]


CASES = {  # name: (method, predictor kind, budget); token budgets take the top-K kernel's rule, fractions lax.top_k's
    "dense": ("dense", None, "16"),
    "quest": ("quest", None, "16"),
    "tokenbutler_v2": ("tokenbutler", "paper", "16"),
    "tokenbutler_v2_fraction": ("tokenbutler", "paper", "keep=0.3"),
    "tokenbutler_longctx": ("tokenbutler", "longctx", "12"),
}


@needs8
@pytest.mark.parametrize("case", list(CASES))
def test_sharded_generation_equals_one_device(tiny, case) -> None:
    model, params = tiny
    method, kind, budget = CASES[case]
    section = SparsityConfig(method=method, budget=budget, n_sink=2, n_window=3, page_size=4, implementation="xla")
    policy, pp = make_policy(section, CFG, _predictor(kind) if kind else None)
    one = generate(model, params, PROMPTS, NEW, policy=policy, policy_params=pp)
    assert all(len(r) == NEW for r in one.rows())
    for n in (2, 4, 8):
        sharded = generate(model, params, PROMPTS, NEW, policy=policy, policy_params=pp, mesh=MeshConfig(seq=n))
        assert sharded.rows() == one.rows(), f"{case} on {n} shards"
        np.testing.assert_array_equal(sharded.kept_tokens, one.kept_tokens, err_msg=f"{case} on {n} shards: keys read")


def _recording(policy, records: dict):
    """`policy` whose every decode select appends to records[(step, layer)] its selection as global
    positions: per (batch row, head) the sorted valid ones. Sharded, every device appends the same."""

    def record(layer: int, step, indices, valid) -> None:
        indices, valid = np.asarray(indices), np.asarray(valid)
        rows = tuple(tuple(np.sort(indices[r][valid[r]])) for r in np.ndindex(valid.shape[:2]))
        records.setdefault((int(step), layer), []).append(rows)

    class Recording(type(policy)):
        def select(self, params, layer, x, cache, state):
            idx, ok, new = super().select(params, layer, x, cache, state)
            glob = (idx, ok) if self.shard is None else global_selection(idx, ok, self.shard, cache.capacity)
            jax.debug.callback(partial(record, layer), state.step, *glob)
            return idx, ok, new

    return Recording(**{f.name: getattr(policy, f.name) for f in dataclasses.fields(policy)})


@needs8
def test_sharded_grouped_selection_equals_one_device(tiny) -> None:
    """Long-context TokenButler selects per producer group on a mesh (one device included); on 2 and
    8 shards the tokens and, at every step and sparse layer, the selected positions are the one-device ones."""
    model, params = tiny
    section = SparsityConfig(method="tokenbutler", budget="12", n_sink=2, n_window=3, implementation="xla")
    policy, pp = make_policy(section, CFG, _predictor("longctx"))
    assert all(shard_policy(policy, CFG, MeshConfig(seq=n))[0].grouped for n in (1, 2, 8))
    runs = {}
    for n in (1, 2, 8):
        records = {}
        mesh = MeshConfig(seq=n) if n > 1 else None  # n = 1: no mesh, the one-device reference
        tokens = generate(model, params, PROMPTS, NEW, policy=_recording(policy, records), policy_params=pp,
                          mesh=mesh).rows()
        runs[n] = tokens, records
    tokens, one = runs[1]
    assert len(one) == (NEW - 1) * (CFG.num_hidden_layers - 1) and all(len(calls) == 1 for calls in one.values())
    for n in (2, 8):
        assert runs[n][0] == tokens, f"{n} shards"
        assert runs[n][1].keys() == one.keys()
        for key, calls in runs[n][1].items():
            assert calls == one[key] * n, f"{n} shards, (step, layer) {key}"


@needs8
@pytest.mark.parametrize("method", ["dense", "quest"])
def test_kv_head_split_equals_one_device(tiny, method) -> None:
    model, params = tiny
    policy, pp = make_policy(SparsityConfig(method=method, budget="16", n_sink=2, n_window=3, page_size=4,
                                            implementation="xla"), CFG)
    one = generate(model, params, PROMPTS, NEW, policy=policy, policy_params=pp)
    split = generate(model, params, PROMPTS, NEW, policy=policy, policy_params=pp, mesh=MeshConfig(seq=4, kv_heads=2))
    assert split.rows() == one.rows()
    np.testing.assert_array_equal(split.kept_tokens, one.kept_tokens)


def _selection_case(seed: int, t: int):
    """Scores [2, 3, t] with many ties (4 levels), some -inf / +inf; rows at query positions short and long."""
    rng = np.random.default_rng(seed)
    scores = rng.integers(0, 4, (2, 3, t)).astype(np.float32)
    scores[0, 1, 5:9] = -np.inf
    scores[1, 2, 20:23] = np.inf
    return jnp.asarray(scores)


@needs8
@pytest.mark.parametrize("n", [2, 4, 8])
@pytest.mark.parametrize("budget,n_sink,n_window", [("12", 2, 3), ("12", 0, 0), ("keep=0.3", 2, 3), ("3", 2, 3)])
def test_sharded_selection_equals_one_device_index_for_index(n, budget, n_sink, n_window) -> None:
    """Token budgets holding the forced tokens take the kernel's rule; fractions and a budget smaller
    than sinks + window take lax.top_k's (forced tokens cut to the budget, -inf never taken)."""
    t = 64
    b = parse_budget(budget)
    k_max = b.max_kept(t)
    shard = Shard(n)
    mesh = MeshConfig(seq=n).build()

    def local(scores, query_pos):
        idx, ok = sharded_select(scores, query_pos, b, k_max, n_sink, n_window, shard, "xla")
        return global_selection(idx, ok, shard, scores.shape[-1])

    run = jax.jit(on_mesh(local, mesh, in_specs=(P(None, None, SEQ), P()), out_specs=(P(), P())))
    for seed, query_pos in enumerate(([0, 63], [5, 30], [11, 12], [40, 2])):
        scores, q = _selection_case(seed, t), jnp.asarray(query_pos, jnp.int32)
        ref_idx, ref_ok = decode_select(scores, q, b, k_max, n_sink, n_window, "xla")
        got_idx, got_ok = run(scores, q)
        for row in np.ndindex(2, 3):
            want = np.sort(np.asarray(ref_idx[row])[np.asarray(ref_ok[row])])
            have = np.sort(np.asarray(got_idx[row])[np.asarray(got_ok[row])])
            np.testing.assert_array_equal(have, want, err_msg=f"row {row}, query_pos {query_pos}")
        assert int(ref_ok.sum()) > 0


@needs8
def test_partials_merged_by_lse_equal_one_device_attention() -> None:
    rng = np.random.default_rng(5)
    q, k, v = (jnp.asarray(rng.standard_normal(s), jnp.float32) for s in ((2, 1, 4, 16), (2, 2, 64, 16), (2, 2, 64, 16)))
    counts = jnp.asarray([64, 9], jnp.int32)  # row 1 ends inside the second shard: later shards see nothing
    want = dense_attend(q, k, v, counts, "xla")
    shard = Shard(8)
    run = on_mesh(lambda q, k, v, c: sharded_attention.dense_attend(q, k, v, c, shard, "xla"), MeshConfig(seq=8).build(),
                  in_specs=(P(), P(None, None, SEQ), P(None, None, SEQ), P()), out_specs=P())
    np.testing.assert_allclose(np.asarray(run(q, k, v, counts)), np.asarray(want), atol=2e-6)


@needs8
def test_cache_placement_splits_tokens_and_heads() -> None:
    mesh = MeshConfig(seq=4, kv_heads=2).build()
    cache = place_cache(init_cache(CFG, 2, 64), mesh)
    shards = cache.k[0].addressable_shards
    assert len(shards) == 8 and {s.data.shape for s in shards} == {(2, 1, 16, 16)}
    assert cache.lengths.sharding.is_fully_replicated


def test_mesh_errors_name_the_value_and_the_fix(tiny) -> None:
    with pytest.raises(ConfigError, match=r"mesh.seq must be .* \(got 0\); set mesh.seq=N"):
        MeshConfig(seq=0)
    with pytest.raises(ConfigError, match=r"mesh.kv_heads=3 does not divide the model's 2 KV heads"):
        MeshConfig(kv_heads=3).check(CFG, n_devices=8)
    with pytest.raises(ConfigError, match=r"needs 16 devices, JAX sees 8 .*xla_force_host_platform_device_count"):
        MeshConfig(seq=16).check(CFG, n_devices=8)
    with pytest.raises(ConfigError, match=r"--mesh takes axis=count pairs"):
        MeshConfig.parse("seq:2")
    with pytest.raises(ConfigError, match=r"unknown key mesh.tokens"):
        MeshConfig.parse("tokens=2")
    assert MeshConfig.parse("seq=2,kv_heads=1") == MeshConfig(seq=2)
    model, params = tiny
    for section, match in ((SparsityConfig(method="h2o"), "sharded decode supports sparsity.method"),
                           (SparsityConfig(method="tokenbutler", predict_interval=4), "predict_interval=1")):
        policy, pp = make_policy(section, CFG, _predictor("paper"))
        with pytest.raises(ConfigError, match=match):
            generate(model, params, PROMPTS, 2, policy=policy, policy_params=pp, mesh=MeshConfig(seq=1))
