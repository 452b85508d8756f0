"""Benchmarks (see README.md): whole-process timings against baselines in the same run."""
