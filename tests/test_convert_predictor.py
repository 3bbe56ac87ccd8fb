"""Predictor checkpoint conversion: torch -> JAX -> torch and JAX -> torch -> JAX bit-exact (fp32, bf16),
through files and the CLI, for every original format; each bad checkpoint gives its clear error."""

from __future__ import annotations

import json

import ml_dtypes
import numpy as np
import pytest
import torch
import yaml

import convert_torch
from butler_jax.config import ModelConfig, PredictorConfig
from butler_jax.models.predictor import init_predictor
from butler_jax.errors import CheckpointError
from butler_jax.weights.flax_checkpoint import flatten, unflatten
from butler_jax.weights.predictor_torch import (HF_PREFIX, ConvertedPredictor, load_jax_predictor, read_torch_predictor,
                                                write_torch_predictor)
from butler_jax.weights.tensors import torch_to_numpy, write_safetensors
from tests.torch_reference.predictors import LongctxPredictorRef, PaperPredictorRef

DIMS = dict(vocab_size=8, intermediate_size=8, hidden_size=32, num_attention_heads=4, num_key_value_heads=2,
            num_hidden_layers=5, head_dim=8)
MCFG = ModelConfig(**DIMS)
TORCH_DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16}


def _paper_state(variant: str, dtype: str, seed: int = 0) -> dict[str, torch.Tensor]:
    """A producer state dict as the original saves it: predictor + frozen q/k/v/o copies + head predictor."""
    torch.manual_seed(seed)
    ref = PaperPredictorRef(32, 4, 5, 2, 4, 16, 10000.0, variant)
    state = {f"sparse_token_predictor.{k}": v for k, v in ref.state_dict().items()}
    state.update({f"{p}_proj.weight": torch.randn(32, 32) for p in "qkvo"})
    state.update({"sparse_head_predictor.input_proj.weight": torch.randn(8, 32), "sparse_head_predictor.norm1.bias": torch.randn(8)})
    return {k: (v + 0.01 * torch.randn(v.shape)).to(TORCH_DTYPES[dtype]) for k, v in state.items()}


def _longctx_dicts(dtype: str, prefix: str = "") -> list[dict[str, torch.Tensor]]:
    torch.manual_seed(0)
    ref = LongctxPredictorRef(32, 4, 2, 5, 8, 2, 4, 16)
    return [{prefix + k: v.to(TORCH_DTYPES[dtype]) for k, v in d.items()} for d in ref.producer_state_dicts()]


def _model_yaml(tmp_path) -> str:
    path = tmp_path / "model.yaml"
    path.write_text(yaml.safe_dump({"model": DIMS}))
    return str(path)


def _write_source(tmp_path, fmt: str, dtype: str, container: str = "list"):
    """(path, original tensors by name) of a checkpoint in `fmt`."""
    if fmt == "longctx":
        dicts = _longctx_dicts(dtype)
        path = tmp_path / "pf.pt"
        torch.save({"model_state_dict": dicts, "step": 3}, path)
        return path, {f"{i}:{k}": v for i, d in enumerate(dicts) for k, v in d.items()}
    state = _paper_state("v1" if fmt == "v1" else "v2", dtype)
    if fmt == "hf-butler":
        directory = tmp_path / "butler"
        directory.mkdir()
        del state["q_proj.weight"], state["k_proj.weight"], state["v_proj.weight"], state["o_proj.weight"]
        state = {HF_PREFIX + k: v for k, v in state.items()}
        backbone = {"model.embed_tokens.weight": torch.randn(8, 32).to(TORCH_DTYPES[dtype])}  # ignored
        write_safetensors({k: torch_to_numpy(v) for k, v in {**state, **backbone}.items()}, directory / "model.safetensors")
        config = {"model_type": "llama_butler", "architectures": ["LlamaButlerForCausalLM"], "dDash": 4, "intdim": 16,
                  "attn_reduce_factor": 2, "rope_theta": 10000.0, **DIMS}
        (directory / "config.json").write_text(json.dumps(config))
        return directory, state
    path = tmp_path / f"{fmt}.pt"
    torch.save({"model_state_dict": [state], "step": 7} if container == "resume" else [state], path)
    return path, state


