"""What one run measures: the section names, the dtypes, GLM's constants and the shapes of each mode."""

from __future__ import annotations

import dataclasses

import torch

# attention before train_step (the step's "best attention" is the one this run measured fastest); the step's compiled
# variants before the op timings, whose essential time stays reserved (Budget.reserve_after)
SECTIONS = ("ceilings", "correctness", "attention", "train_step", "layernorm", "bias_gelu", "lm_head_ce")
DTYPES = (torch.float32, torch.float16, torch.bfloat16)
LN_EPS = 1e-5  # every GLM (glm_reference §1.5)
DROPOUT_P = 0.1  # GLM's hidden and attention dropout (glm_reference)
GIB = 2**30


# ====================================================================================================================
# plan: shapes per mode


@dataclasses.dataclass(frozen=True)
class Plan:
    """What one run measures. ``full`` is spec §5.1's benchmark shapes; ``quick`` one shape per op; ``smoke`` tiny."""

    mode: str
    budget_s: float  # planned end of the run; the watchdog fires a little later
    copy_bytes: int  # D2D copy ceiling: bytes of the source tensor
    matmul_n: int
    ln_rows: int
    ln_hidden: tuple[int, ...]
    gelu_rows: int
    gelu_hidden: tuple[int, ...]  # h; the op runs on [rows, 4h]
    attn_shapes: tuple[tuple[int, int, int], ...]  # (B, H, T)
    attn_head_dim: int
    ce_rows: int
    ce_seq: int  # rows are laid out as [rows // seq, seq] samples with a Part-B tail each
    ce_shares: tuple[float, ...]
    ce_dims: tuple[tuple[int, int], ...]  # (h, V)
    # correctness shapes (spec §5.3: non-power-of-2 hidden, T not a multiple of the tile, several sep per sample)
    check_ln_hidden: tuple[int, ...]
    check_ln_rows: int
    check_gelu_cols: tuple[int, ...]
    check_attn_t: tuple[int, ...]
    check_attn_heads: int
    check_ce: tuple[int, int, int]  # (rows, h, V)
    train_preset: str
    train_batch: int
    train_seq: int
    train_steps: int
    train_warmup: int
    compile_sections: frozenset[str]  # where torch.compile / FlexAttention peers are attempted at all
    # essential (non-optional) seconds each section is expected to need: the reserve kept for later sections
    essential_s: dict[str, float]


def make_plan(mode: str, budget_s: float | None) -> Plan:
    essential_gpu = {"ceilings": 10, "correctness": 100, "layernorm": 25, "bias_gelu": 15, "attention": 40,
                     "lm_head_ce": 20, "train_step": 45}  # fmt: skip
    if mode == "smoke":
        return Plan(
            mode=mode, budget_s=budget_s or 80.0, copy_bytes=16 * 2**20, matmul_n=256,
            ln_rows=4, ln_hidden=(96,), gelu_rows=8, gelu_hidden=(24,),
            attn_shapes=((2, 1, 24),), attn_head_dim=64,
            ce_rows=32, ce_seq=16, ce_shares=(0.25,), ce_dims=((32, 100),),
            check_ln_hidden=(1000,), check_ln_rows=6, check_gelu_cols=(1000,),
            check_attn_t=(20,), check_attn_heads=1, check_ce=(24, 40, 300),
            train_preset="glm-tiny", train_batch=2, train_seq=16, train_steps=2, train_warmup=1,
            compile_sections=frozenset(),  # CPU torch.compile costs ~25 s per graph: not in the 90 s smoke
            essential_s={"ceilings": 2, "correctness": 15, "layernorm": 3, "bias_gelu": 3, "attention": 8,
                         "lm_head_ce": 3, "train_step": 25},
        )  # fmt: skip
    full = Plan(
        mode=mode, budget_s=budget_s or 380.0, copy_bytes=GIB, matmul_n=8192,
        ln_rows=16384, ln_hidden=(1024, 2048, 4096), gelu_rows=16384, gelu_hidden=(1024, 2048),
        attn_shapes=((32, 16, 512), (16, 32, 1024), (8, 16, 2048)), attn_head_dim=64,
        ce_rows=16384, ce_seq=512, ce_shares=(0.18, 0.5), ce_dims=((1024, 30592), (2048, 50304)),
        check_ln_hidden=(1000, 3000), check_ln_rows=130, check_gelu_cols=(1000, 3000),
        check_attn_t=(97, 257), check_attn_heads=2, check_ce=(300, 200, 3001),
        train_preset="glm-large", train_batch=32, train_seq=512, train_steps=20, train_warmup=3,
        compile_sections=frozenset(SECTIONS), essential_s=essential_gpu,
    )  # fmt: skip
    if mode == "quick":
        return dataclasses.replace(
            full,
            ln_hidden=(1024,),
            gelu_hidden=(1024,),
            attn_shapes=((32, 16, 512),),
            ce_shares=(0.18,),
            ce_dims=((1024, 30592),),
            check_ln_hidden=(1000,),
            check_attn_t=(97,),
            train_steps=10,
        )
    return full
