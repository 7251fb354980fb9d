"""Evidence: from a sweep's windows to one estimate per setting (evidence/estimate.py), the statistics behind
every interval, and the one paired comparison of two settings (evidence/comparison.py).

Imports measure and below; never decide, explain, sinks or run."""
