"""The offline GPU tooling: the kernel report's model and launch recorder, the arch check, the GPU summary."""

import os
import sys
import textwrap

import pytest
from helpers import run_compiler

from bench import kernel_model as km
from tools import check_cuda_arch, gpu_summary

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

_COPY_LOOP = textwrap.dedent("""
    $L__BB0_17:
    \tadd.s64 \t%rd773, %rd1, %rd9;
    \t@%p192 ld.global.v4.b32 { %r897, %r898, %r899, %r900 }, [ %rd773 + 0 ];
    \t@%p193 ld.global.v4.b32 { %r901, %r902, %r903, %r904 }, [ %rd774 + 0 ];
    \tld.global.b16 { %rs1 }, [ %rd775 + 0 ];
    \t@%p192 st.global.v4.b32 [ %rd777 + 0 ], { %r897, %r898, %r899, %r900 };
    \t@%p193 ld.global.v4.b32 { %r905, %r906, %r907, %r908 }, [ %rd776 + 0 ];
    \t@%p197 bra \t$L__BB0_17;
""")


def test_loads_in_flight_stops_at_the_first_use():
    # two 16-byte loads and a 2-byte one issue before the store reads %r897; the load after it
    # is not read in its trip, so it stays in flight into the next trip's run: 16 + 34
    assert km.loads_in_flight(_COPY_LOOP) == 50
    straight = _COPY_LOOP.replace("$L__BB0_17:", "").replace("bra", "ret;//")
    assert km.loads_in_flight(straight) == 34  # no loop: one pass


def test_loads_in_flight_renames_and_barriers():
    body = ("$L__BB0_3:\n\tld.global.v4.b32 { %r1, %r2, %r3, %r4 }, [ %rd1 + 0 ];\n"
            "\tmov.b32 \t{%rs1, %rs2}, %r1;\n\tbar.sync \t0;\n"
            "\tld.global.v4.b32 { %r5, %r6, %r7, %r8 }, [ %rd2 + 0 ];\n")
    # the mov renames the loaded value and the barrier waits for no load: one run of 32 bytes per
    # trip, carried twice (the loaded values are never read in the loop)
    assert km.loads_in_flight(body + "\t@%p1 bra \t$L__BB0_3;\n") == 32
    used = body + "\tcvt.f32.bf16 \t%f1, %rs1;\n\t@%p1 bra \t$L__BB0_3;\n"
    assert km.loads_in_flight(used) == 32  # the first trip's values are read in it: the run ends there


def test_loads_in_flight_picks_the_streaming_loop():
    small_loop = "$L__BB0_2:\n\tld.global.b32 { %r1 }, [ %rd1 + 0 ];\n\t@%p1 bra \t$L__BB0_2;\n"
    assert km.loads_in_flight(small_loop + _COPY_LOOP) == 50  # the copy loop, not the small one
    assert km.loads_in_flight(small_loop) == 4
    cp_async = "\tcp.async.cg.shared.global [ %r1 + 0 ], [ %rd2 + 0 ], 0x8, %r3;\n" * 3 + "\tcp.async.wait_group 0;\n"
    assert km.loads_in_flight(cp_async) == 24


def test_occupancy_limits():
    h100, l40s = km.GPUS[90], km.GPUS[89]
    usage = km.Usage(registers=96, spill_bytes=0, local_bytes=0, shared_bytes=3072, load_bytes_in_flight=64)
    assert km.ctas_per_sm(usage, 16, h100) == 1  # 96 regs x 512 threads = 48K of the 64K registers
    assert km.ctas_per_sm(km.Usage(32, 0, 0, 0, 16), 4, h100) == 16  # threads: 2048 / 128
    assert km.ctas_per_sm(km.Usage(32, 0, 0, 0, 16), 4, l40s) == 12  # 1536 threads on sm_89
    assert km.ctas_per_sm(km.Usage(32, 0, 0, 60 * 1024, 16), 4, l40s) == 1  # 100 KB of shared memory
    assert km.ctas_per_sm(km.Usage(32, 0, 0, 120 * 1024, 16), 4, l40s) == 0


def test_model_little_law():
    h100 = km.GPUS[90]
    usage = km.Usage(registers=96, spill_bytes=0, local_bytes=0, shared_bytes=0, load_bytes_in_flight=64)
    t = km.model(usage, 16, 64, 36_000_000, h100)  # 64 CTAs of 512 threads x 64 B: 32 KB on 64 SMs
    assert t.inflight_per_sm == 32 * 1024
    assert t.bandwidth_tbs == pytest.approx(64 * 32 * 1024 / 1e-6 / 1e12)
    assert t.model_us == pytest.approx(36e6 / (t.bandwidth_tbs * 1e12) * 1e6 + km.LAUNCH_US)
    many = km.model(km.Usage(32, 0, 0, 0, 64), 4, 4 * 132 * 16, 36_000_000, h100)
    assert many.bandwidth_tbs == h100.bandwidth_tbs  # enough in flight: the peak
    assert km.floor_us(3.35e6, h100) == pytest.approx(1.0)


