"""The Python half of benchmarks/gpu_check.sh: probes that need no sweep, and the summary of every step.

    python benchmarks/gpu_check.py device --work DIR          # CUDA or exit 3 with one line; NVML and GPM probe
    python benchmarks/gpu_check.py fraction --work DIR --cap-gib 6   # train.max_memory_fraction for a cap
    python benchmarks/gpu_check.py nccl --work DIR            # a world-size-1 nccl group through DistSession
    python benchmarks/gpu_check.py summary --work DIR --dest DIR     # summary.md and summary.json

gpu_check.sh runs the steps and records each as a line of WORK/steps.tsv (name, exit code, wall s, limit s);
a sweep step writes its results to WORK/runs/NAME, the plain_loop step (benchmarks/plain_loop.py) its JSON to
WORK/runs/plain_loop/plain_loop.json. The summary reads those files and nothing else; it never measures. A
figure a record lacks (an older journal, a path that did not run) is "n/a", never an error: only the check that
needs it fails.
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import sys
import time
from pathlib import Path
from typing import Any, Callable, Iterable, Optional

EXIT_NO_CUDA = 3
"""gpu_check.sh's exit code when torch sees no CUDA device (distinct from a failed check, 1)."""
GIB = 1024 ** 3
PASS, FAIL, NA = "pass", "fail", "n/a"
JOURNAL_HEADER_KEY = "journal_header"
"""A journal's first line (trainer_tune/run/journal.py's header): what the journal is of, not a window."""
NOT_WINDOWS = {JOURNAL_HEADER_KEY, "memory_prediction", "serving_service", "serving_load"}
"""The keys of the journal's lines that are not windows (run/journal.py reads each kind)."""
PLAIN_LOOP_STEP, PLAIN_LOOP_JSON, PLAIN_LOOP_OF = "plain_loop", "plain_loop.json", "gpt_125m_bf16"
"""The plain_loop step, where it writes (WORK/runs/plain_loop/), and the sweep step whose setting it repeats."""
MIN_PLAIN_RATIO = 0.95
"""trainer_tune's tokens/s over the plain loop's at the same setting: at least this, or the window measures slower
than a user's own loop would run."""


# ----------------------------------------------------------------------------------------------- probes

def probe_device(work: Path) -> int:
    """WORK/device.json: the device, torch, NVML and a GPM reading of our own (so a run's GPM figures can be
    compared with one taken outside trainer_tune). Without CUDA: one line on stderr, exit 3."""
    import torch

    if not torch.cuda.is_available():
        print(f"gpu_check: no CUDA device: torch {torch.__version__} sees none (torch.cuda.is_available() is "
              f"False); run it on a machine with an NVIDIA GPU", file=sys.stderr)
        return EXIT_NO_CUDA
    props = torch.cuda.get_device_properties(0)
    info: dict[str, Any] = {
        "ok": True, "name": torch.cuda.get_device_name(0), "total_memory_bytes": props.total_memory,
        "multiprocessors": props.multi_processor_count, "capability": f"{props.major}.{props.minor}",
        "torch": torch.__version__, "cuda": torch.version.cuda, "nccl": _nccl_version(torch),
        "device_count": torch.cuda.device_count(), "python": sys.version.split()[0],
        "started_at": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
    }
    info.update(_nvml_probe(torch))
    (work / "device.json").write_text(json.dumps(info, indent=1))
    print(f"gpu_check: {info['name']}, {props.total_memory / GIB:.0f} GiB, torch {torch.__version__}, "
          f"NVML {info.get('nvml_note') or 'ok'}, GPM {info.get('gpm_note') or 'ok'}", file=sys.stderr)
    return 0


def _nccl_version(torch: Any) -> Optional[str]:
    try:
        version = torch.cuda.nccl.version()
    except Exception as exc:  # noqa: BLE001 - a build without nccl says so in the summary
        return f"unavailable: {exc}"
    return ".".join(str(v) for v in version) if isinstance(version, tuple) else str(version)


