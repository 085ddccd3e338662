"""The kvtp op registry (``torch.ops.kvtp.*``): every op described once.

Each :class:`OpSpec` below holds one op's schema, its shape-only fake, its autograd
formula and its backend table (which ``torch.ops.kvtp`` op runs it for ``backend=
"reference"``, ``"cpu"`` or ``"triton"``); :mod:`kvtp_kernels.api` and
:mod:`kvtp_kernels.pack` dispatch through it, with keyword arguments
(``PRUNE_TOKENS("cpu", tokens=x, ...)``). The schemas of the C++ ops are defined in
``csrc/ops.cpp`` (one file); the same text here defines the Python backends of the
op, and on import the two are compared.

=========================  ===========================  ==================================
op                         backend                      implementation
=========================  ===========================  ==================================
``keep_counts``            C++, CPU dispatch key        ``csrc/prune_cpu.cpp``
``keep_counts_ref``        pure PyTorch, any device     :mod:`kvtp_kernels.reference`
``keep_counts_triton``     Triton (CUDA, interpreter)   :mod:`kvtp_kernels.kernels.prune_triton`
``prune_tokens``           C++, CPU dispatch key        ``csrc/prune_cpu.cpp``
``prune_tokens_ref``       pure PyTorch, any device     :mod:`kvtp_kernels.reference`
``prune_tokens_triton``    Triton (CUDA, interpreter)   :mod:`kvtp_kernels.kernels.prune_triton`
``merge_neighbors``        C++, CPU dispatch key        ``csrc/merge_cpu.cpp``
``merge_neighbors_ref``    pure PyTorch, any device     :mod:`kvtp_kernels.reference`
``merge_neighbors_triton`` Triton (CUDA, interpreter)   :mod:`kvtp_kernels.kernels.merge_triton`
``tome_merge``             batched PyTorch, any device  :mod:`kvtp_kernels.methods`
``tome_merge_ref``         per-frame loop (oracle)      :mod:`kvtp_kernels.reference`
``pack_plan``              C++ ATen, CPU and CUDA       ``csrc/pack_ops.cpp``
``pack_rows``              C++ CPU + CUDA               ``csrc/pack_cpu.cpp``, ``csrc/pack_cuda.cu``
=========================  ===========================  ==================================

Argument conventions (the front door, :mod:`kvtp_kernels.api`, checks them for users; every op
checks them again itself, see :mod:`kvtp_kernels._opchecks`):

- ``tokens`` [B, T, N, D]; frame relevance comes from ``scores`` [B, T], or, when it
  is ``None``, from ``frame_embeds`` [B, T, E] and ``query_embeds`` [B, C, E] with
  ``logit_scale`` / ``logit_bias`` float64 tensors of one element (METHOD.md section 1).
- ``frame_counts`` int32 [B, T]: when given it is used as is (paper mode's second
  step) and ``budget`` is ignored; otherwise counts come from the exact allocation
  with ``budget`` = K tokens per video.
- ``total_rows`` fixes the packed size (``B*K`` in exact mode, ``sum(frame_counts)``
  otherwise), so every output shape is static: the fakes need no data.
- ``keep_counts`` with ``paper=True`` uses ``ratio`` (beta); otherwise ``budget``.
- ``pack_plan`` / ``pack_rows``: see :mod:`kvtp_kernels.pack`.

Python implementations (the reference ops, the Triton launchers, the batched ToMe)
take one argument, an :class:`OpArgs` namespace of the op's arguments by schema name,
so no Python function restates a signature.
"""

from __future__ import annotations

import functools
import re
import sys
import types
from collections.abc import Callable
from dataclasses import dataclass, field

import torch

from . import _opchecks, methods
from . import reference as ref

try:  # the C++ extension defines every C++ schema and registers the C++ kernels
    from . import _C  # noqa: F401

    HAS_CPP = True
    CPP_IMPORT_ERROR: str | None = None
except ImportError as exc:  # pragma: no cover - exercised only on broken installs
    HAS_CPP = False
    CPP_IMPORT_ERROR = str(exc)

try:
    from .kernels import merge_triton as _merge_triton
    from .kernels import prune_triton as _prune_triton

    HAS_TRITON = True
    TRITON_IMPORT_ERROR: str | None = None
except ImportError as exc:  # triton may be missing, e.g. on a CPU-only install
    _prune_triton = _merge_triton = None
    HAS_TRITON = False
    TRITON_IMPORT_ERROR = str(exc)

