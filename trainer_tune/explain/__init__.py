"""Explain: facts and the decision matrix for people, read from a Decision and its estimates (never an input to
the verdict). Imports decide and below."""
