"""Benchmark cases: one module per capability, each with ``CASES = {name: function}``."""
