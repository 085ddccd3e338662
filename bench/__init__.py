"""Benchmarks of kvtp_kernels (see bench/README.md). ``python -m bench.run`` is the main job."""
