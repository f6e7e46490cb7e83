"""train.py against an oracle (a plain PyTorch loop), and its batching, early
stopping, L1, cancellation, checkpoint/resume and normalization behaviour."""

from __future__ import annotations

import collections
import dataclasses
import os
import threading
import time

import numpy as np
import pytest
import torch
from google.protobuf import text_format
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from torch import nn

from gradwire.v1 import datasets_pb2, network_pb2
from gradwire_server import errors, spec, train
from gradwire_server.config import parse_settings
from helpers import set_scalar

CPU = torch.device("cpu")
MLP = """
layers { dense { units: 8 } }
layers { tanh {} }
layers { dense { units: 3 } }
"""


def net(text: str) -> network_pb2.NetworkSpec:
    return text_format.Parse(text, network_pb2.NetworkSpec())


def cfg(text: str) -> network_pb2.TrainingConfig:
    return text_format.Parse(text, network_pb2.TrainingConfig())


def blobs(n: int = 60, features: int = 4, classes: int = 3, seed: int = 0) -> train.TrainingData:
    """Gaussian blobs, one per class: an easy, deterministic classification set."""
    rng = np.random.default_rng(seed)
    labels = np.arange(n) % classes
    centers = rng.normal(0, 3, size=(classes, features))
    x = centers[labels] + rng.normal(0, 1, size=(n, features))
    return train.TrainingData(x.astype(np.float32), labels.astype(np.int64), datasets_pb2.LABEL_KIND_CLASSES, classes)


def run(network: str, training: str, data: train.TrainingData, *, seed: int = 0, **kwargs) -> train.TrainResult:
    spec.validate_job(net(network), cfg(training), feature_shape=data.features.shape[1:],
                      label_kind=data.label_kind, output_size=data.output_size, example_count=len(data.features))
    kwargs.setdefault("on_epoch", lambda result: None)
    return train.train(net(network), cfg(training), data, seed=seed, device=CPU, **kwargs)


def weights(model: nn.Module) -> dict[str, torch.Tensor]:
    return {k: v.clone() for k, v in model.state_dict().items()}


def assert_same_weights(a: dict, b: dict, atol: float = 0.0) -> None:
    assert a.keys() == b.keys()
    for key in a:
        torch.testing.assert_close(a[key], b[key], atol=atol, rtol=0, msg=key)


# --------------------------------------------------------------------------
# Oracle


def oracle_sgd(data: train.TrainingData, *, seed: int, epochs: int, batch_size: int | None, lr: float,
               momentum: float, validation_split: float) -> nn.Module:
    """The same training written as the plain PyTorch loop from a tutorial,
    following train.py's documented draws: one generator for the split
    permutation then one shuffle per epoch; torch.manual_seed before init."""
    n = len(data.features)
    generator = torch.Generator().manual_seed(seed)
    n_val = int(n * validation_split + 1e-9)
    train_idx = torch.randperm(n, generator=generator)[: n - n_val].sort().values
    x = torch.from_numpy(data.features)[train_idx]
    y = torch.from_numpy(data.labels)[train_idx]
    batch_size = batch_size or len(x)

    torch.manual_seed(seed)
    model = nn.Sequential(nn.Linear(4, 8), nn.Tanh(), nn.Linear(8, 3))
    optimizer = torch.optim.SGD(model.parameters(), lr=lr, momentum=momentum)
    for _ in range(epochs):
        order = torch.randperm(len(x), generator=generator)
        for start in range(0, len(x), batch_size):
            batch = order[start:start + batch_size]
            loss = nn.functional.cross_entropy(model(x[batch]), y[batch])
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
    return model


@pytest.mark.parametrize("batching, batch_size", [("full_batch {}", None), ("mini_batch { batch_size: 7 }", 7)])
def test_matches_plain_pytorch_loop(batching, batch_size):
    data = blobs()
    result = run(MLP, f"""
        loss {{ cross_entropy {{}} }}
        optimizer {{ sgd {{ learning_rate: 0.1 momentum: 0.5 }} }}
        batching {{ {batching} }}
        epochs: 5
        validation_split: 0.25""", data, seed=3)
    expected = oracle_sgd(data, seed=3, epochs=5, batch_size=batch_size, lr=np.float32(0.1).item(),
                          momentum=np.float32(0.5).item(), validation_split=0.25)
    assert_same_weights(weights(result.model), weights(expected), atol=1e-6)
    assert result.history[-1].iterations == (1 if batch_size is None else 7)  # 45 examples / 7 -> 7 steps


def test_same_seed_same_weights_other_seed_differs():
    data, training = blobs(), """loss { cross_entropy {} } optimizer { adam { learning_rate: 0.01 } }
        batching { mini_batch { batch_size: 16 } } epochs: 2 validation_split: 0.2"""
    a, b, c = (run(MLP, training, data, seed=s) for s in (1, 1, 2))
    assert_same_weights(weights(a.model), weights(b.model))
    assert not torch.equal(a.model[0].weight, c.model[0].weight)


@pytest.mark.parametrize("batching, iterations", [("online {}", 48), ("full_batch {}", 1),
                                                  ("mini_batch { batch_size: 10 }", 5)])
def test_iterations_per_epoch(batching, iterations):
    result = run(MLP, f"""loss {{ cross_entropy {{}} }} optimizer {{ sgd {{ learning_rate: 0.01 }} }}
        batching {{ {batching} }} epochs: 2 validation_split: 0.2""", blobs())
    assert [h.iterations for h in result.history] == [iterations, iterations]


def test_epoch_results():
    seen = []
    result = run(MLP, """loss { cross_entropy {} } optimizer { rmsprop { learning_rate: 0.01 } }
        batching { mini_batch { batch_size: 12 } } epochs: 3 validation_split: 0.2""", blobs(), on_epoch=seen.append)
    assert seen == result.history and [h.epoch for h in seen] == [1, 2, 3]
    last = seen[-1]
    assert 0 <= last.train_accuracy <= 1 and 0 <= last.validation_accuracy <= 1
    assert last.validation_loss > 0 and last.learning_rate == pytest.approx(0.01)
    assert last.samples_per_second > 0 and last.elapsed_seconds >= seen[0].elapsed_seconds
    assert result.final_metrics == last and result.best_epoch == 3 and result.epochs_trained == 3
    assert result.parameter_count == 4 * 8 + 8 + 8 * 3 + 3
    assert not result.model.training and len(result.holdout_features) == 12


