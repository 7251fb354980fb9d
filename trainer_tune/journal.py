"""The journal `trials.jsonl`: one JSON line per finished trial, appended by rank 0 only.

Each line is flushed and fsynced before the sweep moves on, so nothing measured is lost when a process
dies. A line cut short by a kill mid-write is reported and ignored (later appends start on a fresh line);
any other unreadable line means the file is not ours (or was edited), and the run stops rather than guess.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path

from trainer_tune.config import ConfigError
from trainer_tune.results import TrialResult

JOURNAL_NAME = "trials.jsonl"


@dataclass(frozen=True)
class JournalContents:
    results: tuple[TrialResult, ...]
    problems: tuple[str, ...]
    """Tolerated defects, e.g. a torn last line, for the log."""

    def by_key(self) -> dict[str, TrialResult]:
        return {r.trial_key: r for r in self.results}


def read_journal(path: Path) -> JournalContents:
    if not path.exists():
        return JournalContents(results=(), problems=())
    try:
        text = path.read_bytes().decode("utf-8", errors="replace")
    except OSError as exc:
        raise ConfigError(f"journal {path} is not readable: {exc.strerror}") from None
    results: list[TrialResult] = []
    problems: list[str] = []
    for number, line in enumerate(text.split("\n"), start=1):
        if not line.strip():
            continue
        try:
            record = json.loads(line)
        except json.JSONDecodeError:
            # Our lines start with '{'; one that does and still does not parse was cut short by a kill.
            if line.startswith("{"):
                problems.append(f"{path.name} line {number} is incomplete (the writer was killed mid-line); "
                                f"ignored, that trial will be measured again")
                continue
            record = None
        try:
            results.append(TrialResult.from_json_dict(record))  # type: ignore[arg-type]
        except (ValueError, TypeError, AttributeError) as exc:
            raise ConfigError(f"journal {path} line {number} is not a trainer_tune trial record ({exc}); "
                              f"move the file away or choose another output directory") from None
    return JournalContents(results=tuple(results), problems=tuple(problems))


def append_result(path: Path, result: TrialResult) -> None:
    line = json.dumps(result.to_json_dict(), sort_keys=True, allow_nan=False) + "\n"
    with open(path, "ab") as handle:
        # A torn last line from a killed writer must not swallow this record: start on a fresh line.
        if handle.tell() > 0:
            with open(path, "rb") as reader:
                reader.seek(-1, os.SEEK_END)
                if reader.read(1) != b"\n":
                    handle.write(b"\n")
        handle.write(line.encode())
        handle.flush()
        os.fsync(handle.fileno())
