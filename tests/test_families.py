"""Every supported family (Llama, Mistral, Qwen2/2.5, Qwen3, Phi-3) against transformers on tiny random
models: logits (fp32, <= 1e-4), greedy generation of 32 tokens, config.json both ways, the jax -> HF -> jax
round trip bit-exact through convert_torch.py, refusals of config fields that would change the math,
and TokenButler / Quest decode == simulation and predictor training on each family."""

from __future__ import annotations

import dataclasses
import json

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import torch

import convert_torch
from butler_jax.config import ConfigError, ModelConfig, RopeScaling
from butler_jax.models.llama import LlamaForCausalLM, init_params
from butler_jax.errors import CheckpointError
from butler_jax.weights.flax_checkpoint import flatten, unflatten
from butler_jax.weights.hf import config_from_hf, config_to_hf, save_hf_directory
from butler_jax.weights.model_checkpoint import load_jax_model, save_jax_model
from butler_jax.weights.names import flax_path, hf_name, hf_param_shapes, hf_state_dict_to_params, params_to_hf_state_dict
from butler_jax.weights.tensors import torch_to_numpy
from tests.hf_reference import hf_config, hf_logits, hf_model_class, hf_model_from_state

BASE = ModelConfig(vocab_size=128, hidden_size=64, intermediate_size=96, num_hidden_layers=2, num_attention_heads=4,
                   num_key_value_heads=2, max_position_embeddings=256, rms_norm_eps=1e-6, tie_word_embeddings=False,
                   bos_token_id=1, eos_token_id=2)
_R = dataclasses.replace
_LONG = RopeScaling("longrope", factor=8.0, short_factor=(1.0, 1.2, 1.5, 2.0, 2.5, 3.0, 4.0, 6.0),
                    long_factor=(1.0, 2.0, 3.0, 5.0, 8.0, 12.0, 16.0, 24.0), original_max_position_embeddings=32)
CASES = {
    "llama-gelu-biases": _R(BASE, hidden_act="gelu", qkv_bias=True, o_bias=True, mlp_bias=True),
    "mistral-window16": _R(BASE, family="mistral", sliding_window=16),
    "mistral-mqa-headdim-tied": _R(BASE, family="mistral", num_key_value_heads=1, head_dim=32, tie_word_embeddings=True,
                                   sliding_window=4096),
    "qwen2-tied": _R(BASE, family="qwen2", qkv_bias=True, tie_word_embeddings=True, rope_theta=1e6),
    "qwen2-mha-linear": _R(BASE, family="qwen2", qkv_bias=True, num_key_value_heads=4,
                           rope_scaling=RopeScaling("linear", factor=4.0)),
    "qwen3-headdim-tied": _R(BASE, family="qwen3", qk_norm=True, head_dim=32, tie_word_embeddings=True),
    "qwen3-bias-llama3-window": _R(BASE, family="qwen3", qk_norm=True, qkv_bias=True, o_bias=True, num_hidden_layers=3,
                                   num_attention_heads=8, rope_scaling=RopeScaling("llama3", 8.0, 1.0, 4.0, 64),
                                   sliding_window=12, sliding_window_from_layer=1),
    "phi3": _R(BASE, family="phi3", rms_norm_eps=1e-5),
    "phi3-longrope-partial-window": _R(BASE, family="phi3", partial_rotary_factor=0.5, sliding_window=20,
                                       rope_scaling=_R(_LONG, short_factor=_LONG.short_factor[:4],
                                                       long_factor=_LONG.long_factor[:4])),
    "phi3-longrope": _R(BASE, family="phi3", num_key_value_heads=1, rope_scaling=_LONG),
}


def _explicit(cfg: ModelConfig) -> ModelConfig:
    """`cfg` with head_dim written out (config.json always carries it)."""
    return _R(cfg, head_dim=cfg.resolved_head_dim, source="random")


def _random_hf_state(cfg: ModelConfig, seed: int) -> dict[str, np.ndarray]:
    """transformers' own init (wider), then random norm weights and biases so every tensor matters."""
    torch.manual_seed(seed)
    model = hf_model_class(cfg)(hf_config(cfg, initializer_range=0.1))
    state = {k: torch_to_numpy(v) for k, v in model.state_dict().items()}
    if cfg.tie_word_embeddings:
        state.pop("lm_head.weight", None)
    rng = np.random.default_rng(seed)
    for name in state:
        if name.endswith("norm.weight"):
            state[name] = rng.uniform(0.5, 1.5, state[name].shape).astype(np.float32)
        elif name.endswith(".bias"):
            state[name] = rng.normal(0, 0.1, state[name].shape).astype(np.float32)
    return state


