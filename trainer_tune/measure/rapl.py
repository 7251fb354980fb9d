"""CPU energy from the Linux powercap interface (RAPL): what a window's CPUs consumed, where it can be read.

Each package domain `/sys/class/powercap/intel-rapl:N` (Intel, and AMD since Linux 5.8) has a cumulative
counter `energy_uj` that wraps at `max_energy_range_uj`. A window's energy is the sum over packages of the
counter's advance, corrected for one wrap per package (a window is seconds long; a counter wraps after
minutes to hours). Sub-domains (core, uncore, dram: `intel-rapl:N:M`) are part of their package's figure and
are not added again.

What it measures, plainly: the whole socket, every process on it, not only the training or serving ranks; on
a busy machine it overstates the workload's share. Since Linux 5.10 `energy_uj` is readable by root only
(CVE-2020-8694), and virtual machines rarely expose it: then energy is *unmeasured*, with the reason, never 0.
One reading per node is enough (ranks on a node share its sockets): local rank 0 reads, the others do not.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path
from typing import Optional

POWERCAP_ROOT = Path("/sys/class/powercap")


@dataclass(frozen=True)
class _Package:
    name: str
    energy_file: Path
    max_range_uj: int


@dataclass(frozen=True)
class CpuEnergy:
    """A window's CPU package energy, or why there is none."""

    energy_j: Optional[float]
    note: Optional[str]
    """Why energy_j is None; or what it covers when measured."""


def _packages(root: Path) -> tuple[list[_Package], Optional[str]]:
    if not root.is_dir():
        return [], f"no powercap interface ({root} does not exist)"
    packages = []
    for domain in sorted(root.glob("intel-rapl:*")):
        if domain.name.count(":") != 1:
            continue  # a sub-domain: counted in its package
        try:
            max_range_uj = int((domain / "max_energy_range_uj").read_text())
            name = (domain / "name").read_text().strip()
        except (OSError, ValueError) as exc:
            return [], f"{domain} is not readable ({type(exc).__name__})"
        packages.append(_Package(name=name, energy_file=domain / "energy_uj", max_range_uj=max_range_uj))
    if not packages:
        return [], f"no RAPL package domain under {root}"
    return packages, None


class RaplMeter:
    """Reads every package counter at start() and stop(); one meter per window, on local rank 0."""

    def __init__(self, root: Path = POWERCAP_ROOT) -> None:
        self._packages, self._unavailable = _packages(root)
        self._start_uj: Optional[list[int]] = None

    def _read_uj(self) -> list[int]:
        return [int(p.energy_file.read_text()) for p in self._packages]

    def start(self) -> None:
        self._start_uj = None
        if self._unavailable is None:
            try:
                self._start_uj = self._read_uj()
            except (OSError, ValueError) as exc:
                self._unavailable = f"RAPL energy_uj is not readable ({_why(exc)})"

    def stop(self) -> CpuEnergy:
        if self._unavailable is not None or self._start_uj is None:
            return CpuEnergy(energy_j=None, note=f"CPU energy not measured: {self._unavailable or 'not started'}")
        try:
            end_uj = self._read_uj()
        except (OSError, ValueError) as exc:
            return CpuEnergy(energy_j=None, note=f"CPU energy not measured: RAPL energy_uj is not readable "
                                                 f"({_why(exc)})")
        total_uj = math.fsum(_advance_uj(a, b, p.max_range_uj)
                             for a, b, p in zip(self._start_uj, end_uj, self._packages))
        names = ", ".join(p.name for p in self._packages)
        return CpuEnergy(energy_j=total_uj / 1e6,
                         note=f"RAPL packages ({names}): whole sockets, every process on them")


def _advance_uj(start_uj: int, end_uj: int, max_range_uj: int) -> int:
    """The counter's advance from start to end, across at most one wrap."""
    return end_uj - start_uj if end_uj >= start_uj else end_uj + max_range_uj - start_uj


def _why(exc: BaseException) -> str:
    if isinstance(exc, PermissionError):
        return "permission denied: since Linux 5.10 only root may read it"
    return type(exc).__name__
