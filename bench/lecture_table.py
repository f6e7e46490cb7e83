"""The lecture's closing table: gradwire (trained through the service, scored on the held-out
20%) beside scikit-learn on the same split, with each row's wall time.

    python bench/lecture_table.py            # starts its own `gradwire serve` on a free port
    python bench/lecture_table.py --target localhost:50051

Every split is a stratified 80/20 split with random_state 0 (diabetes, a regression set, is
stratified on its target's quintiles). gradwire's hyper-parameters were chosen on a validation
split carved out of the 80% (never on the 20%); each gradwire run holds out 10% of its 80% for
early stopping / reduce-on-plateau and is scored once on the 20% through its `test_data`
(the model's `test_evaluation`). Wall time of a gradwire row covers upload, queueing, training,
ONNX export + parity check and the test evaluation; a scikit-learn row covers fit + score.
"""

from __future__ import annotations

import argparse
import contextlib
import pathlib
import sys
import time

import numpy as np
from sklearn import datasets
from sklearn.metrics import accuracy_score, r2_score
from sklearn.model_selection import train_test_split
from sklearn.neural_network import MLPClassifier, MLPRegressor
from sklearn.pipeline import make_pipeline
from sklearn.preprocessing import StandardScaler
from sklearn.svm import SVC
from sklearn.linear_model import Ridge

import gradwire as gw

sys.path.insert(0, str(pathlib.Path(__file__).parent))
from _server import local_server  # noqa: E402
from digits_quickstart import network as quickstart_cnn  # noqa: E402

SEED = 0


def vit() -> gw.Sequential:
    """A small ViT for 8x8 digits: 2x2 patches -> 16 tokens of width 64, a class token, 2 blocks."""
    return gw.Sequential([
        gw.PatchEmbedding(2, embedding_dim=64), gw.ClassToken(), gw.PositionEmbedding(),
        gw.TransformerEncoder(depth=2, heads=4, mlp_ratio=2.0, dropout=0.1),
        gw.TokenPooling("class_token"), gw.Dense(10),
    ])


def resnet() -> gw.Sequential:
    """A small ResNet: a stem, two residual stages (the second downsamples through a projection)."""
    def block(width: int, stride: int = 1) -> gw.ResidualBlock:
        return gw.ResidualBlock([
            gw.Conv2d(width, 3, stride=stride, padding=1), gw.BatchNorm(), gw.ReLU(),
            gw.Conv2d(width, 3, padding="same"), gw.BatchNorm(),
        ], activation="relu")

    return gw.Sequential([
        gw.Conv2d(16, 3, padding="same"), gw.BatchNorm(), gw.ReLU(),
        block(16), block(32, stride=2),
        gw.GlobalAvgPool(), gw.Dropout(0.2), gw.Dense(10),
    ])


def mlp(width: int, outputs: int, *, dropout: float = 0.0, activation: str = "relu") -> gw.Sequential:
    layers = [gw.Dense(width, activation=activation)]
    if dropout:
        layers.append(gw.Dropout(dropout))
    return gw.Sequential([*layers, gw.Dense(width, activation=activation), gw.Dense(outputs)])


# (row, loader, kind, network, train keywords)
ROWS = [
    ("digits, quick-start CNN", "digits_image", "classes", quickstart_cnn(), dict(
        optimizer=gw.Adam(1e-3, weight_decay=1e-4), batch_size=32, epochs=30,
        early_stopping=gw.EarlyStopping(patience=5))),
    ("digits, small ViT", "digits_image", "classes", vit(), dict(
        optimizer=gw.AdamW(3e-3, weight_decay=0.05), loss=gw.CrossEntropy(label_smoothing=0.1), batch_size=64,
        epochs=40, schedule=gw.CosineDecay(warmup_epochs=3), gradient_clip_norm=1.0,
        input_normalization="standardize")),
    ("digits, small residual CNN", "digits_image", "classes", resnet(), dict(
        optimizer=gw.AdamW(3e-3, weight_decay=0.05), batch_size=64, epochs=20,
        schedule=gw.CosineDecay(warmup_epochs=2), input_normalization="standardize")),
    ("iris", "iris", "classes", mlp(16, 3, activation="tanh"), dict(
        optimizer=gw.Adam(1e-2), batching="full", epochs=300, input_normalization="standardize",
        early_stopping=gw.EarlyStopping(patience=40))),
    ("wine", "wine", "classes", mlp(32, 3), dict(
        optimizer=gw.Adam(1e-2, weight_decay=1e-3), batch_size=16, epochs=100, input_normalization="standardize",
        early_stopping=gw.EarlyStopping(patience=20))),
    ("breast_cancer (binary cross-entropy)", "breast_cancer", "binary", mlp(32, 1, dropout=0.2), dict(
        loss="binary_cross_entropy", optimizer=gw.AdamW(3e-3, weight_decay=1e-2), batch_size=32, epochs=150,
        input_normalization="standardize", early_stopping=gw.EarlyStopping(patience=20))),
    ("diabetes regression (R²)", "diabetes", "regression",
     gw.Sequential([gw.Dense(16, activation="relu"), gw.Dropout(0.1), gw.Dense(1)]), dict(
        loss="mse", optimizer=gw.AdamW(5e-2, weight_decay=0.1), batch_size=32, epochs=400,
        input_normalization="standardize", schedule=gw.ReduceOnPlateau(factor=0.5, patience=10),
        early_stopping=gw.EarlyStopping(patience=40))),
]


