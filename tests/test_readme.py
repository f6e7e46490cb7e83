"""README's SDK quick start runs as written against a live server (fewer epochs, to stay fast)."""

from __future__ import annotations

import pathlib
import re
import subprocess
import sys

import numpy as np
import onnxruntime as ort

ROOT = pathlib.Path(__file__).resolve().parent.parent


def python_blocks() -> list[str]:
    return re.findall(r"```python\n(.*?)```", (ROOT / "README.md").read_text(), flags=re.S)


def test_sdk_quick_start_runs_as_written(target, tmp_path):
    (block,) = [b for b in python_blocks() if "gw.Client(" in b]
    assert 'gw.Client("localhost:50051")' in block and "epochs=30" in block
    script = block.replace("localhost:50051", target).replace("epochs=30", "epochs=2")
    script += "\nimport numpy as _np\n_np.save('probs.npy', probs)\n"
    out = subprocess.run([sys.executable, "-c", script], cwd=tmp_path, capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr
    assert "epoch" in out.stderr  # the progress bar
    probs = np.load(tmp_path / "probs.npy")
    assert probs.shape == (5, 10)
    np.testing.assert_allclose(probs.sum(axis=1), 1.0, atol=1e-5)
    session = ort.InferenceSession(str(tmp_path / "digits.onnx"), providers=["CPUExecutionProvider"])
    from sklearn.datasets import load_digits

    X = load_digits().data.reshape(-1, 1, 8, 8).astype(np.float32)[:5]
    (again,) = session.run(None, {session.get_inputs()[0].name: X})
    np.testing.assert_allclose(again, probs, atol=1e-6)