def _nvml_probe(torch: Any) -> dict[str, Any]:
    """Driver, utilization and GPM support straight from nvidia-ml-py; with GPM, SM activity and tensor activity
    over 0.5 s of bf16 matrix products (busy SMs, so the figures must be far from 0)."""
    out: dict[str, Any] = {}
    try:
        import pynvml
        pynvml.nvmlInit()
    except Exception as exc:  # noqa: BLE001 - ImportError or NVMLError: either is the figure's reason
        return {"nvml_note": f"NVML unavailable: {exc}"}
    try:
        handle = pynvml.nvmlDeviceGetHandleByIndex(_nvml_index(pynvml))
        out["driver"] = _text(pynvml.nvmlSystemGetDriverVersion())
        out["nvml_name"] = _text(pynvml.nvmlDeviceGetName(handle))
        out["nvml_util_pct"] = pynvml.nvmlDeviceGetUtilizationRates(handle).gpu
        try:
            supported = bool(pynvml.nvmlGpmQueryDeviceSupport(handle).isSupportedDevice)
        except (pynvml.NVMLError, AttributeError) as exc:
            out["gpm_supported"], out["gpm_note"] = False, f"GPM support query failed: {exc}"
            return out
        out["gpm_supported"] = supported
        if not supported:
            out["gpm_note"] = "the device does not support GPM (Hopper and newer do)"
            return out
        out.update(_gpm_reading(pynvml, handle, torch))
    except pynvml.NVMLError as exc:
        out["nvml_note"] = f"NVML call failed: {exc}"
    finally:
        pynvml.nvmlShutdown()
    return out


def _nvml_index(pynvml: Any) -> int:
    """NVML's index of torch's cuda:0, matched by UUID (CUDA_VISIBLE_DEVICES may renumber devices)."""
    import torch
    uuid = str(getattr(torch.cuda.get_device_properties(0), "uuid", "") or "")
    for index in range(pynvml.nvmlDeviceGetCount()):
        handle = pynvml.nvmlDeviceGetHandleByIndex(index)
        if uuid and uuid in _text(pynvml.nvmlDeviceGetUUID(handle)):
            return index
    return 0


def _gpm_reading(pynvml: Any, handle: Any, torch: Any) -> dict[str, Any]:
    metric_ids = {"gpm_sm_util_pct": pynvml.NVML_GPM_METRIC_SM_UTIL,
                  "gpm_sm_occupancy_pct": pynvml.NVML_GPM_METRIC_SM_OCCUPANCY,
                  "gpm_tensor_util_pct": pynvml.NVML_GPM_METRIC_ANY_TENSOR_UTIL,
                  "gpm_dram_bw_util_pct": pynvml.NVML_GPM_METRIC_DRAM_BW_UTIL}
    first, second = pynvml.nvmlGpmSampleAlloc(), pynvml.nvmlGpmSampleAlloc()
    try:
        a = torch.randn(8192, 8192, device="cuda", dtype=torch.bfloat16)
        torch.cuda.synchronize()
        pynvml.nvmlGpmSampleGet(handle, first)
        end_s = time.perf_counter() + 0.5
        while time.perf_counter() < end_s:
            for _ in range(4):
                a @ a
            torch.cuda.synchronize()
        pynvml.nvmlGpmSampleGet(handle, second)
        request = pynvml.c_nvmlGpmMetricsGet_t()
        request.version = pynvml.NVML_GPM_METRICS_GET_VERSION
        request.numMetrics = len(metric_ids)
        request.sample1, request.sample2 = first, second
        for slot, metric_id in enumerate(metric_ids.values()):
            request.metrics[slot].metricId = metric_id
        pynvml.nvmlGpmMetricsGet(request)
        return {name: round(request.metrics[slot].value, 1) for slot, name in enumerate(metric_ids)}
    finally:
        pynvml.nvmlGpmSampleFree(first)
        pynvml.nvmlGpmSampleFree(second)


def _text(value: Any) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)


def memory_fraction(work: Path, cap_gib: float) -> float:
    """train.max_memory_fraction that caps the allocator at `cap_gib` on this device (H100 and H200 differ)."""
    total_bytes = json.loads((work / "device.json").read_text())["total_memory_bytes"]
    return round(min(cap_gib * GIB / total_bytes, 1.0), 4)


