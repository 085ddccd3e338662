"""Check that the built kvtp_kernels._C holds machine code for every architecture it was built for.

``python -m tools.check_cuda_arch [ARCH_LIST]`` (from the repository root): ARCH_LIST defaults to
$TORCH_CUDA_ARCH_LIST, else setup.py's DEFAULT_ARCH_LIST (what a build with no GPU
visible uses), e.g. "8.0;8.6;8.9;9.0;10.0+PTX". Every "X.Y" needs an sm_XY ELF in the
shared object (``cuobjdump --list-elf``), and "X.Y+PTX" also compute_XY PTX
(``cuobjdump --list-ptx``). Prints what the object holds; exits 1 on anything missing.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys

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


def main() -> int:
    import kvtp_kernels._C as C

    from bench.kernel_model import tool

    arch_list = sys.argv[1] if len(sys.argv) > 1 else os.environ.get("TORCH_CUDA_ARCH_LIST") or default_arch_list()
    if not C.WITH_CUDA:
        print("check_cuda_arch: kvtp_kernels._C was built without CUDA kernels")
        return 1
    want_elf, want_ptx = expected(arch_list)
    cuobjdump = tool("cuobjdump")

    def listed(flag: str, suffix: str) -> set[str]:  # "pack_cuda.sm_100.ptx" -> "100"
        out = subprocess.run([cuobjdump, flag, C.__file__], capture_output=True, text=True, check=True).stdout
        return set(re.findall(rf"\.(?:sm|compute)_(\d+a?)\.{suffix}\b", out))

    have_elf = {f"sm_{a}" for a in listed("--list-elf", "cubin")}
    have_ptx = {f"compute_{a}" for a in listed("--list-ptx", "ptx")}
    print(f"[check_cuda_arch] {os.path.basename(C.__file__)}: ELF {sorted(have_elf)}, PTX {sorted(have_ptx)} "
          f"(expected from {arch_list!r}: ELF {sorted(want_elf)}, PTX {sorted(want_ptx)})")
    missing = sorted(want_elf - have_elf) + sorted(want_ptx - have_ptx)
    if missing:
        print(f"check_cuda_arch: missing from kvtp_kernels._C: {missing}")
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