@pytest.fixture(scope="module", params=list(CASES))
def case(request):
    """(name, cfg, HF state, our params, the HF model) per case."""
    cfg = CASES[request.param]
    state = _random_hf_state(cfg, seed=len(request.param))
    return request.param, cfg, state, hf_state_dict_to_params(state, cfg), hf_model_from_state(cfg, state)


def test_logits_match_transformers(case) -> None:
    name, cfg, _, params, hf = case
    tokens = np.random.default_rng(0).integers(0, cfg.vocab_size, (2, 64))
    for t in (64, 24):  # longrope: long factors past original_max_position_embeddings=32, short ones below
        expected = hf_logits(hf, tokens[:, :t])
        ours, _ = LlamaForCausalLM(cfg).apply({"params": params}, jnp.asarray(tokens[:, :t]),
                                               jnp.broadcast_to(jnp.arange(t), (2, t)))
        assert np.abs(np.asarray(ours) - expected).max() <= 1e-4, (name, t)


def test_greedy_generation_equals_transformers_generate(case, tmp_path) -> None:
    """32 greedy tokens of our decode loop == transformers' generate on the exported directory."""
    from transformers import AutoModelForCausalLM, GenerationConfig

    from butler_jax.decode import generate

    name, cfg, _, params, _ = case
    if cfg.sliding_window is not None and cfg.sliding_window < 40 or cfg.rope_scaling.rope_type == "longrope":
        cfg = _R(cfg, sliding_window=None if cfg.sliding_window is None else 64,
                 rope_scaling=_R(cfg.rope_scaling, original_max_position_embeddings=64))  # decode-path limits
    save_hf_directory(params, cfg, tmp_path / "hf")
    model = AutoModelForCausalLM.from_pretrained(str(tmp_path / "hf"), dtype=torch.float32).eval()
    prompt = list(np.random.default_rng(1).integers(3, cfg.vocab_size, 8))
    ours = generate(LlamaForCausalLM(cfg), params, [prompt], 32, prompt_width=8).rows()[0]  # cache of 40
    greedy = GenerationConfig(max_new_tokens=32, do_sample=False, eos_token_id=None, pad_token_id=0)
    with torch.no_grad():
        theirs = model.generate(torch.tensor([prompt]), generation_config=greedy)[0, len(prompt):].tolist()
    assert len(ours) == 32 and ours == theirs, name


def test_config_json_both_ways(case) -> None:
    """transformers' own serialisation of our config.json (all its defaults) reads back to the same config."""
    name, cfg, *_ = case
    assert config_from_hf(hf_config(cfg).to_dict()) == _explicit(cfg), name
    assert config_from_hf(config_to_hf(cfg)) == _explicit(cfg), name


def test_name_rules_are_a_bijection(case) -> None:
    """HF names -> Flax paths -> HF names, and the paths are exactly the model's parameter tree."""
    _, cfg, state, params, _ = case
    names = hf_param_shapes(cfg)
    assert {hf_name(flax_path(n)[0]) for n in names} == set(names)
    model_paths = set(flatten(jax.eval_shape(lambda: init_params(cfg))))
    assert {"/".join(flax_path(n)[0]) for n in names} == model_paths
    back = params_to_hf_state_dict(params, cfg)
    assert sorted(back) == sorted(k for k in state if not k.endswith("inv_freq"))
    assert all(np.array_equal(back[k], state[k]) for k in back)


@pytest.mark.parametrize("dtype", ["float32", "bfloat16"])
def test_jax_to_hf_to_jax_bit_exact(tmp_path, dtype) -> None:
    import ml_dtypes

    np_dtype = {"float32": np.float32, "bfloat16": ml_dtypes.bfloat16}[dtype]
    for name in ("llama-gelu-biases", "mistral-window16", "qwen2-tied", "qwen3-bias-llama3-window",
                 "phi3-longrope-partial-window"):
        cfg = _R(CASES[name], dtype=dtype)
        rng = np.random.default_rng(0)
        flat = {k: rng.standard_normal(np.shape(v)).astype(np_dtype) for k, v in flatten(init_params(cfg)).items()}
        save_jax_model(unflatten(flat), cfg, tmp_path / name / "jax")
        assert convert_torch.main(["jax-to-hf", str(tmp_path / name / "jax"), str(tmp_path / name / "hf")]) == 0
        assert convert_torch.main(["llama-to-jax", str(tmp_path / name / "hf"), str(tmp_path / name / "again")]) == 0
        back_cfg, params = load_jax_model(tmp_path / name / "again")
        back = flatten(params)
        assert _explicit(back_cfg) == _explicit(cfg), name
        assert sorted(back) == sorted(flat), name
        for key, value in flat.items():
            assert back[key].dtype == value.dtype and np.array_equal(back[key].view(np.uint8), value.view(np.uint8))


