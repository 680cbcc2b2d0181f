"""Benchmarks behind `ar1 bench`: each writes JSON; none are tests."""
