"""``python -m export.onnx``: export a GLM checkpoint to a validated, self-contained ONNX model directory.

Stages: load the checkpoint -> PyTorch reference outputs -> trace (``torch.onnx.export(dynamo=True)``, graph.py)
-> optional passes (fusion, fp16, int8/int4; export/passes/) -> write the model directory (model_dir.py) ->
rename into place. Validation (validate.py, ONNX Runtime in a separate process) runs after every stage that changes
the graph (spec onnx_export §6: each pass re-validated): the traced graph against the fp32 gates, then the graph
after each pass against the gates of its precision at that point; the first stage that fails names itself. Any
failure, validation included, prints one line, exits with status 2 and leaves nothing at ``--out``.

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
import shutil
import sys
import time
import warnings
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

from glm_core.errors import ExportError, GLMError, print_warnings_on_one_line
from glm_core.outputs import interrupt_exit_code, terminate_as_interrupt

EXAMPLES = """\
examples:
  python -m export.onnx --ckpt glm-tiny
  python -m export.onnx --ckpt ./checkpoints/glm-large --out ./glm-large-onnx --quantize int4
  python -m export.onnx --ckpt glm-large --random-weights --no-validate   # pipeline/benchmark run
  python -m export.onnx --ckpt glm-tiny --dtype fp16 --optimize ort --device cuda:0 --overwrite