_GOOD = config_to_hf(CASES["qwen2-tied"])
REFUSED = {  # config.json edits -> a phrase the error must hold (it names the field and value)
    "unknown family": ({"model_type": "gemma2", "architectures": ["Gemma2ForCausalLM"]}, "'gemma2'.*qwen3 \\(Qwen3ForCausalLM\\)"),
    "architecture mismatch": ({"architectures": ["LlamaForCausalLM"]}, "model_type 'qwen2', architectures \\['LlamaForCausalLM'\\]"),
    "activation": ({"hidden_act": "relu"}, "hidden_act='relu'"),
    "unknown field": ({"final_logit_softcapping": 30.0}, "final_logit_softcapping=30.0"),
    "rope type": ({"rope_parameters": {"rope_type": "yarn", "factor": 4.0, "rope_theta": 1e6}}, "rope_type='yarn'"),
    "rope key unused": ({"rope_parameters": {"rope_type": "linear", "factor": 2.0, "beta_fast": 8, "rope_theta": 1e6}},
                        "rope_scaling.beta_fast=8"),
    "partial rotary off phi3": ({"partial_rotary_factor": 0.5}, "partial_rotary_factor=0.5"),
    "bias transformers would drop": ({"attention_bias": True}, "attention_bias=True"),
    "layer pattern": ({"use_sliding_window": True, "sliding_window": 8,
                       "layer_types": ["sliding_attention", "full_attention"]}, "layer_types="),
    "quantised": ({"quantization_config": {"quant_method": "gptq"}}, "quantization_config="),
}


@pytest.mark.parametrize("what", list(REFUSED))
def test_math_fields_are_used_or_refused(what) -> None:
    edit, message = REFUSED[what]
    with pytest.raises(CheckpointError, match=message):
        config_from_hf({**_GOOD, **edit})


def test_llama_gelu_is_implemented_not_ignored() -> None:
    hf = {**config_to_hf(BASE), "hidden_act": "gelu"}
    assert config_from_hf(hf).hidden_act == "gelu"  # and test_logits_match_transformers runs it against HF


def test_decode_paths_refuse_contexts_they_cannot_compute() -> None:
    from butler_jax.decode import generate

    cfg = CASES["mistral-window16"]
    with pytest.raises(ConfigError, match="longer than model.sliding_window=16"):
        generate(LlamaForCausalLM(cfg), init_params(cfg), [[1, 2, 3]], 20)
    cfg = CASES["phi3-longrope"]
    with pytest.raises(ConfigError, match="original_max_position_embeddings=32"):
        generate(LlamaForCausalLM(cfg), init_params(cfg), [[1, 2, 3]], 40)


TINY_FAMILIES = {  # one tiny model per family for the policy and training checks (decode limits respected)
    "llama": _R(BASE),
    "mistral": _R(BASE, family="mistral", sliding_window=64),
    "qwen2": _R(BASE, family="qwen2", qkv_bias=True, tie_word_embeddings=True),
    "qwen3": _R(BASE, family="qwen3", qk_norm=True, head_dim=32),
    "phi3": _R(BASE, family="phi3", partial_rotary_factor=0.5,
               rope_scaling=_R(_LONG, short_factor=_LONG.short_factor[:4], long_factor=_LONG.long_factor[:4],
                               original_max_position_embeddings=64)),
}


def _random_biases_and_norms(params: dict, seed: int) -> dict:
    rng = np.random.default_rng(seed)
    flat = {k: (rng.normal(0, 0.1, np.shape(v)) if k.endswith("bias") else
                rng.uniform(0.5, 1.5, np.shape(v)) if k.endswith("weight") else np.asarray(v)).astype(np.float32)
            for k, v in flatten(params).items()}
    return unflatten(flat)


