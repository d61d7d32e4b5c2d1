"""Benchmarks: mode comparison, ingest, scale, footprint and the fusion robustness experiment (``koala bench``,
``koala robustness``), and the statistics they report."""