def _read_back(path, fmt: str) -> dict[str, torch.Tensor]:
    if fmt == "hf-butler":
        from safetensors.torch import load_file

        return load_file(str(path))
    obj = torch.load(path, weights_only=True)
    if fmt == "longctx":
        return {f"{i}:{k}": v for i, d in enumerate(obj["model_state_dict"]) for k, v in d.items()}
    return obj[0]


def _assert_same_tensors(got: dict[str, torch.Tensor], want: dict[str, torch.Tensor]) -> None:
    assert sorted(got) == sorted(want)
    for name, value in want.items():
        assert got[name].dtype == value.dtype, name
        assert torch.equal(got[name].view(torch.int16) if value.dtype == torch.bfloat16 else got[name],
                           value.view(torch.int16) if value.dtype == torch.bfloat16 else value), name


@pytest.mark.parametrize("dtype", ["float32", "bfloat16"])
@pytest.mark.parametrize("fmt", ["v1", "v2", "hf-butler", "longctx"])
def test_torch_to_jax_to_torch_bit_exact_via_cli(tmp_path, fmt, dtype):
    src, want = _write_source(tmp_path, fmt, dtype)
    jax_dir, out = tmp_path / "jax", tmp_path / ("back.safetensors" if fmt == "hf-butler" else "back.pt")
    model = [] if fmt == "hf-butler" else ["--model", _model_yaml(tmp_path)]
    assert convert_torch.main(["predictor-to-jax", str(src), str(jax_dir), "--format", fmt, *model]) == 0
    conv = load_jax_predictor(jax_dir)
    assert {str(v.dtype) for v in flatten(conv.params).values()} == {dtype}
    assert convert_torch.main(["predictor-to-torch", str(jax_dir), str(out)]) == 0
    _assert_same_tensors(_read_back(out, fmt), want)


def test_resume_dict_reads_like_the_list(tmp_path):
    src, want = _write_source(tmp_path, "v1", "float32", container="resume")
    conv = read_torch_predictor(src, "v1", MCFG)
    out = write_torch_predictor(conv, tmp_path / "back.pt")
    _assert_same_tensors(_read_back(out, "v1"), want)
    assert "6 tensors carried unchanged" in conv.summary()


@pytest.mark.parametrize("dtype", ["float32", "bfloat16"])
@pytest.mark.parametrize("fmt", ["v1", "v2", "hf-butler"])
def test_paper_jax_to_torch_to_jax_bit_exact(tmp_path, fmt, dtype):
    variant = "v1" if fmt == "v1" else "v2"
    pcfg = PredictorConfig(variant=variant, dDash=4, intdim=16, attn_reduce_factor=2)
    target = ml_dtypes.bfloat16 if dtype == "bfloat16" else np.float32
    params = {k: np.asarray(v).astype(target) for k, v in flatten(init_predictor(pcfg, MCFG)).items()}
    shape = {k: getattr(MCFG, k) for k in ("hidden_size", "num_hidden_layers", "num_attention_heads", "num_key_value_heads", "head_dim")}
    conv = ConvertedPredictor(unflatten(params), pcfg, shape, {}, {"format": fmt})
    path = write_torch_predictor(conv, tmp_path / ("p.safetensors" if fmt == "hf-butler" else "p.pt"))
    back = read_torch_predictor(path, fmt, MCFG)
    got = flatten(back.params)
    assert sorted(got) == sorted(params)
    for name, value in params.items():
        assert got[name].dtype == value.dtype and np.array_equal(got[name].view(np.uint8), value.view(np.uint8)), name


def test_longctx_jax_to_torch_to_jax_bit_exact_bf16(tmp_path):
    src, _ = _write_source(tmp_path, "longctx", "bfloat16")
    conv = read_torch_predictor(src, "longctx", MCFG)
    back = read_torch_predictor(write_torch_predictor(conv, tmp_path / "again.pt"), "longctx", MCFG)
    for name, value in flatten(conv.params).items():
        assert np.array_equal(flatten(back.params)[name].view(np.uint8), value.view(np.uint8)), name