def load(name: str):
    if name == "digits_image":
        X, y = datasets.load_digits(return_X_y=True)
        return X.reshape(-1, 1, 8, 8).astype(np.float32), y.astype(np.int64)
    X, y = getattr(datasets, f"load_{name}")(return_X_y=True)
    return X.astype(np.float32), (y.astype(np.float32) if name == "diabetes" else y.astype(np.int64))


def split(X, y, regression: bool):
    strata = np.digitize(y, np.quantile(y, [0.2, 0.4, 0.6, 0.8])) if regression else y
    return train_test_split(X, y, test_size=0.2, stratify=strata, random_state=SEED)


def gradwire_row(client: gw.Client, network, X_tr, y_tr, X_te, y_te, kwargs) -> tuple[float, float, int]:
    start = time.perf_counter()
    job = client.train(network, (X_tr, y_tr) if len(X_tr) <= 4096 else client.upload_dataset(X_tr, y_tr),
                       validation_split=0.1, seed=SEED, test_data=(X_te, y_te), **kwargs)
    model = job.wait(timeout=3600)
    e = model.test_evaluation
    score = e.r2 if e.accuracy is None else e.accuracy
    return score, time.perf_counter() - start, model.epochs_trained


def sklearn_row(estimator, X_tr, y_tr, X_te, y_te, regression: bool) -> tuple[float, float]:
    start = time.perf_counter()
    estimator.fit(X_tr.reshape(len(X_tr), -1), y_tr)
    pred = estimator.predict(X_te.reshape(len(X_te), -1))
    score = r2_score(y_te, pred) if regression else accuracy_score(y_te, pred)
    return score, time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--target", help="an already running server (default: start one)")
    parser.add_argument("--only", help="run only rows whose name contains this text")
    args = parser.parse_args()
    rows = [r for r in ROWS if not args.only or args.only in r[0]]
    header = (f"| {'dataset / model':<38} | {'metric':<8} | {'gradwire':>8} | {'s':>6} | {'epochs':>6} "
              f"| {'sklearn MLP':>11} | {'s':>6} | {'SVC / Ridge':>11} | {'s':>6} |")
    print(header)
    print("|" + "|".join("-" * (len(c)) for c in header.split("|")[1:-1]) + "|")
    with contextlib.nullcontext(args.target) if args.target else local_server() as target:
        with gw.Client(target, timeout=120) as client:
            for name, source, kind, network, kwargs in rows:
                X, y = load(source)
                regression = kind == "regression"
                X_tr, X_te, y_tr, y_te = split(X, y, regression)
                score, wall, epochs = gradwire_row(client, network, X_tr, y_tr, X_te, y_te, kwargs)
                if regression:
                    mlp_est = make_pipeline(StandardScaler(), MLPRegressor(hidden_layer_sizes=(32, 32), max_iter=5000,
                                                                           random_state=SEED))
                    other = make_pipeline(StandardScaler(), Ridge(alpha=1.0))
                else:
                    mlp_est = make_pipeline(StandardScaler(), MLPClassifier(max_iter=2000, random_state=SEED))
                    other = make_pipeline(StandardScaler(), SVC(random_state=SEED))
                mlp_score, mlp_wall = sklearn_row(mlp_est, X_tr, y_tr, X_te, y_te, regression)
                other_score, other_wall = sklearn_row(other, X_tr, y_tr, X_te, y_te, regression)
                metric = "R²" if regression else "accuracy"
                print(f"| {name:<38} | {metric:<8} | {score:>8.4f} | {wall:>6.1f} | {epochs:>6} | {mlp_score:>11.4f} "
                      f"| {mlp_wall:>6.2f} | {other_score:>11.4f} | {other_wall:>6.2f} |", flush=True)


if __name__ == "__main__":
    main()
