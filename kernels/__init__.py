"""redkern's Triton kernels (installed as ``redkern.kernels``)."""
