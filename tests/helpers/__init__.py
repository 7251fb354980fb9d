"""Test helpers that are not the product: a reader of wandb's private offline file format, deliberately broken
models. Importable as `helpers.*` in the tests (tests/ is on pytest's path) and in the trainer_tune processes
they start (tests/conftest.py clean_env puts tests/ on PYTHONPATH)."""
