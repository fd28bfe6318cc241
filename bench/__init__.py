"""Benchmarks and experiments; each module prints its figures."""
