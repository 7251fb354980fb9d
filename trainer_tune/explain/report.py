"""The Report: a Decision with its explanations, the one record that every sink reads (and recommendation.json)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Optional

from trainer_tune.decide.verdict import Decision
from trainer_tune.evidence.comparison import compare
from trainer_tune.explain.matrix import Explanations, explain
from trainer_tune.platform.fingerprint import Fingerprint, load_note, threads_note


@dataclass(frozen=True)
class Report:
    decision: Decision
    explanations: Explanations
    """Scaling facts and the decision matrix, read from the decision's settings; never an input to the verdict."""
    fingerprint: Optional[Fingerprint] = None
    """The machine and software the sweep measured on (its last window's), for people and for a resume."""
    machine_notes: tuple[str, ...] = ()
    """What about the machine the figures depend on (platform/fingerprint.threads_note), for the console and
    report.md."""

    def to_json_dict(self) -> dict[str, Any]:
        """recommendation.json: the decision's fields, the explanations and the fingerprint."""
        return {**self.decision.to_json_dict(), "explanations": self.explanations.to_json_dict(),
                "fingerprint": self.fingerprint.to_json_dict() if self.fingerprint is not None else None,
                "machine_notes": list(self.machine_notes)}


def machine_notes(fingerprint: Fingerprint, *, most_threads_per_rank: Optional[int] = None) -> tuple[str, ...]:
    """What about the machine every figure depends on: oversubscribed threads, load already on it at the start."""
    notes = (threads_note(fingerprint, most_threads_per_rank=most_threads_per_rank),
             load_note(fingerprint, most_threads_per_rank=most_threads_per_rank))
    return tuple(note for note in notes if note)


def build_report(decision: Decision, *, fingerprint: Optional[Fingerprint] = None) -> Report:
    """Explain a decision: the matrix picks among the settings the decision may choose (decision.ineligible)."""
    most = max((s.flags.num_threads for s in decision.settings if s.flags.num_threads is not None), default=None)
    return Report(decision=decision, fingerprint=fingerprint,
                  machine_notes=machine_notes(fingerprint, most_threads_per_rank=most) if fingerprint else (),
                  explanations=explain(decision.settings, compare=compare, max_batch_latency_ms=decision.max_batch_latency_ms,
                                       over_budget=decision.over_budget, ineligible=decision.ineligible))
