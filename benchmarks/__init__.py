"""Benchmarks: latency, sweep cost, training and batched throughput (see docs/benchmarks.md)."""
