"""The README's quick start is what CI runs: two commands, the test one verbatim in .ci/run."""

from __future__ import annotations

import re

from conftest import REPO


def _quick_start_commands() -> list[str]:
    text = (REPO / "README.md").read_text()
    section = text.split("## Quick start", 1)[1].split("\n## ", 1)[0]
    return [block.strip() for block in re.findall(r"```bash\n(.*?)```", section, flags=re.S)]


def test_quick_start_has_exactly_two_commands() -> None:
    commands = _quick_start_commands()
    assert len(commands) == 2
    assert all("\n" not in c for c in commands)
    assert "torchrun --nproc_per_node=2 -m trainer_tune +sweep=batch" in commands[0]
    assert "pytest" in commands[1]


def test_ci_runs_the_readme_test_command() -> None:
    test_command = _quick_start_commands()[1]
    ci = (REPO / ".ci" / "run").read_text()
    assert test_command in ci


def _requirement_names(toml_list: str) -> set[str]:
    """Distribution names in a TOML list of requirement strings (tomllib is not in Python 3.10)."""
    return {re.split(r"[<>=!~;\[ ]", r, maxsplit=1)[0].lower().replace("-", "_")
            for r in re.findall(r'"([^"]+)"', re.sub(r"#.*", "", toml_list))}


def test_the_test_command_installs_every_package_a_test_would_skip_without() -> None:
    """A test that skips without a package is a test CI never runs unless the test command installs it."""
    pyproject = (REPO / "pyproject.toml").read_text()
    extras = re.search(r"-e '\.\[([a-z_,]+)\]'", _quick_start_commands()[1])
    assert extras is not None, "the test command installs the package with its extras: -e '.[dev,...]'"
    core = re.search(r"^dependencies = \[(.*?)^\]", pyproject, flags=re.M | re.S)
    assert core is not None
    installed = _requirement_names(core.group(1))
    optional = pyproject.split("[project.optional-dependencies]", 1)[1].split("\n[", 1)[0]
    for extra in extras.group(1).split(","):
        listed = re.search(rf"^{extra} = \[(.*?)\]", optional, flags=re.M | re.S)
        assert listed is not None, f"the test command installs extra {extra!r}, which pyproject.toml does not define"
        installed |= _requirement_names(listed.group(1))
    needed = {module for path in (REPO / "tests").rglob("*.py")
              for module in re.findall(r"importorskip\(\"([A-Za-z0-9_]+)\"", path.read_text())}
    assert needed, "no importorskip found: has the pattern above gone stale?"
    assert needed <= installed, f"tests skip without {sorted(needed - installed)}, which the test command does not install"
