"""Text generation from the command line: `python -m butler_jax.generate --prompt "..."`.

Uses the embedded SmolLM2-135M-Instruct unless `--config` names another model. Arguments and
prompt lengths are checked before the weights load; errors print one line (`--debug`: traceback).
"""

from __future__ import annotations

import argparse
import sys
import time

from butler_jax.cli import add_debug_flag, run_cli
from butler_jax.config import PROJECT_ROOT, ModelConfig, load_yaml, section
from butler_jax.errors import ConfigError, InputError
from butler_jax.sampling import SamplingConfig

DEFAULT_CONFIG = str(PROJECT_ROOT / "configs" / "smollm2-135m.yaml")


def check_lengths(prompts: list[list[int]], max_new_tokens: int, cfg: ModelConfig) -> None:
    """Raise unless every prompt plus `max_new_tokens` fits the model's positions."""
    longest = max(len(p) for p in prompts)
    if longest + max_new_tokens > cfg.max_position_embeddings:
        raise InputError(f"a prompt of {longest} tokens plus --max-new-tokens {max_new_tokens} exceeds the model's "
                         f"{cfg.max_position_embeddings} positions (model.max_position_embeddings)",
                         fix="shorten the prompt or lower --max-new-tokens")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--prompt", action="append", required=True, help="repeat for a batch of prompts")
    parser.add_argument("--config", default=DEFAULT_CONFIG)
    parser.add_argument("--max-new-tokens", type=int, default=64)
    parser.add_argument("--temperature", type=float, default=0.0, help="0 = greedy")
    parser.add_argument("--top-p", type=float, default=1.0)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--no-chat", action="store_true", help="do not wrap prompts in the chat template")
    parser.add_argument("overrides", nargs="*", help="config overrides, e.g. model.dtype=bfloat16")
    args = add_debug_flag(parser).parse_args(argv)

    if args.max_new_tokens < 1:
        raise ConfigError(f"--max-new-tokens {args.max_new_tokens} must be >= 1")
    sampling = SamplingConfig(args.temperature, args.top_p)
    model_section = section(load_yaml(args.config, args.overrides), "model", ModelConfig)

    from butler_jax.weights import load_tokenizer
    from butler_jax.weights.tokenizer import apply_chat_template

    tokenizer = load_tokenizer(model_section.source)
    texts = args.prompt if args.no_chat else [apply_chat_template(tokenizer, p) for p in args.prompt]
    prompts = [tokenizer.encode(t) for t in texts]
    check_lengths(prompts, args.max_new_tokens, model_section)

    from butler_jax.decode import generate
    from butler_jax.models.llama import LlamaForCausalLM
    from butler_jax.weights import model_from_config

    cfg, params = model_from_config(model_section)
    check_lengths(prompts, args.max_new_tokens, cfg)  # the loaded weights may declare fewer positions
    start = time.perf_counter()
    result = generate(
        LlamaForCausalLM(cfg), params, prompts, args.max_new_tokens, sampling=sampling,
        stop_tokens=[cfg.eos_token_id] if cfg.eos_token_id is not None else [], seed=args.seed,
    )
    seconds = time.perf_counter() - start
    for prompt, row in zip(args.prompt, result.rows()):
        print(f"### {prompt}\n{tokenizer.decode(row, skip_special_tokens=True)}\n")
    print(f"[{int(result.num_generated.sum())} tokens in {seconds:.1f}s including compilation]")
    return 0


if __name__ == "__main__":
    sys.exit(run_cli(main))
