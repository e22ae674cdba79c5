"""Benchmarks (run as ``python -m benchmarks.NAME``; the guest-side ones also as plain scripts)."""
