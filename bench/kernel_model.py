"""What a compiled GPU kernel uses, and a bandwidth model of its time (no GPU needed).

Resources come from the machine code itself: ``cuobjdump --dump-resource-usage`` on the
cubin (registers per thread, static shared memory, local memory), ``ptxas -v`` on the
PTX for the spill bytes, and Triton's metadata for the dynamic shared memory.

Loads in flight: in the PTX, a *run* is a sequence of global loads (``ld.global*``,
``cp.async*``) issued before any instruction reads a register one of them wrote, a load
overwrites such a register, or a ``cp.async`` wait: the loads of a run are in flight
together. A ``mov`` of a pending register is a rename (ptxas allocates registers
itself; Triton's loop-carried prefetch and bf16 unpacking are movs), so its destination
becomes pending instead; a barrier does not end a run (it waits for threads, not for
their loads). Per kernel, the streaming loop is the loop (a block ending in a branch back
to its label) with the most load bytes per trip; its body is read three times in a row
(so loads carried into later trips count as in flight, as a prefetch two trips ahead
keeps them), branches inside it taken as straight-line code; the longest run is the
kernel's ``bytes in flight per thread`` (no loop: the longest run in the kernel, with
labels ending runs).

Model (per launch on one GPU; ``Gpu`` below holds the datasheet numbers). What a launch
moves and computes is the kernel's own model, declared next to it
(``kvtp_kernels.kernels._traffic.Traffic``, ``TRAFFIC`` in each kernel module): DRAM bytes
read and written, L2 re-reads, float64 work, dependent round trips, and the one program
that runs alone (a per-video program).

- CTAs per SM: the fewest that registers (allocated per warp in units of 256), shared
  memory (static + dynamic + 1 KB the driver reserves), threads and the hardware CTA
  limit allow. Waves = CTAs / (CTAs per SM x SMs).
- Loads in flight per SM = CTAs resident on an SM (``min(CTAs per SM, ceil(grid / SMs))``)
  x threads per CTA x bytes in flight per thread.
- Achievable bandwidth (Little's law) = min(peak, SMs busy x loads in flight per SM /
  latency), with a 1 us loaded DRAM latency and SMs busy = min(SMs, grid).
- Bulk time = the largest of: DRAM bytes (read + written) / achievable bandwidth, x
  ceil(waves) / waves when the last wave is partial (waves >= 1); L2 re-reads / the L2
  bandwidth of the busy SMs; float64 vector operations / the busy SMs' float64 issue
  rate (``fp64_vector_tflops / 2``: an add, multiply or compare is one operation, an FMA
  two flops); float64 MMA flops / the busy SMs' share of ``fp64_tflops`` when the PTX has
  float64 MMA instructions, else (``fp64 dot``: sm_86/89, Triton < 3.7) / their share of
  ``fp64_vector_tflops``.
- Serial time (the program that runs alone, on one SM) = its dependent round trips x
  latency + its bytes / (one CTA's loads in flight / latency) + its float64 operations /
  one SM's float64 issue rate.
- Time = 2 us per launch (start and drain) + the prologue's dependent round trips x
  latency (an index, then the rows it names: the first wave waits for them) +
  max(bulk, serial).
- Floor = the minimal algorithm's bytes (bench/README.md "GB/s") / peak bandwidth.

Not modelled: integer and fp32 work, barriers and reductions inside a CTA, instruction
issue of the copy loops. The modelled time is a lower bound of a kernel whose time these
decide (PruMerge's bisection, the per-video program's reductions).
"""

from __future__ import annotations

import math
import os
import re
import shutil
import subprocess
import tempfile
from dataclasses import dataclass


@dataclass(frozen=True)
class Gpu:
    """Per-SM limits of an architecture and the datasheet numbers of one GPU that has it."""

    capability: int
    name: str
    sms: int
    bandwidth_tbs: float  # peak DRAM bandwidth
    fp64_tflops: float  # dense float64 (tensor cores where the part has float64 MMA)
    smem_per_sm_kb: int  # shared memory per SM
    smem_per_cta_kb: int  # largest dynamic shared memory one CTA may use
    threads_per_sm: int
    ctas_per_sm: int
    fp64_vector_tflops: float = 0.0  # float64 FMA units (no MMA), flops (an FMA = 2)
    l2_bandwidth_tbs: float = 0.0  # sustained L2 read bandwidth (approximate)


