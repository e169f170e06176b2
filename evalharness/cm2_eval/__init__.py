"""cm2 evaluation harness: one benchmark task trial per process, graded by the benchmarks' own code."""
