"""Runs: what a user launches (the `bneck` CLI lives in runs.cli)."""