GPUS = {
    80: Gpu(80, "A100-SXM4-80GB", 108, 2.04, 19.5, 164, 163, 2048, 32, 9.7, 4.0),
    86: Gpu(86, "RTX A6000", 84, 0.768, 0.60, 100, 99, 1536, 16, 0.60, 2.0),
    89: Gpu(89, "L40S", 142, 0.864, 1.41, 100, 99, 1536, 24, 1.41, 2.5),
    90: Gpu(90, "H100-SXM5", 132, 3.35, 67.0, 228, 227, 2048, 32, 34.0, 5.5),
    100: Gpu(100, "B200", 148, 8.0, 40.0, 228, 227, 2048, 32, 40.0, 10.0),
}
REGISTERS_PER_SM = 65536
LATENCY_US = 1.0
LAUNCH_US = 2.0
RESERVED_SMEM = 1024


@dataclass
class Usage:
    """Resources of one kernel on one architecture."""

    registers: int
    spill_bytes: int  # ptxas: spill stores + spill loads per thread
    local_bytes: int  # stack frame / local memory per thread
    shared_bytes: int  # static + dynamic per CTA
    load_bytes_in_flight: int  # per thread, see the module docstring
    fp64_mma: bool = True  # the PTX has float64 MMA (mma.sync ... f64); else a float64 dot runs on FMAs


def tool(name: str) -> str:
    """Path of a CUDA tool: $CUDA_HOME/bin, PATH, or the copy bundled with Triton."""
    cuda_home = os.environ.get("CUDA_HOME", "/usr/local/cuda")
    for candidate in (os.path.join(cuda_home, "bin", name), shutil.which(name)):
        if candidate and os.path.exists(candidate):
            return candidate
    import triton
    bundled = os.path.join(os.path.dirname(triton.__file__), "backends", "nvidia", "bin", name)
    if os.path.exists(bundled):
        return bundled
    raise FileNotFoundError(f"kernel_model: `{name}` not found in {cuda_home}/bin, on PATH or beside triton")


_RESOURCE = re.compile(r"Function ([^\s:]+):\s*\n\s*REG:(\d+) STACK:(\d+) SHARED:(\d+) LOCAL:(\d+)")


def resource_usage(binary: str) -> dict[str, tuple[int, int, int, int]]:
    """``cuobjdump --dump-resource-usage``: {function: (registers, stack, static shared, local)}.

    For a fat binary (an extension ``.so``) the functions of every architecture are
    returned under ``"<function>@sm_<arch>"``.
    """
    out = subprocess.run([tool("cuobjdump"), "--dump-resource-usage", binary], capture_output=True, text=True,
                         check=True).stdout
    usage, arch = {}, None
    for block in re.split(r"\n(?=Fatbin elf code:|Resource usage:)", out):
        m = re.search(r"arch = sm_(\d+a?)", block)
        arch = m.group(1) if m else arch
        for name, reg, stack, shared, local in _RESOURCE.findall(block):
            key = f"{name}@sm_{arch}" if "Fatbin" in out else name
            usage[key] = (int(reg), int(stack), int(shared), int(local))
    return usage


def demangle(name: str) -> str:
    """The function name without namespaces and arguments (``c++filt``), or ``name`` without it."""
    filt = shutil.which("c++filt")
    if filt:
        name = subprocess.run([filt, name], capture_output=True, text=True).stdout.strip() or name
    return name.replace("(anonymous namespace)", "").split("(")[0].split("::")[-1]


def spill_bytes(ptx: str, capability: int) -> int:
    """Spill stores + loads (bytes per thread) that ``ptxas -v`` reports for the PTX."""
    from triton.backends.nvidia.compiler import get_ptxas, sm_arch_from_capability
    with tempfile.TemporaryDirectory() as tmp:
        src = os.path.join(tmp, "k.ptx")
        with open(src, "w") as f:
            f.write(ptx)
        log = subprocess.run([get_ptxas(capability).path, "-v", f"--gpu-name={sm_arch_from_capability(capability)}",
                              src, "-o", os.path.join(tmp, "k.cubin")], capture_output=True, text=True, check=True)
    spills = re.findall(r"(\d+) bytes spill (?:stores|loads)", log.stderr + log.stdout)
    if not spills:
        raise RuntimeError(f"kernel_model: ptxas -v printed no spill report:\n{log.stderr}{log.stdout}")
    return sum(int(n) for n in spills)


