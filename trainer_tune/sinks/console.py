"""The terminal: a progress bar during the sweep, then the table of trials and the verdict (rank 0 only)."""

from __future__ import annotations

from typing import Any, Mapping, Optional, Sequence

from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn
from rich.table import Table
from rich.text import Text

from trainer_tune.explain.matrix import varying_flags
from trainer_tune.measure.figures import describe_memory_source
from trainer_tune.config.flags import FlagSpec, format_flag
from trainer_tune.decide.verdict import GO, Decision
from trainer_tune.explain.report import Report
from trainer_tune.evidence.estimate import SettingEstimate
from trainer_tune.measure.record import WindowRecord
from trainer_tune.decide.race import Drop
from trainer_tune.sinks.matrix import matrix_line
from trainer_tune.sinks.rows import table_rows
from trainer_tune.platform.units import count, format_bytes, format_ms


def _number(value: Optional[float], spec: str) -> str:
    return "n/a" if value is None else format(value, spec)


def _setting_text(result: SettingEstimate, flags: Sequence[FlagSpec], *, serving: bool = False) -> str:
    """`2x1 static=true bucket_mb=25.0`: the setting with the short name of each flag that tells rows apart, so
    every word fits a narrow column (result.label spells flags out in full, too wide beside 12 other columns).
    Serving: the batch per replica alone (`4 workers=2`): there is no accumulation to name."""
    batch = str(result.micro_batch_size) if serving else f"{result.micro_batch_size}x{result.grad_accum}"
    return " ".join([batch,
                     *(f"{spec.short_name}={format_flag(getattr(result.flags, spec.field_name))}" for spec in flags)])


def _ci_percent(result: SettingEstimate) -> str:
    """The 95% interval as +-x% of the decision's rate (rounded outwards to the wider side), to keep the table
    narrow."""
    rate = result.throughput_per_s
    if not result.throughput_ci95 or not rate:
        return "n/a"
    low, high = result.throughput_ci95
    return f"+-{max(rate - low, high - rate) / rate:.1%}"


