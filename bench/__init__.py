"""Benchmarks: plain scripts, `python -m bench.<name>` from the repo root (see bench/README.md).

Every target is a ratio against a baseline measured in the same run, never a timed assertion.
Results go to `bench/results/<name>.json`.
"""
