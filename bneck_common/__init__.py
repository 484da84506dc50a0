"""Utilities every bneck package shares: default paths and cache directories, atomic file writes, progress bars.

This package is the bottom of the import graph: search_space, latency, evaluators, searchers and runs (and the
benchmarks) may import it, and it imports nothing from any of them, so any package can use it without a cycle.
"""