def probe_nccl(work: Path) -> int:
    """One GPU cannot hold two nccl ranks (nccl refuses a duplicate device), so this checks what one can: a
    world-size-1 nccl group with the device bound, trainer_tune's DistSession collectives on it (the nccl
    branches put their tensors on the GPU), and one DDP step whose gradients must equal a plain step's."""
    import torch
    import torch.distributed as dist
    from torch.nn.parallel import DistributedDataParallel

    from trainer_tune.platform.distributed import DistSession, RankEnv

    device = torch.device("cuda", 0)
    result: dict[str, Any] = {"ok": False}
    store = dist.HashStore()
    try:
        torch.cuda.set_device(device)
        dist.init_process_group("nccl", store=store, rank=0, world_size=1, device_id=device,
                                timeout=datetime.timedelta(seconds=60))
        env = RankEnv(rank=0, local_rank=0, world_size=1, local_world_size=1, node_rank=0,
                      hostname=os.uname().nodename, under_torchrun=False, restart_count=0)
        session = DistSession(rank_env=env, device=device, backend="nccl", store=store, timeout_s=60)
        result["max_over_ranks"] = session.max_over_ranks([1.5, -2.0])
        result["sum_over_ranks"] = session.sum_over_ranks([3, 4])
        result["broadcast"] = session.broadcast_from_rank0({"k": "v"})
        session.barrier()
        torch.manual_seed(0)
        model = torch.nn.Sequential(torch.nn.Linear(64, 64), torch.nn.GELU(), torch.nn.Linear(64, 1)).to(device)
        twin = torch.nn.Sequential(torch.nn.Linear(64, 64), torch.nn.GELU(), torch.nn.Linear(64, 1)).to(device)
        twin.load_state_dict(model.state_dict())
        ddp = DistributedDataParallel(model, device_ids=[0])
        x = torch.randn(32, 64, device=device)
        ddp(x).square().mean().backward()
        twin(x).square().mean().backward()
        diff = max((p.grad - q.grad).abs().max().item() for p, q in zip(model.parameters(), twin.parameters()))
        result["ddp_max_grad_diff"] = diff
        result["ok"] = (result["max_over_ranks"] == [1.5, -2.0] and result["sum_over_ranks"] == [3, 4]
                        and result["broadcast"] == {"k": "v"} and diff <= 1e-6)
    except Exception as exc:  # noqa: BLE001 - the failure is the finding; the summary shows it
        result["error"] = f"{type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''}"
    finally:
        if dist.is_initialized():
            dist.destroy_process_group()
    (work / "nccl.json").write_text(json.dumps(result, indent=1))
    print(f"gpu_check: nccl world-size-1 {'ok' if result['ok'] else 'FAILED'}: {result}", file=sys.stderr)
    return 0 if result["ok"] else 1


# ---------------------------------------------------------------------------------------------- summary

def _get(record: Optional[dict], *path: str) -> Any:
    """record[path[0]][path[1]]..., or None where any level is missing."""
    value: Any = record
    for key in path:
        if not isinstance(value, dict):
            return None
        value = value.get(key)
    return value


def sm_activity_pct(gpu: Optional[dict]) -> Optional[float]:
    return _get(gpu, "sm_active_mean_pct")


def compile_s(record: Optional[dict]) -> Optional[float]:
    return _get(record, "compile_s")


def read_run(run_dir: Path) -> dict[str, Any]:
    """A step's windows (trials.jsonl), settings (recommendation.json's, else the last window per label) and the
    recommendation's top-level figures; empty lists where the run wrote nothing."""
    windows: list[dict] = []
    journal = run_dir / "trials.jsonl"
    if journal.exists():
        for line in journal.read_text().splitlines():
            if line.strip():
                try:
                    record = json.loads(line)
                except json.JSONDecodeError:
                    continue  # a line cut short by a timeout
                # Windows only: not the header, nor the memory predictions or a serving-under-load sweep's lines.
                if isinstance(record, dict) and not set(record) & NOT_WINDOWS:
                    windows.append(record)
    recommendation: dict[str, Any] = {}
    if (run_dir / "recommendation.json").exists():
        try:
            recommendation = json.loads((run_dir / "recommendation.json").read_text())
        except json.JSONDecodeError:
            recommendation = {}
    settings = list(recommendation.get("settings") or [])
    if not settings:
        settings = list({w.get("label"): w for w in windows}.values())
    return {"windows": windows, "settings": settings, "recommendation": recommendation}


