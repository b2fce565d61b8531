"""``python -m export.onnx``: export a GLM checkpoint to a validated, self-contained ONNX model directory.

Stages: load the checkpoint -> PyTorch reference outputs -> trace (``torch.onnx.export(dynamo=True)``, graph.py)
-> optional passes (fusion, fp16, int8/int4; export/passes/) -> write the model directory (model_dir.py) ->
validate it with ONNX Runtime in a separate process (validate.py) -> rename into place. Any failure, validation
included, prints one line, exits with status 2 and leaves nothing at ``--out``.

Large models (see export/README.md): the torch model is the only full copy of the weights held while tracing; the
exported program is written straight to disk (external data above protobuf's 2 GB limit) and freed before any
pass reloads it.
"""

from __future__ import annotations

import argparse
import contextlib
import gc
import io
import json
import logging
import os
import platform
import resource
import sys
import time
import warnings
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from glm_core.errors import ExportError, GLMError

EXAMPLES = """\
examples:
  python -m export.onnx --ckpt glm-tiny
  python -m export.onnx --ckpt ./checkpoints/glm-large --out ./glm-large-onnx --quantize int4
  python -m export.onnx --ckpt glm-large --random-weights --no-validate   # pipeline/benchmark run
  python -m export.onnx --ckpt glm-tiny --dtype fp16 --optimize ort --device cuda --overwrite
"""

_QUANTIZER_LOGGERS = ("onnxruntime.quantization.matmul_nbits_quantizer", "onnxruntime.quantization.quantize")
TOKENIZER_FILES = ("glm_tokenizer.json", "tokenizer_config.json", "vocab.txt", "vocab.json", "merges.txt")
VALIDATION_TIMEOUT_S = 3600


@dataclass
class ExportOptions:
    ckpt: str
    out: Path
    dtype: str = "fp32"
    opset: int = 20
    optimize: str = "none"
    quantize: str = "none"
    external_data: str = "auto"
    device: str = "cpu"
    overwrite: bool = False
    random_weights: bool = False
    validate: bool = True
    verbose: bool = False


@dataclass
class StageClock:
    """Wall time per stage, plus a progress bar over the stages."""

    total: int
    verbose: bool
    timings: dict[str, float] = field(default_factory=dict)

    def __post_init__(self) -> None:
        from tqdm import tqdm

        self.bar = tqdm(total=self.total, desc="export", unit="stage", disable=None, leave=False)

    @contextlib.contextmanager
    def stage(self, name: str) -> Iterator[None]:
        self.bar.set_description(f"export: {name}")
        start = time.perf_counter()
        yield
        self.timings[name] = round(time.perf_counter() - start, 3)
        self.bar.update(1)
        if self.verbose:
            self.bar.write(f"{name}: {self.timings[name]:.1f} s")

    def close(self) -> None:
        self.bar.close()


