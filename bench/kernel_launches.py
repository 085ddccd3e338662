"""Record the Triton launches that the public ops make, and compile them for a GPU, offline.

No GPU is needed: ``Target`` stands in for Triton's active driver (it names a compute
capability and nothing else), and ``record`` replaces ``JITFunction.run``, the one
method that every launch of a ``@triton.jit`` kernel goes through (``kernel[grid](...)``
and ``torch.library.wrap_triton(kernel)[grid](...)`` alike), with one that stores the
kernel, its arguments, its keyword arguments (constexprs, ``num_warps``, ``num_stages``)
and the grid, and launches nothing. ``compile_launch`` then calls the original
``run(..., warmup=True)`` on the same arguments, so the kernel is specialised by
Triton's own launcher code (ints equal to 1 become constexprs, pointers and ints
divisible by 16 get the divisibility attribute) for the capability ``Target`` names.

Nothing launched runs, so the ops must make every launch decision without reading
device data: true of exact mode (static output sizes, no host sync). Paper mode reads
the counts back (one host sync) before its second launch, so only its count launch
is recorded (through ``keep_counts``).

Triton must be imported with ``TRITON_INTERPRET`` unset (the kernels are then
``JITFunction`` objects and the ops pick their GPU tiles); the API's device check is
passed by setting ``TRITON_INTERPRET=1`` during the calls only (see ``record``).
"""

from __future__ import annotations

import contextlib
import os
from dataclasses import dataclass, field
from typing import Any

import torch
from triton.backends.compiler import GPUTarget
from triton.runtime import driver
from triton.runtime.jit import JITFunction


@dataclass
class Launch:
    """One recorded launch: ``kernel[grid](*args, **kwargs)``."""

    kernel: JITFunction
    args: tuple
    kwargs: dict
    grid: tuple

    @property
    def name(self) -> str:
        return self.kernel.fn.__name__

    @property
    def num_warps(self) -> int:
        return int(self.kwargs.get("num_warps", 4))  # Triton's default

    @property
    def ctas(self) -> int:
        total = 1
        for g in self.grid:
            total *= int(g)
        return total

    def values(self) -> dict:
        """Every argument by name (positional ones, constexprs, ``num_warps`` ...)."""
        return dict(zip(self.kernel.arg_names, self.args), **self.kwargs)

    def tensors(self) -> list[torch.Tensor]:
        """Tensor arguments, each storage once (an op may pass one tensor as two arguments)."""
        seen, out = set(), []
        for a in list(self.args) + list(self.kwargs.values()):
            if isinstance(a, torch.Tensor) and a.data_ptr() not in seen:
                seen.add(a.data_ptr())
                out.append(a)
        return out

    def key(self) -> tuple:
        """What Triton's launcher compiles once: kernel, argument types and specialisation, options."""
        def kind(a):
            if isinstance(a, torch.Tensor):
                return (str(a.dtype), a.data_ptr() % 16 == 0)
            if isinstance(a, bool) or a is None:
                return a
            if isinstance(a, int):
                return ("int", a == 1, a % 16 == 0, -2**31 <= a < 2**31)
            return repr(a)
        return (self.name, tuple(kind(a) for a in self.args),
                tuple(sorted((k, kind(v)) for k, v in self.kwargs.items())))


class Target:
    """Triton's active driver, reduced to what compilation asks: a CUDA capability."""

    def __init__(self, capability: int):
        self.capability = capability

    def get_current_target(self) -> GPUTarget:
        return GPUTarget("cuda", self.capability, 32)

    def get_current_device(self) -> int:
        return self.capability  # one binder cache per capability

    def get_current_stream(self, device=None) -> int:
        return 0

    def get_active_torch_device(self):
        return torch.device("cpu")


@contextlib.contextmanager
def _active(target: Target):
    previous = driver._active  # reset_active() would look for a real GPU driver
    driver.set_active(target)
    try:
        yield
    finally:
        driver._active = previous


@dataclass
class Recorder:
    launches: list[Launch] = field(default_factory=list)


_ORIGINAL_RUN = JITFunction.run


@contextlib.contextmanager
def record(capability: int = 90):
    """Within the block, every Triton launch is recorded (not run); yields a ``Recorder``."""
    recorder = Recorder()

    def run(self, *args, grid, warmup, **kwargs):
        if warmup:
            return _ORIGINAL_RUN(self, *args, grid=grid, warmup=warmup, **kwargs)
        grid = grid(dict(zip(self.arg_names, args), **kwargs)) if callable(grid) else grid
        recorder.launches.append(Launch(self, args, dict(kwargs), tuple(grid)))
        return None

    previous = os.environ.get("TRITON_INTERPRET")
    os.environ["TRITON_INTERPRET"] = "1"  # the API's check for CPU tensors on the Triton backend
    JITFunction.run = run
    try:
        with _active(Target(capability)):
            yield recorder
    finally:
        JITFunction.run = _ORIGINAL_RUN
        if previous is None:
            os.environ.pop("TRITON_INTERPRET", None)
        else:
            os.environ["TRITON_INTERPRET"] = previous


def compile_launch(launch: Launch, capability: int) -> Any:
    """The ``CompiledKernel`` Triton's launcher would build for ``launch`` on ``sm_<capability>``."""
    with _active(Target(capability)):
        kernel = _ORIGINAL_RUN(launch.kernel, *launch.args, grid=launch.grid, warmup=True, **launch.kwargs)
    if kernel is None:
        raise RuntimeError(f"kernel_launches: triton did not compile {launch.name} for sm_{capability}")
    return kernel
