"""Measuring a bundle: parity of every backend with the reference (check) and timings (bench)."""
