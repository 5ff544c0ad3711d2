"""Per-chunk arithmetic (statistics, ReAlign transform, baselines): Triton kernels with torch references."""