#: Columns of pack_plan's ``sample_info`` (kPackFields in csrc/include/kvtp/pack.h).
PACK_FIELDS = 6
#: The implementation of an op defined in csrc/ (nothing to register from Python).
CPP = "C++"

OpArgs = types.SimpleNamespace


@dataclass(frozen=True)
class Autograd:
    """``backward(ctx, *grads)`` and ``setup_context(ctx, args: OpArgs, output)``."""

    backward: Callable
    setup_context: Callable


@dataclass(frozen=True)
class OpSpec:
    """One op: its schema, fake, autograd and backends.

    Attributes:
        name: the op that stands for all of them (``torch.ops.kvtp.<name>``).
        schema: ``"(args) -> returns"``, the schema of every backend's op.
        fake: ``fake(args: OpArgs)``, output shapes only (the Triton ops need none:
            ``torch.library.triton_op`` traces their launchers).
        kernels: op name -> implementation: :data:`CPP` (defined in csrc/) or a Python
            function of an :class:`OpArgs`; ``triton_kernels`` likewise, with Triton launches.
        backends: backend -> op name (``api.BACKENDS``); empty for device-generic ops.
        autograd: ``autograd(impl)`` -> :class:`Autograd` for the op implemented by
            ``impl`` (None: not differentiable).
    """

    name: str
    schema: str
    fake: Callable
    kernels: dict = field(default_factory=dict)
    triton_kernels: dict = field(default_factory=dict)
    backends: dict = field(default_factory=dict)
    autograd: Callable | None = None

    @functools.cached_property
    def arg_names(self) -> tuple[str, ...]:
        """The argument names of ``schema`` (parsed once)."""
        args = self.schema[1:self.schema.index(") ->")]
        return tuple(re.split(r"\s+", a.strip())[-1] for a in args.split(","))

    def bind(self, args: tuple, kwargs: dict | None = None) -> OpArgs:
        """Positional (and keyword) arguments of a call -> their :class:`OpArgs`."""
        return OpArgs(**dict(zip(self.arg_names, args)), **(kwargs or {}))

    def op(self, backend: str | None = None):
        """The ``torch.ops.kvtp`` op of ``backend`` (None: :attr:`name`)."""
        return getattr(torch.ops.kvtp, self.backends[backend] if backend is not None else self.name)

    def __call__(self, backend: str | None = None, /, **kwargs):
        """Runs the op of ``backend`` with keyword arguments (the schema's names)."""
        return self.op(backend)(**kwargs)


# ----------------------------------------------------------------------------------
# keep_counts and prune_tokens (METHOD.md sections 1-4)
# ----------------------------------------------------------------------------------
def _keep_counts_fake(a: OpArgs) -> torch.Tensor:
    _opchecks.check_keep_counts(**vars(a))
    src = a.scores if a.scores is not None else a.frame_embeds
    return torch.empty((src.shape[0], src.shape[1]), dtype=torch.int32, device=src.device)


def _prune_tokens_fake(a: OpArgs):
    _opchecks.check_prune_tokens(**vars(a))
    B, T, _, D = a.tokens.shape
    dev = a.tokens.device
    return (
        a.tokens.new_empty((a.total_rows, D)),
        torch.empty((a.total_rows,), dtype=torch.int64, device=dev),
        torch.empty((B, T), dtype=torch.int32, device=dev),
        torch.empty((B + 1,), dtype=torch.int32, device=dev),
        torch.empty((B * T + 1,), dtype=torch.int32, device=dev),
    )


def _frame_logits_ref(a: OpArgs) -> torch.Tensor:
    """Frame logits [B, T]: ``scores`` itself, or the fused similarity of section 1."""
    if a.scores is not None:
        return a.scores
    return ref.frame_scores_ref(a.frame_embeds, a.query_embeds, a.logit_scale, a.logit_bias)


def _keep_counts_ref(a: OpArgs) -> torch.Tensor:
    _opchecks.check_keep_counts(**vars(a))
    return ref.keep_counts_ref(_frame_logits_ref(a), a.budget, a.num_tokens, a.temperature, a.min_tokens, a.paper,
                               a.ratio)


def _prune_tokens_ref(a: OpArgs):
    _opchecks.check_prune_tokens(**vars(a), data=True)
    counts = a.frame_counts
    if counts is None:
        counts = ref.keep_counts_ref(_frame_logits_ref(a), a.budget, a.tokens.shape[2], a.temperature, a.min_tokens,
                                     False, 0.0)
    out = ref.prune_tokens_ref(a.tokens, counts, a.token_scores)
    if out[0].shape[0] != a.total_rows:
        raise RuntimeError(f"kvtp::prune_tokens_ref: total_rows={a.total_rows} but the counts sum to "
                           f"{out[0].shape[0]}")
    return out


