"""Benchmarks that print figures (run by hand; never collected as tests)."""