@pytest.mark.parametrize("family", list(TINY_FAMILIES))
def test_tokenbutler_and_quest_decode_equal_simulation(family) -> None:
    from butler_jax.config import PredictorConfig
    from butler_jax.models.predictor import PaperPredictor, init_predictor
    from butler_jax.sparsity import SparsityConfig, make_policy
    from butler_jax.sparsity.simulate import simulated_logits
    from tests.test_policies import teacher_forced_decode_logits

    cfg = TINY_FAMILIES[family]
    model, params = LlamaForCausalLM(cfg), _random_biases_and_norms(init_params(cfg, seed=1), 1)
    tokens = np.random.default_rng(5).integers(0, cfg.vocab_size, (1, 40))
    pcfg = PredictorConfig(dDash=8, intdim=32, attn_reduce_factor=2)
    predictor = (PaperPredictor(pcfg, cfg), init_predictor(pcfg, cfg, seed=7))
    dense, _ = model.apply({"params": params}, jnp.asarray(tokens), jnp.arange(40)[None])
    for method in ("tokenbutler", "quest"):
        policy = make_policy(SparsityConfig(method=method, budget="fixed_50pc", n_sink=2, n_window=3, page_size=4),
                             cfg, predictor)
        sim, _ = simulated_logits(model, params, jnp.asarray(tokens), *policy)  # policy: (policy, its params)
        dec = teacher_forced_decode_logits(model, params, tokens, policy)
        assert np.abs(dec - np.asarray(sim[0])).max() <= 1e-5, (family, method)
        assert np.abs(np.asarray(sim) - np.asarray(dense)).max() > 1e-3, (family, method)


@pytest.mark.parametrize("family", list(TINY_FAMILIES))
def test_predictor_trains_on_each_family(tmp_path, family) -> None:
    """The training config takes each family's model section; 8 steps of the real train step lower the loss."""
    from butler_jax.train.config import load_run_config
    from butler_jax.train.optim import make_optimizer
    from butler_jax.train.step import TrainState, make_train_step
    from butler_jax.train.student import make_student

    cfg = TINY_FAMILIES[family]
    model_section = {k: v for k, v in dataclasses.asdict(cfg).items() if k not in ("source", "dtype", "seed")}
    overrides = [f"model.{k}={json.dumps(v)}" for k, v in model_section.items()]
    run = load_run_config("configs/train_tiny.yaml", [f"train.output_dir={tmp_path}", "train.learning_rate=1e-2",
                                                      "train.warmup_fraction=0", "train.steps=8", *overrides])
    assert run.model == dataclasses.replace(cfg, source="random")
    model, student = LlamaForCausalLM(cfg), make_student(run.predictor, cfg)
    frozen = _random_biases_and_norms(init_params(cfg, seed=2), 2)
    params = student.init(jax.random.PRNGKey(0), 64)
    optimizer = make_optimizer(run.train)
    step = jax.jit(make_train_step(model, student, optimizer, run.train))
    state = TrainState(jnp.ones((), jnp.int32), params, optimizer.init(params))
    tokens = jnp.asarray(np.random.default_rng(0).integers(0, cfg.vocab_size, (2, 64)), jnp.int32)
    losses = []
    for i in range(8):
        state, metrics = step(state, frozen, tokens, jax.random.PRNGKey(i))
        losses.append(float(metrics["loss"]))
    assert all(np.isfinite(losses)) and np.mean(losses[-3:]) < np.mean(losses[:3]), losses

