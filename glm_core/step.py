"""The step contract (DESIGN.md) served by a PyTorch :class:`~glm_core.model.GLMModel`.

``TorchStep`` takes and returns numpy arrays at the boundary, keeps the K/V cache as torch tensors on the model's
device, and is what the torch evaluation backend and the export validation use.
"""

from __future__ import annotations

import numpy as np
import torch

from glm_core.model import GLMModel, PastKeyValues


class TorchStep:
    """``step(input_ids[B,S], position_ids[B,2,S], sep[B], past) -> (logits[B,S,V] float32, present)``."""

    def __init__(self, model: GLMModel) -> None:
        self.model = model.eval()
        param = next(model.parameters())
        self.device, self.dtype = param.device, param.dtype
        self.config = model.config
        self.calls = 0
        self.tokens_seen = 0  # tokens that reached the model: lets tests prove Part A is computed once

    @torch.inference_mode()
    def step(
        self,
        input_ids: np.ndarray,
        position_ids: np.ndarray,
        sep: np.ndarray,
        past: PastKeyValues | None = None,
    ) -> tuple[np.ndarray, PastKeyValues]:
        ids = torch.as_tensor(np.asarray(input_ids, dtype=np.int64), device=self.device)
        pos = torch.as_tensor(np.asarray(position_ids, dtype=np.int64), device=self.device)
        sep_t = torch.as_tensor(np.asarray(sep, dtype=np.int64).reshape(-1), device=self.device)
        out = self.model(ids, pos, sep=sep_t, past_key_values=past, use_cache=True)
        self.calls += 1
        self.tokens_seen += int(ids.numel())
        return out.logits.cpu().numpy(), out.past_key_values  # type: ignore[return-value]

    def reorder_past(self, past: PastKeyValues, index: np.ndarray) -> PastKeyValues:
        """Gather the cache along the batch axis (beam reordering, expanding one Part A over candidates)."""
        idx = torch.as_tensor(np.asarray(index, dtype=np.int64), device=self.device)
        return tuple((k.index_select(0, idx), v.index_select(0, idx)) for k, v in past)

    @staticmethod
    def past_length(past: PastKeyValues | None) -> int:
        return 0 if past is None else int(past[0][0].shape[2])