def setting_row(setting: dict[str, Any]) -> dict[str, Any]:
    """The figures of one setting, flat, as the summary prints them (None where not measured)."""
    gpu = setting.get("gpu") or {}
    peak = setting.get("peak_memory_bytes")
    error = setting.get("error")
    return {
        "label": setting.get("label"), "status": setting.get("status"),
        "precision": _get(setting, "flags", "precision"), "compile": _get(setting, "flags", "compile"),
        "device": setting.get("device"), "world_size": setting.get("world_size"),
        "tokens_per_s": setting.get("tokens_per_s"), "step_median_s": _get(setting, "step_time_s", "median"),
        "mfu_pct": None if _get(setting, "mfu", "mfu") is None else 100 * setting["mfu"]["mfu"],
        "peak_memory_gib": None if peak is None else peak / GIB, "peak_memory_source": setting.get("peak_memory_source"),
        "gpu_util_pct": gpu.get("util_mean_pct"), "sm_activity_pct": sm_activity_pct(gpu),
        "compile_s": compile_s(setting), "num_windows": setting.get("num_windows"),
        # A Markdown table cell cannot hold a bare '|'.
        "error": None if not error else str(error).splitlines()[0][:160].replace("|", "/"),
    }


Check = tuple[str, str, str]
"""(what, pass/fail/n/a, detail)."""


def _check(what: str, ok: bool, detail: str = "") -> Check:
    return (what, PASS if ok else FAIL, detail)


def _ok(rows: list[dict]) -> list[dict]:
    return [r for r in rows if r["status"] == "ok"]


def _fmt(value: Any, spec: str = ",.0f") -> str:
    return "n/a" if value is None else format(value, spec) if isinstance(value, (int, float)) else str(value)


def check_cuda_run(rows: list[dict], device: dict) -> list[Check]:
    """What every sweep on the GPU must show: the CUDA paths of the window and its telemetry."""
    ok = _ok(rows)
    checks = [_check("a setting finished ok", bool(ok), f"{len(ok)} of {len(rows)} ok")]
    if not ok:
        return checks
    checks.append(_check("ran on CUDA (CUDA event clock)", all(str(r["device"]).startswith("cuda") for r in ok),
                         ", ".join(sorted({str(r["device"]) for r in ok}))))
    checks.append(_check("allocator peak, source allocator_reserved",
                         all(r["peak_memory_source"] == "allocator_reserved" and r["peak_memory_gib"] for r in ok),
                         ", ".join(f"{r['label']} {_fmt(r['peak_memory_gib'], '.2f')} GiB" for r in ok)))
    checks.append(_check("MFU", all(r["mfu_pct"] is not None for r in ok),
                         ", ".join(f"{r['label']} {_fmt(r['mfu_pct'], '.1f')}%" for r in ok)))
    checks.append(_check("NVML utilization", all(r["gpu_util_pct"] is not None for r in ok),
                         ", ".join(f"{r['label']} {_fmt(r['gpu_util_pct'], '.0f')}%" for r in ok)))
    sm = [r["sm_activity_pct"] for r in ok]
    if device.get("gpm_supported"):
        checks.append(_check("GPM SM activity", all(v is not None for v in sm),
                             ", ".join(f"{r['label']} {_fmt(r['sm_activity_pct'], '.0f')}%" for r in ok)))
    else:
        checks.append(("GPM SM activity", NA, device.get("gpm_note") or device.get("nvml_note") or "no GPM"))
    return checks


def _check_oom_power(rows: list[dict], windows: list[dict]) -> list[Check]:
    ooms = [w for w in windows if w.get("status") == "oom"]
    real = [w for w in ooms if "injected" not in str(w.get("error"))]
    fits = [r for r in _ok(rows)]
    largest = max((w.get("micro_batch_size") or 0 for w in windows if w.get("status") == "ok"), default=None)
    return [_check("a real OOM recorded as oom", bool(real),
                   f"oom at micro-batch {sorted({w.get('micro_batch_size') for w in real})}; largest ok {largest}; "
                   f"error: {str(real[0].get('error')).splitlines()[0][:120] if real else 'none'}"),
            _check("the sweep went on past it", bool(fits), f"{len(fits)} setting(s) ok")]


def _check_fault_oom(rows: list[dict], windows: list[dict]) -> list[Check]:
    struck = [w for w in windows if w.get("index") == 1]
    others = [w for w in windows if w.get("index") != 1]
    return [_check("fault=oom: trial 1 recorded as oom", bool(struck) and all(w.get("status") == "oom" for w in struck),
                   "; ".join(f"{w.get('label')} {w.get('status')}: {str(w.get('error')).splitlines()[0][:100]}"
                             for w in struck) or "trial 1 not in the journal"),
            _check("the other trials ok", bool(others) and all(w.get("status") == "ok" for w in others),
                   ", ".join(f"{w.get('label')} {w.get('status')}" for w in others))]