def _write_gguf(path, cfg: ModelConfig, state: dict[str, np.ndarray]) -> None:
    """A float32 GGUF laid out as llama.cpp's converter writes `cfg`'s family (tests only)."""
    import gguf

    from butler_jax.weights.gguf_file import _LAYER_NAMES
    from butler_jax.weights.names import FUSED

    arch = cfg.family
    writer = gguf.GGUFWriter(str(path), arch)
    writer.add_block_count(cfg.num_hidden_layers)
    writer.add_context_length(cfg.max_position_embeddings)
    writer.add_embedding_length(cfg.hidden_size)
    writer.add_feed_forward_length(cfg.intermediate_size)
    writer.add_head_count(cfg.num_attention_heads)
    writer.add_head_count_kv(cfg.num_key_value_heads)
    writer.add_key_length(cfg.resolved_head_dim)
    writer.add_value_length(cfg.resolved_head_dim)
    writer.add_rope_dimension_count(cfg.rotary_dim)
    writer.add_layer_norm_rms_eps(cfg.rms_norm_eps)
    writer.add_rope_freq_base(cfg.rope_theta)
    if cfg.sliding_window:
        writer.add_sliding_window(cfg.sliding_window)
    if cfg.rope_scaling.rope_type == "longrope":
        writer.add_rope_scaling_orig_ctx_len(cfg.rope_scaling.original_max_position_embeddings)
        writer.add_tensor("rope_factors_short.weight", np.asarray(cfg.rope_scaling.short_factor, np.float32))
        writer.add_tensor("rope_factors_long.weight", np.asarray(cfg.rope_scaling.long_factor, np.float32))
    writer.add_tokenizer_model("gpt2")
    writer.add_token_list([f"t{i}" for i in range(cfg.vocab_size)])
    writer.add_bos_token_id(cfg.bos_token_id)
    writer.add_eos_token_id(cfg.eos_token_id)
    to_gguf = {v: k for k, v in _LAYER_NAMES.items()}
    to_gguf.update({"mlp.up_proj": "ffn_up", "mlp.gate_up_proj": "ffn_up"})
    top = {"model.embed_tokens.weight": "token_embd.weight", "model.norm.weight": "output_norm.weight",
           "lm_head.weight": "output.weight"}
    for name, array in state.items():
        if name in top:
            writer.add_tensor(top[name], array)
            continue
        _, _, layer, *rest = name.split(".")
        base, leaf = ".".join(rest[:-1]), rest[-1]
        if arch == "llama" and base in ("self_attn.q_proj", "self_attn.k_proj"):  # llama.cpp's permute
            heads = cfg.num_attention_heads if "q_proj" in base else cfg.num_key_value_heads
            array = array.reshape(heads, 2, array.shape[0] // heads // 2, *array.shape[1:]).swapaxes(1, 2).reshape(array.shape)
        writer.add_tensor(f"blk.{layer}.{to_gguf[base]}.{leaf}", np.ascontiguousarray(array))
    assert set(FUSED) >= {k.split(".", 3)[3] for k in state if "qkv" in k or "gate_up" in k}
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()


@pytest.mark.parametrize("name", ["mistral-mqa-headdim-tied", "qwen2-tied", "qwen3-headdim-tied",
                                  "phi3-longrope-partial-window"])
def test_gguf_of_each_llama_cpp_family_loads_exactly(tmp_path, name) -> None:
    from butler_jax.weights.gguf_file import load_gguf_model

    cfg = CASES[name]
    if cfg.family == "mistral":  # llama.cpp converts Mistral as `llama` (permuted Q/K rows, no window key)
        cfg = _R(cfg, family="llama", sliding_window=None)
    state = _random_hf_state(cfg, seed=3)
    _write_gguf(tmp_path / "m.gguf", cfg, state)
    got_cfg, params = load_gguf_model(tmp_path / "m.gguf")
    f32 = lambda xs: tuple(float(np.float32(x)) for x in xs)  # noqa: E731  (GGUF stores float32)
    rope = _R(cfg.rope_scaling, short_factor=f32(cfg.rope_scaling.short_factor), long_factor=f32(cfg.rope_scaling.long_factor))
    assert _explicit(got_cfg) == _explicit(_R(cfg, rms_norm_eps=f32([cfg.rms_norm_eps])[0], rope_scaling=rope)), name
    expected = flatten(hf_state_dict_to_params(state, cfg))
    got = flatten(params)
    assert sorted(got) == sorted(expected) and all(np.array_equal(got[k], expected[k]) for k in got), name


def test_gguf_math_metadata_is_refused(tmp_path) -> None:
    import gguf

    from butler_jax.weights.gguf_file import load_gguf_model

    cfg = CASES["qwen2-tied"]
    state = _random_hf_state(cfg, seed=3)
    path = tmp_path / "m.gguf"
    _write_gguf(path, cfg, state)
    reader = gguf.GGUFReader(str(path))
    writer = gguf.GGUFWriter(str(tmp_path / "scaled.gguf"), "qwen2")
    for field in reader.fields.values():
        if not field.name.startswith(("GGUF.", "general.architecture")):
            writer.add_key_value(field.name, field.contents(), field.types[0], field.types[-1] if len(field.types) > 1 else None)
    writer.add_rope_scaling_type(gguf.RopeScalingType.YARN)
    for tensor in reader.tensors:
        writer.add_tensor(tensor.name, np.asarray(tensor.data).reshape(tuple(reversed(tensor.shape.tolist()))))
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    with pytest.raises(CheckpointError, match="qwen2.rope.scaling.type='yarn'"):
        load_gguf_model(tmp_path / "scaled.gguf")


@pytest.mark.parametrize("name,family,millions", [("qwen2.5-0.5b", "qwen2", 494.0), ("qwen3-0.6b", "qwen3", 596.0),
                                                   ("mistral-7b", "mistral", 7241.7), ("phi-3-mini", "phi3", 3821.1)])
def test_family_configs_have_the_published_sizes(name, family, millions) -> None:
    """configs/<family>.yaml (model.source=random) builds the published parameter count and exports."""
    from butler_jax.config import load_yaml, section

    cfg = section(load_yaml(f"configs/{name}.yaml", ["model.source=random"]), "model", ModelConfig)
    count = sum(x.size for x in jax.tree.leaves(jax.eval_shape(lambda: init_params(cfg))))
    assert cfg.family == family and abs(count / 1e6 - millions) < 0.1
    assert config_from_hf(config_to_hf(cfg), dtype=cfg.dtype) == dataclasses.replace(cfg, source="random")


PUBLISHED = {  # config.json files as published on the hub (key sets and values), abridged lists of ids
    "SmolLM2-135M": {"architectures": ["LlamaForCausalLM"], "attention_bias": False, "attention_dropout": 0.0,
                     "bos_token_id": 0, "eos_token_id": 0, "hidden_act": "silu", "hidden_size": 576,
                     "initializer_range": 0.041666666666666664, "intermediate_size": 1536, "is_llama_config": True,
                     "max_position_embeddings": 8192, "mlp_bias": False, "model_type": "llama",
                     "num_attention_heads": 9, "num_hidden_layers": 30, "num_key_value_heads": 3,
                     "pretraining_tp": 1, "rms_norm_eps": 1e-05, "rope_interleaved": False, "rope_scaling": None,
                     "rope_theta": 100000, "tie_word_embeddings": True, "torch_dtype": "bfloat16",
                     "transformers_version": "4.40.1", "use_cache": True, "vocab_size": 49152,
                     "transformers.js_config": {"kv_cache_dtype": {"q4f16": "float16"}}},
    "Qwen2.5-0.5B": {"architectures": ["Qwen2ForCausalLM"], "attention_dropout": 0.0, "bos_token_id": 151643,
                     "eos_token_id": 151643, "hidden_act": "silu", "hidden_size": 896, "initializer_range": 0.02,
                     "intermediate_size": 4864, "max_position_embeddings": 32768, "max_window_layers": 24,
                     "model_type": "qwen2", "num_attention_heads": 14, "num_hidden_layers": 24,
                     "num_key_value_heads": 2, "rms_norm_eps": 1e-06, "rope_theta": 1000000.0,
                     "sliding_window": 32768, "tie_word_embeddings": True, "torch_dtype": "bfloat16",
                     "transformers_version": "4.40.1", "use_cache": True, "use_sliding_window": False,
                     "vocab_size": 151936},
    "Phi-3-mini-4k-instruct": {"_name_or_path": "Phi-3-mini-4k-instruct", "architectures": ["Phi3ForCausalLM"],
                               "attention_bias": False, "attention_dropout": 0.0,
                               "auto_map": {"AutoConfig": "configuration_phi3.Phi3Config"}, "bos_token_id": 1,
                               "embd_pdrop": 0.0, "eos_token_id": 32000, "hidden_act": "silu", "hidden_size": 3072,
                               "initializer_range": 0.02, "intermediate_size": 8192, "max_position_embeddings": 4096,
                               "model_type": "phi3", "num_attention_heads": 32, "num_hidden_layers": 32,
                               "num_key_value_heads": 32, "original_max_position_embeddings": 4096,
                               "pad_token_id": 32000, "resid_pdrop": 0.0, "rms_norm_eps": 1e-05,
                               "rope_scaling": None, "rope_theta": 10000.0, "sliding_window": 2047,
                               "tie_word_embeddings": False, "torch_dtype": "bfloat16",
                               "transformers_version": "4.40.2", "use_cache": True, "vocab_size": 32064},
}


@pytest.mark.parametrize("name", list(PUBLISHED))
def test_published_configs_are_accepted(name) -> None:
    """Strict reading accepts the real files (their extra keys are bookkeeping) and keeps their math."""
    cfg = config_from_hf(PUBLISHED[name])
    expected = {"SmolLM2-135M": ("llama", None, False), "Qwen2.5-0.5B": ("qwen2", None, True),
                "Phi-3-mini-4k-instruct": ("phi3", 2047, False)}[name]
    assert (cfg.family, cfg.sliding_window, cfg.qkv_bias) == expected
    with pytest.raises(CheckpointError, match="rope_interleaved=True"):
        config_from_hf({**PUBLISHED[name], "rope_interleaved": True})
