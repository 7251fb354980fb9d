"""docs/configuration.md lists every key of the schema with its default: generated, and checked here."""

from __future__ import annotations

import dataclasses

from trainer_tune.config.schema import TuneConfig
from trainer_tune.config.reference import REGENERATE, field_docs, generated_part, page_path, render


def test_the_page_matches_the_schema() -> None:
    page = generated_part(page_path().read_text())
    assert page == render(), (
        f"docs/configuration.md and trainer_tune/config/schema.py disagree (a key, default, type, docstring or "
        f"config option changed). Regenerate the page with `{REGENERATE}` and commit it.")


def _keys(prefix: str, node: object) -> list[str]:
    keys = []
    for f in dataclasses.fields(node):  # type: ignore[arg-type]
        value = getattr(node, f.name)
        keys += _keys(f"{prefix}{f.name}.", value) if dataclasses.is_dataclass(value) else [f"{prefix}{f.name}"]
    return keys


def test_every_key_is_on_the_page() -> None:
    page = page_path().read_text()
    keys = _keys("", TuneConfig())
    assert "mode" in keys and "throughput.count.unit" in keys  # top-level and nested keys are both listed
    for key in keys:
        assert f"| `{key}` |" in page


def test_field_docs_reads_the_docstring_under_a_field() -> None:
    @dataclasses.dataclass
    class Example:
        documented: int = 1
        """What it is,
        over two lines."""
        bare: int = 2

    assert field_docs(Example) == {"documented": "What it is, over two lines."}
