"""``python -m glm_core.convert SRC DST``: convert (and merge) any supported checkpoint layout to hub layout.

Writes into a temporary directory beside DST and renames it at the end, so a failed conversion leaves nothing at DST.
Exit status 2 with one line on stderr for any user error.
"""

from __future__ import annotations

import argparse
import re
import sys
from pathlib import Path

from glm_core.atomic import staged_directory
from glm_core.errors import GLMError, print_warnings_on_one_line
from glm_core.outputs import check_output, foreign_to, interrupt_exit_code, terminate_as_interrupt, write_marker

TOOL = "glm_core.convert"

EXAMPLE = """example:
  python -m glm_core.convert ./glm-large-blank ./glm-large-hub            # original layout (MP shards merged)
  python -m glm_core.convert ./glm-10b ./glm-10b-sharded --max-shard-gb 5 --dtype fp16
"""


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m glm_core.convert",
        description="Convert a GLM checkpoint (hub .bin/safetensors, original THUDM layout with model-parallel "
        "shards, or a preset) to hub layout (safetensors + config.json).",
        epilog=EXAMPLE,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("src", help="checkpoint directory, weight file or preset name")
    parser.add_argument("dst", help="output directory (must not exist unless --overwrite)")
    parser.add_argument("--dtype", choices=["fp32", "fp16", "bf16"], default=None, help="dtype of the written weights")
    parser.add_argument("--gelu", choices=["tanh", "erf"], default=None, help="GeLU variant recorded in config.json")
    parser.add_argument(
        "--max-shard-gb", type=positive_gb, default=None, help="shard the safetensors above this size (GB, > 0)"
    )
    parser.add_argument("--prefix", action="store_true", help="write keys with the HF 'glm.' prefix")
    parser.add_argument(
        "--num-attention-heads",
        type=int,
        default=None,
        metavar="N",
        help="head count of an original checkpoint whose shapes match no released GLM (it has no config.json)",
    )
    parser.add_argument(
        "--overwrite", action="store_true", help="replace an existing DST that an earlier conversion wrote (only that)"
    )
    return parser


def positive_gb(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a number; expected a size in GB greater than 0") from None
    if not value > 0 or value == float("inf"):
        raise argparse.ArgumentTypeError(f"{text} is not a size; expected a number of GB greater than 0")
    return value


def _writes(name: str) -> bool:
    """The names a conversion writes into DST."""
    return (
        name in ("config.json", "model.safetensors", "model.safetensors.index.json")
        or re.fullmatch(r"model-\d{5}-of-\d{5}\.safetensors", name) is not None
        or name in TOKENIZER_FILES
        or name.endswith(".model")
    )


def check_destination(dst: str, overwrite: bool) -> Path:
    """DST is checked before the (slow) load: a new path, or with ``--overwrite`` an earlier conversion's output."""
    return check_output(
        dst,
        overwrite=overwrite,
        flag="DST",
        foreign=lambda p: foreign_to(p, {TOOL}, signature=("config.json",), expected=_writes),
        what="a converted checkpoint",
    )


def convert(
    src: str,
    dst: str,
    *,
    dtype: str | None = None,
    gelu: str | None = None,
    max_shard_gb: float | None = None,
    prefix: bool = False,
    overwrite: bool = False,
    num_attention_heads: int | None = None,
) -> Path:
    from glm_core.checkpoint import SHIPPED_PRESETS, load_model, save_model

    out = check_destination(dst, overwrite)
    # Without --dtype the weights keep their stored dtype (an fp16 glm-10b stays 19.8 GB, not 39.6 GB).
    from glm_core.hub import resolve_model_path

    src = resolve_model_path(src)  # a hub id becomes its snapshot directory
    model = load_model(src, dtype=dtype or "auto", gelu=gelu, num_attention_heads=num_attention_heads)
    if prefix and model.config.architecture != "glm":
        raise GLMError(
            f"{src}: --prefix writes GLM's 'glm.' key prefix; a {model.config.architecture} checkpoint has none"
        )
    src_dir = Path(SHIPPED_PRESETS.get(src, src))
    src_dir = src_dir if src_dir.is_dir() else src_dir.parent
    tokenizer_files = [p for p in sorted(src_dir.iterdir()) if _is_tokenizer_file(p)] if src_dir.is_dir() else []
    max_bytes = None if max_shard_gb is None else int(max_shard_gb * 2**30)
    try:
        with staged_directory(out) as tmp:
            save_model(
                model, tmp, max_shard_bytes=max_bytes, prefix="glm." if prefix else "", extra_files=tokenizer_files
            )
            write_marker(tmp, TOOL, source=str(src))
    except OSError as exc:
        raise GLMError(f"{out}: could not write the converted checkpoint ({exc.strerror or exc})") from None
    return out


TOKENIZER_FILES = (
    "vocab.txt",
    "vocab.json",
    "merges.txt",
    "glm_tokenizer.json",
    "tokenizer_config.json",
    "added_tokens.json",
    "special_tokens_map.json",
)


def _is_tokenizer_file(path: Path) -> bool:
    """Tokenizer files travel with the weights so the converted directory is usable on its own."""
    return path.is_file() and (path.name in TOKENIZER_FILES or path.suffix == ".model")


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    print_warnings_on_one_line()
    try:
        with terminate_as_interrupt():
            out = convert(
                args.src,
                args.dst,
                dtype=args.dtype,
                gelu=args.gelu,
                max_shard_gb=args.max_shard_gb,
                prefix=args.prefix,
                overwrite=args.overwrite,
                num_attention_heads=args.num_attention_heads,
            )
    except GLMError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt as exc:
        print("error: interrupted; nothing was written", file=sys.stderr)
        return interrupt_exit_code(exc)
    print(f"wrote {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
