"""Benchmarks run in the lab (not timed tests): see benchmarks/README.md."""
