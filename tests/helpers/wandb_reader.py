"""Read back what a wandb run wrote to its offline transaction log (``run-<id>.wandb``).

wandb 0.31 ships no reader for this file, and our tests must check what was really logged, not
what we meant to log. The layout (leveldb's log format with wandb's own file header):

- a 7-byte file header: ``b":W&B"``, the magic 0xBEE1 as a little-endian uint16, version byte 0;
- then 32 KiB blocks, counted from the start of the file (the header sits in the first block);
- each record: CRC32 (4 bytes, little-endian), payload length (uint16, little-endian), type byte
  (1 full, 2 first, 3 middle, 4 last fragment), payload. A record never crosses a block boundary;
  a long one is split into first/middle/last fragments. A block tail too short for a 7-byte header
  is zero padding;
- the CRC is plain ``zlib.crc32`` (IEEE, unmasked, seed 0) over the type byte followed by the
  payload (leveldb itself masks a CRC32C; wandb does neither);
- a reassembled payload is one ``wandb.proto.wandb_internal_pb2.Record``.

A file that ends part-way through a record (a run still writing, or killed) yields every complete
record and stops quietly. A CRC mismatch or a malformed header inside the data raises
``WandbFileError``: skipping would hand back a run with values silently missing.
"""

from __future__ import annotations

import json
import struct
import time
import zlib
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any

from google.protobuf.json_format import MessageToDict
from google.protobuf.message import DecodeError
from wandb.proto import wandb_internal_pb2 as pb

__all__ = [
    "WandbFileError",
    "WandbRunContents",
    "find_offline_run_files",
    "read_wandb_records",
    "summarize_finished_run",
    "summarize_wandb_run",
]

_FILE_IDENT = b":W&B"
_FILE_MAGIC = 0xBEE1
_FILE_VERSION = 0
_FILE_HEADER_LEN = 7
_BLOCK_LEN = 32 * 1024
_RECORD_HEADER = struct.Struct("<IHB")  # crc32, payload length, type
_FULL, _FIRST, _MIDDLE, _LAST = 1, 2, 3, 4

# wandb's own bookkeeping (run time, code-saving flags) in config and summary; not user data.
_INTERNAL_KEY = "_wandb"


class WandbFileError(ValueError):
    """The file is not a wandb transaction log, or its data is corrupt at the offset named."""


def _iter_payloads(stream: IO[bytes], *, path: Path) -> Iterator[bytes]:
    header = stream.read(_FILE_HEADER_LEN)
    if len(header) < _FILE_HEADER_LEN or header[:4] != _FILE_IDENT:
        raise WandbFileError(f"{path}: not a wandb transaction log (header {header!r})")
    magic, version = struct.unpack("<HB", header[4:])
    if (magic, version) != (_FILE_MAGIC, _FILE_VERSION):
        raise WandbFileError(f"{path}: unsupported log magic/version 0x{magic:04X}/{version}")

    block_offset = 0
    block = header + stream.read(_BLOCK_LEN - _FILE_HEADER_LEN)
    pos = _FILE_HEADER_LEN
    fragments: list[bytes] | None = None
    while True:
        if len(block) - pos < _RECORD_HEADER.size:
            if len(block) < _BLOCK_LEN:
                return  # end of file (a partial header here means the writer stopped mid-record)
            block_offset += _BLOCK_LEN
            block, pos = stream.read(_BLOCK_LEN), 0
            if not block:
                return
            continue
        offset = block_offset + pos
        crc, length, kind = _RECORD_HEADER.unpack_from(block, pos)
        start, end = pos + _RECORD_HEADER.size, pos + _RECORD_HEADER.size + length
        if end > len(block):
            if len(block) < _BLOCK_LEN:
                return  # the file ends inside this record's payload: truncated, not corrupt
            raise WandbFileError(f"{path}: record at byte {offset} runs {length} bytes past its block")
        payload = block[start:end]
        if zlib.crc32(payload, zlib.crc32(bytes((kind,)))) != crc:
            raise WandbFileError(f"{path}: CRC mismatch in record at byte {offset} (type {kind}, {length} bytes)")
        pos = end

        if kind == _FULL and fragments is None:
            yield payload
        elif kind == _FIRST and fragments is None:
            fragments = [payload]
        elif kind == _MIDDLE and fragments is not None:
            fragments.append(payload)
        elif kind == _LAST and fragments is not None:
            yield b"".join((*fragments, payload))
            fragments = None
        else:
            state = "inside" if fragments is not None else "outside"
            raise WandbFileError(f"{path}: record type {kind} at byte {offset} is invalid {state} a fragmented record")


def read_wandb_records(path: str | Path) -> Iterator[pb.Record]:
    """Yield each ``Record`` of a wandb transaction log in file order.

    Stops quietly where the file ends mid-record; raises ``WandbFileError`` on corruption (after
    yielding every record before it).
    """
    path = Path(path)
    with path.open("rb") as stream:
        for payload in _iter_payloads(stream, path=path):
            record = pb.Record()
            try:
                record.ParseFromString(payload)
            except DecodeError as exc:
                raise WandbFileError(f"{path}: a record with a valid CRC is not a wandb Record: {exc}") from exc
            yield record


def find_offline_run_files(wandb_dir: str | Path) -> list[Path]:
    """Transaction logs of offline runs, oldest first.

    ``wandb_dir`` is either the ``dir=`` given to ``wandb.init`` or the ``wandb/`` folder in it.
    """
    root = Path(wandb_dir)
    pattern = "offline-run-*/run-*.wandb"
    found = list(root.glob(pattern)) + list(root.glob(f"wandb/{pattern}"))
    # Folder names start with the run's start time (offline-run-YYYYmmdd_HHMMSS-<id>).
    return sorted(set(found), key=lambda p: p.parent.name)


