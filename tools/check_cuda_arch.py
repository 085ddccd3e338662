"""Check that the built kvtp_kernels._C holds machine code of every CUDA source for every architecture.

``python -m tools.check_cuda_arch [ARCH_LIST]`` (from the repository root): ARCH_LIST defaults to
$TORCH_CUDA_ARCH_LIST, else setup.py's DEFAULT_ARCH_LIST (what a build with no GPU
visible uses), e.g. "8.0;8.6;8.9;9.0;10.0+PTX". Each object file with device code adds
one ELF per architecture to the shared object (``cuobjdump --list-elf`` names them
``_C.<i>.sm_XY.cubin``, by object, not by source), so every "X.Y" needs as many sm_XY
ELFs as there are ``csrc/*.cu`` files, and "X.Y+PTX" as many compute_XY PTX files
(``cuobjdump --list-ptx``): a .cu file left out of setup.py's sources fails here. Prints
what the object holds; exits 1 on anything missing.
"""

from __future__ import annotations

import glob
import os
import re
import subprocess
import sys
from collections import Counter

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def default_arch_list() -> str:
    with open(os.path.join(ROOT, "setup.py")) as f:
        m = re.search(r'^DEFAULT_ARCH_LIST = "([^"]+)"', f.read(), re.M)
    if not m:
        raise SystemExit("check_cuda_arch: no DEFAULT_ARCH_LIST in setup.py")
    return m.group(1)


def expected(arch_list: str) -> tuple[set[str], set[str]]:
    elf, ptx = set(), set()
    for item in re.split(r"[;\s]+", arch_list.strip()):
        if not item:
            continue
        m = re.fullmatch(r"(\d+)\.(\d+)a?(\+PTX)?", item)
        if not m:
            raise SystemExit(f"check_cuda_arch: cannot read {item!r} in the arch list {arch_list!r}")
        elf.add(f"sm_{m.group(1)}{m.group(2)}")
        if m.group(3):
            ptx.add(f"compute_{m.group(1)}{m.group(2)}")
    return elf, ptx


def held(listing: str, suffix: str) -> list[str]:
    """The architectures of a ``cuobjdump --list-elf`` (suffix "cubin") or ``--list-ptx`` ("ptx")
    listing, one per file: "ELF file 2: _C.2.sm_90.cubin" -> "sm_90", "PTX file 1: _C.1.sm_100.ptx"
    -> "compute_100"."""
    prefix = "compute" if suffix == "ptx" else "sm"
    return [f"{prefix}_{a}" for a in re.findall(rf"\.(?:sm|compute)_(\d+a?)\.{suffix}\b", listing)]


def short(have: list[str], want: set[str], sources: int) -> list[str]:
    """"<arch> (<held> of <sources>)" for each wanted architecture held fewer than ``sources`` times."""
    count = Counter(have)
    return [f"{arch} ({count[arch]} of {sources})" for arch in sorted(want) if count[arch] < sources]


def main() -> int:
    import kvtp_kernels._C as C

    from bench.kernel_model import tool

    arch_list = sys.argv[1] if len(sys.argv) > 1 else os.environ.get("TORCH_CUDA_ARCH_LIST") or default_arch_list()
    if not C.WITH_CUDA:
        print("check_cuda_arch: kvtp_kernels._C was built without CUDA kernels")
        return 1
    want_elf, want_ptx = expected(arch_list)
    cuobjdump = tool("cuobjdump")

    def listed(flag: str) -> str:
        return subprocess.run([cuobjdump, flag, C.__file__], capture_output=True, text=True, check=True).stdout

    sources = sorted(glob.glob(os.path.join(ROOT, "csrc", "*.cu")))
    have = held(listed("--list-elf"), "cubin") + held(listed("--list-ptx"), "ptx")
    print(f"[check_cuda_arch] {os.path.basename(C.__file__)} holds: {dict(sorted(Counter(have).items()))}; "
          f"expected from {arch_list!r}: {len(sources)} of each of ELF {sorted(want_elf)}, PTX {sorted(want_ptx)} "
          f"({', '.join(os.path.basename(p) for p in sources)})")
    missing = short(have, want_elf | want_ptx, len(sources))
    if missing:
        print(f"check_cuda_arch: missing from kvtp_kernels._C: {missing}")
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
