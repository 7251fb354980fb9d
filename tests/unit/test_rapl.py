"""CPU energy from the powercap (RAPL) counters: a fake sysfs tree with the kernel's layout."""

from __future__ import annotations

from pathlib import Path

import pytest

from trainer_tune.measure.rapl import RaplMeter


def _domain(root: Path, name: str, label: str, *, energy_uj: int, max_uj: int = 262_143_328_850) -> Path:
    domain = root / name
    domain.mkdir(parents=True)
    (domain / "name").write_text(f"{label}\n")
    (domain / "energy_uj").write_text(f"{energy_uj}\n")
    (domain / "max_energy_range_uj").write_text(f"{max_uj}\n")
    return domain


def test_packages_are_summed_sub_domains_skipped_and_a_wrap_is_corrected(tmp_path: Path) -> None:
    p0 = _domain(tmp_path, "intel-rapl:0", "package-0", energy_uj=1_000_000)
    p1 = _domain(tmp_path, "intel-rapl:1", "package-1", energy_uj=9_000_000, max_uj=10_000_000)
    core = _domain(tmp_path, "intel-rapl:0:0", "core", energy_uj=5)
    meter = RaplMeter(tmp_path)
    meter.start()
    (p0 / "energy_uj").write_text("3500000\n")  # +2.5 J
    (p1 / "energy_uj").write_text("500000\n")  # wrapped at 10 J: +1.5 J
    (core / "energy_uj").write_text("999999999\n")  # part of package-0: never added again
    reading = meter.stop()
    assert reading.energy_j == pytest.approx(4.0)
    assert reading.note is not None and "package-0, package-1" in reading.note and "every process" in reading.note


def test_no_interface_or_no_permission_is_unmeasured_with_the_reason_never_zero(tmp_path: Path) -> None:
    missing = RaplMeter(tmp_path / "absent")
    missing.start()
    reading = missing.stop()
    assert reading.energy_j is None and "does not exist" in str(reading.note)

    domain = _domain(tmp_path / "powercap", "intel-rapl:0", "package-0", energy_uj=10)
    meter = RaplMeter(tmp_path / "powercap")
    (domain / "energy_uj").unlink()  # a counter that cannot be read (root-only since Linux 5.10 reads the same)
    meter.start()
    reading = meter.stop()
    assert reading.energy_j is None and reading.note.startswith("CPU energy not measured: RAPL energy_uj")