"""

_QUANTIZER_LOGGERS = ("onnxruntime.quantization.matmul_nbits_quantizer", "onnxruntime.quantization.quantize")
TOKENIZER_FILES = ("glm_tokenizer.json", "tokenizer_config.json", "vocab.txt", "vocab.json", "merges.txt")
VALIDATION_TIMEOUT_S = 3600
# Intermediate stages (the traced graph before passes, a graph between two passes) of models with more fp32 weight
# bytes than this are validated with validate.py's reduced checks (REDUCED_GRID, no greedy generation): each check
# loads a fresh ONNX Runtime session, and only the shipped model needs every figure.
REDUCED_CHECKS_ABOVE_BYTES = 1024**3
TRACE_STAGE = "trace"


@dataclass
class ExportOptions:
    ckpt: str
    out: Path
    dtype: str = "fp32"
    opset: int = 20
    optimize: str = "none"
    kv_cache: str = "auto"
    quantize: str = "none"
    external_data: str = "auto"
    device: str = "cpu"
    overwrite: bool = False
    random_weights: bool = False
    calibration_text: str | None = None
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
    parser.add_argument(
        "--ckpt",
        required=True,
        help="checkpoint directory/file, preset (glm-tiny, glm-large, ...) or hub id owner/name[@revision]",
    )
    parser.add_argument("--out", help="output directory (default: ./<model-name>-onnx)")
    parser.add_argument("--dtype", choices=("fp32", "fp16"), default="fp32", help="graph compute dtype")
    parser.add_argument("--opset", type=int, default=None, help="ONNX opset (default 20; 18..23)")
    parser.add_argument(
        "--optimize",
        choices=("none", "ort"),
        default="none",
        help="ort: fuse attention into com.microsoft.MultiHeadAttention taking the past and returning the present "
        "(ORT-only graph, concat cache); on CPU the default buffer cache decodes faster from P ~512 (BENCHMARKS.md)",
    )
    parser.add_argument(
        "--kv-cache",
        choices=("auto", "buffer", "concat"),
        default="auto",
        help="buffer: fixed-capacity K/V buffers, a decode step writes only its rows (faster CPU decode at long "
        "pasts); concat: present = Concat(past, new). auto = concat with --optimize ort or --device cuda, else buffer",
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
    parser.add_argument(
        "--device",
        default="cpu",
        help="where to validate: cpu, cuda or cuda:N (CUDAExecutionProvider on device N; an ONNX Runtime that falls "
        "back to the CPU is an error)",
    )
    parser.add_argument(
        "--overwrite", action="store_true", help="replace an existing --out that an earlier export wrote (only that)"
    )
    parser.add_argument(
        "--random-weights",
        action="store_true",
        help="build a preset without shipped weights (glm-large, ...) from seeded random weights, "
        "for benchmarks and pipeline tests",
    )
    parser.add_argument(
        "--calibration-text",
        metavar="FILE",
        help="UTF-8 text in the model's domain for the perplexity gate of quantized exports (default: calibration.txt "
        "in the checkpoint directory; without one, quantized quality is reported as not gated)",
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
        kv_cache=args.kv_cache,
        quantize=args.quantize,
        external_data=args.external_data,
        device=args.device,
        overwrite=args.overwrite,
        random_weights=args.random_weights,
        calibration_text=args.calibration_text,
        validate=not args.no_validate,
        verbose=args.verbose,
    )


def kv_cache_layout(options: ExportOptions) -> str:
    """``--kv-cache auto``: the buffer layout, except where the concat layout is the one that runs best (the fused
    attention of ``--optimize ort`` concatenates inside its kernel; on CUDA the buffer would live in host memory)."""
    if options.kv_cache != "auto":
        return options.kv_cache
    return "concat" if options.optimize == "ort" or str(options.device).startswith("cuda") else "buffer"


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
    if options.kv_cache == "buffer" and options.optimize == "ort":
        raise ExportError(
            "--optimize ort needs --kv-cache concat (the fused MultiHeadAttention owns the concatenation)"
        )
    if options.quantize != "none" and options.dtype != "fp32":
        raise ExportError(f"--quantize {options.quantize} needs --dtype fp32 (the quantizers read fp32 weights)")
    from evaluation.backends.devices import check_device

    try:
        check_device("onnx", options.device)
    except GLMError as exc:
        raise ExportError(f"--device: {exc}") from None
    check_output_path(options.out, options.overwrite)


# ---------------------------------------------------------------------------------------------------- stages
def load_checkpoint(ckpt: str, random_weights: bool = False) -> tuple[Any, Any, list[str]]:
    """(fp32 model, tokenizer or None, notes). Random-weight presets produce a note, not a silent model."""
    from glm_core.checkpoint import load_model
    from glm_core.hub import resolve_model_path

    ckpt = resolve_model_path(ckpt)  # a hub id becomes its snapshot directory (weights and tokenizer files)
    notes: list[str] = []
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        model = load_model(ckpt, dtype="fp32", random_weights=random_weights)
    notes += [str(w.message) for w in caught if "random weights" in str(w.message)]
    tokenizer = None
    directory = checkpoint_directory(ckpt)
    if directory is not None:
        if _has_tokenizer_files(directory):
            from glm_core.tokenizer import GLMTokenizer

            tokenizer = GLMTokenizer.from_pretrained(directory)
    return model, tokenizer, notes


def checkpoint_directory(ckpt: str) -> Path | None:
    """The directory of a checkpoint path or shipped preset (where its tokenizer files live), if any."""
    from glm_core.checkpoint import SHIPPED_PRESETS

    path = Path(ckpt) if Path(ckpt).exists() else SHIPPED_PRESETS.get(ckpt)
    if path is None:
        return None
    return path if path.is_dir() else path.parent


def _has_tokenizer_files(directory: Path) -> bool:
    return any((directory / name).is_file() for name in TOKENIZER_FILES) or any(directory.glob("*.model"))


def special_tokens_of(config: Any, tokenizer: Any) -> Any:
    """The special ids to record in glm_config.json (None when unknown or outside the vocabulary)."""
    from glm_core.special_tokens import special_tokens_for

    if tokenizer is not None:
        return tokenizer.special
    if config.tokenizer_family in ("sentencepiece", "chatglm"):
        return None  # ids depend on the piece count (or the ChatGLM tokenizer files), which only the tokenizer knows
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


# ---------------------------------------------------------------------------------------------------- passes
@dataclass(frozen=True)
class Precision:
    """What a graph computes in at one stage: its glm_config.json fields and so its validation gate."""

    dtype: str = "fp32"
    optimize: str = "none"
    quantize: str = "none"

    @property
    def kv_dtype(self) -> str:
        return "float16" if self.dtype == "fp16" else "float32"


@dataclass(frozen=True)
class GraphPass:
    name: str  # the stage name in the report: fusion, fp16, int8, int4
    flag: str  # the option that asked for it
    after: Precision  # the graph's precision once the pass ran

    @property
    def label(self) -> str:
        return f"the {self.name} pass ({self.flag})"


def plan_passes(options: ExportOptions) -> list[GraphPass]:
    """The passes the options ask for, in the order they run: fusion, fp16, quantization (spec onnx_export §6)."""
    plan: list[GraphPass] = []
    precision = Precision()
    if options.optimize == "ort":
        precision = replace(precision, optimize="ort")
        plan.append(GraphPass("fusion", "--optimize ort", precision))
    if options.dtype == "fp16":
        precision = replace(precision, dtype="fp16")
        plan.append(GraphPass("fp16", "--dtype fp16", precision))
    if options.quantize != "none":
        precision = replace(precision, quantize=options.quantize)
        plan.append(GraphPass(options.quantize, f"--quantize {options.quantize}", precision))
    return plan


def apply_pass(
    graph_pass: GraphPass, model: Any, options: ExportOptions, num_layers: int, work: Path
) -> tuple[Any, dict[str, Any]]:
    """Run one pass on an in-memory ``onnx.ModelProto``; returns the new model and the pass's figures."""
    if graph_pass.name == "fusion":
        from export.passes.fusion import fuse_for_ort

        return fuse_for_ort(model, num_layers)
    if graph_pass.name == "fp16":
        from export.passes.fp16 import convert_to_fp16

        return convert_to_fp16(model, options.device)
    if graph_pass.name == "int8":
        from export.passes.quantize import quantize_int8

        return quantize_int8(model, work)
    if graph_pass.name == "int4":
        from export.passes.quantize import quantize_int4

        return quantize_int4(model)
    raise ExportError(f"unknown graph pass {graph_pass.name!r}")


