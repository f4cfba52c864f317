"""nvmmpy's benchmarks: `nvmmpy bench` (bench.suite) and the single-purpose scripts beside it."""
