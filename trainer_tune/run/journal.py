"""The journal `trials.jsonl`: a header line, then one JSON line per finished trial, appended by rank 0 only.

The header (`{"journal_header": {...}}`, written once, when the sweep first measures into the directory) says what
the journal is of: the record version, the sweep's definition (model, workload, mode, grid) and the fingerprint of
the machine that started it. `resume_refusal` is the one rule a resume answers to (docs/measurement.md,
"Resuming").

Each line is flushed and fsynced before the sweep moves on, so nothing measured is lost when a process
dies. A line cut short by a kill mid-write is reported and ignored (later appends start on a fresh line);
any other unreadable line means the file is not ours (or was edited), and the run stops rather than guess.

Several writers may share one journal (the jobs of a Hydra multirun): appends are atomic lines under a
lock, a trial already recorded is not appended again, and should a trial still appear twice, readers keep
its first line.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Optional, Sequence

from trainer_tune.config.schema import ConfigError
from trainer_tune.platform.durable import append_line, write_atomically
from trainer_tune.platform.finite import NON_FINITE_KEY, finite_json, finite_record
from trainer_tune.measure.load_record import LOAD_KEY, SERVICE_KEY
from trainer_tune.measure.memory_trace import MEMORY_KEY, MemoryPrediction
from trainer_tune.measure.record import RECORD_VERSION, WindowRecord, utc_now
from trainer_tune.platform.fingerprint import Fingerprint
from trainer_tune.plan import TrialSpec

log = logging.getLogger(__name__)

JOURNAL_NAME = "trials.jsonl"
INFLIGHT_NAME = "inflight.json"


HEADER_KEY = "journal_header"


@dataclass(frozen=True)
class JournalHeader:
    """What a journal is of, as its first line says."""

    record_version: int
    """The WindowRecord version of the process that started the journal."""
    definition: Optional[dict[str, Any]]
    """The sweep's definition (plan.sweep_definition): a resume of another definition is refused. None for a
    multirun's shared journal, whose jobs each measure their own setting."""
    fingerprint: Optional[Fingerprint]
    created_at: str

    def to_json_dict(self) -> dict[str, Any]:
        return {HEADER_KEY: dataclasses.asdict(self)}

    @staticmethod
    def from_json_dict(data: dict[str, Any]) -> "JournalHeader":
        inner = data[HEADER_KEY]
        fingerprint = inner.get("fingerprint")
        return JournalHeader(record_version=int(inner["record_version"]), definition=inner.get("definition"),
                             fingerprint=Fingerprint.from_json_dict(fingerprint) if fingerprint else None,
                             created_at=str(inner.get("created_at", "")))


@dataclass(frozen=True)
class JournalContents:
    results: tuple[WindowRecord, ...]
    problems: tuple[str, ...]
    """Tolerated defects, e.g. a torn last line, for the log."""
    header: Optional[JournalHeader] = None
    """None for a journal written before headers."""
    serving: tuple[dict[str, Any], ...] = ()
    """A serving-under-load sweep's lines (measure/load_record.py), in journal order, as read."""
    memory: tuple[MemoryPrediction, ...] = ()
    """The memory predictions (measure/memory_trace.py), in journal order."""

    def predictions(self) -> dict[str, MemoryPrediction]:
        """The memory predictions by setting key, each setting's last line (a resumed sweep that measured a setting
        the first run did not adds its real-step figure in a later line)."""
        return {prediction.setting_key: prediction for prediction in self.memory}

    def by_key(self) -> dict[str, WindowRecord]:
        return {r.trial_key: r for r in self.results}


_MARKS = {"trial_key", "status", "label", "micro_batch_size", "grad_accum", "tokens_per_s"}
"""Fields every record has (any version): a line without them is another program's."""


def _foreign(path: Path, number: int, what: str) -> ConfigError:
    return ConfigError(f"journal={path} is not allowed: line {number} is {what}, not a trainer_tune trial record; "
                       f"move the file away or choose another output directory (hydra.run.dir=...)")