def compiled_usage(kernel, capability: int) -> Usage:
    """Usage of a Triton ``CompiledKernel`` built for ``sm_<capability>``."""
    with tempfile.NamedTemporaryFile(suffix=".cubin") as f:
        f.write(kernel.asm["cubin"])
        f.flush()
        (reg, stack, shared, local), = resource_usage(f.name).values()
    ptx = kernel.asm["ptx"]
    return Usage(reg, spill_bytes(ptx, capability), max(stack, local), shared + int(kernel.metadata.shared),
                 loads_in_flight(ptx), bool(re.search(r"\bmma\.sync\.aligned\.m8n8k4[^\n]*\.f64", ptx)))


# ----------------------------------------------------------------------------------
# Loads in flight, from the PTX
# ----------------------------------------------------------------------------------
_WIDTH = {"8": 1, "16": 2, "32": 4, "64": 8, "128": 16}
_REG = re.compile(r"%[a-z]+\d+")


def _load_bytes(line: str) -> int:
    if "cp.async" in line and "bulk" not in line and "wait" not in line and "commit" not in line:
        m = re.search(r"\],\s*(0x[0-9a-fA-F]+|\d+)\s*(?:,[^;]*)?;", line)
        return int(m.group(1), 0) if m else 16
    m = re.search(r"\bld\.global[.\w]*?(?:\.v(\d))?\.[bfsu](8|16|32|64|128)\b", line)
    if not m:
        return 0
    return int(m.group(1) or 1) * _WIDTH[m.group(2)]


def _runs(lines: list[str], labels_end_runs: bool = True) -> tuple[int, int]:
    """(longest run of independent load bytes, total load bytes) over ``lines``."""
    longest = total = run = 0
    pending: set[str] = set()
    for line in lines:
        text = re.sub(r"^@!?%p\d+\s+", "", line.split("//")[0].strip())  # a guard reads a predicate only
        if not text:
            continue
        size = _load_bytes(text)
        if size:
            srcs = _REG.findall(text.split("[", 1)[1]) if "[" in text else []
            dests = _REG.findall(text.split("[", 1)[0]) if "ld.global" in text else []
            if pending & (set(srcs) | set(dests)):
                run, pending = 0, set()
            run += size
            total += size
            pending |= set(dests)
            longest = max(longest, run)
            continue
        if text.startswith("$L__BB"):
            if labels_end_runs:
                run, pending = 0, set()
            continue
        if "cp.async.wait" in text:
            run, pending = 0, set()
            continue
        regs = _REG.findall(text)
        if text.startswith("mov.") and regs and pending:
            dest_part, _, src_part = text.partition(",") if not text.split(None, 1)[1].startswith("{") else \
                text.partition("},")
            dests, srcs = set(_REG.findall(dest_part)), set(_REG.findall(src_part))
            if srcs & pending:
                pending = (pending - srcs) | dests  # a rename: the value travels on
            else:
                pending -= dests  # overwritten by a value that is not in flight
            continue
        if pending & set(regs):
            run, pending = 0, set()
    return longest, total


def loads_in_flight(ptx: str) -> int:
    """Bytes of global loads a thread has in flight in the kernel's streaming loop."""
    lines = ptx.splitlines()
    labels = {}
    best_total, best_body = -1, None
    for i, line in enumerate(lines):
        text = line.strip()
        m = re.match(r"(\$L__BB\w+):", text)
        if m:
            labels[m.group(1)] = i
            continue
        m = re.search(r"\bbra(?:\.uni)?\s+(\$L__BB\w+);", text)
        if m and m.group(1) in labels:  # a branch back: lines labels[target]..i are a loop
            body = lines[labels[m.group(1)] + 1:i]
            total = _runs(body)[1]
            if total > best_total:
                best_total, best_body = total, body
    if best_total <= 0:
        return _runs(lines)[0]
    return _runs(best_body * 3, labels_end_runs=False)[0]


# ----------------------------------------------------------------------------------
# Occupancy and time
# ----------------------------------------------------------------------------------
def ctas_per_sm(usage: Usage, num_warps: int, gpu: Gpu) -> int:
    threads = 32 * num_warps
    regs_per_warp = math.ceil(max(usage.registers, 1) * 32 / 256) * 256
    by_regs = REGISTERS_PER_SM // (regs_per_warp * num_warps)
    by_threads = gpu.threads_per_sm // threads
    by_smem = gpu.ctas_per_sm
    if usage.shared_bytes:
        by_smem = (gpu.smem_per_sm_kb * 1024) // (usage.shared_bytes + RESERVED_SMEM)
    return max(0, min(by_regs, by_threads, by_smem, gpu.ctas_per_sm))