def write_glm_config(
    directory: Path,
    config: Any,
    options: ExportOptions,
    precision: Precision,
    special: Any,
    has_tokenizer: bool,
    data_files: list[str],
) -> dict[str, Any]:
    """Write ``glm_config.json`` for the graph in ``directory`` at ``precision``; returns its contents."""
    from export import model_dir as md
    from export.chatglm_graph import describe_architecture
    from export.graph import describe_kv_cache

    glm_config = md.model_config(
        config,
        model_name=model_name(options.ckpt),
        dtype=precision.dtype,
        kv_dtype=precision.kv_dtype,
        opset=options.opset,
        optimize=precision.optimize,
        quantize=precision.quantize,
        special=special,
        has_tokenizer=has_tokenizer,
        external_data=data_files,
        device=options.device,
    )
    describe_kv_cache(glm_config, kv_cache_layout(options))
    describe_architecture(glm_config, config)
    (directory / "glm_config.json").write_text(json.dumps(glm_config, indent=2) + "\n", encoding="utf-8")
    md.append_metadata(directory / md.MODEL_FILE, md.model_metadata(glm_config))
    return glm_config


# ---------------------------------------------------------------------------------------------------- validation
def failure_line(failures: list[str], shown: int = 3) -> str:
    """The first ``shown`` failures on one line, with a count of the rest."""
    line = "; ".join(failures[:shown])
    if len(failures) > shown:
        line += f" (and {len(failures) - shown} more)"
    return line


@dataclass
class StageValidator:
    """Validates the model directory of each stage against the one PyTorch reference, each in its own process.

    ``reduce_intermediate``: intermediate stages get validate.py's reduced checks (large models, see
    REDUCED_CHECKS_ABOVE_BYTES); the final model always gets every check.
    """

    reference: Path
    work: Path
    device: str
    reduce_intermediate: bool
    stages: list[dict[str, Any]] = field(default_factory=list)

    def check(self, after: str, label: str, model_dir: Path, final: bool) -> dict[str, Any]:
        from export.validate import validate_in_subprocess

        reduced = self.reduce_intermediate and not final
        report_path = self.work / f"validation-{after}.json"
        figures = validate_in_subprocess(
            model_dir, self.reference, report_path, self.device, VALIDATION_TIMEOUT_S, reduced=reduced
        )
        figures = {"after": after, **figures}
        self.stages.append(figures)
        if not figures["passed"]:
            raise ExportError(f"validation failed after {label}: {failure_line(figures['failures'])}")
        return figures

    def report(self) -> dict[str, Any]:
        """The final model's figures at the top level (as before per-stage validation), plus every stage's."""
        final = self.stages[-1]
        return {**final, "final": final["after"], "stages": self.stages}


