"""Benchmark scripts (each runs as a script: see docs/benchmarks.md)."""
