"""Pure numerics for infinite- and finite-width neural-network kernels.

numpy arrays in, numpy arrays out: no HTTP, pydantic, Dask or file I/O lives here.
"""