def test_longctx_prefixes_and_attention_head_projection(tmp_path):
    """`producer.` nesting is stripped (least-prefixed copy wins); per-attention-head key projections are
    kept exactly (torch -> JAX -> torch bit-exact) and averaged over each KV group only when used."""
    import jax
    import jax.numpy as jnp

    from butler_jax.models.predictor_longctx import LongctxPredictor

    dicts = _longctx_dicts("bfloat16", prefix="producer.")
    name = "producer.sparse_token_predictor.key_cache_proj"
    noise = torch.randn(dicts[0][name].repeat_interleave(2, 1).shape).to(torch.bfloat16)
    for d in dicts:  # 4 attention heads that differ within each group of 2
        d[name] = d[name].repeat_interleave(2, 1) + noise
    torch.save(dicts, tmp_path / "nested.pt")
    jax_dir, back = tmp_path / "jax", tmp_path / "back.pt"
    model = ["--model", _model_yaml(tmp_path)]
    assert convert_torch.main(["predictor-to-jax", str(tmp_path / "nested.pt"), str(jax_dir), "--format", "longctx", *model]) == 0
    conv = load_jax_predictor(jax_dir)
    assert conv.source["prefix"] == "producer.sparse_token_predictor."
    assert conv.pcfg.key_proj_heads == "attention" and "per attention head" in conv.summary()
    assert conv.params["key_cache_proj"].shape == (5, 4, 8, 4)
    assert convert_torch.main(["predictor-to-torch", str(jax_dir), str(back)]) == 0
    for want, got in zip(dicts, torch.load(back)["model_state_dict"]):
        assert sorted(got) == sorted(want)
        for key in want:
            assert got[key].dtype == want[key].dtype and torch.equal(got[key].view(torch.int16), want[key].view(torch.int16)), key
    k = jax.random.normal(jax.random.PRNGKey(0), (1, 3, 2, 8))
    proj = dicts[0][name].float().numpy()[2].reshape(2, 2, 8, 4).mean(1)  # layer 2, served by producer 0's copy
    module = LongctxPredictor(conv.pcfg, MCFG)
    got = module.apply({"params": jax.tree.map(jnp.asarray, conv.params)}, 2, k, method=LongctxPredictor.project_keys)
    np.testing.assert_allclose(np.asarray(got), np.einsum("bthd,hde->bthe", np.asarray(k), proj), rtol=1e-5, atol=1e-6)


def test_dtype_cast_on_import(tmp_path):
    src, _ = _write_source(tmp_path, "v1", "float32")
    conv = read_torch_predictor(src, "v1", MCFG, dtype="bfloat16")
    assert {str(v.dtype) for v in flatten(conv.params).values()} == {"bfloat16"}
    assert all(v.dtype == np.float32 for v in conv.carried.values())  # carried through unchanged


def _paper_file(tmp_path, edit) -> str:
    state = _paper_state("v1", "float32")
    edit(state)
    torch.save([state], tmp_path / "bad.pt")
    return str(tmp_path / "bad.pt")


BAD_PAPER = [
    ("missing", lambda s: s.pop("sparse_token_predictor.norm1.bias"), r"missing tensor 'norm1\.bias'"),
    ("extra", lambda s: s.update({"sparse_token_predictor.extra.weight": torch.zeros(2)}), r"unexpected tensor 'extra\.weight'"),
    ("stranger", lambda s: s.update({"lm_head.weight": torch.zeros(2)}), r"unexpected tensor 'lm_head\.weight'"),
    ("shape", lambda s: s.update({"sparse_token_predictor.ffn.0.bias": torch.zeros(7)}),
     r"tensor 'ffn\.0\.bias' has shape \(7,\), expected \(32,\)"),
]


