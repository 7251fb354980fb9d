"""The Report: a Decision with its explanations, the one record that every sink reads (and recommendation.json)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from trainer_tune.decide.verdict import Decision
from trainer_tune.evidence.comparison import compare
from trainer_tune.explain.matrix import Explanations, explain


@dataclass(frozen=True)
class Report:
    decision: Decision
    explanations: Explanations
    """Scaling facts and the decision matrix, read from the decision's settings; never an input to the verdict."""

    def to_json_dict(self) -> dict[str, Any]:
        """recommendation.json: the decision's fields and the explanations."""
        return {**self.decision.to_json_dict(), "explanations": self.explanations.to_json_dict()}


def build_report(decision: Decision) -> Report:
    """Explain a decision: the matrix picks among the settings the decision may choose (decision.ineligible)."""
    return Report(decision=decision,
                  explanations=explain(decision.settings, compare=compare, max_latency_ms=decision.max_latency_ms,
                                       over_budget=decision.over_budget, ineligible=decision.ineligible))
