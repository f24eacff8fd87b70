"""Benchmarks: each prints figures (medians, p95, n, the machine); `rejoinder bench ...` runs them."""
