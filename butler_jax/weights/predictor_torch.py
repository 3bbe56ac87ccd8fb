"""Original TokenButler predictor checkpoints <-> butler-jax predictor parameters, both directions.

Formats (the original TokenButler and long-context .pt files):
  "v1" / "v2"  a `.pt` list of producer state dicts (one entry), or a resume dict holding it under
               `model_state_dict`; names `sparse_token_predictor.*`; the frozen layer-0 `q/k/v/o_proj`
               copies, `sparse_head_predictor.*` and any rotary `inv_freq` buffers are carried through
               unchanged. v2 adds `norm_importance`. Written back as the list (a resume dict's
               optimizer/scheduler state is not kept).
  "hf-butler"  an HF Butler model: `model.layers.0.self_attn.sparse_token_predictor.*` (+ head
               predictor) inside its safetensors; written back as one safetensors file of those keys.
  "longctx"    `L3_8Bi_d16_i512_pf4.pt`: {"model_state_dict": [one dict per producer]} (or a bare
               list), names under `sparse_token_predictor.` (maybe `producer.` too), each dict with a
               full `key_cache_proj` copy; row l is taken from producer (l-1)//G's copy.

butler-jax side: the Flax tree of `PaperPredictor` / `LongctxPredictor` (numpy arrays, dtypes kept;
`dtype` casts). The paper importance projections are stored head-major [H, N, d'] in torch and
[N, H, d'] in Flax: rows are permuted here.
JAX checkpoint directory: `predictor.safetensors` + `predictor.json` (the `predictor_io` format) and,
when tensors were carried, `torch_carried.safetensors`.
"""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import ml_dtypes
import numpy as np

from butler_jax.config import ModelConfig, PredictorConfig, from_dict
from butler_jax.models.predictor_adapter import count_params
from butler_jax.models.predictor_longctx import producer_layers
from butler_jax.errors import CheckpointError
from butler_jax.weights.flax_checkpoint import flatten, load_tree, save_tree, unflatten
from butler_jax.weights.hf import config_from_hf
from butler_jax.weights.tensors import load_torch_file, numpy_to_torch, read_safetensors, torch_to_numpy, write_safetensors

FORMATS = ("v1", "v2", "hf-butler", "longctx")
PRED = "sparse_token_predictor."
HF_PREFIX = "model.layers.0.self_attn."
FROZEN_COPIES = ("q_proj.weight", "k_proj.weight", "v_proj.weight", "o_proj.weight")
CARRIED_FILE = "torch_carried.safetensors"
_LINEARS = ("input_proj", "q_proj_attn", "k_proj_attn", "v_proj_attn")


@dataclasses.dataclass
class ConvertedPredictor:
    """A predictor in butler-jax form plus what a faithful write-back needs.

    params: Flax tree (numpy); shape: the model dims it serves (hidden_size, num_hidden_layers,
    num_attention_heads, num_key_value_heads); carried: original-name tensors kept unchanged;
    source: {"format", "prefix", ...} describing the torch layout.
    """

    params: dict
    pcfg: PredictorConfig
    shape: dict
    carried: dict[str, np.ndarray]
    source: dict

    def summary(self) -> str:
        """One paragraph: format, sizes, tensor counts, dtypes, parameter count vs the formula."""
        flat = flatten(self.params)
        count = sum(v.size for v in flat.values())
        dtypes = sorted({str(v.dtype) for v in flat.values()})
        expected = count_params(self.pcfg, model_shape_config(self.shape))
        note = f"; {self.source['note']}" if self.source.get("note") else ""
        return (f"{self.source['format']} predictor ({self.pcfg.kind} {self.pcfg.variant if self.pcfg.kind == 'paper' else ''}): "
                f"dDash={self.pcfg.dDash} intdim={self.pcfg.intdim} attn_reduce_factor={self.pcfg.attn_reduce_factor} "
                f"producer_frequency={self.pcfg.producer_frequency}; {len(flat)} tensors, {count:,} parameters "
                f"(formula {expected:,}), dtypes {dtypes}; {len(self.carried)} tensors carried unchanged{note}")