def test_regression_with_vector_and_matrix_targets():
    rng = np.random.default_rng(0)
    x = rng.normal(size=(40, 3)).astype(np.float32)
    for targets in (x @ [1.0, -2.0, 0.5], np.stack([x.sum(1), x[:, 0]], 1)):
        k = 1 if targets.ndim == 1 else targets.shape[1]
        data = train.TrainingData(x, targets.astype(np.float32), datasets_pb2.LABEL_KIND_REGRESSION, k)
        result = run(f"layers {{ dense {{ units: {k} }} }}", """loss { mse {} }
            optimizer { sgd { learning_rate: 0.05 } } batching { mini_batch { batch_size: 8 } } epochs: 20""", data)
        assert result.history[-1].train_loss < 0.1 * result.history[0].train_loss
        assert result.history[-1].train_accuracy is None and result.history[-1].validation_loss is None


def test_explicit_final_softmax_trains_on_logits():
    # Cross-entropy is applied to the logits, so a final softmax changes nothing about training.
    training = """loss { cross_entropy {} } optimizer { sgd { learning_rate: 0.1 } }
        batching { mini_batch { batch_size: 10 } } epochs: 3"""
    plain = run(MLP, training, blobs())
    with_softmax = run(MLP + "layers { softmax {} }", training, blobs())
    assert_same_weights(weights(plain.model), weights(with_softmax.model))
    assert plain.history[-1].train_loss == with_softmax.history[-1].train_loss


# --------------------------------------------------------------------------
# Early stopping


TRAIN_SGD = """loss { cross_entropy {} } optimizer { sgd { learning_rate: 0.05 } }
    batching { mini_batch { batch_size: 8 } } validation_split: 0.2 """


def test_early_stopping_stops_and_restores_best_weights():
    # A min_delta no epoch can beat: epoch 1 is the best, and patience 2 stops after epoch 3.
    stopping = "early_stopping { patience: 2 min_delta: 1000 }"
    result = run(MLP, TRAIN_SGD + "epochs: 10 " + stopping, blobs())
    assert [h.epoch for h in result.history] == [1, 2, 3]
    assert result.best_epoch == 1 and result.final_metrics == result.history[0]
    one_epoch = run(MLP, TRAIN_SGD + "epochs: 1", blobs())
    assert_same_weights(weights(result.model), weights(one_epoch.model))


def test_early_stopping_can_keep_last_weights():
    stopping = "early_stopping { patience: 2 min_delta: 1000 restore_best_weights: false }"
    result = run(MLP, TRAIN_SGD + "epochs: 10 " + stopping, blobs())
    three_epochs = run(MLP, TRAIN_SGD + "epochs: 3", blobs())
    assert result.best_epoch == 3 and result.final_metrics == result.history[-1]
    assert_same_weights(weights(result.model), weights(three_epochs.model))


def test_early_stopping_monitors_validation_accuracy():
    # Accuracy is "higher is better": a min_delta of 1 can never be beaten.
    stopping = "early_stopping { patience: 1 min_delta: 1 monitor: METRIC_VALIDATION_ACCURACY }"
    result = run(MLP, TRAIN_SGD + "epochs: 10 " + stopping, blobs())
    assert len(result.history) == 2 and result.best_epoch == 1


# --------------------------------------------------------------------------
# L1, cancellation


def test_l1_penalty_gives_more_near_zero_weights():
    # 20 features, 2 of them informative.
    rng = np.random.default_rng(0)
    x = rng.normal(size=(80, 20)).astype(np.float32)
    data = train.TrainingData(x, (x[:, 0] + x[:, 1] > 0).astype(np.int64), datasets_pb2.LABEL_KIND_CLASSES, 2)
    network = "layers { dense { units: 2 } }"
    training = """loss { cross_entropy {} } optimizer { sgd { learning_rate: 0.1 } }
        batching { mini_batch { batch_size: 16 } } epochs: 20 """
    models = [run(network, training + f"l1_penalty: {l1}", data).model for l1 in (0, 0.03)]
    near_zero = [(model[0].weight.abs() < 1e-2).sum().item() for model in models]
    assert near_zero[1] > near_zero[0] + 10, near_zero  # (of 40 weights; measured: 0 vs 21)


def test_l1_applies_to_weights_not_biases_or_norm_parameters():
    from gradwire_server import nets
    model = nets.build_network(net(RESUMABLE_NET), (4,))
    assert [tuple(p.shape) for p in train.l1_weights(model)] == [(16, 4), (3, 16)]


def test_cancel_raises_and_reports_no_further_epochs():
    calls, seen = [], []

    def should_stop() -> bool:
        calls.append(1)
        return len(calls) > 7  # 5 steps per epoch: stop in epoch 2, step 3

    with pytest.raises(errors.Cancelled):
        run(MLP, TRAIN_SGD + "epochs: 5", blobs(), should_stop=should_stop, on_epoch=seen.append)
    assert [h.epoch for h in seen] == [1]


# --------------------------------------------------------------------------
# Checkpoints


RESUMABLE_NET = """
layers { dense { units: 16 } }
layers { batch_norm {} }
layers { relu {} }
layers { dropout { rate: 0.3 } }
layers { dense { units: 3 } }
"""
RESUMABLE_TRAINING = """loss { cross_entropy {} } optimizer { adam { learning_rate: 0.01 } }
    batching { mini_batch { batch_size: 10 } } epochs: 4 validation_split: 0.2
    early_stopping { patience: 3 } input_normalization: INPUT_NORMALIZATION_STANDARDIZE"""


def _without_timing(history):
    return [dataclasses.replace(h, samples_per_second=0, elapsed_seconds=0) for h in history]


