"""Launch shapes shared by the row-wise kernels (LayerNorm, bias-GeLU): tile size, grid, warps.

Every kernel works on ``[BLOCK_M, BLOCK_N]`` tiles of a ``[rows, cols]`` matrix. Backward kernels that reduce over
rows (dW, dB, dbias) give each program ``TILES_PER_PROGRAM`` consecutive row tiles and write one fp32 partial row;
the partials are summed afterwards (two-stage reduction, spec fused_ops §6 item 8).

``TILES_PER_PROGRAM`` is a constexpr loop bound on purpose: triton 3.6's interpreter with numpy >= 2.4 fails on
*any* runtime loop bound — kernel int arguments included, not only loaded scalars (spec §6 item 3; measured) — and
rounding it to a power of two keeps the number of compiled variants small.

The constants are module attributes so a GPU benchmark can sweep them.
"""

import functools

import torch

try:
    import triton
except ImportError:
    triton = None

TILE_ELEMENTS = 4096  # elements of one [BLOCK_M, BLOCK_N] tile on the GPU
MAX_BLOCK_N = 1024  # widest tile for kernels that can split columns (bias-GeLU); LayerNorm needs whole rows
PROGRAMS_PER_SM = 8  # backward grid size target for the row-reducing kernels
INTERPRETER_PROGRAMS = 8  # the interpreter pays per program instance: keep its grids tiny (spec §3.1)


def block_rows(block_n: int) -> int:
    """Rows per tile for ``block_n``-wide tiles (a power of two, >= 1)."""
    return max(1, TILE_ELEMENTS // block_n)


def num_warps(block_m: int, block_n: int) -> int:
    """Warps for a tile: ~512 elements per warp, between 4 and 16."""
    return min(16, max(4, (block_m * block_n) // 512))


def tiles_per_program(row_tiles: int, col_blocks: int, device: torch.device) -> int:
    """Row tiles one row-reducing program walks: a power of two chosen so the grid fills the GPU."""
    if device.type == "cuda":
        target_programs = PROGRAMS_PER_SM * _sm_count(device.index if device.index is not None else 0)
    else:
        target_programs = INTERPRETER_PROGRAMS
    row_groups = max(1, target_programs // col_blocks)
    return triton.next_power_of_2(triton.cdiv(row_tiles, row_groups))


@functools.cache
def _sm_count(device_index: int) -> int:
    return torch.cuda.get_device_properties(device_index).multi_processor_count