def test_arch_list_expectations():
    assert check_cuda_arch.expected("8.0;8.6;9.0;10.0+PTX") == ({"sm_80", "sm_86", "sm_90", "sm_100"},
                                                                   {"compute_100"})
    assert check_cuda_arch.default_arch_list() == "8.0;8.6;8.9;9.0;10.0+PTX"
    with pytest.raises(SystemExit, match="cannot read"):
        check_cuda_arch.expected("sm_90")


def test_arch_check_counts_one_elf_per_cuda_source():
    # cuobjdump's listing of a shared object linked from two .cu objects (sm_90 ELF each, one
    # with compute_100 PTX): files are named by object index, not by source
    elf = "ELF file    1: lib.1.sm_90.cubin\nELF file    2: lib.2.sm_90.cubin\n"
    ptx = "PTX file    1: lib.1.sm_100.ptx\n"
    have = check_cuda_arch.held(elf, "cubin") + check_cuda_arch.held(ptx, "ptx")
    assert have == ["sm_90", "sm_90", "compute_100"]
    assert check_cuda_arch.short(have, {"sm_90"}, 2) == []
    assert check_cuda_arch.short(have, {"sm_90", "compute_100"}, 2) == ["compute_100 (1 of 2)"]
    assert check_cuda_arch.short(have, {"sm_90", "sm_80"}, 3) == ["sm_80 (0 of 3)", "sm_90 (2 of 3)"]


def test_gpu_summary_ratios(tmp_path, monkeypatch):
    header = ("bench,device,device_name,dtype,shape,params,provider,role,median_ms,sync_free,status\n")
    rows = [("ours", "ours", "0.010", "true"), ("naive", "baseline", "0.500", ""), ("torch", "baseline", "0.020", ""),
            ("torch.compile", "baseline", "0.020", ""), ("roof_index_select", "roof", "0.008", "")]
    with open(tmp_path / "bench.csv", "w") as f:
        f.write(header)
        for provider, role, ms, sync in rows:
            f.write(f"prune,cuda,H100,bfloat16,B=1 T=64 N=196 D=3584,beta=0.2 scores=given,{provider},{role},{ms},"
                    f"{sync},ok\n")
    (tmp_path / "steps.tsv").write_text("build\tpassed\t90\t\ntests\tFAILED\t10\texit status 1\n")
    monkeypatch.setattr(sys, "argv", ["gpu_summary.py", str(tmp_path)])
    assert gpu_summary.main() == 1  # a failed step
    text = (tmp_path / "summary.txt").read_text()
    assert "ours 50.00x faster than naive (target >= 20x): met" in text
    assert "ours 2.00x faster than torch (target >= 3x): MISSED" in text
    assert "ours at 1.25x the time of roof_index_select (target <= 1.5x): met" in text


@pytest.mark.skipif(sys.platform != "linux", reason="triton compiles for CUDA on Linux only")
def test_record_and_compile_a_launch():
    """The recorder sees the op's launches without running them, and Triton compiles them for sm_90."""
    script = textwrap.dedent("""
        import torch, kvtp_kernels
        from bench.kernel_launches import record, compile_launch
        from bench import kernel_model as km
        tokens = torch.empty(1, 4, 7, 64, dtype=torch.bfloat16)
        with record() as rec:
            out = kvtp_kernels.prune(tokens, torch.randn(1, 4), 0.5, token_scores=torch.rand(1, 4, 7),
                                     backend="triton")
        assert rec.launches, "no launch recorded"
        assert out.tokens.shape == (14, 64)
        for launch in rec.launches:
            assert launch.ctas >= 1 and launch.num_warps >= 1, launch
            usage = km.compiled_usage(compile_launch(launch, 90), 90)
            assert 0 < usage.registers <= 255, usage
        # what each launch moves is the kernel's own model: the token tensor passed to the plan
        # launch is not read with given token scores, the copy reads the kept rows only
        from bench.kernel_report import traffic_of
        plan, select, copy = (traffic_of(launch) for launch in rec.launches)
        assert plan.read == 4 * 4 and plan.written == 4 * 4 + 5 * 4 + 2 * 4, plan  # scores; counts, offsets
        assert select.read == 2 * 4 * 4 + 4 * 7 * 4 and select.written == 14 * 8, select
        assert copy.read == 14 * 8 + 14 * 64 * 2 and copy.written == 14 * 64 * 2, copy
        with record() as rec:
            kvtp_kernels.prune(tokens, torch.randn(1, 4), 0.5, backend="triton")
        plan = traffic_of(rec.launches[0])
        assert plan.read == 4 * 4 + tokens.numel() * 2, plan  # distinctiveness: every token once
        print("recorded", len(rec.launches))
    """)
    assert run_compiler(["-c", script], PYTHONPATH=ROOT).startswith("recorded")
