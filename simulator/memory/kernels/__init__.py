"""Numba kernels of the KV-cache managers (private; use :mod:`simulator.memory`)."""