def read_journal(path: Path) -> JournalContents:
    if not path.exists():
        return JournalContents(results=(), problems=())
    try:
        text = path.read_bytes().decode("utf-8", errors="replace")
    except OSError as exc:
        raise ConfigError(f"journal {path} is not readable: {exc.strerror}") from None
    results: list[WindowRecord] = []
    problems: list[str] = []
    header: Optional[JournalHeader] = None
    first_line: dict[str, int] = {}
    serving: list[dict[str, Any]] = []
    memory: list[MemoryPrediction] = []
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
            raise _foreign(path, number, "not JSON")
        if not isinstance(record, dict):
            raise _foreign(path, number, f"JSON, but a {type(record).__name__} where a record is an object")
        if HEADER_KEY in record:
            try:
                header = header or JournalHeader.from_json_dict(record)
            except (ValueError, TypeError, KeyError):
                raise _foreign(path, number, "a header whose fields are not a journal header's") from None
            continue
        if SERVICE_KEY in record or LOAD_KEY in record:
            serving.append(record)
            continue
        if MEMORY_KEY in record:
            try:
                memory.append(MemoryPrediction.from_json_dict(record))
            except (ValueError, TypeError, KeyError):
                raise _foreign(path, number, "a memory prediction whose fields are not one") from None
            continue
        missing = _MARKS - set(record)
        if missing:
            raise _foreign(path, number, f"a JSON object without {', '.join(sorted(missing))}")
        try:
            result = WindowRecord.from_json_dict(record)
        except (ValueError, TypeError, AttributeError, KeyError):
            raise _foreign(path, number, "a JSON object whose fields are not a trial record's") from None
        if result.trial_key in first_line:
            problems.append(f"{path.name} line {number} records trial {result.label} again (first on line "
                            f"{first_line[result.trial_key]}); the first is kept")
            continue
        first_line[result.trial_key] = number
        results.append(result)
    return JournalContents(results=tuple(results), problems=tuple(problems), header=header, serving=tuple(serving),
                           memory=tuple(memory))


def write_header(path: Path, header: JournalHeader) -> bool:
    """Start the journal with `header`, unless it already has contents (a resume); returns whether it wrote."""
    return append_line(path, finite_json(header.to_json_dict(), sort_keys=True), unless=lambda text: bool(text.strip()))


def definition_differences(before: dict[str, Any], now: dict[str, Any]) -> list[str]:
    """`path: before -> now` for every leaf of two sweep definitions that differs (a grid as settings added and
    removed)."""
    found: list[str] = []
    for name in sorted(set(before) | set(now)):
        old, new = before.get(name), now.get(name)
        if old == new:
            continue
        if isinstance(old, dict) and isinstance(new, dict):
            found += [f"{name}.{line}" for line in definition_differences(old, new)]
        elif isinstance(old, list) and isinstance(new, list):
            added, removed = [x for x in new if x not in old], [x for x in old if x not in new]
            found.append(f"{name}: " + "; ".join(part for part in (
                f"{', '.join(map(str, added))} added" if added else "",
                f"{', '.join(map(str, removed))} removed" if removed else "") if part))
        else:
            found.append(f"{name}: {old} -> {new}")
    return found


def resume_refusal(contents: JournalContents, *, journal: Path, definition: Optional[dict[str, Any]],
                   fingerprint: Optional[Fingerprint],
                   allow_fingerprint_change: bool) -> tuple[Optional[str], Optional[str]]:
    """(why this process may not continue the journal, a warning to log), either None: the one resume rule.

    - another sweep definition (model, workload, mode, grid) in the same directory is refused: its windows would be
      decided as if they were this sweep's. A larger budget, more rounds, another recommend.* continue it;
    - a fingerprint that differs in what decides speed (hardware, software versions, threads, world size; not the
      host name, so a requeue on a like node continues) from the last one the journal holds is refused unless
      sweep.allow_fingerprint_change=true. Windows of different process lifetimes never pair in a round anyway
      (decide/race.lifetime_slots), so an allowed change starts new rounds.
    The entry point asks before any process group with `fingerprint=None` (the definition only), so a refused
    directory is left exactly as it was; the sweep asks again once the group's fingerprint is known."""
    header = contents.header
    if definition is not None and header is not None and header.definition is not None:
        changed = definition_differences(header.definition, definition)
        if changed:
            shown = "; ".join(changed[:3]) + (f"; and {len(changed) - 3} more" if len(changed) > 3 else "")
            return (f"hydra.run.dir={journal.parent} is not allowed: its journal is of another sweep ({shown}); use a "
                    f"new hydra.run.dir for this one"), None
    if fingerprint is None:
        return None, None
    before = next((w.fingerprint for w in reversed(contents.results) if w.fingerprint is not None),
                  header.fingerprint if header is not None else None)
    differences = before.differences(fingerprint) if before is not None else []
    if not differences:
        return None, None
    what = "; ".join(differences)
    if allow_fingerprint_change:
        return None, (f"resuming {journal} although its windows were measured on another machine or software "
                      f"({what}): the windows measured now start new rounds and never pair with those")
    return (f"sweep.allow_fingerprint_change=false is not allowed to resume {journal}: its windows were measured on "
            f"another machine or software ({what}); use a new hydra.run.dir, or "
            f"sweep.allow_fingerprint_change=true to continue it anyway"), None