def _prune_autograd(impl) -> Autograd:
    """Pruning is a row selection: the gradient of the packed rows scatters back to the
    kept rows of ``tokens`` (zeros elsewhere). Nothing else is differentiable."""

    def setup_context(ctx, a, output):
        ctx.tokens_shape = a.tokens.shape
        ctx.save_for_backward(output[1])

    def backward(ctx, grad_packed, *_unused):
        (indices,) = ctx.saved_tensors
        B, T, N, D = ctx.tokens_shape
        grad = grad_packed.new_zeros((B * T * N, D)).index_copy_(0, indices, grad_packed)
        return (grad.view(B, T, N, D),) + (None,) * (len(PRUNE_TOKENS.arg_names) - 1)

    return Autograd(backward, setup_context)


def _kernel_op(name: str, schema: str, fake: Callable, reference: Callable, triton_module,
               autograd: Callable | None = None) -> OpSpec:
    """An op with the three backends: ``name`` (C++ CPU), ``name_ref`` (``reference``) and
    ``name_triton`` (the function ``name`` of ``triton_module``, when triton imports)."""
    return OpSpec(name=name, schema=schema, fake=fake, kernels={name: CPP, f"{name}_ref": reference},
                  triton_kernels={f"{name}_triton": getattr(triton_module, name)} if triton_module else {},
                  backends={"reference": f"{name}_ref", "cpu": name, "triton": f"{name}_triton"}, autograd=autograd)


KEEP_COUNTS = _kernel_op(
    "keep_counts",
    "(Tensor? scores, Tensor? frame_embeds, Tensor? query_embeds, Tensor? logit_scale, Tensor? logit_bias, "
    "int num_tokens, int budget, float ratio, float temperature, int min_tokens, bool paper) -> Tensor",
    _keep_counts_fake, _keep_counts_ref, _prune_triton)

PRUNE_TOKENS = _kernel_op(
    "prune_tokens",
    "(Tensor tokens, Tensor? scores, Tensor? frame_embeds, Tensor? query_embeds, Tensor? logit_scale, "
    "Tensor? logit_bias, Tensor? token_scores, Tensor? frame_counts, int budget, int total_rows, "
    "float temperature, int min_tokens) -> (Tensor, Tensor, Tensor, Tensor, Tensor)",
    _prune_tokens_fake, _prune_tokens_ref, _prune_triton, _prune_autograd)


# ----------------------------------------------------------------------------------
# Within-frame merging (METHOD.md section 3).
#
# Autograd: both merges are linear in the tokens once their decisions (who is kept,
# who merges into whom: piecewise constant in the keys) are fixed. The backward pass
# recomputes the op's own PyTorch formulation under autograd and differentiates it:
# PruMerge (every backend: prumerge_ref, whose values all backends equal) w.r.t.
# ``tokens`` and ``weights``; ToMe w.r.t. ``tokens``. The keys get no gradient (their
# only effect is through argmax/top-k decisions, whose derivative is zero where it
# exists), nor do indices and counts.
# ----------------------------------------------------------------------------------
def _merge_neighbors_fake(a: OpArgs) -> torch.Tensor:
    _opchecks.check_merge_neighbors(**vars(a))
    return a.tokens.new_empty((a.indices.shape[0], a.tokens.shape[-1]))


def _merge_neighbors_ref(a: OpArgs) -> torch.Tensor:
    _opchecks.check_merge_neighbors(**vars(a), data=True)
    return ref.prumerge_ref(a.tokens, a.merge_keys, a.weights, a.indices, a.num_neighbors, a.mean)


def _merge_autograd(impl) -> Autograd:
    def setup_context(ctx, a, output):
        ctx.num_neighbors, ctx.mean = a.num_neighbors, a.mean
        ctx.save_for_backward(a.tokens, a.merge_keys, a.weights, a.indices)

    def backward(ctx, grad):
        tokens, merge_keys, weights, indices = ctx.saved_tensors
        want_x, want_a = ctx.needs_input_grad[0], ctx.needs_input_grad[2]
        with torch.enable_grad():
            x = tokens.detach().requires_grad_(want_x)
            a = weights.detach().requires_grad_(want_a)
            y = ref.prumerge_ref(x, merge_keys.detach(), a, indices, ctx.num_neighbors, ctx.mean)
            wrt = [t for t, want in ((x, want_x), (a, want_a)) if want]
            got = list(torch.autograd.grad(y, wrt, grad)) if wrt else []
        gx = got.pop(0) if want_x else None
        ga = got.pop(0) if want_a else None
        return gx, None, ga, None, None, None

    return Autograd(backward, setup_context)


