"""Text generation from the command line: `python -m butler_jax.generate --prompt "..."`.

Uses the embedded SmolLM2-135M-Instruct unless `--config` names another model.
"""

from __future__ import annotations

import argparse
import time

from butler_jax.config import ModelConfig, load_yaml, section
from butler_jax.decode import generate
from butler_jax.models.llama import LlamaForCausalLM
from butler_jax.sampling import SamplingConfig
from butler_jax.weights import load_tokenizer, model_from_config
from butler_jax.weights.tokenizer import apply_chat_template


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--prompt", action="append", required=True, help="repeat for a batch of prompts")
    parser.add_argument("--config", default="configs/smollm2-135m.yaml")
    parser.add_argument("--max-new-tokens", type=int, default=64)
    parser.add_argument("--temperature", type=float, default=0.0, help="0 = greedy")
    parser.add_argument("--top-p", type=float, default=1.0)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--no-chat", action="store_true", help="do not wrap prompts in the chat template")
    parser.add_argument("overrides", nargs="*", help="config overrides, e.g. model.dtype=bfloat16")
    args = parser.parse_args(argv)

    cfg, params = model_from_config(section(load_yaml(args.config, args.overrides), "model", ModelConfig))
    tokenizer = load_tokenizer(cfg.source)
    texts = args.prompt if args.no_chat else [apply_chat_template(tokenizer, p) for p in args.prompt]
    prompts = [tokenizer.encode(t) for t in texts]
    start = time.perf_counter()
    result = generate(
        LlamaForCausalLM(cfg), params, prompts, args.max_new_tokens,
        sampling=SamplingConfig(args.temperature, args.top_p),
        stop_tokens=[cfg.eos_token_id] if cfg.eos_token_id is not None else [], seed=args.seed,
    )
    seconds = time.perf_counter() - start
    for prompt, row in zip(args.prompt, result.rows()):
        print(f"### {prompt}\n{tokenizer.decode(row, skip_special_tokens=True)}\n")
    print(f"[{int(result.num_generated.sum())} tokens in {seconds:.1f}s including compilation]")


if __name__ == "__main__":
    main()
