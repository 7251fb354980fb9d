"""The console table at 120 columns: rows of a flag sweep stay distinguishable (every flag value readable, nothing
cut into an ellipsis), and the table fits."""

from __future__ import annotations

import dataclasses
import io
import itertools

from rich.console import Console

from result_factory import make_result
from trainer_tune.config.schema import RecommendArgs
from trainer_tune.explain.report import build_report
from trainer_tune.config.flags import FLAG_SPECS, TrialFlags, format_flag
from trainer_tune.plan import TrialSpec
from trainer_tune.decide.verdict import decide
from trainer_tune.evidence.estimate import SettingEstimate
from trainer_tune.sinks.console import ConsoleSink

SWEPT = ("bucket_cap_mb", "static_graph", "find_unused_parameters", "prefill_batched")


def _flag_sweep() -> list[SettingEstimate]:
    """Results labelled as plan.py labels a sweep of four flags (labels like
    `1x1 bucket_cap_mb=null static_graph=false find_unused_parameters=true prefill_batched=true`), one failed."""
    results = []
    combos = itertools.product((1, 2), (None, 25.0), (False, True), (False, True), (True, False))
    for index, (micro, bucket, static, unused, prefill) in enumerate(list(combos)[::3]):
        flags = TrialFlags(bucket_cap_mb=bucket, static_graph=static, find_unused_parameters=unused,
                           prefill_batched=prefill)
        result = make_result(index=index, key=f"k{index}", micro_batch_size=micro, flags=flags,
                             tokens_per_s=10_000.0 + 100 * index, is_baseline=index == 0,
                             status="oom" if index == 3 else "ok")
        spec = TrialSpec(index=index, micro_batch_size=micro, grad_accum=1, world_size=2, flags=flags,
                         is_baseline=index == 0, key=f"k{index}")
        results.append(dataclasses.replace(result, label=spec.label(swept_flags=SWEPT)))
    return results


def _setting_cells(table_text: str) -> dict[str, str]:
    """Each row's setting cell, its wrapped lines joined, by the row's `#`."""
    cells: dict[str, list[str]] = {}
    for line in table_text.splitlines():
        if not line.startswith("│"):
            continue
        parts = line.split("│")
        if parts[1].strip():
            current = parts[1].strip()
            cells[current] = []
        cells[current].append(parts[2].strip())
    return {index: " ".join(lines) for index, lines in cells.items()}


def test_every_flag_value_is_readable_at_120_columns() -> None:
    results = _flag_sweep()
    out = io.StringIO()
    ConsoleSink(enabled=True, console=Console(file=out, width=120)).show(
        results, build_report(decide(results, args=RecommendArgs())))
    text = out.getvalue()
    assert "…" not in text
    table = text[text.index("┏"):text.index("┘") + 1]
    assert max(len(line) for line in table.splitlines()) <= 120
    cells = _setting_cells(table)
    assert len(cells) == len(results)
    short = {spec.field_name: spec.short_name for spec in FLAG_SPECS}
    for r in results:
        words = cells[str(r.index)].split()
        assert words[0] == f"{r.micro_batch_size}x{r.grad_accum}"
        for name in SWEPT:
            assert f"{short[name]}={format_flag(getattr(r.flags, name))}" in words, (r.label, cells[str(r.index)])
    assert len(set(cells.values())) == len(results)
    # What each short name stands for is said once, under the table.
    legend = " ".join(text.split("┘", 1)[1].split())
    for spec in FLAG_SPECS:
        assert (f"{spec.short_name} = {spec.config_key}" in legend) == (spec.field_name in SWEPT)


def test_at_80_100_and_160_columns_every_figure_and_setting_appears_whole() -> None:
    """Issue 27: cells printed as `13,…` at 100 columns. Below the width one table needs, the table splits into
    what decides and the details, each row named by its `#` and setting."""
    results = _flag_sweep()
    report = build_report(decide(results, args=RecommendArgs()))
    for width in (80, 100, 160):
        out = io.StringIO()
        ConsoleSink(enabled=True, console=Console(file=out, width=width)).show(results, report)
        text = out.getvalue()
        assert "…" not in text, width
        assert max(len(line) for line in text.splitlines() if line[:1] in "┏┃│└┡") <= width
        flat = " ".join(text.split())  # a setting may wrap at its spaces
        for r in results:
            assert f"{r.tokens_per_s:,.0f}" in text if r.ok else True
            speedup = report.decision.speedup_by_key.get(r.trial_key)
            if speedup is not None:
                assert f"{(speedup - 1) * 100:+.1f}%" in text
            assert f"{r.samples_per_s:,.0f}" in text if r.ok else True
        for word in ("prefill=false", "unused=true", "bucket_mb=25", "0.1100", "0.1180"):
            assert word in flat, (width, word)


def test_output_that_is_no_terminal_follows_columns(monkeypatch) -> None:
    monkeypatch.setenv("COLUMNS", "100")
    assert ConsoleSink(enabled=True).console.width == 100