def _check_axis(rows: list[dict], key: str, wanted: Iterable[Any]) -> list[Check]:
    checks = []
    for value in wanted:
        mine = [r for r in rows if r[key] == value]
        checks.append(_check(f"{key}={value} ok", bool(mine) and all(r["status"] == "ok" for r in mine),
                             ", ".join(f"{r['label']} {r['status']} {_fmt(r['tokens_per_s'])} tokens/s"
                                       + (f" ({r['error']})" if r["error"] else "") for r in mine) or "not run"))
    return checks


def _check_compile(rows: list[dict], recommendation: dict) -> list[Check]:
    checks = _check_axis(rows, "compile", [False, True])
    compiled = [r for r in rows if r["compile"] is True and r["status"] == "ok"]
    checks.append(_check("compile_s recorded", bool(compiled) and all(r["compile_s"] is not None for r in compiled),
                         ", ".join(f"{r['label']} {_fmt(r['compile_s'], '.1f')} s" for r in compiled) or "none"))
    payback = _get(recommendation, "compile_payback") or None
    checks.append(("payback in recommendation.json", PASS if payback is not None else FAIL,
                   json.dumps(payback)[:200] if payback is not None else "no compile_payback entry"))
    return checks


def _check_ddp(rows: list[dict], windows: list[dict]) -> list[Check]:
    ok = _ok(rows)
    return [_check("2 ranks on one GPU over gloo", bool(ok) and all(r["world_size"] == 2 for r in ok),
                   ", ".join(f"{r['label']} {r['status']} ws={r['world_size']}" for r in rows)),
            _check("exposed communication measured", any(w.get("comm") for w in windows),
                   "comm split present" if any(w.get("comm") for w in windows) else "no window has comm figures")]


def check_plain_loop(work: Path) -> tuple[list[Check], dict[str, Any]]:
    """The plain loop (benchmarks/plain_loop.py) against the GPT sweep's setting of the same micro-batch size,
    accumulation and precision: trainer_tune's tokens/s over the loop's (at least MIN_PLAIN_RATIO), the same model
    (parameter counts agree), and no synchronisation inside the timed steps on either side: the loop's count from
    torch's sync debug mode, and `syncs_in_window` of every window of the GPT sweep that finished."""
    plain = _load(work / "runs" / PLAIN_LOOP_STEP / PLAIN_LOOP_JSON)
    run = read_run(work / "runs" / PLAIN_LOOP_OF)
    figures: dict[str, Any] = {k: plain.get(k) for k in (
        "tokens_per_s", "micro_batch_size", "grad_accum", "precision", "seq_len", "steps", "repeats",
        "num_parameters", "syncs_in_loop", "sync_samples", "device")}
    figures["min_ratio"] = MIN_PLAIN_RATIO
    checks: list[Check] = []
    wanted = (plain.get("micro_batch_size"), plain.get("grad_accum"), plain.get("precision"))
    match = next((s for s in run["settings"] if (s.get("micro_batch_size"), s.get("grad_accum"),
                                                  _get(s, "flags", "precision")) == wanted), None)
    ours, theirs = (match or {}).get("tokens_per_s"), plain.get("tokens_per_s")
    figures.update(setting=(match or {}).get("label"), trainer_tune_tokens_per_s=ours,
                   trainer_tune_num_parameters=(match or {}).get("num_parameters"))
    if not plain:
        checks.append(_check("plain loop vs trainer_tune", False, f"no {PLAIN_LOOP_JSON}: the loop did not finish"))
    elif match is None:
        checks.append(_check("plain loop vs trainer_tune", False,
                             f"runs/{PLAIN_LOOP_OF} has no setting {wanted[0]}x{wanted[1]} {wanted[2]} "
                             f"(settings: {', '.join(str(s.get('label')) for s in run['settings']) or 'none'})"))
    elif match.get("status") != "ok" or not ours or not theirs:
        checks.append(_check("plain loop vs trainer_tune", False,
                             f"{match.get('label')}: trainer_tune {match.get('status')} {_fmt(ours)} tokens/s, "
                             f"plain loop {_fmt(theirs)} tokens/s"))
    elif plain.get("num_parameters") != match.get("num_parameters"):
        checks.append(_check("plain loop vs trainer_tune", False,
                             f"not the same model: the plain loop has {_fmt(plain.get('num_parameters'))} parameters, "
                             f"{match.get('label')} {_fmt(match.get('num_parameters'))} (shape arguments in "
                             f"gpu_check.sh against configs/model/gpt_125m.yaml)"))
    else:
        ratio = ours / theirs
        figures["ratio"] = ratio
        note = "; trainer_tune reads more than 5% faster than the loop: check what it counts" if ratio > 1.05 else ""
        checks.append(_check("plain loop vs trainer_tune", ratio >= MIN_PLAIN_RATIO,
                             f"{match.get('label')} {wanted[2]}: trainer_tune {_fmt(ours)} tokens/s, plain loop "
                             f"{_fmt(theirs)} tokens/s, ratio {ratio:.3f} (pass at >= {MIN_PLAIN_RATIO}){note}"))
    syncs = plain.get("syncs_in_loop")
    if not plain:
        checks.append(_check("plain loop: syncs_in_loop 0", False, f"no {PLAIN_LOOP_JSON}"))
    else:
        checks.append(_check("plain loop: syncs_in_loop 0", syncs == 0,
                             f"{_fmt(syncs)} synchronisation(s) in {_fmt(plain.get('steps'))} x "
                             f"{_fmt(plain.get('repeats'))} timed steps (torch.cuda.set_sync_debug_mode)"
                             + ("" if syncs is not None else ": not counted (a dry run, or an older plain_loop.py)")
                             + (f"; first: {plain['sync_samples'][0]}" if plain.get("sync_samples") else "")))
    checks.append(_check_syncs_in_window(run["windows"], figures))
    return checks, figures