def start_or_resume(path: Path, *, definition: Optional[dict[str, Any]], fingerprint: Optional[Fingerprint],
                    allow_fingerprint_change: bool) -> JournalContents:
    """Rank 0 at a sweep's start: the journal's contents, after the one resume rule (a refusal raises ConfigError, a
    warning is logged); a journal with nothing in it yet gets its header first."""
    contents = read_journal(path)
    for problem in contents.problems:
        log.warning(problem)
    refusal, warning = resume_refusal(contents, journal=path, definition=definition, fingerprint=fingerprint,
                                      allow_fingerprint_change=allow_fingerprint_change)
    if refusal is not None:
        raise ConfigError(refusal)
    if warning is not None:
        log.warning(warning)
    if contents.header is None and not contents.results and not contents.serving:
        write_header(path, JournalHeader(record_version=RECORD_VERSION, definition=definition,
                                         fingerprint=fingerprint, created_at=utc_now()))
    return contents


def append_result(path: Path, result: WindowRecord) -> bool:
    """Append the trial unless the journal already records it (another writer was first); returns whether
    this line was written."""
    key = json.dumps(result.trial_key)

    def recorded(text: str) -> bool:
        # The cheap textual test first; a real read settles it (a key could appear in another trial's text).
        return f'"trial_key": {key}' in text and any(
            r.trial_key == result.trial_key for r in _parse_lines(text))

    # Strict JSON, and never an exception over a figure: a NaN is written as null and its path listed.
    record = finite_record(result.to_json_dict())
    if record.get(NON_FINITE_KEY):
        paths = record[NON_FINITE_KEY]
        log.warning("trial %s (%s): %d figure(s) were not finite and are recorded as null (%s%s)", result.index,
                    result.label, len(paths), ", ".join(paths[:3]), ", ..." if len(paths) > 3 else "")
    written = append_line(path, finite_json(record, sort_keys=True), unless=recorded)
    if not written:
        log.info("trial %s (%s) is already in %s; this measurement is not recorded again",
                 result.index, result.label, path)
    return written


def append_serving(path: Path, record: dict[str, Any]) -> None:
    """Append one serving-under-load line (measure/load_record.py), flushed and fsynced like a window's."""
    append_line(path, finite_json(finite_record(record), sort_keys=True))


def _parse_lines(text: str) -> list[WindowRecord]:
    results = []
    for line in text.split("\n"):
        try:
            results.append(WindowRecord.from_json_dict(json.loads(line)))
        except (ValueError, TypeError, AttributeError):
            continue
    return results


@dataclass(frozen=True)
class InFlight:
    """The trial rank 0 was measuring; written before it starts, removed once it is in the journal.

    Found at start-up with no journal line for its trial, it means the group died during that trial.
    """

    trial_key: str
    index: int
    label: str
    attempts: int
    """How many times this window has been started; a window that kills the group twice is not retried."""
    setting_key: Optional[str] = None
    """The setting the window measures (plan.window_of)."""
    round_id: Optional[str] = None
    """The round the window belongs to."""


def read_inflight(output_dir: Path) -> Optional[InFlight]:
    path = output_dir / INFLIGHT_NAME
    try:
        return InFlight(**json.loads(path.read_text()))
    except FileNotFoundError:
        return None
    except (ValueError, TypeError) as exc:
        log.warning("ignoring unreadable %s (%s)", path, exc)
        return None


def write_inflight(output_dir: Path, inflight: InFlight) -> None:
    write_atomically(output_dir / INFLIGHT_NAME, json.dumps(dataclasses.asdict(inflight)) + "\n")


def clear_inflight(output_dir: Path) -> None:
    (output_dir / INFLIGHT_NAME).unlink(missing_ok=True)


def check_budget(budget_s: Optional[float], *, plan: Sequence[TrialSpec], journal: Path) -> None:
    """Refuse a sweep.budget_s that the output directory's own journal proves too small for one window of each
    planned setting (a setting not measured yet counts as the mean window measured); without such a journal
    there is nothing to prove, and a sweep whose budget ends first answers INCONCLUSIVE."""
    if budget_s is None or not journal.exists():
        return
    walls: dict[str, list[float]] = {}
    for window in read_journal(journal).results:
        if window.setting_key is not None and window.wall_s:
            walls.setdefault(window.setting_key, []).append(window.wall_s)
    if not walls:
        return
    mean_s = {key: sum(values) / len(values) for key, values in walls.items()}
    typical_s = sum(mean_s.values()) / len(mean_s)
    one_round_s = sum(mean_s.get(spec.key, typical_s) for spec in plan)
    if budget_s < one_round_s:
        raise ConfigError(f"sweep.budget_s={budget_s:g} is not allowed: the journal in {journal.parent} shows that "
                          f"one window of each of the {len(plan)} settings takes about {one_round_s:.0f} s; the "
                          f"smallest budget that fits one round is {math.ceil(one_round_s)} (and a verdict needs "
                          f"several rounds)")