def run_pass_stages(
    plan: list[GraphPass],
    source: Path,
    options: ExportOptions,
    config: Any,
    special: Any,
    staging: Any,
    clock: StageClock,
    validator: StageValidator | None,
) -> tuple[list[str], dict[str, Any]]:
    """Apply ``plan`` to the graph at ``source``; returns the final model's data files and every pass's figures.

    The last pass writes into the staging directory (validated after ``write``). With validation, every other pass
    writes its graph into a stage directory of the work dir with its own glm_config.json, validates it, and the
    next pass reads it back from disk: saving with external data empties the in-memory initializers, and the
    process holds no graph while the validation process holds its ONNX Runtime session. Without validation the
    passes run back to back in memory.
    """
    import onnx

    from export import model_dir as md

    figures: dict[str, Any] = {}
    data_files: list[str] = []
    graph = None
    for index, graph_pass in enumerate(plan):
        last = index == len(plan) - 1
        with clock.stage(f"pass:{graph_pass.name}"), exporter_quiet(options.verbose):
            if graph is None:
                graph = onnx.load(str(source))  # the only copy of the weights in this process
                md.drop_glm_metadata(graph)  # this stage's description; the pass's output gets its own
                if source.parent != staging.path:
                    shutil.rmtree(source.parent)  # the stage's files are read; keep the disk to two copies
            graph, figures[graph_pass.name] = apply_pass(graph_pass, graph, options, config.num_layers, staging.work)
            if not last and validator is None:
                continue
            target = staging.path if last else staging.work / graph_pass.name
            target.mkdir(exist_ok=True)
            mode = options.external_data if last else "auto"
            external = md.use_external_data(md.initializer_bytes(graph), mode)
            data_files = md.save_model_file(graph, target, external)
            graph = None
            gc.collect()
            source = target / md.MODEL_FILE
        if not last and validator is not None:
            write_glm_config(target, config, options, graph_pass.after, special, False, data_files)
            with clock.stage(f"validate:{graph_pass.name}"):
                validator.check(graph_pass.name, graph_pass.label, target, final=False)
    return data_files, figures


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
    from export import model_dir as md
    from export.chatglm_graph import check_export_options, export_module
    from export.graph import export_program, release_exporter_caches
    from export.validate import make_reference

    plan = plan_passes(options)
    validations = (1 + len(plan)) if options.validate else 0  # the traced graph, then each pass
    # load, trace, write, report; the reference; the passes or the inline rewrite; the validations
    clock = StageClock(total=4 + int(options.validate) + max(len(plan), 1) + validations, verbose=options.verbose)
    report: dict[str, Any] = {"options": {k: str(v) for k, v in options.__dict__.items()}}
    try:
        with md.StagingDir(options.out, options.overwrite) as staging:
            with clock.stage("load"):
                model, tokenizer, notes = load_checkpoint(options.ckpt, options.random_weights)
                for note in notes:
                    clock.bar.write(f"note: {note}", file=sys.stderr)
                config = model.config
                check_export_options(config, options.optimize)
                special = special_tokens_of(config, tokenizer)
            reference = staging.work / "reference.npz"
            if options.validate:
                with clock.stage("reference"):
                    make_reference(
                        model,
                        reference,
                        special=special,
                        tokenizer=tokenizer,
                        calibration=options.calibration_text,
                        directory=checkpoint_directory(options.ckpt),
                        random_weights=options.random_weights,
                    )
            # With passes, the traced graph is an intermediate stage: its own directory in the work dir.
            trace_dir = staging.work / TRACE_STAGE if plan else staging.path
            trace_dir.mkdir(exist_ok=True)
            with clock.stage("trace"), exporter_quiet(options.verbose):
                wrapper = export_module(model, kv_cache=kv_cache_layout(options))  # GLM's or ChatGLM's, by config
                head = getattr(wrapper, "lm_head", None)  # GLM's untied copy of the tied head (ChatGLM has none)
                nbytes = weight_bytes(model) + (0 if head is None else int(head.numel() * head.element_size()))
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
                raw = trace_dir / md.MODEL_FILE
                program.save(str(raw), external_data=True)
                del program, wrapper, model
                release_exporter_caches()
            validator = None
            if options.validate:
                reduce = nbytes > REDUCED_CHECKS_ABOVE_BYTES
                validator = StageValidator(reference, staging.work, options.device, reduce_intermediate=reduce)
            trace_label = "trace (the exported graph, before any pass)"
            data_files = [md.DATA_FILE]
            inline = not md.use_external_data(nbytes, options.external_data)
            if plan:
                if validator is not None:
                    write_glm_config(trace_dir, config, options, Precision(), special, False, data_files)
                    with clock.stage(f"validate:{TRACE_STAGE}"):
                        validator.check(TRACE_STAGE, trace_label, trace_dir, final=False)
                data_files, report["passes"] = run_pass_stages(
                    plan, raw, options, config, special, staging, clock, validator
                )
            elif inline:
                with clock.stage("inline"):
                    staged = staging.work / md.MODEL_FILE
                    os.replace(raw, staged)
                    os.replace(staging.path / md.DATA_FILE, staging.work / md.DATA_FILE)
                    md.inline_external_data(staged, staging.path / md.MODEL_FILE)
                    data_files = []
            with clock.stage("write"):
                precision = plan[-1].after if plan else Precision()
                has_tokenizer = tokenizer is not None
                glm_config = write_glm_config(
                    staging.path, config, options, precision, special, has_tokenizer, data_files
                )
                if tokenizer is not None:
                    tokenizer.save_pretrained(staging.path)
                if data_files:  # what we wrote must not point outside the directory (an inline file cannot)
                    from evaluation.backends.onnx import check_external_data

                    check_external_data(staging.path / md.MODEL_FILE)
            if validator is not None:
                final, label = (plan[-1].name, plan[-1].label) if plan else (TRACE_STAGE, trace_label)
                with clock.stage(f"validate:{final}"):
                    validator.check(final, label, staging.path, final=True)
                report["validation"] = validator.report()
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