# Runs with state beyond weights: a stateful schedule (reduce-on-plateau), a per-epoch one, clipping, AdamW.
RESUMABLE_TRAININGS = [
    RESUMABLE_TRAINING,
    RESUMABLE_TRAINING.replace("adam {", "adamw {") + """ gradient_clip_norm: 0.5
        schedule { reduce_on_plateau { factor: 0.5 patience: 1 min_delta: 0.5 monitor: METRIC_TRAIN_ACCURACY } }""",
    RESUMABLE_TRAINING.replace("adam { learning_rate: 0.01 }", "sgd { learning_rate: 0.1 momentum: 0.9 nesterov: true }")
    + " schedule { cosine { warmup_epochs: 1 min_learning_rate: 0.001 } }",
]


@pytest.mark.parametrize("training", RESUMABLE_TRAININGS, ids=["adam", "adamw-clip-plateau", "nesterov-cosine"])
def test_resume_from_checkpoint_gives_identical_weights(tmp_path, training):
    RESUMABLE_TRAINING = training  # noqa: N806 - the parametrized config, under the name the body uses
    data = blobs()
    uninterrupted = run(RESUMABLE_NET, RESUMABLE_TRAINING, data, seed=7)

    checkpoint = tmp_path / "job" / "checkpoint.pt"
    steps = []

    def cancel_in_epoch_3() -> bool:
        steps.append(1)
        return len(steps) == 2 * 5 + 1  # 48 training examples / 10: 5 steps per epoch

    with pytest.raises(errors.Cancelled):
        run(RESUMABLE_NET, RESUMABLE_TRAINING, data, seed=7, checkpoint_path=checkpoint, should_stop=cancel_in_epoch_3)
    assert checkpoint.exists() and list(checkpoint.parent.iterdir()) == [checkpoint]  # no temp files left

    seen = []
    resumed = run(RESUMABLE_NET, RESUMABLE_TRAINING, data, seed=7, checkpoint_path=checkpoint, on_epoch=seen.append)
    assert [h.epoch for h in seen] == [3, 4]  # finished epochs are not reported again
    assert_same_weights(weights(resumed.model), weights(uninterrupted.model))
    assert _without_timing(resumed.history) == _without_timing(uninterrupted.history)
    assert resumed.best_epoch == uninterrupted.best_epoch

    # A finished run's checkpoint resumes to the same result without training.
    again = run(RESUMABLE_NET, RESUMABLE_TRAINING, data, seed=7, checkpoint_path=checkpoint,
                on_epoch=lambda r: pytest.fail("no epoch left to train"))
    assert_same_weights(weights(again.model), weights(uninterrupted.model))


