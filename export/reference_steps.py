"""The torch side of the export's validation reference (export.validate.make_reference): the reference file written
array by array, and the cases after a long past computed without holding that past's cache."""

from __future__ import annotations

import os
import zipfile
from typing import Any

import numpy as np


class NpzWriter:
    """``np.savez``'s format (``np.load`` reads it), written array by array as the reference computes them, so the
    reference phase does not hold every output until the end (the batch-8 cases' logits and cache rows: ~0.6 GB
    at glm-2b dims)."""

    def __init__(self, path: str | os.PathLike[str]) -> None:
        self._zip = zipfile.ZipFile(path, mode="w", compression=zipfile.ZIP_STORED, allowZip64=True)
        self._keys: set[str] = set()

    def __setitem__(self, key: str, value: Any) -> None:
        if key in self._keys:
            raise ValueError(f"reference array {key!r} written twice")
        self._keys.add(key)
        with self._zip.open(f"{key}.npy", "w", force_zip64=True) as fh:
            np.lib.format.write_array(fh, np.asanyarray(value), allow_pickle=False)

    def update(self, items: dict[str, Any]) -> None:
        for key, value in items.items():
            self[key] = value

    def __enter__(self) -> NpzWriter:
        return self

    def __exit__(self, *exc: object) -> None:
        self._zip.close()


def prefill_cache(model: Any, step: Any, ids: np.ndarray, pos: np.ndarray, sep: np.ndarray) -> Any:
    """The cache of a prefix (the grid's short pasts). Its logits are not needed: a model that can skip them
    (``return_logits=False``) does, which keeps the reference off ``B x P x V`` floats."""
    import inspect

    import torch

    if "return_logits" not in inspect.signature(model.forward).parameters:
        return step.step(ids, pos, sep, None)[1]
    device = next(model.parameters()).device
    with torch.no_grad():
        out = model(
            torch.as_tensor(ids, device=device),
            torch.as_tensor(pos, device=device),
            sep=torch.as_tensor(sep, device=device),
            use_cache=True,
            return_logits=False,
        )
    return out.past_key_values


def chunk_after_past(
    model: Any, ids: np.ndarray, pos: np.ndarray, past_sep: int, chunk_sep: int, past: int
) -> tuple[np.ndarray, np.ndarray]:
    """Logits ``[1, S, V]`` and new cache rows ``[2L, 1, H, S, D]`` of a chunk (``chunk_sep``) stepped after a past
    of ``past`` positions prefilled with ``past_sep``, for one row (``ids [1, past + S]``, ``pos [1, 2, past + S]``).

    Computed in one pass over past + chunk with the explicit 0/1 mask that is exactly the two calls' attention
    (a past position ``i`` sees ``j <= i`` or ``j < past_sep``; a chunk position sees every past position and its
    chunk's by ``sep``), each layer's cache cut to the chunk's rows as the layer returns it (a forward hook on every
    layer) and the LM head run on the chunk's rows only: the past's cache (2 x layers x P x hidden floats: 0.6 GB
    for glm-2b's near-full past), a second copy of it (the step's concatenated present) and ``P x V`` logits are
    never held (GLM and ChatGLM both take an explicit mask and ``return_logits`` and have ``lm_logits``)."""
    import torch

    total = ids.shape[1]
    i, j = np.arange(total)[:, None], np.arange(total)[None, :]
    limit = np.where(i < past, past_sep, past + chunk_sep)
    visible = ((j <= i) | (j < limit)).astype(np.float32)[None, None]  # [1, 1, T, T]

    def new_rows_only(_module: Any, _args: Any, output: Any) -> Any:
        hidden, present = output
        return hidden, tuple(t[:, :, past:].clone() for t in present)

    device = next(model.parameters()).device
    hooks = [layer.register_forward_hook(new_rows_only) for layer in model.transformer.layers]
    try:
        with torch.no_grad():
            out = model(
                torch.as_tensor(ids, device=device),
                torch.as_tensor(pos, device=device),
                sep=torch.zeros(1, dtype=torch.long, device=device),
                attention_mask=torch.as_tensor(visible, device=device),
                use_cache=True,
                return_logits=False,
            )
            logits = model.lm_logits(out.hidden_states[:, past:]).float().cpu().numpy()
    finally:
        for hook in hooks:
            hook.remove()
    rows = [t.float().cpu().numpy() for layer in out.past_key_values for t in layer]
    return logits, np.stack(rows)