def _stage_figure(stage: dict[str, Any]) -> str:
    """``fp16 max|Δlogits| 2.1e-03`` (elementwise stages) or ``int4 perplexity ×1.012`` (quantized stages)."""
    if stage.get("quantize", "none") != "none":
        ppl = stage["perplexity"]
        return f"{stage['after']} perplexity ×{ppl['onnx'] / ppl['torch']:.3f}"
    worst = max(entry["logits"]["max_abs"] for entry in stage["grid"])
    return f"{stage['after']} max|Δlogits| {worst:.2g}"


def summary(report: dict[str, Any], out: Path) -> str:
    lines = [f"wrote {out}"]
    sizes = report.get("files", {})
    if sizes:
        total = sum(sizes.values())
        lines.append(f"  size {total / 1e6:.1f} MB ({', '.join(sorted(sizes))})")
    validation = report.get("validation")
    if validation:
        stages = validation.get("stages", [])
        if len(stages) > 1:
            lines.append("  validated after each stage: " + ", ".join(_stage_figure(stage) for stage in stages))
        grid = validation["grid"]
        worst = max(entry["logits"]["max_abs"] for entry in grid)
        norm = max(entry["logits"]["normalised"] for entry in grid)
        if validation.get("quantize", "none") != "none" and "confident_top1" not in validation:
            lines.append(
                f"  validated on {validation['device']} ({validation['quantize']}): incremental vs its own full pass "
                f"max|Δ| {validation['incremental']['self']['max_abs']:.3g}; {validation['quant_gate']}"
            )
            return "\n".join(lines)
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
            f"decode (batch 8, 50 steps) max|Δ| {validation['decode']['max_abs']:.3g}, "
            f"greedy identical: {validation['generation']['identical']}"
        )
    else:
        lines.append("  not validated (--no-validate)")
    return "\n".join(lines)


def main(argv: Sequence[str] | None = None) -> int:
    options = parse_args(argv)
    print_warnings_on_one_line()
    try:
        with terminate_as_interrupt():
            report = export(options)
    except GLMError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return exc.exit_code
    except KeyboardInterrupt as exc:
        print("error: interrupted; nothing was written", file=sys.stderr)
        return interrupt_exit_code(exc)
    print(summary(report, options.out))
    return 0


if __name__ == "__main__":
    sys.exit(main())
