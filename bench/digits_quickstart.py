"""The quick start, measured: train the README's CNN through the service on a stratified 80/20
split of scikit-learn's digits (random_state 0), score the held-out 20%, and put it beside a plain
PyTorch loop with the same network and hyperparameters run in this same process.

    python bench/digits_quickstart.py            # starts its own `gradwire serve` on a free port
    python bench/digits_quickstart.py --target localhost:50051

Prints test accuracy and wall time for both, and their ratios (machines here are noisy, so only
figures from one run are compared).
"""

from __future__ import annotations

import argparse
import contextlib
import os
import time

import numpy as np
from sklearn.datasets import load_digits
from sklearn.model_selection import train_test_split

import gradwire as gw
from _server import local_server

EPOCHS, BATCH, LR, WD, PATIENCE, VAL_SPLIT, SEED = 30, 32, 1e-3, 1e-4, 5, 0.2, 0
# The job takes 3-4 s here; far past that it is stuck (three GPU runs saw that). gpu_check.sh sets it
# below its own limit, so that the job's state and the server's log are printed before the kill.
JOB_TIMEOUT_S = float(os.environ.get("QUICKSTART_JOB_TIMEOUT_S", "120"))


def network() -> gw.Sequential:
    return gw.Sequential([
        gw.Conv2d(16, kernel_size=3, padding="same"), gw.BatchNorm(), gw.ReLU(), gw.MaxPool2d(2),
        gw.Conv2d(32, kernel_size=3, padding="same"), gw.ReLU(), gw.MaxPool2d(2),
        gw.Flatten(), gw.Dropout(0.25), gw.Dense(10),
    ])


def through_service(target: str, X_train, y_train, X_test, y_test) -> dict:
    start = time.perf_counter()
    with gw.Client(target, timeout=60) as client:
        data = client.upload_dataset(X_train, y_train, name="digits-80", class_names=[str(d) for d in range(10)])
        job = client.train(network(), data, optimizer=gw.Adam(learning_rate=LR, weight_decay=WD), loss="cross_entropy",
                           batch_size=BATCH, epochs=EPOCHS, validation_split=VAL_SPLIT,
                           early_stopping=gw.EarlyStopping(patience=PATIENCE), seed=SEED)
        try:
            model = job.wait(timeout=JOB_TIMEOUT_S)
        except gw.DeadlineExceededError:  # say where it stands (the server's log follows: local_server)
            job.refresh()
            raise SystemExit(f"the job did not end within {JOB_TIMEOUT_S:g} s: {job.state.name}, device "
                             f"'{job.proto.device}', {len(job.history)} epochs reported") from None
        probs = client.predict(model, X_test)
        wall = time.perf_counter() - start
        job.refresh()
    return {"accuracy": float((probs.argmax(1) == y_test).mean()), "wall_s": wall,
            "epochs": model.proto.epochs_trained, "parity": model.parity_max_abs_diff, "device": job.proto.device}


def plain_pytorch(X_train, y_train, X_test, y_test, device: str) -> dict:
    """The oracle: the same network and hyperparameters as a hand-written PyTorch loop, on the
    device the service trained on (its CUDA start-up before the clock, as the worker's is)."""
    import torch
    from torch import nn

    dev = torch.device(device)
    torch.zeros(1, device=dev)
    start = time.perf_counter()
    torch.manual_seed(SEED)
    rng = np.random.default_rng(SEED)
    order = rng.permutation(len(y_train))
    n_val = int(len(y_train) * VAL_SPLIT)
    tr, va = order[n_val:], order[:n_val]
    xt, yt = torch.from_numpy(X_train[tr]).to(dev), torch.from_numpy(y_train[tr]).to(dev)
    xv, yv = torch.from_numpy(X_train[va]).to(dev), torch.from_numpy(y_train[va]).to(dev)
    net = nn.Sequential(
        nn.Conv2d(1, 16, 3, padding="same"), nn.BatchNorm2d(16), nn.ReLU(), nn.MaxPool2d(2),
        nn.Conv2d(16, 32, 3, padding="same"), nn.ReLU(), nn.MaxPool2d(2),
        nn.Flatten(), nn.Dropout(0.25), nn.Linear(32 * 2 * 2, 10),
    ).to(dev)
    opt = torch.optim.Adam(net.parameters(), lr=LR, weight_decay=WD)
    loss_fn = nn.CrossEntropyLoss()
    best, best_state, bad, epochs = float("inf"), None, 0, 0
    for _ in range(EPOCHS):
        net.train()
        perm = torch.randperm(len(yt), device=dev)
        for i in range(0, len(yt), BATCH):
            idx = perm[i : i + BATCH]
            opt.zero_grad()
            loss_fn(net(xt[idx]), yt[idx]).backward()
            opt.step()
        epochs += 1
        net.eval()
        with torch.no_grad():
            val = loss_fn(net(xv), yv).item()
        if val < best:
            best, bad, best_state = val, 0, {k: v.clone() for k, v in net.state_dict().items()}
        else:
            bad += 1
            if bad >= PATIENCE:
                break
    net.load_state_dict(best_state)
    net.eval()
    with torch.no_grad():
        pred = net(torch.from_numpy(X_test).to(dev)).argmax(1).cpu().numpy()
    return {"accuracy": float((pred == y_test).mean()), "wall_s": time.perf_counter() - start, "epochs": epochs}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--target", help="an already running server (default: start one)")
    args = parser.parse_args()
    X, y = load_digits(return_X_y=True)
    X = X.reshape(-1, 1, 8, 8).astype(np.float32)
    split = train_test_split(X, y.astype(np.int64), test_size=0.2, stratify=y, random_state=0)
    X_train, X_test, y_train, y_test = split
    with contextlib.nullcontext(args.target) if args.target else local_server(quiet=True) as target:
        service = through_service(target, X_train, y_train, X_test, y_test)
    baseline = plain_pytorch(X_train, y_train, X_test, y_test, service["device"])
    print(f"digits, stratified 80/20 split (random_state 0): {len(y_train)} train / {len(y_test)} test examples; "
          f"both trained on {service['device']}")
    print(f"{'':24}{'test accuracy':>14}{'epochs':>8}{'wall s':>9}")
    print(f"{'gradwire (service)':24}{service['accuracy']:>14.4f}{service['epochs']:>8}{service['wall_s']:>9.1f}")
    print(f"{'plain PyTorch loop':24}{baseline['accuracy']:>14.4f}{baseline['epochs']:>8}{baseline['wall_s']:>9.1f}")
    print(f"accuracy ratio (service / plain): {service['accuracy'] / baseline['accuracy']:.4f}")
    print(f"wall-time ratio (service / plain, includes upload, queueing, ONNX export and predict): {service['wall_s'] / baseline['wall_s']:.2f}")
    print(f"ONNX vs PyTorch max abs difference: {service['parity']:.2e}")


if __name__ == "__main__":
    main()