@pytest.mark.parametrize("case,edit,message", BAD_PAPER, ids=[c[0] for c in BAD_PAPER])
def test_bad_paper_checkpoint_errors(tmp_path, case, edit, message):
    with pytest.raises(CheckpointError, match=message):
        read_torch_predictor(_paper_file(tmp_path, edit), "v1", MCFG)


def test_bad_longctx_checkpoint_errors(tmp_path):
    dicts = _longctx_dicts("float32")
    dicts[1]["sparse_token_predictor.norm_importance.bias"] = torch.zeros(5)
    torch.save(dicts, tmp_path / "shape.pt")
    with pytest.raises(CheckpointError, match=r"producer 1: tensor 'norm_importance\.bias' has shape \(5,\), expected \(32,\)"):
        read_torch_predictor(tmp_path / "shape.pt", "longctx", MCFG)
    torch.save(_longctx_dicts("float32")[:1], tmp_path / "few.pt")
    with pytest.raises(CheckpointError, match="holds 1 producer dicts; 5 layers with producer_frequency=2 need 2"):
        read_torch_predictor(tmp_path / "few.pt", "longctx", MCFG)


def test_truncated_and_wrong_variant_files(tmp_path):
    src, _ = _write_source(tmp_path, "v2", "float32")
    with pytest.raises(CheckpointError, match="has norm_importance, so it is a v2 predictor; pass --format v2"):
        read_torch_predictor(src, "v1", MCFG)
    data = src.read_bytes()
    src.write_bytes(data[: len(data) // 2])
    with pytest.raises(CheckpointError, match="may be truncated"):
        read_torch_predictor(src, "v2", MCFG)
    hf, _ = _write_source(tmp_path, "hf-butler", "float32")
    weights = hf / "model.safetensors"
    weights.write_bytes(weights.read_bytes()[:200])
    with pytest.raises(CheckpointError, match="may be truncated"):
        read_torch_predictor(hf, "hf-butler", None)


@pytest.mark.parametrize("dtype", ["float32", "bfloat16"])
def test_butler_model_jax_to_hf_to_jax_bit_exact(tmp_path, dtype):
    """`jax-to-hf --predictor` writes a whole Butler directory; backbone and predictor read back bit-exact."""
    from butler_jax.models.llama import init_params
    from butler_jax.weights.hf import cast_tree
    from butler_jax.weights.model_checkpoint import load_jax_model, save_jax_model

    mcfg = ModelConfig(**DIMS, dtype=dtype)
    save_jax_model(cast_tree(init_params(mcfg), dtype), mcfg, tmp_path / "model")
    src, _ = _write_source(tmp_path, "v2", dtype)
    assert convert_torch.main(["predictor-to-jax", str(src), str(tmp_path / "pred"), "--format", "v2",
                               "--model", _model_yaml(tmp_path)]) == 0
    butler = tmp_path / "butler"
    assert convert_torch.main(["jax-to-hf", str(tmp_path / "model"), str(butler), "--predictor", str(tmp_path / "pred")]) == 0
    assert json.loads((butler / "config.json").read_text())["model_type"] == "llama_butler"
    assert "remote-code modeling file" in (butler / "README.md").read_text()
    assert convert_torch.main(["llama-to-jax", str(butler), str(tmp_path / "model2")]) == 0
    assert convert_torch.main(["predictor-to-jax", str(butler), str(tmp_path / "pred2"), "--format", "hf-butler"]) == 0
    for (_, a), (_, b) in ((load_jax_model(tmp_path / "model"), load_jax_model(tmp_path / "model2")),
                           ((None, load_jax_predictor(tmp_path / "pred").params), (None, load_jax_predictor(tmp_path / "pred2").params))):
        fa, fb = flatten(a), flatten(b)
        assert sorted(fa) == sorted(fb)
        for name in fa:
            assert fa[name].dtype == fb[name].dtype and np.array_equal(fa[name].view(np.uint8), fb[name].view(np.uint8)), name
    carried = load_jax_predictor(tmp_path / "pred").carried
    assert sorted(load_jax_predictor(tmp_path / "pred2").carried) == sorted(HF_PREFIX + k for k in carried if k.startswith("sparse_head"))
