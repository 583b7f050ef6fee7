"""Benchmarks for the figures of SPEC §11. Results are collected in ``bench/RESULTS.md``."""
