"""Model arguments of ``glm-torch`` / ``glm-onnx`` as lm-eval hands them over, and how a user error ends a run.

lm-eval passes ``--model_args`` values as parsed strings (``"true"`` becomes ``True``, numbers become numbers) and
prints a traceback for any exception a model raises. A mistake a user can fix (a bad argument, a model that is not
there, ``--apply_chat_template`` on a model without a chat template) should instead read like the project's own
command-line tools: under lm-eval's command line (``lm_eval``, ``python -m lm_eval``, ``glm-lm-eval``: lm-eval's ``_cli`` code calls the model) it is one line
on stderr and exit status 2; through the Python API (``simple_evaluate``) it is raised as the :class:`GLMError`.
"""

from __future__ import annotations

import sys
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

from glm_core.errors import ConfigError, GLMError, TokenizerError

_TRUE = ("1", "true", "yes", "on")
_FALSE = ("0", "false", "no", "off")


def as_bool(value: bool | str | int, name: str) -> bool:
    """A boolean model argument (``true``/``false``, ``1``/``0``, ``yes``/``no``)."""
    if isinstance(value, bool):
        return value
    text = str(value).strip().lower()
    if text in _TRUE:
        return True
    if text in _FALSE:
        return False
    raise ConfigError(f"{name}={value!r}; expected true or false")


def under_lm_eval_cli() -> bool:
    """True when lm-eval's command line (its ``lm_eval._cli`` package) is on the call stack, not the Python API."""
    frame = sys._getframe(1)
    while frame is not None:
        if str(frame.f_globals.get("__name__", "")).startswith("lm_eval._cli"):
            return True
        frame = frame.f_back
    return False


@contextmanager
def user_errors_end_the_cli(prog: str) -> Iterator[None]:
    """Turn a :class:`GLMError` into one stderr line and exit status 2 under lm-eval's command line."""
    try:
        yield
    except GLMError as exc:
        if not under_lm_eval_cli():
            raise
        print(f"{prog}: error: {' '.join(str(exc).split())}", file=sys.stderr, flush=True)
        raise SystemExit(exc.exit_code) from None


def load_tokenizer(name: str) -> Any:
    """``tokenizer=<directory | preset | hub id>``: the :class:`GLMTokenizer` of that model directory."""
    from glm_core.hub import resolve_model_path
    from glm_core.tokenizer import GLMTokenizer

    path = resolve_model_path(name)
    if path == name and "/" not in name and "\\" not in name:  # a preset name: its shipped directory, if any
        from pathlib import Path

        shipped = Path(__file__).resolve().parents[1] / "glm_core" / "assets" / name
        path = str(shipped) if shipped.is_dir() else path
    try:
        return GLMTokenizer.from_pretrained(path)
    except TokenizerError as exc:
        raise TokenizerError(f"tokenizer={name}: {exc}") from None


def check_tokenizer_fits(tokenizer: Any, backend: Any, model: str) -> None:
    """A tokenizer whose command-token ids lie outside the model's vocabulary belongs to another model."""
    vocab = getattr(backend, "vocab_size", None)
    if vocab is None:
        config = getattr(backend, "config", None)
        vocab = config["vocab_size"] if isinstance(config, dict) else getattr(config, "vocab_size", None)
    ids = [i for i in tokenizer.special.to_dict().values() if isinstance(i, int)]
    if vocab is not None and ids and max(ids) >= int(vocab):
        raise TokenizerError(
            f"{model}: the tokenizer's command-token id {max(ids)} does not fit the model's vocab_size {vocab}; "
            "the tokenizer belongs to another model"
        )
