"""Build of the kvtp_kernels._C extension (C++ CPU kernels, plus CUDA kernels when possible).

Package metadata lives in pyproject.toml. Build with the installed torch:
``pip install --no-build-isolation -e .``.

Environment:
  KVTP_BUILD_CUDA        "auto" (default): CUDA kernels when torch has CUDA and nvcc is
                         found; "1": require them; "0": CPU kernels only.
  CUDA_HOME              CUDA toolkit (default /usr/local/cuda when it exists).
  TORCH_CUDA_ARCH_LIST   GPU architectures. Unset: the visible GPUs' (torch's own default), or
                         with no GPU visible DEFAULT_ARCH_LIST below (A100, RTX 30xx/A6000,
                         L4/L40S/RTX 4090, H100/H200, B200, plus PTX of the newest so later
                         GPUs JIT it). Narrow it for a faster build, e.g. "9.0".
  MAX_JOBS               parallel compile jobs (ninja).
  KVTP_SANITIZE          "address": build the C++ kernels with AddressSanitizer (CI's
                         separate build into build-asan/, see .ci/run); default: none.
"""

import glob
import os
import shutil

from setuptools import setup

if "CUDA_HOME" not in os.environ and os.path.isdir("/usr/local/cuda"):
    os.environ["CUDA_HOME"] = "/usr/local/cuda"  # before cpp_extension reads it

import torch  # noqa: E402
from torch.utils.cpp_extension import CUDA_HOME, BuildExtension, CppExtension, CUDAExtension  # noqa: E402

ROOT = os.path.dirname(os.path.abspath(__file__))
DEFAULT_ARCH_LIST = "8.0;8.6;8.9;9.0;10.0+PTX"
CSRC = os.path.join("csrc")


def _want_cuda() -> bool:
    mode = os.environ.get("KVTP_BUILD_CUDA", "auto").lower()
    if mode not in ("auto", "0", "1"):
        raise SystemExit(f"KVTP_BUILD_CUDA must be auto, 0 or 1; got {mode!r}")
    if mode == "0":
        return False
    nvcc = CUDA_HOME and os.path.exists(os.path.join(CUDA_HOME, "bin", "nvcc"))
    nvcc = nvcc or shutil.which("nvcc")
    available = torch.version.cuda is not None and bool(nvcc)
    if mode == "1" and not available:
        raise SystemExit(
            f"KVTP_BUILD_CUDA=1 but CUDA kernels cannot be built: torch.version.cuda={torch.version.cuda}, "
            f"CUDA_HOME={CUDA_HOME}, nvcc={'found' if nvcc else 'not found'}")
    return available


def extensions():
    cpp_sources = sorted(glob.glob(os.path.join(CSRC, "*.cpp")))
    cuda_sources = sorted(glob.glob(os.path.join(CSRC, "*.cu")))
    include_dirs = [os.path.join(ROOT, CSRC, "include")]
    # The C++ standard comes from torch (C++17 before 2.13, C++20 after). -fopenmp: ATen's
    # at::parallel_for is an OpenMP pragma in a header; without it our kernels run serially.
    cxx_flags = ["-O3", "-fopenmp"]
    link_flags = ["-fopenmp"]
    sanitize = os.environ.get("KVTP_SANITIZE", "")
    if sanitize not in ("", "address"):
        raise SystemExit(f"KVTP_SANITIZE must be empty or 'address'; got {sanitize!r}")
    if sanitize:
        cxx_flags = ["-O1", "-g", "-fopenmp", "-fsanitize=address", "-fno-omit-frame-pointer"]
        link_flags = ["-fopenmp", "-fsanitize=address"]
    if _want_cuda():
        if not os.environ.get("TORCH_CUDA_ARCH_LIST") and not torch.cuda.is_available():
            os.environ["TORCH_CUDA_ARCH_LIST"] = DEFAULT_ARCH_LIST
        print(f"kvtp_kernels: building C++ CPU kernels {cpp_sources} and CUDA kernels {cuda_sources} "
              f"(CUDA_HOME={CUDA_HOME}, TORCH_CUDA_ARCH_LIST={os.environ.get('TORCH_CUDA_ARCH_LIST', 'auto')})")
        return [CUDAExtension(
            "kvtp_kernels._C", cpp_sources + cuda_sources, include_dirs=include_dirs,
            define_macros=[("KVTP_WITH_CUDA", None)],
            extra_compile_args={"cxx": cxx_flags, "nvcc": ["-O3", "-lineinfo"]}, extra_link_args=link_flags)]
    print(f"kvtp_kernels: building C++ CPU kernels {cpp_sources} (no CUDA: torch.version.cuda="
          f"{torch.version.cuda}, CUDA_HOME={CUDA_HOME}, KVTP_BUILD_CUDA={os.environ.get('KVTP_BUILD_CUDA', 'auto')})")
    return [CppExtension("kvtp_kernels._C", cpp_sources, include_dirs=include_dirs,
                         extra_compile_args={"cxx": cxx_flags}, extra_link_args=link_flags)]


setup(ext_modules=extensions(), cmdclass={"build_ext": BuildExtension})
