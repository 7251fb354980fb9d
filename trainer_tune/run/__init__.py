"""Run: orchestration above every stage: the entry point, Hydra multiruns, the sweep loop, the journal and
resume, the watchdog and exit codes."""