class ConsoleSink:
    def __init__(self, *, enabled: bool, console: Optional[Console] = None) -> None:
        self.enabled = enabled
        if console is None:
            # Not a terminal (a pipe, a SLURM log): rich's width is COLUMNS when set, else 80; the table's layout
            # follows whichever width it gets (_tables).
            console = Console(highlight=False)
        self.console = console
        self._progress: Optional[Progress] = None
        self._trials_task = None
        self._steps_task = None

    def sweep_started(self, *, num_settings: int, num_windows_done: int, output_dir: str) -> None:
        if not self.enabled:
            return
        done = f", {count(num_windows_done, 'window')} already in the journal" if num_windows_done else ""
        self.console.print(f"trainer_tune: {count(num_settings, 'setting')}, measured in rounds{done}; results in {output_dir}")
        self._progress = Progress(TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(),
                                  TimeElapsedColumn(), console=self.console, transient=True)
        self._progress.start()
        self._trials_task = self._progress.add_task("round 1", total=1)
        self._steps_task = self._progress.add_task("steps", total=1)

    def note(self, line: str) -> None:
        """One line a reader should see before the rounds (a setting not built, and why)."""
        if self.enabled:
            self.console.print(line)

    def round_started(self, *, round_index: int, num_windows: int) -> None:
        if self._progress is not None:
            self._progress.reset(self._trials_task, total=num_windows,
                                 description=f"round {round_index + 1}: windows")

    def trial_started(self, *, label: str, total_steps: int) -> None:
        if self._progress is not None:
            self._progress.reset(self._steps_task, total=total_steps, description=f"steps of {label}")

    def step_done(self) -> None:
        if self._progress is not None:
            self._progress.advance(self._steps_task)

    def window_finished(self, result: WindowRecord, *, round_index: int) -> None:
        if not self.enabled:
            return
        if result.ok and result.latency is not None:
            detail = (f"{_number(result.throughput_per_s, ',.0f')} {result.throughput_unit}/s, batch latency p50 "
                      f"{format_ms(result.latency.p50_ms)} ms, p99 {format_ms(result.latency.p99_ms)} ms")
        elif result.ok:
            detail = (f"{_number(result.throughput_per_s, ',.0f')} {result.throughput_unit}/s, median step "
                      f"{result.step_time_s.median:.4f} s")  # type: ignore[union-attr]
        else:
            detail = result.error or ""
        self.console.print(f"round {round_index + 1} {result.label}: {result.status} {detail}")
        if self._progress is not None:
            self._progress.advance(self._trials_task)

    def dropped(self, drop: Drop) -> None:
        if self.enabled:
            self.console.print(f"race: {drop.label} leaves after round {drop.after_round}: {drop.reason}")

    def sweep_finished(self) -> None:
        if self._progress is not None:
            self._progress.stop()
            self._progress = None

    def show(self, results: Sequence[SettingEstimate], report: Report, *,
             jobs: Optional[Mapping[str, str]] = None) -> None:
        """The table and the verdict; `jobs` (a multirun's, by trial key) adds the column of the job behind each row."""
        if not self.enabled:
            return
        rec = report.decision
        # Columns for figures no trial measured (GPU utilization or peak memory on a CPU, say) are left out, not
        # shown as n/a: the notes under the table say why, and the table stays narrow.
        has_memory = any(r.peak_memory_bytes is not None for r in results)
        has_gpu = any(r.gpu for r in results)
        has_energy = any(r.energy_j_per_sample is not None for r in results)
        serving = rec.serving
        has_mfu = any(r.mfu is not None and r.mfu.mfu is not None for r in results)
        has_tflops = any(r.mfu is not None for r in results)
        has_comm = any(r.comm for r in results)
        has_cpu = any(r.cpu is not None and r.cpu.process_pct_mean is not None for r in results)
        has_goodput = any(r.statistical_efficiency is not None for r in results)
        # samples/s always; the count's rate (tokens/s) only where batches carried one; the interval is the rate
        # the decision compares, named by its unit.
        rates = [("samples/s", "right")] + ([(f"{rec.count_unit}/s", "right")] if rec.count_unit else [])
        # Serving: each replica takes its own batch, so the batch per replica is the setting and a "global batch"
        # means nothing; the batch latencies replace the step times.
        times = [("p50 ms", "right"), ("p99 ms", "right"), ("max ms", "right")] if serving \
            else [("step p50 s", "right"), ("step p90 s", "right")]
        setting = "batch per replica" if serving else "setting"
        columns = [("#", "right"), *([("job", "right")] if jobs is not None else []), (setting, "left"),
                   *([] if serving else [("global batch", "right")]), ("status", "left"), *rates,
                   (f"95% CI of {rec.unit}/s (windows)", "right"), *times]
        columns += [("peak memory", "right")] if has_memory else []
        columns += [("GPU util %", "right")] if has_gpu else []
        columns += [("J/sample", "right")] if has_energy else []
        columns += [("MFU", "right")] if has_mfu else [("TFLOP/s", "right")] if has_tflops else []
        columns += [("exposed comm", "right")] if has_comm else []
        columns += [("CPU %", "right")] if has_cpu else []
        # Goodput only (the efficiency behind it is in report.md): one more column keeps the table within 150.
        columns += [(f"goodput {rec.unit}/s", "right")] if has_goodput else []
        columns += [("vs baseline", "right")]
        flags = varying_flags(results)
        rows = []
        for row in table_rows(results, jobs=jobs):
            r = row.result
            marks = (" (baseline)" if r.is_baseline else "") + \
                (" *" if rec.chosen is not None and r.trial_key == rec.chosen.trial_key else "") + \
                (" [red](over budget)[/red]" if r.trial_key in rec.over_budget else "")
            speedup = rec.speedup_by_key.get(r.trial_key)
            gpu, mfu, cpu = r.gpu, r.mfu, r.cpu
            latency = r.latency
            cells = [str(row.number), *([row.job] if row.job is not None else []),
                     _setting_text(r, flags, serving=serving) + marks,
                     *([] if serving else [str(r.global_batch_size)]),
                     r.status if r.ok else f"[red]{r.status}[/red]",
                     _number(r.samples_per_s, ",.0f"),
                     *([_number(r.tokens_per_s, ",.0f")] if rec.count_unit else []),
                     f"{_ci_percent(r)} ({r.num_windows})"]
            if serving:
                cells += [format_ms(latency.p50_ms if latency else None), format_ms(latency.p99_ms if latency else None),
                          format_ms(latency.max_ms if latency else None)]
            else:
                cells += [_number(r.step_time_s.median if r.step_time_s else None, ".4f"),
                          _number(r.step_time_s.p90 if r.step_time_s else None, ".4f")]
            cells += [format_bytes(r.peak_memory_bytes)] if has_memory else []
            if has_gpu:
                cells += [_number(gpu.util_mean_pct if gpu else None, ".0f")]
            if has_energy:
                cells += [_number(r.energy_j_per_sample, ".3g")]
            mfu_value = mfu.mfu if mfu else None
            if has_tflops:
                cells += [("n/a" if mfu_value is None else f"{mfu_value:.1%}")
                          if has_mfu else _number(mfu.achieved_tflops if mfu else None, ".3f")]
            if has_comm:
                comm = r.comm
                cells += ["n/a" if comm is None else f"{comm.exposed_comm_fraction:.0%}"
                          + (" (noise)" if comm.within_noise else "")]
            cells += [_number(cpu.process_pct_mean if cpu else None, ".0f")] if has_cpu else []
            if has_goodput:
                cells += [_number(r.goodput_per_s, ",.0f")]
            cells += ["n/a" if speedup is None else f"{(speedup - 1) * 100:+.1f}%"]
            rows.append(cells)
        for table in _tables(columns, rows, setting=setting, essential={
                "#", "job", setting, "status", f"{rec.unit}/s", f"95% CI of {rec.unit}/s (windows)", "vs baseline"},
                width=self.console.width):
            self.console.print(table)
        if flags:
            self.console.print("flags: " + ", ".join(f"{spec.short_name} = {spec.config_key}" for spec in flags))
        notes = {r.gpu_note for r in results if r.gpu is None and r.gpu_note and r.ok}
        notes |= {r.mfu.warning for r in results if r.mfu is not None and r.mfu.warning}
        for note in sorted(notes) + list(report.machine_notes):
            self.console.print(f"note: {note}")
        if report.explanations is not None and report.explanations.sms_mostly_idle:
            self.console.print(f"note: GPU busy but most SMs idle (NVML GPM) at "
                               f"{', '.join(report.explanations.sms_mostly_idle)}: see report.md")
        sources = sorted({r.peak_memory_source for r in results if r.peak_memory_source})
        if sources:
            self.console.print("peak memory: " + "; ".join(describe_memory_source(s) for s in sources))
        elif results and results[0].peak_memory_note:
            self.console.print(f"peak memory n/a: {results[0].peak_memory_note}")
        energy_notes = sorted({r.energy_note for r in results if r.ok and r.energy_j_per_sample is None
                               and r.energy_note})
        if energy_notes:
            self.console.print(f"energy per sample n/a: {'; '.join(energy_notes)}")
        if serving:
            self._serving_notes(results, rec)
        for payback in rec.compile_paybacks:
            self.console.print(f"torch.compile: {payback.describe()}")
        for reason in rec.reasons:
            self.console.print(f"  - {reason}")
        for fit in rec.memory_fits:
            self.console.print(f"memory fit {fit.verdict()}")
        if report.explanations is not None:
            self.console.print("decision matrix (each objective alone):")
            for objective in report.explanations.matrix:
                self.console.print(f"  - {matrix_line(objective, rec.unit)}")
        colour = "green" if rec.decision == GO else "yellow"
        # One line however long (goodput and the learning rate lengthen it): logs and CI greps find it whole.
        self.console.print(f"[bold {colour}]{rec.verdict}[/bold {colour}]", soft_wrap=True)
        if rec.continue_overrides:
            self.console.print(f"continue this sweep: the same command with the same hydra.run.dir and "
                               f"{' '.join(rec.continue_overrides)} (finished windows are kept)", soft_wrap=True)

    def _serving_notes(self, results: Sequence[SettingEstimate], rec: Decision) -> None:
        """What the latency columns are, how many batches stand behind each p99, and the budget."""
        batches = [r.latency.num_batches for r in results if r.latency is not None]
        if batches:
            few = " (under 100: the p99 interpolates towards the slowest batch)" if min(batches) < 100 else ""
            spread = str(min(batches)) if min(batches) == max(batches) else f"{min(batches)} to {max(batches)}"
            self.console.print(f"latency: per batch, of the slowest replica; {spread} batches per setting{few}")
        if rec.max_batch_latency_ms is not None:
            over = [r.label for r in results if r.trial_key in rec.over_budget]
            self.console.print(f"latency budget: p99 at most {rec.max_batch_latency_ms:g} ms (recommend.max_batch_latency_ms); "
                               + (f"over it, never chosen: {', '.join(over)}" if over else "every batch meets it"))


