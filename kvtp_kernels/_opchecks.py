"""Argument checks of the raw ``torch.ops.kvtp`` ops: one function per op.

The public entry points (:mod:`kvtp_kernels.api`) check everything a user gives them;
the ops below them are public too, so each op checks every shape, dtype and device it
relies on before it reads a byte. The C++ kernels do it with ``TORCH_CHECK_VALUE``
(``csrc/*.cpp``); the Python side (the fakes of every backend, the Triton launchers and
the reference ops) calls the function here, so all three agree on what is accepted.

Only metadata is read (shapes, dtypes, devices, the int arguments): the checks run on
fake tensors under ``torch.compile`` as well, and build no message unless they fail,
so symbolic sizes are compared (guards) but never printed on the happy path. Checks
that need the data (counts in [0, N], indices in range) are the kernels' business:
the C++ ones read their inputs on the host anyway; on the GPU they are device-side
asserts (:func:`assert_counts_async`, no host sync).

Each failure is a ``ValueError``: ``kvtp::OP: `arg` must be EXPECTED; got ACTUAL``.
"""

from __future__ import annotations

from typing import NoReturn

import torch

from ._errors import fail
from ._numerics import FLOAT64_EXACT, INT32_MAX
from .options import SCORE_DTYPES, TOKEN_DTYPES

INT_DTYPES = (torch.uint8, torch.int8, torch.int16, torch.int32, torch.int64)


def _fail(op: str, arg: str, expected: str, got: object) -> NoReturn:
    fail(f"kvtp::{op}", arg, expected, got)


def _desc(t: object) -> str:
    if isinstance(t, torch.Tensor):
        return f"a {t.dtype} tensor of shape {list(t.shape)} on {t.device}"
    return repr(t) if t is None or isinstance(t, (int, float)) else type(t).__name__


def _tensor(op: str, arg: str, t: object, dims: int, dtypes: tuple, device, sizes: dict | None = None,
            names: str | None = None) -> None:
    """``sizes``: dim -> required size; ``names``: the dims' names for the message ("[B, T, N]").
    Only compares; formats a message when it fails."""
    if (not isinstance(t, torch.Tensor) or t.dim() != dims or t.dtype not in dtypes
            or (device is not None and t.device != device)
            or (sizes is not None and any(t.shape[d] != s for d, s in sizes.items()))):
        kinds = "/".join(str(d).removeprefix("torch.") for d in dtypes)
        shape = ["*"] * dims
        for d, s in (sizes or {}).items():
            shape[d] = str(s)
        where = f" on {device}" if device is not None else ""
        shape_text = f"[{', '.join(shape)}]" if names is None else f"{names} = [{', '.join(shape)}]"
        _fail(op, arg, f"a {dims}-D {kinds} tensor of shape {shape_text}{where}", _desc(t))


def _int(op: str, arg: str, value: object, lo: int, hi: int | None = None) -> None:
    if isinstance(value, bool) or not isinstance(value, (int, torch.SymInt)) or value < lo or (
            hi is not None and value > hi):
        _fail(op, arg, f"an int in [{lo}, {'inf' if hi is None else hi}]", repr(value))


def _frame_sources(op, scores, frame_embeds, query_embeds, logit_scale, logit_bias, B, T, device):
    """The frame-relevance inputs: ``scores`` [B, T], or the embeddings and one-element scale/bias."""
    if scores is not None:
        _tensor(op, "scores", scores, 2, SCORE_DTYPES, device, {0: B, 1: T} if B is not None else None)
        return scores.shape[0], scores.shape[1]
    if frame_embeds is None or query_embeds is None:
        _fail(op, "scores", "a tensor, or None with both frame_embeds and query_embeds given",
              f"None with frame_embeds={_desc(frame_embeds)}, query_embeds={_desc(query_embeds)}")
    _tensor(op, "frame_embeds", frame_embeds, 3, SCORE_DTYPES, device, {0: B, 1: T} if B is not None else None)
    Bf, E = frame_embeds.shape[0], frame_embeds.shape[2]
    _tensor(op, "query_embeds", query_embeds, 3, SCORE_DTYPES, frame_embeds.device, {0: Bf, 2: E})
    if query_embeds.shape[1] < 1:
        _fail(op, "query_embeds", "[B, C, E] with C >= 1", _desc(query_embeds))
    for arg, value in (("logit_scale", logit_scale), ("logit_bias", logit_bias)):
        if value is not None and (not isinstance(value, torch.Tensor) or value.numel() != 1
                                  or value.dtype not in SCORE_DTYPES or value.device != frame_embeds.device):
            _fail(op, arg, f"None or a floating-point tensor of one element on {frame_embeds.device}", _desc(value))
    return frame_embeds.shape[0], frame_embeds.shape[1]