@dataclass
class Timing:
    ctas_per_sm: int
    waves: float
    inflight_per_sm: int  # bytes
    bandwidth_tbs: float  # achievable
    model_us: float
    bound: str = "DRAM"  # what decides the time: DRAM, L2, fp64, MMA, serial (the lone program)
    serial_us: float = 0.0


def model(usage: Usage, num_warps: int, ctas: int, bytes_moved: int, gpu: Gpu, traffic=None) -> Timing:
    """Modelled time of one launch (module docstring); ``traffic`` (a ``Traffic``) adds the
    L2, float64, round-trip and serial terms to the ``bytes_moved`` of DRAM traffic."""
    per_sm = ctas_per_sm(usage, num_warps, gpu)
    if per_sm == 0:
        return Timing(0, math.inf, 0, 0.0, math.inf, "occupancy")
    waves = ctas / (per_sm * gpu.sms)
    resident = min(per_sm, math.ceil(ctas / gpu.sms))
    inflight = resident * 32 * num_warps * usage.load_bytes_in_flight
    busy = min(gpu.sms, ctas)
    bandwidth = min(gpu.bandwidth_tbs, busy * inflight / (LATENCY_US * 1e-6) / 1e12)
    tail = math.ceil(waves) / waves if waves >= 1 else 1.0
    mem_us = bytes_moved / (bandwidth * 1e12) * 1e6 * tail if bytes_moved else 0.0
    if traffic is None:
        return Timing(per_sm, waves, inflight, bandwidth, mem_us + LAUNCH_US)
    share = busy / gpu.sms
    ops_per_sm = gpu.fp64_vector_tflops / 2 * 1e12 / gpu.sms  # float64 operations per second per SM
    terms = {"DRAM": mem_us,
             "L2": traffic.l2_read / (gpu.l2_bandwidth_tbs * 1e12 * share) * 1e6 if traffic.l2_read else 0.0,
             "fp64": traffic.fp64 / (ops_per_sm * busy) * 1e6 if traffic.fp64 else 0.0,
             "MMA": traffic.fp64_mma / (gpu.fp64_tflops * 1e12 * share) * 1e6 if traffic.fp64_mma else 0.0}
    if traffic.fp64_mma and not usage.fp64_mma:  # compiled without float64 MMA: the dot runs on FMAs
        terms["fp64 dot"] = traffic.fp64_mma / (gpu.fp64_vector_tflops * 1e12 * share) * 1e6
        terms["MMA"] = 0.0
    cta_bytes_per_us = 32 * num_warps * max(usage.load_bytes_in_flight, 1) / LATENCY_US
    serial = (traffic.serial_trips * LATENCY_US + traffic.serial_read / cta_bytes_per_us
              + traffic.serial_fp64 / ops_per_sm * 1e6)
    bound = max(terms, key=terms.get)
    body = terms[bound]
    if serial > body:
        bound, body = "serial", serial
    total = LAUNCH_US + traffic.prologue_trips * LATENCY_US + body
    return Timing(per_sm, waves, inflight, bandwidth, total, bound, serial)


def floor_us(bytes_moved: int, gpu: Gpu) -> float:
    return bytes_moved / (gpu.bandwidth_tbs * 1e12) * 1e6


def launch_bound_us(launches: int, floor: float) -> float:
    """The least this model gives any call of ``launches`` dependent launches moving ``floor``'s bytes.

    Each launch costs ``LAUNCH_US`` and makes at least one dependent round trip before it
    can store anything that depends on its inputs (the first launch loads the scores; a
    later one loads what the earlier wrote, e.g. counts or indices, before the rows they
    name), and the bytes take at least the floor: ``launches x (LAUNCH_US + LATENCY_US) +
    floor``. A call whose modelled time is near this bound can only get faster with fewer
    launches, or with launches that overlap (not modelled).
    """
    return launches * (LAUNCH_US + LATENCY_US) + floor


def fp64_us(flops: float, gpu: Gpu) -> float:
    return flops / (gpu.fp64_tflops * 1e12) * 1e6
