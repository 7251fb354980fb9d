"""Decide: which settings may be chosen (decide/eligible.py, the one rule), the race between rounds, the search
strategies, goodput advice and the verdict (decide/verdict.py) that turns estimates into a Decision.

Imports evidence and below; never explain, sinks or run. `python -m trainer_tune.decide OUTPUT_DIR` re-decides a
finished sweep from its journal (decide/__main__.py, an entry point, so it may import upward)."""
