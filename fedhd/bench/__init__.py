"""Benchmarks (``python -m fedhd bench ...``): speed ratios and error statistics."""
