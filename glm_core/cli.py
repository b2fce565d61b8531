"""``glm-generate``: fill the blanks of a text with a GLM (torch), e.g. the shipped ``glm-tiny``.

    glm-generate --model glm-tiny "The capital of Veldora is [MASK]."
    glm-generate --model ./glm-large-hub --strategy beam --num-beams 5 "Ng is an adjunct professor at [MASK]."

Blanks are ``[MASK]``, ``[sMASK]`` and ``[gMASK]``; with none in the text a ``[gMASK]`` (or ``[MASK]``) is appended.
Prints the filled text (and JSON with ``--json``). Exit status 2 with one line on stderr for bad input.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from glm_core.errors import GLMError, print_warnings_on_one_line


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="glm-generate",
        description=__doc__.split("\n\n")[0],
        epilog=__doc__.split("\n\n", 1)[1],
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("text", nargs="+", help="text with [MASK]/[sMASK]/[gMASK] blanks (several texts allowed)")
    parser.add_argument("--model", default="glm-tiny", help="checkpoint directory or preset (default: glm-tiny)")
    parser.add_argument("--strategy", choices=["greedy", "sample", "beam"], default="greedy")
    parser.add_argument("--max-new-tokens", type=int, default=16)
    parser.add_argument("--num-beams", type=int, default=4)
    parser.add_argument("--length-penalty", type=float, default=1.0)
    parser.add_argument("--temperature", type=float, default=0.9)
    parser.add_argument("--top-k", type=int, default=40)
    parser.add_argument("--top-p", type=float, default=1.0)
    parser.add_argument("--no-repeat-ngram-size", type=int, default=0)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--dtype", choices=["fp32", "fp16", "bf16"], default="fp32")
    parser.add_argument("--json", action="store_true", help="print one JSON object per text")
    return parser


def run(args: argparse.Namespace) -> list[dict[str, object]]:
    from glm_core.checkpoint import SHIPPED_PRESETS, load_model
    from glm_core.generation import GenerationConfig, generate
    from glm_core.hub import resolve_model_path
    from glm_core.layout import build_generation_prompt
    from glm_core.step import TorchStep
    from glm_core.tokenizer import GLMTokenizer

    tok_dir = Path(SHIPPED_PRESETS.get(args.model) or resolve_model_path(args.model))
    if not tok_dir.is_dir():  # checked first: building a large model only to fail here would waste minutes
        raise GLMError(f"{args.model}: not a checkpoint directory with tokenizer files (or the preset glm-tiny)")
    tokenizer = GLMTokenizer.from_pretrained(tok_dir)
    model = load_model(tok_dir, dtype=args.dtype)
    backend = TorchStep(model)
    config = GenerationConfig(
        max_new_tokens=args.max_new_tokens,
        strategy="sample" if args.strategy == "sample" else args.strategy,
        temperature=args.temperature if args.strategy == "sample" else 1.0,
        top_k=args.top_k if args.strategy == "sample" else 0,
        top_p=args.top_p if args.strategy == "sample" else 1.0,
        num_beams=args.num_beams if args.strategy == "beam" else 1,
        length_penalty=args.length_penalty,
        no_repeat_ngram_size=args.no_repeat_ngram_size,
        seed=args.seed,
        vocab_size=len(tokenizer),
    )
    results = []
    for index, text in enumerate(args.text, 1):
        if not text.strip():
            raise GLMError(
                f"text {index} is empty; expected text to fill, with [MASK], [sMASK] or [gMASK] blanks "
                "(a text without one gets [gMASK] at its end)"
            )
        prompt = build_generation_prompt(
            tokenizer.encode(text), tokenizer.special, max_length=model.config.max_sequence_length
        )
        out = generate(backend, prompt, tokenizer.special, config)
        filled = tokenizer.decode(out.sequence[1:])  # drop [CLS]
        results.append(
            {"text": text, "filled": filled, "blanks": [tokenizer.decode(b) for b in out.blanks], "scores": out.scores}
        )
    return results


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    print_warnings_on_one_line()
    try:
        results = run(args)
    except GLMError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    for r in results:
        print(json.dumps(r, ensure_ascii=False) if args.json else f"{r['text']}\n  -> {r['filled']}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
