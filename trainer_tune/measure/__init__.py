"""Measure: run one window of one setting on every rank and hand back a WindowRecord (measure/record.py), the
journal's line. Clocks, telemetry samplers, memory, FLOPs and the noise steps live here.

Imports config, platform, workloads and plan; never evidence, decide, explain, sinks or run."""
