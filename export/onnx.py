"""``python -m export.onnx``: export a GLM checkpoint to a validated, self-contained ONNX model directory.

Stages: load the checkpoint -> PyTorch reference outputs -> trace (``torch.onnx.export(dynamo=True)``, graph.py)
-> optional passes (fusion, fp16, int8/int4; export/passes/) -> write the model directory (model_dir.py) ->
rename into place. Validation (validate.py, ONNX Runtime in a separate process) runs after every stage that changes
the graph (spec onnx_export §6: each pass re-validated): the traced graph against the fp32 gates, then the graph
after each pass against the gates of its precision at that point; the first stage that fails names itself. Any
failure, validation included, prints one line, exits with status 2 and leaves nothing at ``--out``.

Large models (see export/README.md, Memory): the checkpoint, loaded in its own dtype, is the only copy of the
weights; the graph is traced on a weightless twin of the export module, the passes rewrite the weightless graph,
and the model file is written once, one tensor at a time (export/weights.py).
"""

from __future__ import annotations

import argparse
import contextlib
import io
import json
import logging
import platform
import resource
import shutil
import sys
import time
import warnings
import weakref
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

from export.memory import resident_bytes, return_freed_memory
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
# Large models validate an intermediate stage only when its weights are at most this factor of the shipped model's
# (fusion changes a few small constants; an fp32 graph before --dtype fp16 or --quantize is twice or more).
INTERMEDIATE_SLACK = 1.01


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
    """(model in the checkpoint's dtype, tokenizer or None, notes). Random-weight presets (fp32) produce a note, not
    a silent model."""
    from glm_core.checkpoint import load_model
    from glm_core.hub import resolve_model_path

    ckpt = resolve_model_path(ckpt)  # a hub id becomes its snapshot directory (weights and tokenizer files)
    notes: list[str] = []
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        # the checkpoint's own dtype: the only copy of the weights (export/weights.py makes each fp32 tensor)
        model = load_model(ckpt, dtype="auto", random_weights=random_weights)
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
    graph_pass: GraphPass, model: Any, recipes: Any, options: ExportOptions, num_layers: int
) -> tuple[Any, dict[str, Any]]:
    """Run one pass on a weightless graph (export/weights.py: its large initializers are written later, from the
    export module); returns the new graph and the pass's figures. ``recipes`` is updated for new initializers."""
    if graph_pass.name == "fusion":
        from export.passes.fusion import fuse_for_ort

        return fuse_for_ort(model, num_layers)
    if graph_pass.name == "fp16":
        from export.passes.fp16 import convert_to_fp16

        return convert_to_fp16(model, options.device)
    if graph_pass.name == "int8":
        from export.passes.quantize import quantize_int8

        return quantize_int8(model, recipes)
    if graph_pass.name == "int4":
        from export.passes.quantize import quantize_int4

        return quantize_int4(model, recipes)
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
    REDUCED_CHECKS_ABOVE_BYTES); the final model always gets every check. ``lean``: validation sessions without the
    memory arena; ``prepacking``: with their MatMul weights pre-packed (a second copy of fp32/fp16 weights; see
    validate.lean_session_options).
    """

    reference: Path
    work: Path
    device: str
    reduce_intermediate: bool
    lean: bool = False
    prepacking: bool = True
    stages: list[dict[str, Any]] = field(default_factory=list)
    skipped: list[dict[str, str]] = field(default_factory=list)

    def check(self, after: str, label: str, model_dir: Path, final: bool) -> dict[str, Any]:
        from export.validate import validate_in_subprocess

        reduced = self.reduce_intermediate and not final
        report_path = self.work / f"validation-{after}.json"
        figures = validate_in_subprocess(
            model_dir,
            self.reference,
            report_path,
            self.device,
            VALIDATION_TIMEOUT_S,
            reduced=reduced,
            lean=self.lean,
            prepacking=self.prepacking,
        )
        figures = {"after": after, **figures}
        self.stages.append(figures)
        if not figures["passed"]:
            raise ExportError(f"validation failed after {label}: {failure_line(figures['failures'])}")
        return figures

    def report(self) -> dict[str, Any]:
        """The final model's figures at the top level (as before per-stage validation), plus every stage's."""
        final = self.stages[-1]
        return {**final, "final": final["after"], "stages": self.stages, "skipped_stages": self.skipped}


@dataclass
class Stage:
    """One graph of the export: the traced graph or the graph after a pass, weightless (export/weights.py)."""

    name: str
    label: str
    precision: Precision
    skeleton: Any


def build_stages(
    skeleton: Any, recipes: Any, plan: list[GraphPass], options: ExportOptions, config: Any
) -> tuple[list[Stage], dict[str, Any]]:
    """The traced graph and the graph after each pass, in order; each pass works on a copy of the previous graph.
    Graphs without their weights are small, so every stage is kept until it is validated and written."""
    import onnx

    stages = [Stage(TRACE_STAGE, "trace (the exported graph, before any pass)", Precision(), skeleton)]
    figures: dict[str, Any] = {}
    for graph_pass in plan:
        model = onnx.ModelProto()
        model.CopyFrom(stages[-1].skeleton)
        model, figures[graph_pass.name] = apply_pass(graph_pass, model, recipes, options, config.num_layers)
        stages.append(Stage(graph_pass.name, graph_pass.label, graph_pass.after, model))
    return stages, figures


def validate_intermediate_stages(
    stages: list[Stage],
    maker: Any,
    options: ExportOptions,
    config: Any,
    special: Any,
    staging: Any,
    clock: StageClock,
    validator: StageValidator,
    large: bool,
) -> None:
    """Validate every stage before the last (spec onnx_export §6: each pass re-validated), each written into its own
    directory of the work dir and removed once validated.

    A large model (``large``: over REDUCED_CHECKS_ABOVE_BYTES of fp32 weights) validates an intermediate stage only
    when its weights take no more bytes than the shipped model's (INTERMEDIATE_SLACK) (an fp32 graph before ``--dtype fp16`` or
    ``--quantize`` would double the disk and the validation session's memory); the report lists the skipped ones.
    """
    from export import model_dir as md
    from export.weights import skeleton_bytes, write_model

    final_bytes = skeleton_bytes(stages[-1].skeleton)
    for stage in stages[:-1]:
        size = skeleton_bytes(stage.skeleton)
        if large and size > final_bytes * INTERMEDIATE_SLACK:
            validator.skipped.append(
                {
                    "after": stage.name,
                    "reason": f"its weights ({size / 1e9:.2f} GB) exceed the shipped model's ({final_bytes / 1e9:.2f} "
                    "GB); the shipped model gets every check",
                }
            )
            continue
        target = staging.work / stage.name
        target.mkdir()
        with clock.stage(f"write:{stage.name}"):
            data_files = write_model(stage.skeleton, maker, target, md.use_external_data(size, "auto"))
            write_glm_config(target, config, options, stage.precision, special, False, data_files)
        with clock.stage(f"validate:{stage.name}"):
            validator.check(stage.name, stage.label, target, final=False)
        shutil.rmtree(target)


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
    """Run every stage; returns the export report. Raises GLMError on anything a user can fix.

    Memory (export/README.md, Memory): the checkpoint is loaded in its own dtype and is the only copy of the
    weights; the PyTorch reference computes in fp32 from it (weights upcast one at a time), the graph is traced on
    a weightless twin of the export module, passes rewrite the weightless graph, and the model file is written once,
    one tensor at a time. The module is freed before the shipped model's validation opens its ONNX Runtime session.
    """
    preflight(options)
    from export import model_dir as md
    from export.chatglm_graph import check_export_options, export_module
    from export.graph import release_exporter_caches
    from export.validate import make_reference
    from export.weights import (
        TensorMaker,
        computed_in_fp32,
        module_tensors,
        skeleton_bytes,
        trace_skeleton,
        write_model,
    )

    plan = plan_passes(options)
    validations = (1 + len(plan)) if options.validate else 0  # the traced graph, then each pass
    # load, trace, passes, write, report; the reference; the validations
    clock = StageClock(total=5 + int(options.validate) + validations, verbose=options.verbose)
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
                with clock.stage("reference"), computed_in_fp32(model):
                    make_reference(
                        model,
                        reference,
                        special=special,
                        tokenizer=tokenizer,
                        calibration=options.calibration_text,
                        directory=checkpoint_directory(options.ckpt),
                        random_weights=options.random_weights,
                    )
            with clock.stage("trace"), exporter_quiet(options.verbose):
                module = export_module(model, kv_cache=kv_cache_layout(options))  # GLM's or ChatGLM's, by config
                try:
                    skeleton, recipes = trace_skeleton(module, options.opset)
                except GLMError:
                    raise
                except Exception as exc:  # the exporter raises many types; keep the first line
                    first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
                    raise ExportError(f"torch.onnx.export failed: {first[:300]}") from exc
                nbytes = skeleton_bytes(skeleton)  # fp32 bytes of every initializer, the untied head included
                report["parameters"] = config.num_parameters()
                report["weight_bytes"] = nbytes
                maker = TensorMaker(module_tensors(module), recipes)
                weights_alive = weakref.ref(next(model.parameters()))
            with clock.stage("passes"), exporter_quiet(options.verbose):
                stages, passes = build_stages(skeleton, recipes, plan, options, config)
                if plan:
                    report["passes"] = passes
            validator = None
            if options.validate:
                large = nbytes > REDUCED_CHECKS_ABOVE_BYTES
                # large models: sessions without the memory arena, and fp32/fp16 ones without pre-packed weights
                prepacking = not large or stages[-1].precision.quantize != "none"
                validator = StageValidator(
                    reference, staging.work, options.device, large, lean=large, prepacking=prepacking
                )
                validate_intermediate_stages(stages, maker, options, config, special, staging, clock, validator, large)
            final = stages[-1]
            with clock.stage("write"):
                external = md.use_external_data(skeleton_bytes(final.skeleton), options.external_data)
                data_files = write_model(final.skeleton, maker, staging.path, external)
                # The weights' only copy goes before the validation session opens (its peak is not added to ours).
                del maker, module, model, stages, skeleton
                release_exporter_caches()
                report["weights_freed_before_validation"] = weights_alive() is None
                return_freed_memory()
                report["resident_bytes_at_validation"] = resident_bytes()
                has_tokenizer = tokenizer is not None
                glm_config = write_glm_config(
                    staging.path, config, options, final.precision, special, has_tokenizer, data_files
                )
                if tokenizer is not None:
                    tokenizer.save_pretrained(staging.path)
                if data_files:  # what we wrote must not point outside the directory (an inline file cannot)
                    from evaluation.backends.onnx import check_external_data

                    check_external_data(staging.path / md.MODEL_FILE)
            if validator is not None:
                with clock.stage(f"validate:{final.name}"):
                    validator.check(final.name, final.label, staging.path, final=True)
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
