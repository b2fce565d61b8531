"""One exception family for everything a user can cause (DESIGN.md, rules of the house).

CLIs catch :class:`GLMError`, print its message on one line and exit with status 2.
"""

from __future__ import annotations

import sys
import warnings
from typing import Any, TextIO


class GLMError(Exception):
    """Base class for user-facing errors: bad input, bad files, bad configuration."""

    exit_code = 2


class ConfigError(GLMError, ValueError):
    """A configuration value is missing, has the wrong type or is inconsistent."""


class UnknownPresetError(ConfigError, KeyError):
    """A preset name that the package does not know."""

    def __str__(self) -> str:  # KeyError would quote the message
        return str(self.args[0]) if self.args else ""


class CheckpointError(GLMError):
    """A checkpoint is missing, corrupt, truncated or does not match the model."""


class UnsafeCheckpointError(CheckpointError):
    """A checkpoint would run code when loaded (pickle with globals outside the allow-list)."""


class InputError(GLMError, ValueError):
    """Model inputs that violate the step contract (lengths, sep, shapes, dtypes)."""


class TokenizerError(GLMError):
    """Tokenizer files missing or malformed, or text that cannot be encoded."""


class LayoutError(GLMError, ValueError):
    """A request that cannot be laid out as GLM input (no mask token, too long, ...)."""


class DataError(GLMError):
    """A data file (corpus, task file) that is missing, empty, malformed or not UTF-8."""


class ExportError(GLMError):
    """An export that cannot be done or failed validation."""


class KernelUnavailableError(GLMError):
    """A fused kernel was requested where it cannot run (no CUDA, no Triton, dtype)."""


class GLMWarning(UserWarning):
    """Something was inferred or adjusted that the user should know about; CLIs print it on one line."""


def print_warnings_on_one_line() -> None:
    """For CLIs: a :class:`GLMWarning` prints as ``warning: <message>``, without the source line Python adds; other
    warnings print as before."""
    shown = warnings.showwarning
    if getattr(shown, "_glm_one_line", False):
        return

    def show(
        message: Warning | str,
        category: type[Warning],
        filename: str,
        lineno: int,
        file: TextIO | None = None,
        line: str | None = None,
    ) -> Any:
        if issubclass(category, GLMWarning):
            print(f"warning: {message}", file=file or sys.stderr)
            return None
        return shown(message, category, filename, lineno, file, line)

    show._glm_one_line = True  # type: ignore[attr-defined]
    warnings.showwarning = show
