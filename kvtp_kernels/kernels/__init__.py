"""Triton kernels. Each module registers its ops with ``torch.library.triton_op``."""