@pytest.mark.parametrize("damage", ["truncated", "garbage", "empty"])
def test_a_checkpoint_that_cannot_be_read_starts_the_run_over_and_says_so(tmp_path, damage):
    """Checkpoints are written atomically, so only the disk can damage one. Its job used to end
    FAILED at resume ('OSError: [Errno 22] Invalid argument'), its epochs lost for good; now the
    run trains again from its first epoch, to the very weights of an uninterrupted run."""
    data = blobs()
    uninterrupted = run(RESUMABLE_NET, RESUMABLE_TRAINING, data, seed=7)
    checkpoint = tmp_path / "job" / "checkpoint.pt"
    steps = []
    with pytest.raises(errors.Cancelled):
        run(RESUMABLE_NET, RESUMABLE_TRAINING, data, seed=7, checkpoint_path=checkpoint,
            should_stop=lambda: steps.append(1) or len(steps) == 2 * 5 + 1)  # in epoch 3
    good = checkpoint.read_bytes()
    checkpoint.write_bytes({"truncated": good[: len(good) // 2], "garbage": bytes(range(256)) * 8, "empty": b""}[damage])
    notices, seen = [], []
    resumed = run(RESUMABLE_NET, RESUMABLE_TRAINING, data, seed=7, checkpoint_path=checkpoint, on_epoch=seen.append,
                  on_notice=notices.append)
    assert [h.epoch for h in seen] == [1, 2, 3, 4]  # every epoch again
    assert len(notices) == 1 and notices[0].startswith("its checkpoint could not be read (") \
        and notices[0].endswith("); training starts over from epoch 1"), notices
    assert_same_weights(weights(resumed.model), weights(uninterrupted.model))
    assert train.read_checkpoint(checkpoint)["history"]  # a readable checkpoint in its place


def test_an_epoch_checkpointed_but_not_reported_is_reported_on_resume(tmp_path):
    """A crash between saving epoch 3's checkpoint and reporting epoch 3 (the report failing here
    stands for it): the resumed run reports epoch 3 from the checkpoint, so the job's history has
    no gap, and it does not train epoch 3 again."""
    data = blobs()
    checkpoint = tmp_path / "job" / "checkpoint.pt"
    reported = []

    def report_then_crash_at_3(result):
        if result.epoch == 3:
            raise RuntimeError("killed between the checkpoint and the report")
        reported.append(result.epoch)

    with pytest.raises(RuntimeError, match="killed"):
        run(RESUMABLE_NET, RESUMABLE_TRAININGS[0], data, seed=7, checkpoint_path=checkpoint, on_epoch=report_then_crash_at_3)
    assert reported == [1, 2]
    resumed = run(RESUMABLE_NET, RESUMABLE_TRAININGS[0], data, seed=7, checkpoint_path=checkpoint,
                  on_epoch=lambda r: reported.append(r.epoch), reported_epochs=reported[-1])
    assert reported == [1, 2, 3, 4]  # 3 from the checkpoint, 4 trained
    uninterrupted = run(RESUMABLE_NET, RESUMABLE_TRAININGS[0], data, seed=7)
    assert_same_weights(weights(resumed.model), weights(uninterrupted.model))


def test_checkpoints_are_written_while_the_next_epoch_trains(tmp_path):
    """Saving and reporting run on a writer thread: epoch 2's steps begin while epoch 1's report
    is still blocked. Each report comes after its epoch's checkpoint is on disk, and train()
    returns only once every epoch is saved and reported."""
    data = blobs()
    checkpoint = tmp_path / "job" / "checkpoint.pt"
    epoch_2_stepping = threading.Event()
    steps, reported, saved_at_report = [], [], []

    def should_stop() -> bool:
        steps.append(1)
        if len(steps) > 5:  # 48 training examples / 10: 5 steps per epoch
            epoch_2_stepping.set()
        return False

    def on_epoch(result):
        if result.epoch == 1:  # a synchronous save-and-report would never let epoch 2 start
            assert epoch_2_stepping.wait(timeout=30), "epoch 2 did not start while epoch 1 was being reported"
        saved_at_report.append(torch.load(checkpoint, weights_only=True)["epoch"])
        reported.append(result.epoch)

    result = run(RESUMABLE_NET, RESUMABLE_TRAINING, data, seed=7, checkpoint_path=checkpoint, should_stop=should_stop,
                 on_epoch=on_epoch)
    assert reported == [1, 2, 3, 4] == [h.epoch for h in result.history]
    assert all(saved >= epoch for saved, epoch in zip(saved_at_report, reported))  # never ahead of a checkpoint
    assert torch.load(checkpoint, weights_only=True)["epoch"] == 4


def test_a_save_slower_than_the_epochs_does_not_hold_training_back(tmp_path, monkeypatch):
    """While epoch 1's save hangs, epochs 2-4 train on; their snapshots replace each other, so one
    more save (epoch 4's) covers the rest, and every epoch is still reported, in order, after a
    checkpoint that holds it. The weights are those of a run without a checkpoint."""
    data = blobs()
    checkpoint = tmp_path / "job" / "checkpoint.pt"
    in_last_epoch = threading.Event()
    steps, reported, saved_epochs = [], [], []
    real_save = train.save_checkpoint

    def slow_save(state, path):
        if not saved_epochs:  # the first save waits until the last epoch is training
            assert in_last_epoch.wait(timeout=30), "training waited for the save"
        real_save(state, path)
        saved_epochs.append(state["epoch"])

    def should_stop() -> bool:
        steps.append(1)
        if len(steps) > 15:  # 5 steps per epoch: epoch 4
            in_last_epoch.set()
        return False

    monkeypatch.setattr(train, "save_checkpoint", slow_save)
    result = run(RESUMABLE_NET, RESUMABLE_TRAINING, data, seed=7, checkpoint_path=checkpoint, should_stop=should_stop,
                 on_epoch=lambda r: reported.append((r.epoch, torch.load(checkpoint, weights_only=True)["epoch"])))
    assert [epoch for epoch, _ in reported] == [1, 2, 3, 4]
    assert all(saved >= epoch for epoch, saved in reported)
    # The first save (of epoch 1, or of 2 or 3 when the writer woke late) hung through epoch 4.
    assert saved_epochs[0] < 4 and saved_epochs[-1] == 4 and len(saved_epochs) < 4  # some were replaced
    # Host buffers: at most three snapshots' worth (one being saved, one waiting, one being made);
    # a replaced snapshot's buffers served a later one, and all came back at the end. (The best
    # weights are the stopper's own copies, not taken from the buffers.)
    state = torch.load(checkpoint, weights_only=True)
    per_snapshot = _count_tensors({k: v for k, v in state.items() if k != "early_stopping"})
    free = [b for bs in result.saving.buffers._free.values() for b in bs]
    assert len(free) in (2 * per_snapshot, 3 * per_snapshot), (len(free), per_snapshot)
    storages = [b.data_ptr() for b in free if b.numel()]
    assert len(set(storages)) == len(storages)
    assert_same_weights(weights(result.model), weights(run(RESUMABLE_NET, RESUMABLE_TRAINING, data, seed=7).model))


@pytest.mark.parametrize("for_good", [True, False], ids=["cancel", "shutdown"])
def test_a_cancel_does_not_wait_for_one_more_save(tmp_path, monkeypatch, for_good):
    """Stopped in epoch 3 while epoch 1's save hangs and epoch 2's snapshot waits: a cancel (the job
    ends for good) drops the waiting snapshot and still reports epoch 2; a shutdown (the job resumes
    later) saves it."""
    data = blobs()
    checkpoint = tmp_path / "job" / "checkpoint.pt"
    release, entered, steps, saved, reported = threading.Event(), threading.Event(), [], [], []
    real_save = train.save_checkpoint

    def slow_save(state, path):
        if not saved:
            entered.set()
            assert release.wait(timeout=30)
        real_save(state, path)
        saved.append(state["epoch"])

    def should_stop() -> bool:
        steps.append(1)
        if len(steps) == 6:  # epoch 2's first step: epoch 1's save is under way before epoch 2 ends
            assert entered.wait(timeout=30)  # (on a loaded machine the writer may not have woken yet)
        return len(steps) == 11  # 5 steps per epoch: epoch 3's first step

    class Writer(train._EpochWriter):
        def close(self, **kwargs):  # the hanging save ends well after close() has dealt with the waiting snapshot
            threading.Timer(0.3, release.set).start()
            super().close(**kwargs)

    monkeypatch.setattr(train, "save_checkpoint", slow_save)
    monkeypatch.setattr(train, "_EpochWriter", Writer)
    with pytest.raises(errors.Cancelled):
        run(RESUMABLE_NET, RESUMABLE_TRAINING, data, seed=7, checkpoint_path=checkpoint, should_stop=should_stop,
            on_epoch=lambda r: reported.append(r.epoch), cancelled_for_good=lambda: for_good)
    assert reported == [1, 2]
    assert saved == ([1] if for_good else [1, 2])


def _count_snapshots(monkeypatch) -> list[int]:
    """The epochs whose snapshot the training thread takes, in order, from now on."""
    snapshots = []
    real_snapshot = train._Progress.snapshot

    def counted_snapshot(progress, buffers):
        snapshots.append(len(progress.history))
        return real_snapshot(progress, buffers)

    monkeypatch.setattr(train._Progress, "snapshot", counted_snapshot)
    return snapshots


def test_a_checkpoint_budget_spaces_the_saves_and_reports_no_epoch_before_its_save(tmp_path, monkeypatch):
    """checkpoint_budget=0.25: after a save of s seconds the next starts at least 3 s later. Saves
    of 40 ms against epochs of a few ms: far fewer saves than epochs, spaced as the budget says;
    every epoch is reported, in order, and only once a saved checkpoint holds it; the last epoch
    is saved (train() ends with it on disk); and the result equals an unbudgeted run's."""
    data = blobs()
    training = RESUMABLE_TRAINING.replace("epochs: 4", "epochs: 40").replace("early_stopping { patience: 3 }", "")
    real_save = train.save_checkpoint
    saves, on_disk, reported = [], [0], []

    def slow_save(state, path):
        began = time.monotonic()
        time.sleep(0.04)
        real_save(state, path)
        saves.append((began, time.monotonic(), state["epoch"]))
        on_disk[0] = state["epoch"]

    def report(result):
        assert result.epoch <= on_disk[0], f"epoch {result.epoch} reported while the checkpoint holds {on_disk[0]}"
        reported.append(result.epoch)

    monkeypatch.setattr(train, "save_checkpoint", slow_save)
    snapshots = _count_snapshots(monkeypatch)
    checkpoint = tmp_path / "job" / "checkpoint.pt"
    result = run(RESUMABLE_NET, training, data, seed=7, checkpoint_path=checkpoint, on_epoch=report,
                 checkpoint_budget=0.25)
    assert reported == list(range(1, 41))
    assert saves[-1][2] == 40 and torch.load(checkpoint, weights_only=True)["epoch"] == 40
    assert len(saves) < 20, saves  # one save per epoch would be 40
    # A snapshot (a copy of the whole state) is taken only when a save may start before the next
    # epoch ends, and the last epoch's always: each save is of one of them. How many depends on
    # the epochs' speed against the pauses (10-20 of 40 alone here, 30 once beside two other test
    # processes), so the bound is only that some were skipped: without the rule, all 40 are taken.
    assert snapshots[-1] == 40 and len(snapshots) < 40, snapshots
    assert {epoch for _, _, epoch in saves} <= set(snapshots)
    budgeted = saves[:-1]  # the last one starts at once, when training ends
    for (began, done, _), (next_began, _, _) in zip(budgeted, budgeted[1:]):
        assert next_began - done >= 3 * (done - began), saves
    unbudgeted = run(RESUMABLE_NET, training, data, seed=7)
    assert_same_weights(weights(result.model), weights(unbudgeted.model))


def test_a_shutdown_under_a_checkpoint_budget_resumes_from_the_last_save(tmp_path, monkeypatch):
    """Stopped to resume later (a shutdown) with epochs finished since the last save: those epochs
    stay unreported (no report without a save), the resumed run trains and reports them, and ends
    with an uninterrupted run's weights. A failure instead ends the job for good: every finished
    epoch is reported."""
    data = blobs()
    training = RESUMABLE_TRAINING.replace("epochs: 4", "epochs: 30").replace("early_stopping { patience: 3 }", "")
    uninterrupted = run(RESUMABLE_NET, training, data, seed=7)
    real_save = train.save_checkpoint
    saved = []

    def slow_save(state, path):
        time.sleep(0.03)
        real_save(state, path)
        saved.append(state["epoch"])

    monkeypatch.setattr(train, "save_checkpoint", slow_save)
    snapshots = _count_snapshots(monkeypatch)
    checkpoint = tmp_path / "job" / "checkpoint.pt"
    steps, reported, finished = [], [], [0]

    def stop_after_an_epoch_without_snapshot() -> bool:
        steps.append(1)
        if len(steps) % 5 != 1:  # 5 steps per epoch: stop only at an epoch's first step
            return False
        finished[0] = len(steps) // 5
        return finished[0] >= 10 and finished[0] not in snapshots

    with pytest.raises(errors.Cancelled):
        run(RESUMABLE_NET, training, data, seed=7, checkpoint_path=checkpoint,
            should_stop=stop_after_an_epoch_without_snapshot, on_epoch=lambda r: reported.append(r.epoch),
            checkpoint_budget=0.1)
    held = torch.load(checkpoint, weights_only=True)["epoch"]
    assert held < finished[0], (held, finished, saved)  # epochs held+1..finished are in no save...
    assert reported == list(range(1, held + 1))  # ...and not reported
    resumed_reports = []
    resumed = run(RESUMABLE_NET, training, data, seed=7, checkpoint_path=checkpoint,
                  on_epoch=lambda r: resumed_reports.append(r.epoch), checkpoint_budget=0.1)
    assert resumed_reports == list(range(held + 1, 31))
    assert_same_weights(weights(resumed.model), weights(uninterrupted.model))
    assert _without_timing(resumed.history) == _without_timing(uninterrupted.history)

    steps.clear()
    reported.clear()

    def fail_in_epoch_25() -> bool:
        steps.append(1)
        if len(steps) == 24 * 5 + 1:
            raise RuntimeError("the disk went away")
        return False

    with pytest.raises(RuntimeError, match="went away"):
        run(RESUMABLE_NET, training, data, seed=7, checkpoint_path=tmp_path / "other" / "checkpoint.pt",
            should_stop=fail_in_epoch_25, on_epoch=lambda r: reported.append(r.epoch), checkpoint_budget=0.1)
    assert reported == list(range(1, 25))


def test_the_checkpoint_budget_is_checked():
    with pytest.raises(ValueError, match="checkpoint budget"):
        train._EpochWriter(None, lambda r: None, CPU, budget=0.0)
    with pytest.raises(ValueError, match="GRADWIRE_CHECKPOINT_BUDGET.*1.5"):
        parse_settings([], {"GRADWIRE_CHECKPOINT_BUDGET": "1.5"})
    assert parse_settings([], {"GRADWIRE_CHECKPOINT_BUDGET": "1"}).checkpoint_budget == 1.0


def _count_tensors(obj) -> int:
    if isinstance(obj, torch.Tensor):
        return 1
    if isinstance(obj, dict):
        return sum(_count_tensors(v) for v in obj.values())
    if isinstance(obj, (list, tuple)):
        return sum(_count_tensors(v) for v in obj)
    return 0


def test_host_buffers_are_reused_once_given_back():
    buffers = train._HostBuffers(pinned=False)
    a = torch.arange(6.0).reshape(2, 3)
    first = buffers.copy(a)
    assert torch.equal(first, a) and first.data_ptr() != a.data_ptr()  # a copy, not a view
    a += 1
    assert not torch.equal(first, a)
    buffers.give_back([first])
    second = buffers.copy(a * 2)
    assert second.data_ptr() == first.data_ptr() and torch.equal(second, a * 2)
    third = buffers.copy(a)  # none free: a new one
    assert third.data_ptr() != second.data_ptr() and torch.equal(third, a)
    assert buffers.copy(torch.ones(3, 2)).shape == (3, 2)  # another shape: its own buffer


def test_keep_saving_leaves_the_last_save_to_the_caller(tmp_path):
    """train(keep_saving=True) may return with the last epoch in flight (the worker's export runs
    meanwhile); result.saving.close() waits for it and raises a failure in it."""
    data = blobs()
    last_report_began, release = threading.Event(), threading.Event()
    reported = []

    def slow_last_report(result):
        if result.epoch == 4:
            last_report_began.set()
            assert release.wait(timeout=30)
            raise RuntimeError("the store went away")
        reported.append(result.epoch)

    result = run(RESUMABLE_NET, RESUMABLE_TRAINING, data, seed=7, checkpoint_path=tmp_path / "c.pt",
                 on_epoch=slow_last_report, keep_saving=True)
    assert last_report_began.wait(timeout=30)
    assert reported == [1, 2, 3]  # returned with epoch 4's report still waiting
    release.set()
    with pytest.raises(RuntimeError, match="went away"):
        result.saving.close()


def test_checkpoint_of_another_job_is_refused(tmp_path):
    checkpoint = tmp_path / "checkpoint.pt"
    run(MLP, TRAIN_SGD + "epochs: 1", blobs(), seed=1, checkpoint_path=checkpoint)
    with pytest.raises(errors.Internal, match="does not belong"):
        run(MLP, TRAIN_SGD + "epochs: 1", blobs(), seed=2, checkpoint_path=checkpoint)


# --------------------------------------------------------------------------
# Normalization


@pytest.mark.parametrize("kind", ["INPUT_NORMALIZATION_MIN_MAX", "INPUT_NORMALIZATION_STANDARDIZE"])
def test_normalization_is_fitted_on_the_training_split_only(kind):
    data = blobs(n=50)
    data.features[:, 1] = 5.0  # a constant feature: scale falls back to 1
    generator = torch.Generator().manual_seed(0)
    train_idx, val_idx = train.split_indices(50, np.float32(0.2).item(), generator)
    data.features[val_idx.numpy(), 0] = 1000.0  # outliers only in the validation split

    result = run(MLP, TRAIN_SGD + f"epochs: 1 input_normalization: {kind}", data)
    x = data.features[train_idx.numpy()].astype(np.float64)
    norm = result.normalization
    if kind.endswith("MIN_MAX"):
        np.testing.assert_allclose(norm.offset, x.min(0), rtol=1e-6)
        np.testing.assert_allclose(norm.scale[[0, 2, 3]], (x.max(0) - x.min(0))[[0, 2, 3]], rtol=1e-6)
    else:
        np.testing.assert_allclose(norm.offset, x.mean(0), rtol=1e-5)
        np.testing.assert_allclose(norm.scale[[0, 2, 3]], x.std(0)[[0, 2, 3]], rtol=1e-5)
    assert norm.scale[1] == 1.0
    assert norm.offset[0] < 100  # the validation outliers did not leak in
    # The holdout for export's parity check is raw validation examples.
    np.testing.assert_array_equal(result.holdout_features, data.features[val_idx.numpy()])


def test_divergence_fails_with_a_hint():
    rng = np.random.default_rng(0)
    x = rng.normal(size=(20, 3)).astype(np.float32) * 100
    data = train.TrainingData(x, x.sum(1), datasets_pb2.LABEL_KIND_REGRESSION, 1)
    with pytest.raises(errors.InvalidArgument, match="diverged.*smaller learning rate") as info:
        run("layers { dense { units: 1 } }", """loss { mse {} } optimizer { sgd { learning_rate: 1000 } }
            batching { online {} } epochs: 5""", data)
    assert info.value.field == "training.optimizer"


def test_data_lives_where_the_network_runs_on_the_cpu():
    """On the CPU the data is simply where the network runs (the GPU's fit check is in test_gpu)."""
    assert train.data_device(10**12, CPU) == CPU


CNN = """
layers { conv2d { filters: 4 kernel_size: 3 padding_mode: PADDING_MODE_SAME } }
layers { relu {} }
layers { max_pool2d { kernel_size: 2 } }
layers { flatten {} }
layers { dense { units: 3 } }
"""


def image_blobs(n: int = 48) -> train.TrainingData:
    flat = blobs(n, features=72)
    return dataclasses.replace(flat, features=flat.features.reshape(n, 2, 6, 6))  # 2 channels: NCHW != NHWC


def performance(precision: str = "PRECISION_FP32", channels_last: bool = False):
    from gradwire.v1 import training_pb2

    return text_format.Parse(f"precision: {precision} channels_last: {str(channels_last).lower()}", training_pb2.TrainingPerformance())


@pytest.mark.parametrize("device", [CPU, pytest.param(torch.device("cuda"), marks=[pytest.mark.gpu, pytest.mark.skipif(
    not torch.cuda.is_available(), reason="no CUDA GPU on this machine")])], ids=["cpu", "cuda"])
def test_precision_and_channels_last(device):
    """TF32 and channels-last change how the arithmetic runs, not what it computes (TF32 exactly
    on the CPU, where it does not exist; within TF32's 10-bit mantissa on a GPU); bf16 autocast
    changes the results (it is really on) but still trains."""
    training = "loss { cross_entropy {} } optimizer { adam { learning_rate: 0.01 } } batching { mini_batch { batch_size: 8 } } epochs: 4"
    go = lambda perf: train.train(net(CNN), cfg(training), image_blobs(), seed=0, device=device,  # noqa: E731
                                  on_epoch=lambda r: None, performance=perf)
    fp32 = go(performance())
    tf32 = go(performance("PRECISION_TF32"))
    if device.type == "cuda":
        assert torch.backends.cuda.matmul.allow_tf32 and torch.backends.cudnn.allow_tf32  # on for the TF32 job
    nhwc = go(performance(channels_last=True))
    if device.type == "cuda":
        assert not torch.backends.cuda.matmul.allow_tf32  # and off again for the next float32 job
    bf16 = go(performance("PRECISION_BF16"))
    losses = lambda r: [e.train_loss for e in r.history]  # noqa: E731
    if device.type == "cpu":
        assert losses(tf32) == losses(fp32)
        assert_same_weights(weights(tf32.model), weights(fp32.model))
    else:
        assert losses(tf32) == pytest.approx(losses(fp32), rel=1e-2)
    conv = next(m for m in nhwc.model.modules() if isinstance(m, nn.Conv2d))
    assert conv.weight.is_contiguous(memory_format=torch.channels_last) and not conv.weight.is_contiguous()
    assert losses(nhwc) == pytest.approx(losses(fp32), rel=1e-4 if device.type == "cpu" else 1e-3)  # cuDNN picks other kernels
    assert losses(bf16) != losses(fp32) and losses(bf16) == pytest.approx(losses(fp32), rel=0.05)
    assert losses(bf16)[-1] < losses(bf16)[0]


# ---- any training config the validator accepts trains -----------------------------------------

_CFG_FLOATS = st.sampled_from([0.0, 1e-4, 1e-3, 0.01, 0.1, 0.5, 0.9, 0.99, 1.0, 2.0, -0.1])
_CFG_INTS = st.sampled_from([0, 1, 1, 2, 3, 5, -1])


@st.composite
def _set_fields(draw, message) -> None:
    """Each field of ``message`` (oneofs: one member; nested messages: the same) left at its
    default or set to a value around the edges."""
    for oneof in message.DESCRIPTOR.oneofs:
        if oneof.fields and draw(st.integers(0, 4)):
            member = draw(st.sampled_from(list(oneof.fields)))
            getattr(message, member.name).SetInParent() if member.message_type else None
    for field in message.DESCRIPTOR.fields:
        if field.containing_oneof is not None:
            if message.WhichOneof(field.containing_oneof.name) == field.name and field.message_type:
                draw(_set_fields(getattr(message, field.name)))
            continue
        if field.is_repeated or not draw(st.booleans()):
            continue
        if field.message_type:
            getattr(message, field.name).SetInParent()
            draw(_set_fields(getattr(message, field.name)))
        else:
            set_scalar(draw, message, field, _CFG_INTS, _CFG_FLOATS)


@st.composite
def _training_configs(draw) -> network_pb2.TrainingConfig:
    config = network_pb2.TrainingConfig()
    draw(_set_fields(config))
    config.epochs = draw(st.integers(1, 3))  # short runs: what is fuzzed is the rest
    if draw(st.sampled_from([True, True, True, False])):  # mostly a loss that fits class labels, its options fuzzed
        config.loss.cross_entropy.SetInParent()
        draw(_set_fields(config.loss.cross_entropy))
    if not config.HasField("optimizer") or draw(st.sampled_from([False, False, True])):
        getattr(config.optimizer, draw(st.sampled_from(["sgd", "adam", "adamw", "rmsprop"]))).learning_rate = 0.01
    if draw(st.booleans()):
        config.batching.mini_batch.batch_size = draw(st.sampled_from([1, 2, 7, 16, 48, 100]))
    return config


def test_any_training_config_the_validator_accepts_trains():
    """Loss, optimizer, batching, schedule, early stopping, clipping, penalties and normalization of
    any kind and value (edges included), on a network with batch norm and dropout: what
    validate_job accepts trains to the end, or fails with one of the service's own errors (a
    run that diverges, say), never with an exception from torch; what it refuses names a
    training field."""
    data = blobs(48)
    network = net("layers { dense { units: 8 } } layers { batch_norm {} } layers { relu {} } "
                  "layers { dropout { rate: 0.2 } } layers { dense { units: 3 } }")
    seen: collections.Counter = collections.Counter()

    @settings(max_examples=1000, deadline=None, database=None, derandomize=True,
              suppress_health_check=[HealthCheck.too_slow, HealthCheck.filter_too_much])
    @given(_training_configs())
    def check(config):
        try:
            spec.validate_job(network, config, feature_shape=(4,), label_kind=data.label_kind,
                              output_size=data.output_size, example_count=len(data.features))
        except errors.InvalidArgument as exc:
            assert exc.field and exc.field.startswith(("training", "network.layers[")), exc.message  # batch norm vs batching
            seen["refused"] += 1
            seen[f"refused {exc.field.split('.')[1] if '.' in exc.field else exc.field}"] += 1
            return
        try:
            result = train.train(network, config, data, seed=0, device=CPU, on_epoch=lambda r: None)
        except errors.GradwireError as exc:
            seen[f"failed: {type(exc).__name__}"] += 1
            return
        seen["trained"] += 1
        seen[f"loss {config.loss.WhichOneof('kind')}"] += 1
        seen[f"optimizer {config.optimizer.WhichOneof('kind')}"] += 1
        assert 1 <= result.epochs_trained <= config.epochs

    check()
    print(f"training config fuzz: {dict(seen)}")
    assert seen["trained"] >= 20, seen  # 41-70 in runs here: hypothesis draws vary


def test_evaluation_passes_are_bounded_by_memory_not_by_a_fixed_count():
    """Evaluation ran 4,096 examples a pass whatever their size: for 1,500 (3, 128, 128) images
    through a 32-filter convolution that is 3.1 GB an activation, and a server limited to 6 GB of
    address space failed the job after training it. A pass now holds about EVAL_BYTES: four
    float32 copies of one example's largest tensor, attention scores included."""
    conv = net("layers { conv2d { filters: 32 kernel_size: 3 padding_mode: PADDING_MODE_SAME } } layers { relu {} }"
               "layers { flatten {} } layers { dense { units: 2 } }")
    assert train.eval_rows(spec.infer_network(conv, (3, 128, 128)), conv) == (256 << 20) // (16 * 32 * 128 * 128)  # 32
    assert train.eval_rows(spec.infer_network(net(MLP), (4,)), net(MLP)) == train.EVAL_BATCH  # small: as before
    attention = net("layers { transformer_encoder { depth: 1 heads: 4 } } layers { token_pooling { mode: TOKEN_POOLING_MODE_MEAN } } layers { dense { units: 2 } }")
    assert train.eval_rows(spec.infer_network(attention, (512, 16)), attention) == (256 << 20) // (16 * 4 * 512 * 512)
    residual = net("layers { residual_block { layers { dense { units: 100000 } } layers { dense { units: 4 } } } }"
                   "layers { dense { units: 2 } }")
    assert train.eval_rows(spec.infer_network(residual, (4,)), residual) == (256 << 20) // (16 * 100000)  # inside a block


def test_evaluation_in_small_passes_scores_as_in_one(monkeypatch):
    network = MLP
    training = ("loss { cross_entropy {} } optimizer { sgd { learning_rate: 0.1 } } "
                "batching { mini_batch { batch_size: 8 } } epochs: 3 validation_split: 0.25")
    whole = run(network, training, blobs(90))
    monkeypatch.setattr(train, "EVAL_BYTES", 7 * spec.activation_bytes(spec.infer_network(net(network), (4,)), net(network)))
    passes = []
    original = train._evaluate
    monkeypatch.setattr(train, "_evaluate", lambda *a, **k: passes.append(a[-1]) or original(*a, **k))
    small = run(network, training, blobs(90))
    assert set(passes) == {7}  # the validation split (22 examples) in passes of 7
    assert_same_weights(weights(whole.model), weights(small.model))
    for a, b in zip(whole.evaluations, small.evaluations, strict=True):
        assert (a.split, a.example_count) == (b.split, b.example_count)
        assert a.loss == pytest.approx(b.loss, rel=1e-6) and a.accuracy == b.accuracy
        assert np.array_equal(a.confusion_matrix, b.confusion_matrix)
    assert [h.validation_loss for h in whole.history] == pytest.approx([h.validation_loss for h in small.history], rel=1e-6)
    assert len(small.holdout_features) == 7  # the parity check's examples: what a pass holds


def test_a_training_steps_memory_has_a_lower_bound():
    """spec.step_bytes: the inputs that dense, convolution and normalization layers keep for the
    backward pass, a batch of them, and the float32 weights with their gradients."""
    network = net("layers { conv2d { filters: 8 kernel_size: 3 padding_mode: PADDING_MODE_SAME } } layers { relu {} }"
                  "layers { flatten {} } layers { dense { units: 3 } }")
    summary = spec.infer_network(network, (1, 4, 4))
    assert summary.parameter_count == (8 * 9 + 8) + (8 * 16 * 3 + 3)
    kept = 1 * 4 * 4 + 8 * 4 * 4  # the convolution's input, the dense layer's
    assert spec.step_bytes(summary, 10) == 10 * kept * 4 + 2 * 4 * summary.parameter_count
    assert spec.step_bytes(summary, 10, 2) == 10 * kept * 2 + 2 * 4 * summary.parameter_count  # bf16
    residual = net("layers { residual_block { layers { dense { units: 6 } } layers { relu {} } layers { dense { units: 4 } } } }"
                   "layers { dense { units: 2 } }")
    summary = spec.infer_network(residual, (4,))
    assert spec.step_bytes(summary, 5) == 5 * (4 + 6 + 4) * 4 + 2 * 4 * summary.parameter_count


def test_a_job_that_cannot_fit_is_refused_before_it_allocates(monkeypatch):
    monkeypatch.setattr(train, "memory_budget", lambda device: (10_000, "the machine's memory"))
    with pytest.raises(errors.ResourceExhausted) as info:
        run(MLP, "loss { cross_entropy {} } optimizer { sgd { learning_rate: 0.1 } } batching { full_batch {} } epochs: 1",
            blobs(300))
    need = 300 * (4 + 8) * 4 + 2 * 4 * (4 * 8 + 8 + 8 * 3 + 3) + 300 * 4 * 4
    assert info.value.message == (
        f"training.batching: a training step of 300 examples needs at least {need / 2**30:.2f} GiB on cpu (the inputs its "
        "layers keep for the backward pass, the weights and their gradients, the training data), more than the "
        "machine's memory: 0.00 GiB; use smaller batches (mini_batch.batch_size) or a smaller network")
    budget, what = train.memory_budget(CPU)  # the real one: this machine's, or less
    assert 0 < budget <= os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") and what


def test_evaluation_builds_no_autograd_graph():
    """Both evaluation paths run without gradients (a graph would keep every pass's activations)."""
    seen = []

    class Probe(nn.Module):
        def forward(self, x):
            seen.append(torch.is_grad_enabled())
            return x

    x = torch.zeros(5, 3)
    train._evaluate(Probe(), nn.MSELoss(), x, x, classifier=False, rows=2)
    train.evaluate(Probe(), nn.MSELoss(), x, x, split="train", classifier=False, rows=2)
    assert seen == [False] * 6


def test_on_phase_hears_each_epochs_steps_and_validation_then_the_final_evaluation():
    """What the run is doing, for a worker's message when an allocation fails (worker.out_of_memory)."""
    phases: list[str] = []
    run(MLP, "epochs: 2 validation_split: 0.25 batching { mini_batch { batch_size: 16 } } "
        "optimizer { sgd { learning_rate: 0.1 } } loss { cross_entropy {} }", blobs(), on_phase=phases.append)
    assert phases == ["training", "validation", "training", "validation", "evaluation"]
