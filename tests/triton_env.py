"""A separate virtual environment with tritonclient[grpc] for KServe v2 tests and benchmarks.

tritonclient pins protobuf<7 and registers `inference.*` protobuf symbols, so it can share
neither the server's environment nor its process. The environment is made once, with
`python -m venv` and pip from PyPI, under the repository's ignored `.venv-triton/`.
"""

from __future__ import annotations

import pathlib
import subprocess
import sys

ROOT = pathlib.Path(__file__).resolve().parent.parent
VENV = ROOT / ".venv-triton"
REQUIREMENTS = ["tritonclient[grpc]==2.73.0", "numpy"]
CLIENT = ROOT / "tests" / "kserve_client.py"


def python() -> pathlib.Path:
    return VENV / "bin" / "python"


def ensure() -> tuple[pathlib.Path | None, str]:
    """(the venv's python, "") when tritonclient imports there; else (None, why not)."""
    py = python()
    if py.exists() and subprocess.run([str(py), "-c", "import tritonclient.grpc"], capture_output=True).returncode == 0:
        return py, ""
    try:
        subprocess.run([sys.executable, "-m", "venv", "--clear", str(VENV)], check=True, capture_output=True, timeout=300)
        subprocess.run(
            [str(py), "-m", "pip", "install", "--disable-pip-version-check", "-q", *REQUIREMENTS],
            check=True, capture_output=True, timeout=600,
        )
    except (subprocess.CalledProcessError, subprocess.TimeoutExpired, OSError) as exc:
        detail = getattr(exc, "stderr", b"") or b""
        tail = detail.decode(errors="replace").strip().splitlines()[-1:] if detail else []
        return None, f"could not create {VENV.name} with {' '.join(REQUIREMENTS)} (no PyPI?): {exc} {' '.join(tail)}"
    return py, ""
