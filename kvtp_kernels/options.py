"""The package's vocabulary and the one check of each shared argument.

Every option tuple (the values a string argument may take) is defined here and only
here: the API, the CLI's ``choices``, the evaluator and :class:`KVTPSettings` import
them. Each ``check_*`` function validates one argument the same way wherever it is
taken; ``fail`` is the caller's error function (``functools.partial(_errors.fail,
prefix)``), so the message names the caller's module, the argument, what was expected
and what was given.
"""

from __future__ import annotations

import numbers

import torch

from ._errors import as_int, as_real
from ._errors import describe as _describe

#: Where the work runs: the float64 oracle, the C++ CPU kernels, the Triton kernels.
BACKENDS = ("reference", "cpu", "triton")
#: How a video's budget is split over its frames (METHOD.md section 2).
ALLOCATIONS = ("exact", "paper")
#: How tokens are chosen inside a frame (METHOD.md section 3).
METHODS = ("topk", "prumerge", "tome", "random")
#: PruMerge's fold of the neighbours into a kept token.
MERGES = ("paper", "mean")
#: Where newline rows go in a pruned video block (first = the integrations' default).
LAYOUTS = ("video", "grid", "frame", "none")
#: ``pack_multimodal``'s output forms and padding sides.
OUTPUTS = ("varlen", "padded")
PADDING_SIDES = ("right", "left")
#: How ``kvtp annotate`` rates frames, and how it encodes the frames it sends.
ANNOTATORS = ("local", "openai")
IMAGE_FORMATS = ("auto", "jpeg", "png")
#: What ``kvtp eval`` runs: the unpruned model, KVTP, or both.
MODES = ("full", "kvtp")
#: How the evaluator and the CLI write a prompt.
PROMPT_FORMATS = ("auto", "chat", "plain")
#: The dtypes a model may be loaded in (``auto``: the checkpoint's own).
MODEL_DTYPES = ("auto", "float32", "bfloat16", "float16")
#: dtypes of ``tokens`` the kernels are built for (float8 and others are refused up front).
TOKEN_DTYPES = (torch.float32, torch.float16, torch.bfloat16, torch.float64)
#: dtypes of scores and embeddings (widened to float64 inside).
SCORE_DTYPES = TOKEN_DTYPES
#: Relevance labels run 0..MAX_LABEL: the annotators' frame scores, the predictor's training targets.
MAX_LABEL = 5


def check_choice(fail, arg: str, value: object, options: tuple, *, allow_none: bool = False) -> object:
    """``value`` if it is one of ``options`` (or None when ``allow_none``)."""
    if (value is None and allow_none) or (isinstance(value, str) and value in options):
        return value
    fail(arg, f"{'None or ' if allow_none else ''}one of {options}", repr(value))


def check_number(fail, arg: str, value: object, *, lo: float, integer: bool = False, lo_open: bool = False):
    """-> ``value`` as a Python int (``integer``) or float, ``>= lo`` (``> lo`` when
    ``lo_open``) and finite; numpy scalars and 0-d CPU tensors count as numbers."""
    bound = f"{'>' if lo_open else '>='} {lo}"
    what = f"an int {bound}" if integer else f"a finite number {bound}"
    value = as_int(fail, arg, value, what=what) if integer else as_real(fail, arg, value, what=what)
    bad = value <= lo if lo_open else value < lo
    if bad or not value - value == 0:  # NaN or infinite (math.isfinite does not trace under dynamo)
        fail(arg, f"{bound} (an int)" if integer else what, repr(value))
    return value


def check_budget(fail, budget: object) -> int | float:
    """A float ratio in (0, 1] or an int token count >= 1 (numbers.Integral or an integer
    0-d CPU tensor is a count; another real a ratio). The bounds that need T and N are
    :func:`kvtp_kernels.api.resolve_budget`'s."""
    if isinstance(budget, torch.Tensor) and budget.dim() == 0 and budget.device.type == "cpu":
        if budget.dtype == torch.bool:
            fail("budget", "a float ratio in (0, 1] or an int token count", _describe(budget))
        budget = budget.item()
    if isinstance(budget, bool) or not isinstance(budget, numbers.Real):
        fail("budget", "a float ratio in (0, 1] or an int token count", repr(budget))
    if isinstance(budget, numbers.Integral):
        if budget <= 0:
            fail("budget", ">= 1 as a token count (an int > 0)", repr(budget))
        return int(budget)
    budget = float(budget)
    if not (0.0 < budget <= 1.0):
        fail("budget", "in (0, 1] as a ratio (a float); pass an int for a token count", repr(budget))
    return budget


def check_temperature(fail, temperature: object) -> float:
    """tau of ``softmax(s / tau)``: a finite number > 0."""
    return check_number(fail, "temperature", temperature, lo=0.0, lo_open=True)


def check_min_tokens(fail, min_tokens_per_frame: object) -> int:
    """m, the fewest tokens kept in any frame: an int >= 0."""
    return check_number(fail, "min_tokens_per_frame", min_tokens_per_frame, lo=0, integer=True)


def check_num_neighbors(fail, num_neighbors: object) -> int | None:
    """PruMerge's neighbours per kept token: None (the default) or an int >= 0."""
    if num_neighbors is None:
        return None
    return check_number(fail, "num_neighbors", num_neighbors, lo=0, integer=True)


def check_device(error: type[Exception], name: str | None, *, auto: tuple, expected: str) -> torch.device:
    """A CLI's ``--device``: a name in ``auto`` -> cuda when available, else cpu; any other
    name must parse as a torch device (``error`` says it must be ``expected`` otherwise)
    and, for cuda, torch must see a CUDA device."""
    if name in auto:
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        device = torch.device(name)
    except (RuntimeError, TypeError) as exc:
        raise error(f"--device must be {expected}; got {name!r}") from exc
    if device.type == "cuda" and not torch.cuda.is_available():
        raise error(f"--device {name}: torch sees no CUDA device")
    return device