@dataclass(frozen=True)
class WandbRunContents:
    """What one run's transaction log says was logged.

    History and summary keys are ``nested_key`` parts joined with "/": a logged
    ``{"train": {"loss": 1}}`` and a logged ``{"train/loss": 1}`` both read as ``"train/loss"``.
    Values are JSON-decoded, so a float logged as ``1.0`` comes back as the int ``1`` unless the
    run also wrote typed history values. wandb's own ``_wandb`` bookkeeping is left out.
    """

    run_id: str | None
    project: str | None
    entity: str | None
    group: str | None
    job_type: str | None
    display_name: str | None
    tags: tuple[str, ...]
    config: dict[str, Any]
    """Config as logged, nested dicts intact (init config and later ``config.update`` calls)."""
    history: list[dict[str, Any]]
    """One dict per history row, in order, each with ``_step``, ``_runtime``, ``_timestamp``."""
    summary: dict[str, Any]
    """Last value of each summary key (a ``define_metric(summary=...)`` key holds e.g. ``{"max": v}``)."""
    defined_metrics: dict[str, dict[str, Any]]
    """``define_metric`` records by metric name, as protobuf JSON dicts."""
    files: tuple[str, ...]
    """Paths (relative to the run's ``files/``) that wandb recorded for upload, first-seen order."""
    artifacts: tuple[str, ...]
    """Logged artifacts as ``"type:name"``, e.g. ``"run_table:run-<id>-<key>"`` for a Table."""
    exit_code: int | None
    """From the exit record; None when the run did not finish (no ``run.finish()`` or killed)."""
    num_records: int


def _item_key(item: pb.HistoryItem | pb.SummaryItem | pb.ConfigItem) -> tuple[str, ...]:
    return tuple(item.nested_key) if item.nested_key else (item.key,)


def _history_value(item: pb.HistoryItem) -> Any:
    # Newer wandb can write a typed value next to the JSON one; it keeps 1.0 a float.
    which = item.WhichOneof("value")
    if which == "none":
        return None
    if which == "json":
        return json.loads(item.json)
    if which is not None:
        return getattr(item, which)
    return json.loads(item.value_json)


def _set_nested(target: dict[str, Any], key: tuple[str, ...], value: Any) -> None:
    for part in key[:-1]:
        child = target.get(part)
        if not isinstance(child, dict):
            child = target[part] = {}
        target = child
    target[key[-1]] = value


def _remove_nested(target: dict[str, Any], key: tuple[str, ...]) -> None:
    for part in key[:-1]:
        target = target.get(part, {})
        if not isinstance(target, dict):
            return
    target.pop(key[-1], None)


def _apply_config(config: dict[str, Any], record: pb.ConfigRecord) -> None:
    for item in record.update:
        key = _item_key(item)
        if key[0] != _INTERNAL_KEY:
            _set_nested(config, key, json.loads(item.value_json))
    for item in record.remove:
        _remove_nested(config, _item_key(item))


def _apply_summary(summary: dict[str, Any], record: pb.SummaryRecord) -> None:
    for item in record.update:
        key = _item_key(item)
        if key[0] != _INTERNAL_KEY:
            summary["/".join(key)] = json.loads(item.value_json)
    for item in record.remove:
        summary.pop("/".join(_item_key(item)), None)


def summarize_wandb_run(path: str | Path) -> WandbRunContents:
    """Read a transaction log and gather config, history rows, final summary and run metadata."""
    run: pb.RunRecord | None = None
    config: dict[str, Any] = {}
    history: list[dict[str, Any]] = []
    summary: dict[str, Any] = {}
    defined_metrics: dict[str, dict[str, Any]] = {}
    files: dict[str, None] = {}  # an ordered set
    artifacts: dict[str, None] = {}
    exit_code: int | None = None
    num_records = 0

    for record in read_wandb_records(path):
        num_records += 1
        kind = record.WhichOneof("record_type")
        if kind == "run":
            run = record.run
            _apply_config(config, record.run.config)
            _apply_summary(summary, record.run.summary)
        elif kind == "config":
            _apply_config(config, record.config)
        elif kind == "history":
            history.append({"/".join(_item_key(item)): _history_value(item) for item in record.history.item})
        elif kind == "summary":
            _apply_summary(summary, record.summary)
        elif kind == "metric" and record.metric.name:
            defined_metrics[record.metric.name] = MessageToDict(record.metric)
        elif kind == "files":
            files.update((item.path, None) for item in record.files.files)
        elif kind == "artifact":
            artifacts[f"{record.artifact.type}:{record.artifact.name}"] = None
        elif kind == "exit":
            exit_code = record.exit.exit_code

    run = run if run is not None else pb.RunRecord()  # no run record: every field reads as None
    return WandbRunContents(
        run_id=run.run_id or None,
        project=run.project or None,
        entity=run.entity or None,
        group=run.run_group or None,
        job_type=run.job_type or None,
        display_name=run.display_name or None,
        tags=tuple(run.tags),
        config=config,
        history=history,
        summary=summary,
        defined_metrics=defined_metrics,
        files=tuple(files),
        artifacts=tuple(artifacts),
        exit_code=exit_code,
        num_records=num_records,
    )


def summarize_finished_run(path: str | Path, *, timeout_s: float = 30.0) -> WandbRunContents:
    """`summarize_wandb_run` once the log holds the run's exit record.

    `run.finish()` can return before wandb's service process has written the log (seen on the first run of a
    process: a 7-byte file, the rest a moment later); a reader in the same process waits for it here.
    """
    deadline_s = time.monotonic() + timeout_s
    while True:
        contents = summarize_wandb_run(path)
        if contents.exit_code is not None or time.monotonic() > deadline_s:
            return contents
        time.sleep(0.1)
