"""What both Triton kernel modules share: the interpreter switch and its tile, the norm
epsilon as a constexpr, ``_widen`` and the row-copy tile.

``_widen`` takes values only: inputs whose values decide a store address are loaded in
the kernel bodies, never in a called @triton.jit helper (see
:mod:`kvtp_kernels.kernels.prune_triton`).
"""

import os

import triton
import triton.language as tl

from .._numerics import NORM_EPS, fit, least_padding_width, pow2

# Kernels may read module globals only as constexprs. A float64 value: it enters the
# kernels through tl.full(..., tl.float64) (a bare float literal is fp32).
_NORM_EPS = tl.constexpr(NORM_EPS)

# Under TRITON_INTERPRET=1 every Triton op costs ~0.1-1 ms of Python whatever its size,
# so the interpreter runs the same kernels with much bigger tiles (fewer loop trips, same
# code; the tests also run them at the GPU sizes, setting each kernel module's
# ``_INTERPRETING`` to False). Read once, like Triton itself, which picks the interpreter
# when it decorates the kernels.
_INTERPRETING = os.environ.get("TRITON_INTERPRET", "0") == "1"
_INTERPRETER_TILE = 1 << 17


@triton.jit
def _widen(x, F64: tl.constexpr):
    """float32 (F64 False) or float64 copy of a loaded tile of any float dtype."""
    if x.dtype == tl.bfloat16:
        # bf16 is the high half of an fp32: the shift is the exact conversion (one
        # instruction, like cvt.f32.bf16); the interpreter's generic bf16 path is ~50x slower
        x = (x.to(tl.uint16, bitcast=True).to(tl.uint32) << 16).to(tl.float32, bitcast=True)
    if F64:
        wide = x.to(tl.float64)
    else:
        wide = x.to(tl.float32)
    return wide  # one return: the compiler (not the interpreter) rejects returns of two types


def copy_tile(R: int, D: int, widths: list[int], gpu_rows, interpreting: bool) -> tuple[int, int]:
    """(rows, columns) of a tile that copies ``R`` rows of ``D`` columns.

    On a GPU: the width in ``widths`` that pads D the least (ties: the wider; at most D's
    block) and ``gpu_rows(width)`` rows. In the interpreter (``interpreting``: the calling
    module's switch): whole rows (D's block), as many as fit ``_INTERPRETER_TILE`` elements.
    """
    if interpreting:
        cols = pow2(D, lo=1)
        return fit(_INTERPRETER_TILE, cols, R), cols
    cols = least_padding_width(D, widths)
    return gpu_rows(cols), cols