def _counts_args(op, T, num_tokens, budget, ratio, temperature, min_tokens, paper) -> None:
    _int(op, "num_tokens", num_tokens, 1, INT32_MAX)  # counts are int32
    _int(op, "min_tokens", min_tokens, 0, num_tokens)
    if not temperature > 0 or temperature == float("inf"):
        _fail(op, "temperature", "> 0 and finite", repr(temperature))
    if T * num_tokens > FLOAT64_EXACT:
        _fail(op, "num_tokens", f"such that T*N <= 2**53 (exact float64 counts) with T = {T}", repr(num_tokens))
    if paper:
        if not 0 < ratio <= 1:
            _fail(op, "ratio", "in (0, 1] (paper allocation)", repr(ratio))
    else:
        _int(op, "budget", budget, min_tokens * T, num_tokens * T)


def check_keep_counts(scores, frame_embeds, query_embeds, logit_scale, logit_bias, num_tokens, budget, ratio,
                      temperature, min_tokens, paper) -> None:
    """Arguments of ``kvtp::keep_counts*`` (schema in :mod:`kvtp_kernels.ops`)."""
    op = "keep_counts"
    device = scores.device if isinstance(scores, torch.Tensor) else None
    _, T = _frame_sources(op, scores, frame_embeds, query_embeds, logit_scale, logit_bias, None, None, device)
    _counts_args(op, T, num_tokens, budget, ratio, temperature, min_tokens, paper)


def check_prune_tokens(tokens, scores, frame_embeds, query_embeds, logit_scale, logit_bias, token_scores,
                       frame_counts, budget, total_rows, temperature, min_tokens, data: bool = False) -> None:
    """Arguments of ``kvtp::prune_tokens*``. ``data``: also the values of ``frame_counts``
    (a host check on CPU, a device-side assert on GPU; skipped while tracing)."""
    op = "prune_tokens"
    _tensor(op, "tokens", tokens, 4, TOKEN_DTYPES, None, None, "[B, T, N, D]")
    B, T, N, _ = tokens.shape
    device = tokens.device
    if token_scores is not None:
        _tensor(op, "token_scores", token_scores, 3, SCORE_DTYPES, device, {0: B, 1: T, 2: N})
    _int(op, "total_rows", total_rows, 0, INT32_MAX)  # int32 offsets
    if frame_counts is not None:
        _tensor(op, "frame_counts", frame_counts, 2, INT_DTYPES, device, {0: B, 1: T})
        _int(op, "tokens.shape[2]", N, 1, INT32_MAX)
        if data:
            check_counts_data(op, "frame_counts", frame_counts, N, total_rows)
        return
    _frame_sources(op, scores, frame_embeds, query_embeds, logit_scale, logit_bias, B, T, device)
    _counts_args(op, T, N, budget, 0.0, temperature, min_tokens, False)
    if total_rows != B * budget:
        _fail(op, "total_rows", f"B*budget = {B}*{budget} (exact allocation)", repr(total_rows))