def model_shape_config(shape: dict) -> ModelConfig:
    """A ModelConfig holding only the dims a predictor depends on."""
    return ModelConfig(**{k: shape[k] for k in ("hidden_size", "num_hidden_layers", "num_attention_heads",
                                                "num_key_value_heads", "head_dim") if shape.get(k) is not None})


def _shape_of(mcfg: ModelConfig) -> dict:
    keys = ("hidden_size", "num_hidden_layers", "num_attention_heads", "num_key_value_heads")
    return {**{k: getattr(mcfg, k) for k in keys}, "head_dim": mcfg.resolved_head_dim}


def _cast(array: np.ndarray, dtype: str | None, transpose: bool = False) -> np.ndarray:
    """`array` (transposed for a Linear weight <-> Flax kernel) cast to `dtype` (None: kept)."""
    array = np.ascontiguousarray(array.T) if transpose else array
    if dtype is None:
        return array
    return array.astype({"float32": np.float32, "bfloat16": ml_dtypes.bfloat16, "float16": np.float16}[dtype])


def _check(state: dict[str, np.ndarray], expected: dict[str, tuple[int, ...] | None], where: str, hint: str) -> None:
    """Raise on the first missing, unexpected or wrongly shaped tensor (sorted order; shape None: any)."""
    for name in sorted(expected):
        if name not in state:
            raise CheckpointError(f"{where}: missing tensor {name!r}; {hint}")
    for name in sorted(state):
        if name not in expected:
            raise CheckpointError(f"{where}: unexpected tensor {name!r} {tuple(state[name].shape)}; {hint}")
    for name in sorted(expected):
        if expected[name] is not None and tuple(state[name].shape) != expected[name]:
            raise CheckpointError(f"{where}: tensor {name!r} has shape {tuple(state[name].shape)}, "
                                  f"expected {expected[name]}; {hint}")
        _check_values(state[name], name, where)


def _dims(state: dict[str, np.ndarray], name: str, rank: int, where: str) -> tuple[int, ...]:
    """The shape of tensor `name`, which must exist and have `rank` dimensions."""
    if name not in state:
        raise CheckpointError(f"{where}: missing tensor {name!r}")
    shape = tuple(state[name].shape)
    if len(shape) != rank:
        raise CheckpointError(f"{where}: tensor {name!r} has shape {shape}, expected {rank} dimensions")
    return shape


def _check_values(array: np.ndarray, name: str, where: str) -> None:
    """Raise unless `array` is floating point and finite (an int64 or NaN tensor is no predictor weight)."""
    if not np.issubdtype(array.dtype, np.floating) and array.dtype != ml_dtypes.bfloat16:
        raise CheckpointError(f"{where}: tensor {name!r} has dtype {array.dtype}; predictor weights are floating point")
    if not np.isfinite(array.astype(np.float32)).all():
        raise CheckpointError(f"{where}: tensor {name!r} holds NaN or infinite values; the checkpoint is damaged")


# ----------------------------------------------------------------------------- paper predictor


def _paper_names(variant: str) -> list[str]:
    names = [f"{m}.weight" for m in _LINEARS]
    names += [f"{n}.{p}" for n in ("norm1", "norm2") for p in ("weight", "bias")]
    names += [f"ffn.{i}.{p}" for i in (0, 2) for p in ("weight", "bias")]
    names += [f"{s}_proj_importance.{i}.weight" for s in "qk" for i in (0, 2)]
    if variant == "v2":
        names += ["norm_importance.weight", "norm_importance.bias"]
    return names


