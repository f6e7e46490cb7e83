"""CI runs the same test command that README.md's quick start tells a developer to run."""

from __future__ import annotations

import os
import pathlib
import shutil
import subprocess

import pytest

ROOT = pathlib.Path(__file__).resolve().parent.parent
CI_SCRIPT = ROOT / ".ci" / "run"
README = ROOT / "README.md"
MARKER = "# README test command"


def _marked_command(script: str) -> str:
    """The line right below the `# README test command` comment."""
    lines = script.splitlines()
    marked = [i for i, line in enumerate(lines) if line.strip().startswith(MARKER)]
    assert len(marked) == 1, f"expected one {MARKER!r} comment in .ci/run, found {len(marked)}"
    command = lines[marked[0] + 1].strip() if marked[0] + 1 < len(lines) else ""
    assert command and not command.startswith("#"), f"no command below {MARKER!r} in .ci/run"
    return command


def test_marked_command_is_the_line_below_the_marker() -> None:
    assert _marked_command(f"set -e\n{MARKER}\npython -m pytest\necho done\n") == "python -m pytest"
    with pytest.raises(AssertionError):
        _marked_command(f"set -e\n{MARKER}\n")


def test_readme_shows_the_ci_test_command() -> None:
    command = _marked_command(CI_SCRIPT.read_text())
    assert "pytest" in command, f"the marked line should run the tests, got {command!r}"
    readme_lines = [line.strip() for line in README.read_text().splitlines()]
    assert command in readme_lines, f"README.md must show CI's test command verbatim on a line of its own: {command}"


def test_ci_installs_cpu_torch_before_the_project() -> None:
    # A bare `torch` (or pyproject's range with no torch installed) pulls a multi-GB CUDA build.
    lines = [line.strip() for line in CI_SCRIPT.read_text().splitlines()]
    command = _marked_command(CI_SCRIPT.read_text())
    torch_at = next((i for i, line in enumerate(lines) if "pip install torch==2.13.0" in line), None)
    assert torch_at is not None, ".ci/run must install torch==2.13.0"
    assert torch_at < lines.index(command), "install torch==2.13.0 before the project"


def test_ci_script_is_strict_executable_bash() -> None:
    text = CI_SCRIPT.read_text()
    assert text.startswith("#!/usr/bin/env bash\n")
    assert "set -euo pipefail" in text
    assert os.access(CI_SCRIPT, os.X_OK), ".ci/run must be executable"
    bash = shutil.which("bash")
    if bash is None:
        pytest.skip("no bash to check .ci/run's syntax")
    result = subprocess.run([bash, "-n", str(CI_SCRIPT)], capture_output=True, text=True, timeout=30)
    assert result.returncode == 0, result.stderr