def _check_syncs_in_window(windows: list[dict], figures: dict[str, Any]) -> Check:
    """Every window of the GPT sweep that finished has syncs_in_window 0; a window without the field fails (its
    journal is from before the count, or the record lost it). Windows that did not finish (oom, error) measured
    no steps, record None, and are only counted in the detail."""
    what = f"trainer_tune: syncs_in_window 0 in every window of {PLAIN_LOOP_OF}"
    finished = [w for w in windows if w.get("status") == "ok"]
    missing = [w for w in finished if w.get("syncs_in_window") is None]
    synced = [w for w in finished if w.get("syncs_in_window") not in (None, 0)]
    figures.update(windows_judged=len(finished), windows_not_finished=len(windows) - len(finished),
                   windows_without_syncs_in_window=len(missing),
                   windows_with_syncs={f"{w.get('label')} {w.get('round_id')}": w["syncs_in_window"] for w in synced})
    if not finished:
        return _check(what, False, f"no finished window in runs/{PLAIN_LOOP_OF} ({len(windows)} line(s))")
    detail = f"{len(finished)} finished window(s)"
    if len(windows) > len(finished):
        detail += f" ({len(windows) - len(finished)} that did not finish not judged)"
    if missing:
        detail += (f"; {len(missing)} without syncs_in_window (a journal from before the count?): "
                   + ", ".join(f"{w.get('label')} {w.get('round_id')}" for w in missing[:8]))
    if synced:
        detail += "; synchronised inside the window: " + ", ".join(
            f"{w.get('label')} {w.get('round_id')} {w['syncs_in_window']}" for w in synced[:8])
    if not missing and not synced:
        detail += ", all 0"
    return _check(what, not missing and not synced, detail)


SWEEP_CHECKS: dict[str, Callable[[list[dict], list[dict], dict, dict], list[Check]]] = {
    "gpt_125m_bf16": lambda rows, windows, rec, dev: check_cuda_run(rows, dev),
    "nsa_125m": lambda rows, windows, rec, dev: check_cuda_run(rows, dev),
    "ddp_gloo_cuda": lambda rows, windows, rec, dev: _check_ddp(rows, windows),
    "oom_power": lambda rows, windows, rec, dev: _check_oom_power(rows, windows),
    "fault_oom": lambda rows, windows, rec, dev: _check_fault_oom(rows, windows),
    "precision": lambda rows, windows, rec, dev: _check_axis(rows, "precision", ["fp32", "bf16", "fp16"]),
    "compile": lambda rows, windows, rec, dev: _check_compile(rows, rec),
}
"""Per sweep step of gpu_check.sh (its results in WORK/runs/NAME): what it must show."""