def check_merge_neighbors(tokens, merge_keys, weights, indices, num_neighbors, mean, data: bool = False) -> None:
    """Arguments of ``kvtp::merge_neighbors*`` (PruMerge); ``data``: also the values of ``indices``
    (in range, frame by frame) where reading them is free (CPU). The Triton launcher passes
    ``data=False``: its kernel skips rows whose index breaks those preconditions (no read out
    of bounds, tested in test_merge_triton.py) rather than poisoning the CUDA context with a
    device-side assert."""
    op = "merge_neighbors"
    _tensor(op, "tokens", tokens, 4, TOKEN_DTYPES, None, None, "[B, T, N, D]")
    B, T, N, _ = tokens.shape
    device = tokens.device
    _tensor(op, "merge_keys", merge_keys, 4, SCORE_DTYPES, device, {0: B, 1: T, 2: N}, "[B, T, N, Dk]")
    _tensor(op, "weights", weights, 3, SCORE_DTYPES, device, {0: B, 1: T, 2: N}, "[B, T, N]")
    _tensor(op, "indices", indices, 1, (torch.int64,), device, None, "[R]")
    if isinstance(num_neighbors, bool) or not isinstance(num_neighbors, (int, torch.SymInt)) or not (
            0 <= num_neighbors <= max(N - 1, 0)):
        _fail(op, "num_neighbors", f"an int in [0, N-1] = [0, {N - 1}]", repr(num_neighbors))
    if data:
        check_indices_data(op, indices, B * T * N, N)


def check_tome_merge(tokens, merge_keys, counts, total_rows, data: bool = False) -> None:
    """Arguments of ``kvtp::tome_merge*`` (ToMe); ``data``: also the values of ``counts``."""
    op = "tome_merge"
    _tensor(op, "tokens", tokens, 4, TOKEN_DTYPES, None, None, "[B, T, N, D]")
    B, T, N, _ = tokens.shape
    device = tokens.device
    _tensor(op, "merge_keys", merge_keys, 4, SCORE_DTYPES, device, {0: B, 1: T, 2: N})
    _tensor(op, "counts", counts, 2, INT_DTYPES, device, {0: B, 1: T})
    _int(op, "total_rows", total_rows, 0, INT32_MAX)
    if data:
        check_counts_data(op, "counts", counts, N, total_rows)


def _tracing(t: torch.Tensor) -> bool:
    from torch._subclasses.fake_tensor import is_fake

    return is_fake(t) or torch.compiler.is_compiling()


def check_counts_data(op: str, arg: str, counts: torch.Tensor, num_tokens: int, total_rows: int) -> None:
    """Every count in [0, N] and their sum equal to ``total_rows``: a host check on CPU, a
    device-side assert (no host sync) on GPU, nothing while tracing."""
    if _tracing(counts):
        return
    lo_ok = (counts >= 0).all() & (counts <= num_tokens).all()
    total = counts.sum(dtype=torch.int64)
    if counts.device.type == "cpu":  # a real CPU tensor (not tracing): reading it costs no sync
        if not bool(lo_ok):
            _fail(op, arg, f"in [0, N] = [0, {num_tokens}]", f"min {int(counts.min())}, max {int(counts.max())}")
        if int(total) != total_rows:
            _fail(op, arg, f"counts summing to total_rows = {total_rows}", f"a sum of {int(total)}")
        return
    torch._assert_async(lo_ok & (total == total_rows),
                        f"kvtp::{op}: `{arg}` must lie in [0, N] and sum to total_rows")


def check_indices_data(op: str, indices: torch.Tensor, num_rows: int, num_tokens: int) -> None:
    """``indices`` in [0, B*T*N) and frame by frame (non-decreasing frame), as :func:`check_counts_data`."""
    if _tracing(indices) or indices.shape[0] == 0 or num_tokens == 0:
        return
    frame = torch.div(indices, num_tokens, rounding_mode="floor")
    range_ok = ((indices >= 0) & (indices < num_rows)).all()
    order_ok = (frame[1:] >= frame[:-1]).all()
    if indices.device.type == "cpu":  # as in check_counts_data
        if not bool(range_ok):
            _fail(op, "indices", f"in [0, B*T*N) = [0, {num_rows})",
                  f"min {int(indices.min())}, max {int(indices.max())}")
        if not bool(order_ok):
            _fail(op, "indices", "sorted frame by frame (flat index // N non-decreasing)", "an unsorted tensor")
        return
    torch._assert_async(range_ok & order_ok,
                        f"kvtp::{op}: `indices` must lie in [0, B*T*N) and come frame by frame")
