"""Benchmarks, one script per capability; results in bench/results/."""