def _tome_merge_fake(a: OpArgs):
    _opchecks.check_tome_merge(**vars(a))
    return (a.tokens.new_empty((a.total_rows, a.tokens.shape[-1])),
            torch.empty((a.total_rows,), dtype=torch.int64, device=a.tokens.device))


def _tome_merge_ref(a: OpArgs):
    _opchecks.check_tome_merge(**vars(a), data=True)
    return ref.tome_ref(a.tokens, a.merge_keys, a.counts)


def _tome_merge_batched(a: OpArgs):
    _opchecks.check_tome_merge(**vars(a), data=True)
    return methods.tome_merge(a.tokens, a.merge_keys, a.counts, a.total_rows)


def _tome_autograd(impl) -> Autograd:
    """Differentiates ``impl`` itself (the oracle's loop or the batched formulation)."""

    def setup_context(ctx, a, output):
        ctx.total_rows = a.total_rows
        ctx.save_for_backward(a.tokens, a.merge_keys, a.counts)

    def backward(ctx, grad_rows, _grad_indices):
        tokens, merge_keys, counts = ctx.saved_tensors
        if not ctx.needs_input_grad[0]:
            return None, None, None, None
        with torch.enable_grad():
            x = tokens.detach().requires_grad_(True)
            rows = impl(OpArgs(tokens=x, merge_keys=merge_keys.detach(), counts=counts,
                               total_rows=ctx.total_rows))[0]
            (gx,) = torch.autograd.grad(rows, [x], grad_rows)
        return gx, None, None, None

    return Autograd(backward, setup_context)


MERGE_NEIGHBORS = _kernel_op(  # PruMerge
    "merge_neighbors",
    "(Tensor tokens, Tensor merge_keys, Tensor weights, Tensor indices, int num_neighbors, bool mean) -> Tensor",
    _merge_neighbors_fake, _merge_neighbors_ref, _merge_triton, _merge_autograd)

TOME_MERGE = OpSpec(  # ToMe
    name="tome_merge",
    schema="(Tensor tokens, Tensor merge_keys, Tensor counts, int total_rows) -> (Tensor, Tensor)",
    fake=_tome_merge_fake,
    kernels={"tome_merge": _tome_merge_batched, "tome_merge_ref": _tome_merge_ref},
    backends={"reference": "tome_merge_ref", "cpu": "tome_merge", "triton": "tome_merge"},
    autograd=_tome_autograd,
)


# ----------------------------------------------------------------------------------
# The LLM input (METHOD.md section 4, kvtp_kernels.pack): C++ only, CPU and CUDA
# ----------------------------------------------------------------------------------
def _pack_plan_fake(a: OpArgs):
    B, L = a.video_mask.shape
    dev = a.video_mask.device
    newline_rows = a.video_indices.shape[0] + 1 if a.layout == "grid" else 0
    return (
        torch.empty((B + 1,), dtype=torch.int32, device=dev),
        torch.empty((B, PACK_FIELDS), dtype=torch.int64, device=dev),
        torch.empty((B, L), dtype=torch.int32, device=dev),
        torch.empty((newline_rows,), dtype=torch.int64, device=dev),
        torch.empty((4,), dtype=torch.int64, device=dev),
    )


def _pack_rows_fake(a: OpArgs):
    B, _, D = a.text_embeds.shape
    rows = (B, a.length) if a.padded else (a.length,)
    index = torch.empty(rows, dtype=torch.int64, device=a.text_embeds.device)
    return a.text_embeds.new_empty((*rows, D)), index, torch.empty_like(index)


def to_sources(values: torch.Tensor, source_index: torch.Tensor, text_rows: int, video_rows: int,
               accumulate: bool) -> torch.Tensor:
    """Scatter rows [R, D'] to the source concatenation [text | video | newline | padding].

    Padding (-1) goes to the last slot, which callers drop. With ``accumulate`` the
    newline slot sums its rows (``index_add_``); otherwise any one of them lands there.
    """
    slots = text_rows + video_rows + 2
    index = torch.where(source_index < 0, slots - 1, source_index)
    buffer = values.new_zeros((slots, values.shape[-1]))
    return buffer.index_add_(0, index, values) if accumulate else buffer.index_copy_(0, index, values)