def read_steps(work: Path) -> list[dict[str, Any]]:
    steps = []
    path = work / "steps.tsv"
    for line in (path.read_text().splitlines() if path.exists() else []):
        parts = line.split("\t")
        if len(parts) >= 4:
            steps.append({"name": parts[0], "rc": parts[1], "wall_s": int(parts[2]), "limit_s": int(parts[3]),
                          "command": parts[4] if len(parts) > 4 else ""})
    return steps


def summarize_step(step: dict[str, Any], work: Path, device: dict) -> dict[str, Any]:
    name, rc = step["name"], step["rc"]
    checks: list[Check] = []
    rows: list[dict] = []
    extra: dict[str, Any] = {}
    if rc == "skipped":
        checks.append(("ran", NA, "skipped: the time budget was spent (GPU_CHECK_BUDGET_S)"))
    else:
        code = int(rc)
        timed_out = code in (124, 137)
        checks.append(_check("exit code 0", code == 0, f"timed out after {step['limit_s']} s" if timed_out
                             else f"exit {code}"))
        run_dir = work / "runs" / name
        if name in SWEEP_CHECKS:
            run = read_run(run_dir)
            rows = [setting_row(s) for s in run["settings"]]
            checks.extend(SWEEP_CHECKS[name](rows, run["windows"], run["recommendation"], device))
            rec = run["recommendation"]
            extra = {k: rec.get(k) for k in ("decision", "verdict") if rec.get(k) is not None}
            for key in ("compile_payback", "memory_fits"):
                if rec.get(key):
                    extra[key] = rec[key]
        elif name == PLAIN_LOOP_STEP:
            plain_checks, extra["plain_loop"] = check_plain_loop(work)
            checks.extend(plain_checks)
        elif name == "nccl":
            nccl = _load(work / "nccl.json")
            checks.append(_check("world-size-1 nccl group: DistSession collectives, DDP step",
                                 bool(nccl.get("ok")), json.dumps(nccl)[:300]))
    status = FAIL if any(c[1] == FAIL for c in checks) else (NA if all(c[1] == NA for c in checks) else PASS)
    return {**step, "status": status, "checks": [list(c) for c in checks], "settings": rows, **extra}


def _load(path: Path) -> dict[str, Any]:
    try:
        return json.loads(path.read_text())
    except (OSError, json.JSONDecodeError):
        return {}


def render_markdown(summary: dict[str, Any]) -> str:
    device = summary["device"]
    lines = ["# gpu_check summary", "",
             f"{device.get('name', 'unknown device')}, {_fmt((device.get('total_memory_bytes') or 0) / GIB, '.0f')} GiB, "
             f"torch {device.get('torch')}, CUDA {device.get('cuda')}, nccl {device.get('nccl')}, driver "
             f"{device.get('driver', 'n/a')}; started {device.get('started_at')}; total {summary['wall_s']} s", ""]
    if device.get("gpm_supported"):
        lines.append(f"GPM outside trainer_tune (0.5 s of 8192^3 bf16 matrix products): SM activity "
                     f"{_fmt(device.get('gpm_sm_util_pct'), '.1f')}%, SM occupancy "
                     f"{_fmt(device.get('gpm_sm_occupancy_pct'), '.1f')}%, tensor activity "
                     f"{_fmt(device.get('gpm_tensor_util_pct'), '.1f')}%, DRAM bandwidth "
                     f"{_fmt(device.get('gpm_dram_bw_util_pct'), '.1f')}%")
    else:
        lines.append(f"GPM: {device.get('gpm_note') or device.get('nvml_note') or 'not probed'}")
    lines += ["", "| step | status | wall s (limit) |", "| --- | --- | --- |"]
    lines += [f"| {s['name']} | {s['status']} | {s['wall_s']} ({s['limit_s']}) |" for s in summary["steps"]]
    for step in summary["steps"]:
        lines += ["", f"## {step['name']}: {step['status']}", "", f"`{step['command']}`", ""]
        lines += [f"- {what}: **{status}** {detail}" for what, status, detail in step["checks"]]
        for key in ("decision", "verdict", "payback", "memory_fit", "predicted"):
            if step.get(key) is not None:
                lines.append(f"- {key}: {json.dumps(step[key])[:400]}")
        if step.get("plain_loop"):
            lines += ["", *_plain_loop_table(step["plain_loop"])]
        if step["settings"]:
            lines += ["", "| setting | status | precision | compile | tokens/s | step p50 s | MFU % | peak GiB (source) "
                      "| GPU util % | SM activity % | compile_s | error |",
                      "| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |"]
            for r in step["settings"]:
                lines.append(
                    f"| {r['label']} | {r['status']} | {r['precision']} | {r['compile']} | {_fmt(r['tokens_per_s'])} | "
                    f"{_fmt(r['step_median_s'], '.4f')} | {_fmt(r['mfu_pct'], '.1f')} | "
                    f"{_fmt(r['peak_memory_gib'], '.2f')} ({r['peak_memory_source'] or 'n/a'}) | "
                    f"{_fmt(r['gpu_util_pct'], '.0f')} | {_fmt(r['sm_activity_pct'], '.0f')} | "
                    f"{_fmt(r['compile_s'], '.1f')} | {r['error'] or ''} |")
    return "\n".join(lines) + "\n"


