"""The docs name only what exists: a function, key, field or file the prose names in backticks is in the code.

A renamed key or a mechanism that was replaced (outcomes once agreed with `all_gather_object`, now through the
c10d store) leaves the old name behind in the docs, where it reads as fact. This catches the name, not the
prose around it; docs/configuration.md is generated from the schema and checked by test_config_doc.py.
"""

from __future__ import annotations

import re

from conftest import REPO

_DOCS = [REPO / "README.md", *sorted((REPO / "docs").glob("*.md")), REPO / "benchmarks" / "README.md"]
_CODE_DIRS = ("trainer_tune", "configs", "launch", "benchmarks", "docs")  # docs: sample_output.py
"""Whose text counts; the tests count by file name only (the docs cite them), so this file's own words do not."""
_SNAKE_CASE = re.compile(r"\b[a-z][a-z0-9]*(?:_[a-z0-9]+)+\b")
_READERS_OWN = {"my_configs", "my_models", "tiny_rnn"}
"""Names of the reader's own code in the examples of docs/your-model.md: theirs, not ours."""


def _names_in_code() -> set[str]:
    names = {path.stem for path in (REPO / "tests").rglob("*") if path.is_file()}
    for folder in _CODE_DIRS:
        for path in (REPO / folder).rglob("*"):
            if not path.is_file() or "__pycache__" in path.parts:
                continue
            # The byte corpus is a snapshot of these very docs (data for data=bytes), not code.
            if path.suffix in {".py", ".yaml", ".sh", ".sbatch"} and path.parent.name != "corpus":
                names.update(re.findall(r"[A-Za-z0-9_]+", path.read_text()))
            names.add(path.stem)
    return names


def test_every_snake_case_name_in_backticks_exists_in_the_code() -> None:
    known = _names_in_code() | _READERS_OWN
    missing = sorted({f"{doc.relative_to(REPO)}: {name}"
                      for doc in _DOCS if doc.name != "configuration.md"
                      for span in re.findall(r"`([^`\n]+)`", doc.read_text())
                      for name in _SNAKE_CASE.findall(span) if name not in known})
    assert not missing, "names in the docs that nothing in the code defines or uses:\n" + "\n".join(missing)


_PATH = re.compile(r"(?<![\w/.-])((?:[\w-]+/)*[\w-]+\.(?:py|sh|sbatch))\b")


def test_every_file_the_docs_name_exists() -> None:
    """A path (`trainer_tune/decide/verdict.py`) must exist as written from the repository root or inside the
    package; a bare file name (`verdict.py`) must be some file's name. Moving code leaves the old path behind."""
    files = [p for p in REPO.rglob("*") if p.is_file() and ".git" not in p.parts and ".venv" not in p.parts[0]]
    names = {p.name for p in files}
    missing = []
    for doc in _DOCS:
        for path in _PATH.findall(doc.read_text()):
            if path.split("/")[0] in _READERS_OWN:
                continue
            exists = ((REPO / path).exists() or (REPO / "trainer_tune" / path).exists()) if "/" in path \
                else path in names
            if not exists:
                missing.append(f"{doc.relative_to(REPO)}: {path}")
    assert not missing, "files the docs name that do not exist:\n" + "\n".join(sorted(set(missing)))
