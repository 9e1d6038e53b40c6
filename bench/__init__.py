"""Benchmark harness: ``python -m bench`` runs the cases and writes BENCHMARKS.md."""