def _plain_loop_table(plain: dict[str, Any]) -> list[str]:
    """The plain_loop step's figures in summary.md: both sides at the one setting, and their ratio."""
    setting = (f"{_fmt(plain.get('micro_batch_size'))}x{_fmt(plain.get('grad_accum'))} {plain.get('precision')}, "
               f"seq {_fmt(plain.get('seq_len'))}")
    window_syncs = "n/a"
    if plain.get("windows_judged"):
        window_syncs = (f"{sum((plain.get('windows_with_syncs') or {}).values())} in the sweep's "
                        f"{plain['windows_judged']} finished windows")
        if plain.get("windows_without_syncs_in_window"):
            window_syncs += f" ({plain['windows_without_syncs_in_window']} without the count)"
    return ["| side | setting | parameters | tokens/s | syncs in the timed steps |",
            "| --- | --- | --- | --- | --- |",
            f"| plain loop ({_fmt(plain.get('steps'))} steps x {_fmt(plain.get('repeats'))}) | {setting} | "
            f"{_fmt(plain.get('num_parameters'))} | {_fmt(plain.get('tokens_per_s'))} | "
            f"{_fmt(plain.get('syncs_in_loop'))} |",
            f"| trainer_tune ({PLAIN_LOOP_OF} {plain.get('setting') or 'n/a'}) | {setting} | "
            f"{_fmt(plain.get('trainer_tune_num_parameters'))} | {_fmt(plain.get('trainer_tune_tokens_per_s'))} | "
            f"{window_syncs} |",
            "", f"ratio trainer_tune / plain loop: **{_fmt(plain.get('ratio'), '.3f')}** "
                f"(pass at >= {plain.get('min_ratio')})"]


def summarize(work: Path, dest: Path, wall_s: int) -> int:
    device = _load(work / "device.json")
    steps = [summarize_step(step, work, device) for step in read_steps(work)]
    summary = {"device": device, "wall_s": wall_s, "steps": steps,
               "passed": bool(steps) and all(s["status"] != FAIL for s in steps)}
    dest.mkdir(parents=True, exist_ok=True)
    (dest / "summary.json").write_text(json.dumps(summary, indent=1, default=str))
    (dest / "summary.md").write_text(render_markdown(summary))
    for step in steps:
        print(f"gpu_check: {step['name']}: {step['status']}", file=sys.stderr)
    return 0 if summary["passed"] else 1


def main(argv: Optional[list[str]] = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="command", required=True)
    for name in ("device", "nccl", "fraction", "summary"):
        p = sub.add_parser(name)
        p.add_argument("--work", type=Path, required=True)
        if name == "fraction":
            p.add_argument("--cap-gib", type=float, required=True)
        if name == "summary":
            p.add_argument("--dest", type=Path, required=True)
            p.add_argument("--wall-s", type=int, default=0)
    args = parser.parse_args(argv)
    if args.command == "device":
        return probe_device(args.work)
    if args.command == "nccl":
        return probe_nccl(args.work)
    if args.command == "fraction":
        print(memory_fraction(args.work, args.cap_gib))
        return 0
    return summarize(args.work, args.dest, args.wall_s)


if __name__ == "__main__":
    sys.exit(main())
