"""Benchmarks: `python -m benchmarks.NAME` prints a table and writes docs/benchmarks/NAME.{md,json}."""