def _paper_shapes(pcfg: PredictorConfig, mcfg: ModelConfig) -> dict[str, tuple[int, ...]]:
    d, r = mcfg.hidden_size, mcfg.hidden_size // pcfg.attn_reduce_factor
    out = mcfg.num_hidden_layers * mcfg.num_attention_heads * pcfg.dDash
    shapes = {"input_proj.weight": (r, d), **{f"{m}.weight": (r, r) for m in _LINEARS[1:]},
              "norm1.weight": (r,), "norm1.bias": (r,), "norm2.weight": (d,), "norm2.bias": (d,),
              "ffn.0.weight": (2 * r, r), "ffn.0.bias": (2 * r,), "ffn.2.weight": (d, 2 * r), "ffn.2.bias": (d,),
              "norm_importance.weight": (d,), "norm_importance.bias": (d,)}
    for s in "qk":
        shapes[f"{s}_proj_importance.0.weight"] = (pcfg.intdim, d)
        shapes[f"{s}_proj_importance.2.weight"] = (out, pcfg.intdim)
    return {k: shapes[k] for k in _paper_names(pcfg.variant)}


def _infer_paper_config(state: dict[str, np.ndarray], variant: str, mcfg: ModelConfig, where: str) -> PredictorConfig:
    """dDash, intdim, attn_reduce_factor from the tensor shapes and the model's dims."""
    r, d = _dims(state, "input_proj.weight", 2, where)
    if d != mcfg.hidden_size or mcfg.hidden_size % r:
        raise CheckpointError(f"{where}: input_proj.weight is {(r, d)}, which does not fit a model of "
                              f"hidden_size={mcfg.hidden_size}; pass the model the predictor was trained for")
    out, intdim = _dims(state, "q_proj_importance.2.weight", 2, where)
    slots = mcfg.num_hidden_layers * mcfg.num_attention_heads
    if out % slots:
        raise CheckpointError(f"{where}: q_proj_importance.2.weight has {out} rows, not a multiple of "
                              f"layers*heads={slots}; pass the model the predictor was trained for")
    return PredictorConfig(kind="paper", variant=variant, dDash=out // slots, intdim=intdim, attn_reduce_factor=d // r)


def _slots_to_flax(w: np.ndarray, mcfg: ModelConfig, d_dash: int) -> np.ndarray:
    """torch [H*N*d', I] (head-major slots) -> Flax kernel [I, N*H*d']."""
    h, n = mcfg.num_attention_heads, mcfg.num_hidden_layers
    return np.ascontiguousarray(w.reshape(h, n, d_dash, -1).transpose(1, 0, 2, 3).reshape(n * h * d_dash, -1).T)


def _slots_to_torch(kernel: np.ndarray, mcfg: ModelConfig, d_dash: int) -> np.ndarray:
    """Flax kernel [I, N*H*d'] -> torch [H*N*d', I] (head-major slots)."""
    h, n = mcfg.num_attention_heads, mcfg.num_hidden_layers
    return np.ascontiguousarray(kernel.T.reshape(n, h, d_dash, -1).transpose(1, 0, 2, 3).reshape(h * n * d_dash, -1))


def paper_from_torch(state: dict[str, np.ndarray], mcfg: ModelConfig, variant: str, where: str = "checkpoint",
                     dtype: str | None = None) -> tuple[dict, PredictorConfig]:
    """Predictor tensors without prefix (torch names) -> (Flax params, config)."""
    hint = f"is this a TokenButler {variant} predictor for this model?"
    _check(state, dict.fromkeys(_paper_names(variant)), where, hint)
    pcfg = _infer_paper_config(state, variant, mcfg, where)
    _check(state, _paper_shapes(pcfg, mcfg), where, hint)
    params: dict = {m: {"kernel": _cast(state[f"{m}.weight"], dtype, True)} for m in _LINEARS}
    norms = ("norm1", "norm2") + (("norm_importance",) if variant == "v2" else ())
    params.update({n: {"scale": _cast(state[f"{n}.weight"], dtype), "bias": _cast(state[f"{n}.bias"], dtype)} for n in norms})
    for i in (0, 2):
        params[f"ffn_{i}"] = {"kernel": _cast(state[f"ffn.{i}.weight"], dtype, True), "bias": _cast(state[f"ffn.{i}.bias"], dtype)}
    for s in "qk":
        params[f"{s}_proj_importance_0"] = {"kernel": _cast(state[f"{s}_proj_importance.0.weight"], dtype, True)}
        rows = _cast(state[f"{s}_proj_importance.2.weight"], dtype)
        params[f"{s}_proj_importance_2"] = {"kernel": _slots_to_flax(rows, mcfg, pcfg.dDash)}
    return params, pcfg


def paper_to_torch(params: dict, pcfg: PredictorConfig, mcfg: ModelConfig) -> dict[str, np.ndarray]:
    """Flax params -> predictor tensors with the original names (no prefix)."""
    state = {f"{m}.weight": np.ascontiguousarray(params[m]["kernel"].T) for m in _LINEARS}
    norms = ("norm1", "norm2") + (("norm_importance",) if pcfg.variant == "v2" else ())
    for n in norms:
        state[f"{n}.weight"], state[f"{n}.bias"] = params[n]["scale"], params[n]["bias"]
    for i in (0, 2):
        state[f"ffn.{i}.weight"] = np.ascontiguousarray(params[f"ffn_{i}"]["kernel"].T)
        state[f"ffn.{i}.bias"] = params[f"ffn_{i}"]["bias"]
    for s in "qk":
        state[f"{s}_proj_importance.0.weight"] = np.ascontiguousarray(params[f"{s}_proj_importance_0"]["kernel"].T)
        state[f"{s}_proj_importance.2.weight"] = _slots_to_torch(params[f"{s}_proj_importance_2"]["kernel"], mcfg, pcfg.dDash)
    return state


def _split_paper_dict(state: dict[str, np.ndarray], prefix: str, where: str) -> tuple[dict, dict]:
    """(predictor tensors without prefix, carried tensors by full name); other names are refused."""
    pred, carried = {}, {}
    for name, value in state.items():
        if name.endswith("inv_freq") or name.startswith(prefix + "sparse_head_predictor.") or \
                (prefix == "" and name in FROZEN_COPIES):
            carried[name] = value
        elif name.startswith(prefix + PRED):
            pred[name[len(prefix + PRED):]] = value
        else:
            raise CheckpointError(f"{where}: unexpected tensor {name!r}; a TokenButler predictor holds "
                                  f"{prefix}{PRED}*, {prefix}sparse_head_predictor.* and the q/k/v/o_proj copies")
    return pred, carried


def _producer_list(obj: object, where: str) -> list:
    """The list of producer state dicts of a `.pt` file (bare list, or resume dict `model_state_dict`)."""
    if isinstance(obj, dict) and "model_state_dict" in obj:
        obj = obj["model_state_dict"]
    if isinstance(obj, dict):
        obj = [obj]
    if not isinstance(obj, (list, tuple)) or not obj or not all(isinstance(s, dict) for s in obj):
        raise CheckpointError(f"{where}: expected a list of producer state dicts (or a dict with 'model_state_dict'), "
                              f"got {type(obj).__name__}")
    return list(obj)


def _to_numpy(state: dict) -> dict[str, np.ndarray]:
    return {k: torch_to_numpy(v) for k, v in state.items()}


def read_paper_pt(path: str | Path, fmt: str, mcfg: ModelConfig, dtype: str | None = None) -> ConvertedPredictor:
    """A paper `.pt` predictor (list or resume dict) -> ConvertedPredictor; `fmt` is "v1" or "v2"."""
    where = str(path)
    producers = _producer_list(load_torch_file(path), where)
    if len(producers) != 1:
        raise CheckpointError(f"{where}: holds {len(producers)} producer state dicts; paper predictors have exactly one "
                              "(several producers is the long-context format: use --format longctx)")
    pred, carried = _split_paper_dict(_to_numpy(producers[0]), "", where)
    has_norm = "norm_importance.weight" in pred
    if has_norm != (fmt == "v2"):
        raise CheckpointError(f"{where}: {'has' if has_norm else 'lacks'} norm_importance, so it is a "
                              f"{'v2' if has_norm else 'v1'} predictor; pass --format {'v2' if has_norm else 'v1'}")
    params, pcfg = paper_from_torch(pred, mcfg, fmt, where, dtype)
    return ConvertedPredictor(params, pcfg, _shape_of(mcfg), carried, {"format": fmt})


def write_paper_pt(conv: ConvertedPredictor, path: str | Path) -> Path:
    """Write a v1/v2 `.pt` (a one-entry list of the producer state dict), carried tensors included."""
    import torch

    state = {PRED + k: v for k, v in paper_to_torch(conv.params, conv.pcfg, model_shape_config(conv.shape)).items()}
    state.update(conv.carried)
    torch.save([{k: numpy_to_torch(v) for k, v in state.items()}], str(path))
    return Path(path)


# ----------------------------------------------------------------------------- HF Butler repos


def _butler_config(directory: Path) -> tuple[ModelConfig, dict]:
    """(model dims, raw config.json) of an HF Butler directory (model_type llama_butler)."""
    file = directory / "config.json"
    if not file.is_file():
        raise CheckpointError(f"{str(directory)!r} has no config.json; pass an HF Butler model directory")
    raw = json.loads(file.read_text())
    return config_from_hf({**raw, "model_type": "llama", "architectures": ["LlamaForCausalLM"]}, strict=False), raw


def read_hf_butler(source: str | Path, mcfg: ModelConfig | None = None, dtype: str | None = None) -> ConvertedPredictor:
    """Predictor tensors of an HF Butler directory (its config.json gives the dims) or of one safetensors file."""
    from safetensors import safe_open

    source = Path(source)
    if source.is_dir():
        mcfg, _ = _butler_config(source)
        files = sorted(source.glob("*.safetensors"))
    else:
        files = [source]
        if mcfg is None:
            raise CheckpointError(f"{str(source)!r} is a single file: pass --model (a YAML with a model: section) for its dims")
    if not files or not all(f.is_file() for f in files):
        raise CheckpointError(f"no safetensors file found at {str(source)!r}")
    state = {}
    for file in files:
        try:
            with safe_open(str(file), framework="pt") as handle:
                state.update({k: torch_to_numpy(handle.get_tensor(k)) for k in handle.keys()
                              if k.startswith(HF_PREFIX + PRED) or k.startswith(HF_PREFIX + "sparse_head_predictor.")})
        except Exception as exc:
            raise CheckpointError(f"could not read safetensors file {str(file)!r} ({exc}); it may be truncated") from exc
    if not state:
        raise CheckpointError(f"{str(source)!r} holds no {HF_PREFIX}{PRED}* tensors; is it a TokenButler (Butler) model?")
    pred, carried = _split_paper_dict(state, HF_PREFIX, str(source))
    params, pcfg = paper_from_torch(pred, mcfg, "v2", str(source), dtype)
    return ConvertedPredictor(params, pcfg, _shape_of(mcfg), carried, {"format": "hf-butler"})


def write_hf_butler(conv: ConvertedPredictor, path: str | Path) -> Path:
    """One safetensors file of the `model.layers.0.self_attn.sparse_*` tensors (merge into a Butler repo's weights)."""
    state = {HF_PREFIX + PRED + k: v for k, v in paper_to_torch(conv.params, conv.pcfg, model_shape_config(conv.shape)).items()}
    state.update(conv.carried)
    write_safetensors(state, path, metadata={"format": "pt"})
    return Path(path)


BUTLER_README = """# TokenButler model exported by butler-jax

`model.safetensors` holds the Llama backbone and the predictor (`model.layers.0.self_attn.sparse_*`);
`config.json` is a Llama config with `model_type: llama_butler` and the predictor's sizes. butler-jax
reads it back with `convert_torch.py llama-to-jax` (backbone) and `predictor-to-jax --format hf-butler`
(predictor). `transformers` needs the Butler remote-code modeling file, which butler-jax cannot
redistribute: copy it (and the `auto_map` entry of its config.json) from the original Butler repository.
"""


def butler_config(cfg: ModelConfig, pcfg: PredictorConfig, torch_dtype: str) -> dict:
    """An HF Butler `config.json`: the Llama config plus `model_type: llama_butler` and the predictor sizes."""
    from butler_jax.weights.hf import BUTLER_MODEL_TYPE, config_to_hf

    return {**config_to_hf(cfg, torch_dtype), "model_type": BUTLER_MODEL_TYPE, "architectures": ["LlamaButlerForCausalLM"],
            "producer_frequency": cfg.num_hidden_layers, "dDash": pcfg.dDash, "intdim": pcfg.intdim,
            "attn_reduce_factor": pcfg.attn_reduce_factor, "eval_llm_mode": "ExpPred", "token_sparse_method": "fixed_50pc"}


def write_hf_butler_directory(params: dict, cfg: ModelConfig, conv: ConvertedPredictor, out: str | Path,
                              tokenizer=None) -> Path:
    """A whole HF Butler directory: config.json, model.safetensors (backbone + predictor), README, tokenizer."""
    from butler_jax.weights.names import params_to_hf_state_dict

    if conv.pcfg.kind != "paper" or conv.pcfg.variant != "v2":
        raise CheckpointError(f"an HF Butler model holds a paper v2 predictor, not {conv.pcfg.kind} {conv.pcfg.variant}",
                              fix="pass a v2 predictor with --predictor, or export the backbone alone")
    declared = {k: v for k, v in conv.shape.items() if v is not None}
    if {k: v for k, v in _shape_of(cfg).items() if k in declared} != declared:
        raise CheckpointError(f"the predictor serves a model of shape {conv.shape}, not this one's {_shape_of(cfg)}")
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    state = params_to_hf_state_dict(params, cfg)
    state.update({HF_PREFIX + PRED + k: v for k, v in paper_to_torch(conv.params, conv.pcfg, cfg).items()})
    # the head predictor lives beside the token predictor; a paper .pt's frozen layer-0 q/k/v/o copies are
    # the backbone's own layer-0 weights in a Butler model, so they are not written twice
    state.update({(k if k.startswith(HF_PREFIX) else HF_PREFIX + k): v for k, v in conv.carried.items()
                  if k.startswith(HF_PREFIX) or k.startswith("sparse_head_predictor.")})
    dtype = "bfloat16" if cfg.dtype == "bfloat16" else "float32"
    (out / "config.json").write_text(json.dumps(butler_config(cfg, conv.pcfg, dtype), indent=2))
    write_safetensors(state, out / "model.safetensors", metadata={"format": "pt"})
    (out / "README.md").write_text(BUTLER_README)
    if tokenizer is not None:
        tokenizer.save_pretrained(str(out))
    return out


# ----------------------------------------------------------------------------- long-context producers


def _strip_producer_prefixes(state: dict[str, np.ndarray]) -> tuple[dict[str, np.ndarray], str]:
    """Drop `producer.` / `sparse_token_predictor.` prefixes, keeping the least-prefixed copy of each name."""
    out: dict[str, tuple[int, np.ndarray]] = {}
    prefixes = {}
    for name, value in state.items():
        short = name
        for prefix in ("producer.", PRED):
            short = short[len(prefix):] if short.startswith(prefix) else short
        if short not in out or len(name) < out[short][0]:
            out[short] = (len(name), value)
            prefixes[short] = name[: len(name) - len(short)]
    common = max(set(prefixes.values()), key=list(prefixes.values()).count) if prefixes else PRED
    return {k: v for k, (_, v) in out.items()}, common


def longctx_from_torch(dicts: list[dict[str, np.ndarray]], mcfg: ModelConfig, where: str = "checkpoint",
                       dtype: str | None = None) -> tuple[dict, PredictorConfig, str]:
    """Producer dicts (prefixes stripped) -> (Flax params, config, note on the key projection)."""
    hint = "is this a long-context TokenButler predictor for this model?"
    first = dicts[0]
    for name in ("key_cache_proj", "q_mlps.0.2.weight", "q_mlps.0.0.weight"):
        if name not in first:
            raise CheckpointError(f"{where}: producer 0: missing tensor {name!r}; {hint}")
    layers, heads, head_dim, d_dash = _dims(first, "key_cache_proj", 4, f"{where}: producer 0")
    out, intdim = _dims(first, "q_mlps.0.2.weight", 2, f"{where}: producer 0")
    group = out // (mcfg.num_attention_heads * d_dash)
    if group < 1 or out % (mcfg.num_attention_heads * d_dash):
        raise CheckpointError(f"{where}: q_mlps.0.2.weight has {out} rows, not G*heads*dDash for "
                              f"heads={mcfg.num_attention_heads}, dDash={d_dash}; {hint}")
    per_head = heads != mcfg.num_key_value_heads
    pcfg = PredictorConfig(kind="longctx", dDash=d_dash, intdim=intdim, producer_frequency=group,
                           key_proj_heads="attention" if per_head else "kv")
    n_prod = len(producer_layers(mcfg.num_hidden_layers, group))
    if len(dicts) != n_prod:
        raise CheckpointError(f"{where}: holds {len(dicts)} producer dicts; {mcfg.num_hidden_layers} layers with "
                              f"producer_frequency={group} need {n_prod}")
    if heads not in (mcfg.num_key_value_heads, mcfg.num_attention_heads):
        raise CheckpointError(f"{where}: key_cache_proj has {heads} heads; the model has "
                              f"{mcfg.num_key_value_heads} KV / {mcfg.num_attention_heads} attention heads")
    d = mcfg.hidden_size
    expected = {"norm_importance.weight": (d,), "norm_importance.bias": (d,), "q_mlps.0.0.weight": (intdim, d),
                "q_mlps.0.2.weight": (out, intdim),
                "key_cache_proj": (mcfg.num_hidden_layers, heads, mcfg.resolved_head_dim, d_dash)}
    params: dict = {}
    for i, (state, layer) in enumerate(zip(dicts, producer_layers(mcfg.num_hidden_layers, group))):
        _check(state, expected, f"{where}: producer {i}", hint)
        params[f"producer_{layer}"] = {
            "norm_importance": {"scale": _cast(state["norm_importance.weight"], dtype),
                                "bias": _cast(state["norm_importance.bias"], dtype)},
            "mlp_0": {"kernel": _cast(state["q_mlps.0.0.weight"], dtype, True)},
            "mlp_2": {"kernel": _cast(state["q_mlps.0.2.weight"], dtype, True)}}
    proj = np.stack([dicts[max(l - 1, 0) // group]["key_cache_proj"][l] for l in range(layers)])
    note = f"key_cache_proj kept per attention head (averaged over each group of {mcfg.num_groups} at use)" if per_head else ""
    params["key_cache_proj"] = _cast(proj, dtype)
    return params, pcfg, note


def read_longctx(path: str | Path, mcfg: ModelConfig, dtype: str | None = None) -> ConvertedPredictor:
    """A long-context `.pt` (dict with model_state_dict, or bare list) -> ConvertedPredictor."""
    where = str(path)
    stripped = [_strip_producer_prefixes(_to_numpy(s)) for s in _producer_list(load_torch_file(path), where)]
    params, pcfg, note = longctx_from_torch([s for s, _ in stripped], mcfg, where, dtype)
    return ConvertedPredictor(params, pcfg, _shape_of(mcfg), {}, {"format": "longctx", "prefix": stripped[0][1], "note": note})


def longctx_to_torch(params: dict, pcfg: PredictorConfig, mcfg: ModelConfig, prefix: str = PRED) -> list[dict[str, np.ndarray]]:
    """Flax params -> one state dict per producer, each with a full key_cache_proj copy."""
    dicts = []
    for layer in producer_layers(mcfg.num_hidden_layers, pcfg.producer_frequency):
        p = params[f"producer_{layer}"]
        state = {"norm_importance.weight": p["norm_importance"]["scale"], "norm_importance.bias": p["norm_importance"]["bias"],
                 "q_mlps.0.0.weight": np.ascontiguousarray(p["mlp_0"]["kernel"].T),
                 "q_mlps.0.2.weight": np.ascontiguousarray(p["mlp_2"]["kernel"].T), "key_cache_proj": params["key_cache_proj"]}
        dicts.append({prefix + k: v for k, v in state.items()})
    return dicts


def write_longctx(conv: ConvertedPredictor, path: str | Path) -> Path:
    """Write {"model_state_dict": [producer dicts]} as the release's loader reads it."""
    import torch

    dicts = longctx_to_torch(conv.params, conv.pcfg, model_shape_config(conv.shape), conv.source.get("prefix", PRED))
    torch.save({"model_state_dict": [{k: numpy_to_torch(v) for k, v in d.items()} for d in dicts]}, str(path))
    return Path(path)


# ----------------------------------------------------------------------------- entry points + JAX side


def read_torch_predictor(path: str | Path, fmt: str, mcfg: ModelConfig | None, dtype: str | None = None) -> ConvertedPredictor:
    """Any supported original format -> ConvertedPredictor (`mcfg` optional for an hf-butler directory)."""
    if fmt not in FORMATS:
        raise CheckpointError(f"unknown predictor format {fmt!r}; choose one of {', '.join(FORMATS)}")
    if fmt == "hf-butler":
        return read_hf_butler(path, mcfg, dtype)
    if mcfg is None:
        raise CheckpointError(f"--format {fmt} needs the model's dims: pass --model (a YAML with a model: section)")
    return read_longctx(path, mcfg, dtype) if fmt == "longctx" else read_paper_pt(path, fmt, mcfg, dtype)


def write_torch_predictor(conv: ConvertedPredictor, path: str | Path, fmt: str | None = None) -> Path:
    """Write in `fmt` (default: the format it was read from)."""
    fmt = fmt or conv.source["format"]
    kind = "longctx" if fmt == "longctx" else "paper"
    if fmt not in FORMATS or kind != conv.pcfg.kind or (fmt in ("v1", "v2") and fmt != conv.pcfg.variant) \
            or (fmt == "hf-butler" and conv.pcfg.variant != "v2"):
        raise CheckpointError(f"cannot write a {conv.pcfg.kind} {conv.pcfg.variant} predictor as --format {fmt}")
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    writers = {"v1": write_paper_pt, "v2": write_paper_pt, "hf-butler": write_hf_butler, "longctx": write_longctx}
    return writers[fmt](conv, path)


def save_jax_predictor(conv: ConvertedPredictor, directory: str | Path) -> Path:
    """predictor.safetensors + predictor.json (+ torch_carried.safetensors) in `directory`."""
    meta = {"predictor": dataclasses.asdict(conv.pcfg), "model_shape": {k: v for k, v in conv.shape.items() if k != "head_dim"},
            "head_dim": conv.shape["head_dim"], "torch_source": conv.source, "torch_carried": sorted(conv.carried)}
    out = save_tree(conv.params, directory, "predictor", meta)
    if conv.carried:
        write_safetensors(conv.carried, out / CARRIED_FILE)
    return out


def load_jax_predictor(directory: str | Path) -> ConvertedPredictor:
    """Inverse of `save_jax_predictor` (also reads directories written by `predictor_io.save_predictor`)."""
    params, meta = load_tree(directory, "predictor")
    pcfg = from_dict(PredictorConfig, meta["predictor"], "predictor")
    shape = {**meta["model_shape"], "head_dim": meta.get("head_dim")}
    carried_file = Path(directory) / CARRIED_FILE
    carried = read_safetensors(carried_file) if carried_file.is_file() else {}
    if "torch_carried" in meta and sorted(carried) != meta["torch_carried"]:
        raise CheckpointError(f"{str(carried_file)!r} does not hold the {len(meta['torch_carried'])} carried tensors "
                              "predictor.json lists (a file left by another conversion?); convert the source again "
                              "into a new folder")
    source = meta.get("torch_source") or {"format": "longctx" if pcfg.kind == "longctx" else pcfg.variant}
    return ConvertedPredictor(unflatten(flatten(params)), pcfg, shape, carried, source)


def cast_converted(conv: ConvertedPredictor, dtype: str) -> ConvertedPredictor:
    """The same predictor with its parameters (not the carried tensors) cast to `dtype`."""
    cast = {k: _cast(v, dtype) for k, v in flatten(conv.params).items()}
    return dataclasses.replace(conv, params=unflatten(cast))