def _column_widths(columns: Sequence[tuple[str, str]], rows: Sequence[Sequence[str]], *,
                   setting: str) -> list[int]:
    """Each column's width when nothing is cut: its widest cell, at least its header's longest word (headers wrap
    at spaces); the setting column wraps at spaces too, so its longest word is what it needs at least."""
    widths = []
    for position, (name, _justify) in enumerate(columns):
        lines = [Text.from_markup(row[position]).plain for row in rows]
        if name == setting:
            widths.append(max([len(word) for line in lines for word in line.split()] + [8]))
        else:
            widths.append(max([len(line) for line in lines] + [len(word) for word in name.split()]))
    return widths


def _table_width(widths: Sequence[int]) -> int:
    """A rich table's width: each column padded by one space each side, and one border between and around."""
    return sum(widths) + 3 * len(widths) + 1


def _table(columns: Sequence[tuple[str, str]], rows: Sequence[Sequence[str]], *, setting: str,
           title: str) -> Table:
    """The setting is what a reader matches rows by: it may wrap at a space, never shrink into an ellipsis. Rich
    narrows the widest columns first and then all of them alike, cutting figures and headers; so every other
    column is held to its widest cell (its header wraps at spaces) and the setting column gets what is left."""
    table = Table(title=title, title_justify="left")
    for (name, justify), width in zip(columns, _column_widths(columns, rows, setting=setting)):
        if name == setting:
            table.add_column(name, justify=justify, min_width=width)  # type: ignore[arg-type]
        else:
            table.add_column(name, justify=justify, max_width=width, min_width=width)  # type: ignore[arg-type]
    for cells in rows:
        table.add_row(*cells)
    return table


