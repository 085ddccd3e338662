"""Developer scripts of the source checkout; the Python ones run as modules from the repository root
(``python -m tools.check_cuda_arch``, ``python -m tools.gpu_driver``, ``python -m tools.gpu_summary``)."""