def _pack_rows_autograd(impl) -> Autograd:
    """One ``index_add_`` of the output's gradient into the sources (the newline accumulates)."""

    def setup_context(ctx, a, output):
        ctx.text_shape = tuple(a.text_embeds.shape)
        ctx.video_rows = a.video_tokens.shape[0]
        ctx.has_newline = a.newline is not None
        ctx.save_for_backward(output[1])

    def backward(ctx, grad_embeds, _grad_source_index, _grad_position_ids):
        (source_index,) = ctx.saved_tensors
        B, L, D = ctx.text_shape
        text_rows, video_rows = B * L, ctx.video_rows
        grads = to_sources(grad_embeds.reshape(-1, D), source_index.reshape(-1), text_rows, video_rows,
                           accumulate=True)
        grad_newline = grads[text_rows + video_rows] if ctx.has_newline else None
        return ((grads[:text_rows].view(B, L, D), grads[text_rows:text_rows + video_rows], grad_newline)
                + (None,) * (len(PACK_ROWS.arg_names) - 3))

    return Autograd(backward, setup_context)


PACK_PLAN = OpSpec(
    name="pack_plan",
    schema="(Tensor? text_mask, Tensor video_mask, Tensor? sample_video, Tensor video_cu_seqlens, "
           "Tensor video_indices, str layout, int num_frames, int grid_width, int tokens_per_frame) "
           "-> (Tensor cu_seqlens, Tensor sample_info, Tensor text_rank, Tensor newline_cu, Tensor summary)",
    fake=_pack_plan_fake,
    kernels={"pack_plan": CPP},
)

PACK_ROWS = OpSpec(
    name="pack_rows",
    schema="(Tensor text_embeds, Tensor video_tokens, Tensor? newline, Tensor cu_seqlens, Tensor sample_info, "
           "Tensor text_rank, Tensor frame_cu_seqlens, Tensor newline_cu, str layout, int num_frames, int length, "
           "bool padded, bool left_padding) -> (Tensor embeds, Tensor source_index, Tensor position_ids)",
    fake=_pack_rows_fake,
    kernels={"pack_rows": CPP},
    autograd=_pack_rows_autograd,
)

OPS = (KEEP_COUNTS, PRUNE_TOKENS, MERGE_NEIGHBORS, TOME_MERGE, PACK_PLAN, PACK_ROWS)


# ----------------------------------------------------------------------------------
# Registration
# ----------------------------------------------------------------------------------
def _check_cpp_schema(spec: OpSpec, op_name: str) -> None:
    """The schema csrc/ops.cpp defines must be the one described here."""
    cpp = str(getattr(torch.ops.kvtp, op_name).default._schema)
    want = str(torch._C.parse_schema(f"kvtp::{op_name}{spec.schema}"))
    if cpp != want:
        raise RuntimeError(f"kvtp_kernels: csrc/ops.cpp defines {cpp}, kvtp_kernels/ops.py describes {want}")


def _register(spec: OpSpec, op_name: str, impl, *, fake: bool = True) -> None:
    """The fake (not for Triton ops: ``triton_op`` traces their launchers instead) and autograd."""
    qualname = f"kvtp::{op_name}"
    if fake:
        torch.library.register_fake(qualname)(lambda *args, **kwargs: spec.fake(spec.bind(args, kwargs)))
    if spec.autograd is not None:
        autograd = spec.autograd(impl)
        torch.library.register_autograd(
            qualname, autograd.backward,
            setup_context=lambda ctx, inputs, output: autograd.setup_context(ctx, spec.bind(inputs), output))


def _define(spec: OpSpec, op_name: str, impl, *, triton: bool) -> None:
    def kernel(*args, **kwargs):
        return impl(spec.bind(args, kwargs))

    make = torch.library.triton_op if triton else torch.library.custom_op
    op = make(f"kvtp::{op_name}", kernel, mutates_args=(), schema=spec.schema)
    if triton:  # also importable from its kernel module, e.g. prune_triton.prune_tokens_triton
        setattr(sys.modules[impl.__module__], op_name, op)


for _spec in OPS:
    for _name, _impl in _spec.kernels.items():
        if _impl is CPP:
            if not HAS_CPP:
                continue
            _check_cpp_schema(_spec, _name)
        else:
            _define(_spec, _name, _impl, triton=False)
        _register(_spec, _name, _impl)
    for _name, _impl in _spec.triton_kernels.items():
        _define(_spec, _name, _impl, triton=True)
        _register(_spec, _name, _impl, fake=False)
