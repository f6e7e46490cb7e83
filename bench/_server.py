"""A throwaway `gradwire serve` for the benchmarks: a free port, a temporary data directory."""

from __future__ import annotations

import contextlib
import os
import pathlib
import shutil
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@contextlib.contextmanager
def local_server(extra_env: dict[str, str] | None = None, *, quiet: bool = False) -> Iterator[str]:
    """Start `gradwire serve` (the installed command, as a user runs it), wait until its health
    check answers SERVING, yield its target; stop it and delete its data afterwards. ``quiet``
    keeps the server's log in a file instead of the terminal, and prints its last lines when the
    block fails (a timeout, say)."""
    port = free_port()
    data_dir = tempfile.mkdtemp(prefix="gradwire-bench-")
    exe = shutil.which("gradwire", path=os.pathsep.join([str(pathlib.Path(sys.executable).parent), os.environ.get("PATH", "")]))
    if exe is None:
        raise SystemExit("the gradwire command is not installed: pip install -e '.[server]'")
    env = {k: v for k, v in os.environ.items() if not k.startswith("GRADWIRE_")}
    env.update(GRADWIRE_HOST="127.0.0.1", GRADWIRE_PORT=str(port), GRADWIRE_DATA_DIR=data_dir,
               GRADWIRE_LOG_LEVEL="INFO" if quiet else "WARNING")  # a quiet server's log goes to a file
    env.update(extra_env or {})
    log_path = pathlib.Path(data_dir) / "server.log"
    output = open(log_path, "wb") if quiet else None  # noqa: SIM115 - closed below, after the server
    proc = subprocess.Popen([exe, "serve"], env=env, stdout=output, stderr=output)
    try:
        target = f"127.0.0.1:{port}"
        deadline = time.monotonic() + 60
        while subprocess.run([exe, "health", "--target", target, "--timeout", "1"], capture_output=True).returncode != 0:
            if time.monotonic() > deadline or proc.poll() is not None:
                raise SystemExit("the server did not start")
            time.sleep(0.2)
        yield target
    except BaseException:
        if quiet:
            tail = log_path.read_text(errors="replace").splitlines()[-40:]
            print("the server's log, last lines:", *tail, sep="\n  ", file=sys.stderr)
        raise
    finally:
        proc.terminate()
        proc.wait(timeout=60)
        if output is not None:
            output.close()
        shutil.rmtree(data_dir, ignore_errors=True)