# ------------------------------------------------------------------------------------------------ argument checks
def parse_args(argv: Sequence[str] | None) -> ExportOptions:
    parser = argparse.ArgumentParser(
        prog="python -m export.onnx",
        description="Export a GLM checkpoint (directory, file or preset name) to an ONNX model directory whose graph "
        "builds GLM's attention mask from `sep`, with a K/V cache; validated against PyTorch before it is written.",
        epilog=EXAMPLES,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--ckpt", required=True, help="checkpoint directory/file or preset (glm-tiny, glm-large, ...)")
    parser.add_argument("--out", help="output directory (default: ./<model-name>-onnx)")
    parser.add_argument("--dtype", choices=("fp32", "fp16"), default="fp32", help="graph compute dtype")
    parser.add_argument("--opset", type=int, default=None, help="ONNX opset (default 20; 18..23)")
    parser.add_argument(
        "--optimize",
        choices=("none", "ort"),
        default="none",
        help="ort: fuse attention into com.microsoft.MultiHeadAttention (ORT-only graph)",
    )
    parser.add_argument(
        "--quantize",
        choices=("none", "int8", "int4"),
        default="none",
        help="int8: dynamic quantization; int4: weight-only MatMulNBits (fastest CPU decode)",
    )
    parser.add_argument(
        "--external-data",
        choices=("auto", "always", "never"),
        default="auto",
        help="weights in model.onnx.data: auto = only above protobuf's 2 GB limit",
    )
    parser.add_argument("--device", choices=("cpu", "cuda"), default="cpu", help="execution provider to validate on")
    parser.add_argument("--overwrite", action="store_true", help="replace an existing --out")
    parser.add_argument(
        "--random-weights",
        action="store_true",
        help="build a preset without shipped weights (glm-large, ...) from seeded random weights, "
        "for benchmarks and pipeline tests",
    )
    parser.add_argument("--no-validate", action="store_true", help="skip the PyTorch-vs-ONNX Runtime validation")
    parser.add_argument("-v", "--verbose", action="store_true", help="stage timings and exporter messages")
    args = parser.parse_args(argv)
    from export.graph import DEFAULT_OPSET

    out = Path(args.out) if args.out else Path.cwd() / f"{model_name(args.ckpt)}-onnx"
    return ExportOptions(
        ckpt=args.ckpt,
        out=out,
        dtype=args.dtype,
        opset=DEFAULT_OPSET if args.opset is None else args.opset,
        optimize=args.optimize,
        quantize=args.quantize,
        external_data=args.external_data,
        device=args.device,
        overwrite=args.overwrite,
        random_weights=args.random_weights,
        validate=not args.no_validate,
        verbose=args.verbose,
    )


def model_name(ckpt: str) -> str:
    path = Path(ckpt)
    if path.exists():
        return path.resolve().name if path.is_dir() else path.resolve().parent.name
    return Path(ckpt).name or "model"


def preflight(options: ExportOptions) -> None:
    """Everything that can be refused before loading a model."""
    from export.graph import MAX_OPSET, MIN_OPSET
    from export.model_dir import check_output_path

    if not MIN_OPSET <= options.opset <= MAX_OPSET:
        raise ExportError(f"unknown opset {options.opset}: this exporter supports opsets {MIN_OPSET}..{MAX_OPSET}")
    if options.quantize != "none" and options.dtype != "fp32":
        raise ExportError(f"--quantize {options.quantize} needs --dtype fp32 (the quantizers read fp32 weights)")
    if options.device == "cuda":
        import onnxruntime as ort

        if "CUDAExecutionProvider" not in ort.get_available_providers():
            raise ExportError(
                "--device cuda: this onnxruntime has no CUDAExecutionProvider "
                f"(available: {', '.join(ort.get_available_providers())}); install onnxruntime-gpu"
            )
    check_output_path(options.out, options.overwrite)


# ---------------------------------------------------------------------------------------------------- stages
def load_checkpoint(ckpt: str, random_weights: bool = False) -> tuple[Any, Any, list[str]]:
    """(fp32 model, tokenizer or None, notes). Random-weight presets produce a note, not a silent model."""
    from glm_core.checkpoint import SHIPPED_PRESETS, load_model

    notes: list[str] = []
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        model = load_model(ckpt, dtype="fp32", random_weights=random_weights)
    notes += [str(w.message) for w in caught if "random weights" in str(w.message)]
    tokenizer = None
    path = Path(ckpt) if Path(ckpt).exists() else SHIPPED_PRESETS.get(ckpt)
    if path is not None:
        directory = path if path.is_dir() else path.parent
        if _has_tokenizer_files(directory):
            from glm_core.tokenizer import GLMTokenizer

            tokenizer = GLMTokenizer.from_pretrained(directory)
    return model, tokenizer, notes


def _has_tokenizer_files(directory: Path) -> bool:
    return any((directory / name).is_file() for name in TOKENIZER_FILES) or any(directory.glob("*.model"))


def special_tokens_of(config: Any, tokenizer: Any) -> Any:
    """The special ids to record in glm_config.json (None when unknown or outside the vocabulary)."""
    from glm_core.special_tokens import special_tokens_for

    if tokenizer is not None:
        return tokenizer.special
    if config.tokenizer_family == "sentencepiece":
        return None  # ids depend on the piece count, which only the tokenizer knows
    special = special_tokens_for(config.tokenizer_family)
    ids = [i for i in special.to_dict().values() if isinstance(i, int)]
    return special if max(ids) < config.vocab_size else None


def weight_bytes(module: Any) -> int:
    tensors = list(module.parameters()) + list(module.buffers())
    return sum(t.numel() * t.element_size() for t in tensors)


@contextlib.contextmanager
def exporter_quiet(verbose: bool) -> Iterator[None]:
    """Silence the exporter's warnings and progress prints unless -v."""
    if verbose:
        yield
        return
    names = ("torch.onnx", "torch.export", "torch._dynamo", "onnxscript", "onnxruntime", "", *_QUANTIZER_LOGGERS)
    loggers = [logging.getLogger(n) for n in names]
    levels = [lg.level for lg in loggers]
    for lg in loggers:
        lg.setLevel(logging.ERROR)
    sink = io.StringIO()
    try:
        with warnings.catch_warnings(), contextlib.redirect_stdout(sink):
            warnings.simplefilter("ignore")
            yield
    finally:
        for lg, level in zip(loggers, levels, strict=True):
            lg.setLevel(level)


def run_passes(model: Any, options: ExportOptions, num_layers: int, work: Path) -> tuple[Any, dict[str, Any]]:
    figures: dict[str, Any] = {}
    if options.optimize == "ort":
        from export.passes.fusion import fuse_for_ort

        model, figures["fusion"] = fuse_for_ort(model, num_layers)
    if options.dtype == "fp16":
        from export.passes.fp16 import convert_to_fp16

        model, figures["fp16"] = convert_to_fp16(model, options.device)
    if options.quantize == "int8":
        from export.passes.quantize import quantize_int8

        model, figures["int8"] = quantize_int8(model, work)
    elif options.quantize == "int4":
        from export.passes.quantize import quantize_int4

        model, figures["int4"] = quantize_int4(model)
    return model, figures


def versions() -> dict[str, str]:
    import numpy
    import onnx
    import onnxruntime
    import onnxscript
    import torch

    return {
        "python": platform.python_version(),
        "torch": torch.__version__,
        "onnx": onnx.__version__,
        "onnxruntime": onnxruntime.__version__,
        "onnxscript": onnxscript.__version__,
        "numpy": numpy.__version__,
        "platform": platform.platform(),
    }


def peak_rss_bytes() -> int:
    # ru_maxrss is KiB on Linux, bytes on macOS
    rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return int(rss if sys.platform == "darwin" else rss * 1024)


# ---------------------------------------------------------------------------------------------------- export
def export(options: ExportOptions) -> dict[str, Any]:
    """Run every stage; returns the export report. Raises GLMError on anything a user can fix."""
    preflight(options)
    import onnx

    from export import model_dir as md
    from export.graph import GLMExportModule, export_program, release_exporter_caches
    from export.validate import make_reference, validate_in_subprocess

    passes = options.optimize != "none" or options.dtype != "fp32" or options.quantize != "none"
    clock = StageClock(total=6 + int(options.validate), verbose=options.verbose)
    report: dict[str, Any] = {"options": {k: str(v) for k, v in options.__dict__.items()}}
    try:
        with md.StagingDir(options.out, options.overwrite) as staging:
            with clock.stage("load"):
                model, tokenizer, notes = load_checkpoint(options.ckpt, options.random_weights)
                for note in notes:
                    clock.bar.write(f"note: {note}", file=sys.stderr)
                config = model.config
                special = special_tokens_of(config, tokenizer)
            reference = staging.work / "reference.npz"
            if options.validate:
                with clock.stage("reference"):
                    make_reference(model, reference, special=special, tokenizer=tokenizer)
            with clock.stage("trace"), exporter_quiet(options.verbose):
                wrapper = GLMExportModule(model)
                nbytes = weight_bytes(model) + int(wrapper.lm_head.numel() * wrapper.lm_head.element_size())
                report["parameters"] = config.num_parameters()
                report["weight_bytes"] = nbytes
                try:
                    program = export_program(wrapper, options.opset)
                except Exception as exc:  # the exporter raises many types; keep the first line
                    first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
                    raise ExportError(f"torch.onnx.export failed: {first[:300]}") from exc
                # Always streamed to disk as external data: an inline save would serialise every weight into one
                # in-memory protobuf while the torch model is still alive (measured: 4.3x the weight bytes of
                # peak RSS for glm-large, vs 1.4x this way).
                raw = (staging.work if passes else staging.path) / md.MODEL_FILE
                program.save(str(raw), external_data=True)
                del program, wrapper, model
                release_exporter_caches()
            data_files = [md.DATA_FILE]
            inline = not md.use_external_data(nbytes, options.external_data)
            if passes:
                with clock.stage("passes"), exporter_quiet(options.verbose):
                    graph = onnx.load(str(raw))  # the torch model is gone: this is now the only copy
                    graph, report["passes"] = run_passes(graph, options, config.num_layers, staging.work)
                    external = md.use_external_data(md.initializer_bytes(graph), options.external_data)
                    data_files = md.save_model_file(graph, staging.path, external)
                    del graph
                    gc.collect()
            elif inline:
                with clock.stage("inline"):
                    staged = staging.work / md.MODEL_FILE
                    os.replace(raw, staged)
                    os.replace(staging.path / md.DATA_FILE, staging.work / md.DATA_FILE)
                    md.inline_external_data(staged, staging.path / md.MODEL_FILE)
                    data_files = []
            with clock.stage("write"):
                kv_dtype = "float16" if options.dtype == "fp16" else "float32"
                glm_config = md.model_config(
                    config,
                    model_name=model_name(options.ckpt),
                    dtype=options.dtype,
                    kv_dtype=kv_dtype,
                    opset=options.opset,
                    optimize=options.optimize,
                    quantize=options.quantize,
                    special=special,
                    has_tokenizer=tokenizer is not None,
                    external_data=data_files,
                    device=options.device,
                )
                (staging.path / "glm_config.json").write_text(json.dumps(glm_config, indent=2) + "\n", encoding="utf-8")
                if tokenizer is not None:
                    tokenizer.save_pretrained(staging.path)
                if data_files:  # what we wrote must not point outside the directory (an inline file cannot)
                    from evaluation.backends.onnx import check_external_data

                    check_external_data(staging.path / md.MODEL_FILE)
            if options.validate:
                with clock.stage("validate"):
                    validation = validate_in_subprocess(
                        staging.path, reference, staging.work / "validation.json", options.device, VALIDATION_TIMEOUT_S
                    )
                    report["validation"] = validation
                    if not validation["passed"]:
                        raise ExportError("validation failed: " + "; ".join(validation["failures"]))
            with clock.stage("report"):
                report.update(
                    {
                        "versions": versions(),
                        "model": glm_config["model_name"],
                        "files": md.file_sizes(staging.path),
                        "timings_s": clock.timings,
                        "peak_rss_bytes": peak_rss_bytes(),
                        "notes": notes,
                    }
                )
                (staging.path / md.REPORT_FILE).write_text(json.dumps(report, indent=2) + "\n", encoding="utf-8")
            staging.commit()
    finally:
        clock.close()
    return report


def summary(report: dict[str, Any], out: Path) -> str:
    lines = [f"wrote {out}"]
    sizes = report.get("files", {})
    if sizes:
        total = sum(sizes.values())
        lines.append(f"  size {total / 1e6:.1f} MB ({', '.join(sorted(sizes))})")
    validation = report.get("validation")
    if validation:
        grid = validation["grid"]
        worst = max(entry["logits"]["max_abs"] for entry in grid)
        norm = max(entry["logits"]["normalised"] for entry in grid)
        if validation.get("quantize", "none") != "none":
            ppl = validation["perplexity"]
            lines.append(
                f"  validated on {validation['device']} ({validation['quantize']}): perplexity {ppl['onnx']:.4g} vs "
                f"torch {ppl['torch']:.4g} (relative change {ppl['rel_delta']:.3g}), "
                f"top-1 on decided rows {validation['confident_top1']['agreement']:.3f} "
                f"({validation['confident_top1']['rows']} rows), max|Δlogits| {worst:.3g}"
            )
            return "\n".join(lines)
        lines.append(
            f"  validated on {validation['device']}: max|Δlogits| {worst:.3g} (normalised {norm:.3g}), "
            f"top-1 {validation['top1_agreement']:.3f}, incremental max|Δ| {validation['incremental']['max_abs']:.3g}, "
            f"greedy identical: {validation['generation']['identical']}"
        )
    else:
        lines.append("  not validated (--no-validate)")
    return "\n".join(lines)


def main(argv: Sequence[str] | None = None) -> int:
    options = parse_args(argv)
    try:
        report = export(options)
    except GLMError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return exc.exit_code
    except KeyboardInterrupt:
        print("error: interrupted; nothing was written", file=sys.stderr)
        return 130
    print(summary(report, options.out))
    return 0


if __name__ == "__main__":
    sys.exit(main())
