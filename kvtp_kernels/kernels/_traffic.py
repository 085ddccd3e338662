"""What one launch of a kernel moves and computes: the per-kernel model of the kernel report.

Each kernel module declares ``TRAFFIC = {"<kernel name>": fn}``, next to its kernels;
``fn(args, grid)`` gets the launch's arguments by name (tensors, ints, constexprs: what
the launcher is called with) and its grid, and returns a :class:`Traffic`: what the
launch's programs really load and store, given the mode its constexprs select (a tensor
passed as a placeholder, or one that a mode leaves unread, costs nothing). Where the
amount depends on device data (how many rows a frame keeps), the model says which
estimate it takes. ``bench.kernel_report`` refuses a launch whose kernel has no model.

Nothing here runs on a GPU; these functions are host arithmetic on shapes.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Traffic:
    """Bytes and work of one launch (every field a total over the launch unless said otherwise).

    - ``read`` / ``written``: DRAM traffic, each byte counted once per launch (re-reads
      that stay in L2 are ``l2_read``).
    - ``l2_read``: loads served by L2 beyond ``read`` (a frame's keys or neighbour rows
      that several programs share).
    - ``prologue_trips``: dependent memory round trips every program makes before its
      bulk loads can issue (an index, then the rows it names).
    - ``serial_read`` / ``serial_trips`` / ``serial_fp64``: the longest single program
      that runs alone (the per-video program of the plan kernel): the bytes it loads
      (L2 hits included), its dependent round trips, its float64 operations. Its time
      adds to no one's bandwidth: it is latency- and issue-bound on one SM.
    - ``fp64``: float64 operations (vector units: add, mul, compare) of the other
      programs; ``fp64_mma``: float64 MMA flops.
    """

    read: int = 0
    written: int = 0
    l2_read: int = 0
    prologue_trips: int = 0
    serial_read: int = 0
    serial_trips: int = 0
    serial_fp64: float = 0.0
    fp64: float = 0.0
    fp64_mma: float = 0.0

    @property
    def moved(self) -> int:
        """DRAM bytes read and written."""
        return self.read + self.written
