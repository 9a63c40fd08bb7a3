"""Cohort scale (no Qt): precompute the embeddings of many slides and run benchmarks on a
dask.distributed cluster (a ``LocalCluster`` on this machine, or an existing scheduler)."""