def _tables(columns: Sequence[tuple[str, str]], rows: Sequence[Sequence[str]], *, setting: str,
            essential: set[str], width: int, title: str = "trainer_tune trials") -> list[Any]:
    """What the console prints for the trials, at `width` columns, with every figure and setting whole: one table
    when it fits; else a table of what decides (setting, status, the decision's rate and interval, vs baseline)
    and a second of the details, each with the row's `#` and setting; else, when even that is too wide, one block
    of `name: value` lines per setting."""
    widths = _column_widths(columns, rows, setting=setting)
    if _table_width(widths) <= width:
        return [_table(columns, rows, setting=setting, title=title)]
    keep = [i for i, (name, _j) in enumerate(columns) if name in essential]
    rest = [i for i, (name, _j) in enumerate(columns) if name not in essential or name in ("#", "job", setting)]
    parts = [(keep, title), (rest, f"{title}: details")]
    if all(_table_width([widths[i] for i in part]) <= width for part, _title in parts):
        return [_table([columns[i] for i in part], [[row[i] for i in part] for row in rows], setting=setting,
                       title=title) for part, title in parts]
    blocks: list[Any] = [Text(title, style="italic")]
    for row in rows:
        head = " ".join(Text.from_markup(row[i]).plain for i, (name, _j) in enumerate(columns)
                        if name in ("#", setting))
        lines = [f"{head}"] + [f"  {name}: {Text.from_markup(row[i]).plain}" for i, (name, _j) in enumerate(columns)
                               if name not in ("#", setting)]
        blocks.append(Text("\n".join(lines)))
    return blocks
