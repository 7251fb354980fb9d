"""The trials table's rows, in one order and with one numbering, for the console and report.md alike.

`#` numbers the rows 0, 1, 2, ... (0 the baseline, then the settings in plan order), never a trial's index:
indices skip where a setting has no row (a multirun job whose setting is the baseline itself, a setting a
search strategy never let into the race), and a reader counting rows would look for the missing ones.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Mapping, Optional, Sequence

from trainer_tune.evidence.estimate import SettingEstimate


@dataclass(frozen=True)
class TableRow:
    number: int
    """The row's `#`: consecutive from 0, the baseline."""
    result: SettingEstimate
    job: Optional[str]
    """In a multirun, the job that measured the setting (`all` for the baseline); None in a single run."""


def table_rows(results: Sequence[SettingEstimate], *, jobs: Optional[Mapping[str, str]] = None) -> list[TableRow]:
    """`results` as rows; `jobs` (trial_key -> job, multirun.jobs_by_key) adds the job of each row."""
    ordered = sorted(results, key=lambda r: (not r.is_baseline, r.index))
    return [TableRow(number=number, result=result, job=None if jobs is None else jobs.get(result.trial_key, "n/a"))
            for number, result in enumerate(ordered)]
