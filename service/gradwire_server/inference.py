"""Predictions through onnxruntime, with sessions cached per model (least recently used evicted)."""

from __future__ import annotations

import collections
import pathlib
import threading

import numpy as np
import onnxruntime as ort

from . import errors

MODEL_FILE = "model.onnx"


def model_path(data_dir: pathlib.Path, model_id: str) -> pathlib.Path:
    from .files import inside

    return inside(data_dir, "models", model_id, MODEL_FILE)


def providers() -> list[str]:
    """CUDA when onnxruntime-gpu and a GPU are present, the CPU otherwise."""
    available = ort.get_available_providers()
    return [p for p in ("CUDAExecutionProvider", "CPUExecutionProvider") if p in available]


class SessionCache:
    """Loaded onnxruntime sessions keyed by model id; at most `max_sessions` stay loaded."""

    def __init__(self, data_dir: pathlib.Path, *, max_sessions: int = 32, intra_op_threads: int = 0) -> None:
        self._data_dir = data_dir
        self._max = max_sessions
        self._threads = intra_op_threads
        self._sessions: collections.OrderedDict[str, ort.InferenceSession] = collections.OrderedDict()
        self._lock = threading.Lock()

    def _load(self, model_id: str) -> ort.InferenceSession:
        path = model_path(self._data_dir, model_id)
        if not path.exists():
            raise errors.FailedPrecondition(f"model 'models/{model_id}' has no ONNX file; it is not ready")
        options = ort.SessionOptions()
        options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        if self._threads:
            options.intra_op_num_threads = self._threads
        return ort.InferenceSession(str(path), sess_options=options, providers=providers())

    def get(self, model_id: str) -> ort.InferenceSession:
        with self._lock:
            session = self._sessions.get(model_id)
            if session is not None:
                self._sessions.move_to_end(model_id)
                return session
        session = self._load(model_id)  # outside the lock: loading can take a while
        with self._lock:
            self._sessions[model_id] = session
            self._sessions.move_to_end(model_id)
            while len(self._sessions) > self._max:
                self._sessions.popitem(last=False)
        return session

    def evict(self, model_id: str) -> None:
        with self._lock:
            self._sessions.pop(model_id, None)

    def run(self, model_id: str, features: np.ndarray) -> np.ndarray:
        """features: float32 [batch, ...input_shape] -> the graph's single output [batch, outputs]."""
        session = self.get(model_id)
        (output,) = session.run(None, {session.get_inputs()[0].name: features})
        return output
