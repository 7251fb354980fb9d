"""Sinks present what the sweep measured and decided; they never compute."""
