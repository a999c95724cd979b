"""Benchmarks behind ``npvit bench``: one module per benchmark (attention.py: the paper's Fig. 1)."""
