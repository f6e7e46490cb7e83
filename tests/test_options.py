"""Each training option acts as it says: dropout, spatial dropout, L1, L2 (coupled
and decoupled), early stopping on a plateau, batching modes and drop-last,
optimizers against torch.optim, schedules against torch's schedulers, gradient
clipping, class weights, label smoothing, binary cross-entropy, and the end of
training evaluations against scikit-learn."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from sklearn import metrics
from torch import nn
from torch.optim.optimizer import register_optimizer_step_post_hook

from gradwire.v1 import datasets_pb2
from gradwire_server import nets, train
from test_training import MLP, blobs, cfg, net, run, weights

SGD_FULL = """loss { cross_entropy {} } optimizer { sgd { learning_rate: 0.1 } } batching { full_batch {} }"""


def overlapping(n: int = 200, seed: int = 0) -> train.TrainingData:
    """Two heavily overlapping classes: where the boundary lands is up to the loss."""
    rng = np.random.default_rng(seed)
    labels = np.arange(n) % 2
    x = rng.normal(0, 1, size=(n, 2)) + labels[:, None] * 0.5
    return train.TrainingData(x.astype(np.float32), labels.astype(np.int64), datasets_pb2.LABEL_KIND_CLASSES, 2)


# --------------------------------------------------------------------------
# Regularizers


def test_dropout_acts_in_training_mode_only():
    model = nets.build_network(net("layers { dense { units: 64 } } layers { dropout { rate: 0.5 } }"), (8,))
    x = torch.randn(4, 8)
    model.train()
    a, b = model(x), model(x)
    assert not torch.equal(a, b) and (a == 0).float().mean() > 0.3
    model.eval()
    torch.testing.assert_close(model(x), model[0](x), rtol=0, atol=0)


def test_spatial_dropout_zeroes_whole_channels():
    model = nets.build_network(net("layers { spatial_dropout { rate: 0.5 } }"), (16, 5, 5))
    x = torch.rand(3, 16, 5, 5) + 1  # no zeros of its own
    model.train()
    y = model(x)
    zero_channels = (y == 0).all(dim=(2, 3))
    assert zero_channels.any() and ((y == 0).any(dim=(2, 3)) == zero_channels).all()  # all or nothing per channel
    model.eval()
    assert torch.equal(model(x), x)


def _kernel_norm(result: train.TrainResult) -> float:
    return float(sum(p.detach().norm() ** 2 for p in result.model.parameters() if p.dim() > 1) ** 0.5)


@pytest.mark.parametrize("optimizer", ["sgd { learning_rate: 0.1 weight_decay: %s }",
                                       "adam { learning_rate: 0.01 weight_decay: %s }",
                                       "adamw { learning_rate: 0.01 weight_decay: %s }"])
def test_l2_weight_decay_shrinks_the_weight_norm(optimizer):
    training = "loss { cross_entropy {} } batching { mini_batch { batch_size: 20 } } epochs: 15 "
    plain = run(MLP, training + f"optimizer {{ {optimizer % 0} }}", blobs(), seed=3)
    decayed = run(MLP, training + f"optimizer {{ {optimizer % 2} }}", blobs(), seed=3)
    assert _kernel_norm(decayed) < 0.8 * _kernel_norm(plain)


def test_early_stopping_stops_at_the_expected_epoch_on_a_plateau():
    # A learning rate of 1e-30 changes nothing: the loss is flat from epoch 1, so with patience 3 the
    # run stops after epoch 4 and keeps epoch 1's weights (which equal the initial ones).
    training = ("loss { cross_entropy {} } optimizer { sgd { learning_rate: 1e-30 } } batching { full_batch {} } "
                "epochs: 20 early_stopping { patience: 3 min_delta: 0.001 monitor: METRIC_TRAIN_LOSS }")
    result = run(MLP, training, blobs(), seed=5)
    assert result.epochs_trained == 4 and result.best_epoch == 1
    torch.manual_seed(5)
    initial = nets.build_network(net(MLP), (4,))
    for key, value in weights(initial).items():
        torch.testing.assert_close(result.model.state_dict()[key], value)


def test_early_stopping_mode_max_on_a_loss_waits_for_it_to_rise():
    # mode MAX on the train loss: the loss falls every epoch, so no epoch after the first "improves".
    training = SGD_FULL + " epochs: 10 early_stopping { patience: 2 monitor: METRIC_TRAIN_LOSS mode: METRIC_MODE_MAX }"
    result = run(MLP, training, blobs())
    assert result.epochs_trained == 3 and result.best_epoch == 1


# --------------------------------------------------------------------------
# Batching


def _count_steps(training: str, data: train.TrainingData) -> tuple[int, train.TrainResult]:
    steps = []
    handle = register_optimizer_step_post_hook(lambda *a: steps.append(1))
    try:
        result = run(MLP, training, data)
    finally:
        handle.remove()
    return len(steps), result


@pytest.mark.parametrize("batching, steps_per_epoch, examples", [
    ("full_batch {}", 1, 60), ("online {}", 60, 60), ("mini_batch { batch_size: 16 }", 4, 60),
    ("mini_batch { batch_size: 16 drop_last: true }", 3, 48),
])
def test_batching_modes_take_the_expected_steps(batching, steps_per_epoch, examples):
    training = f"loss {{ cross_entropy {{}} }} optimizer {{ sgd {{ learning_rate: 0.01 }} }} batching {{ {batching} }} epochs: 2"
    steps, result = _count_steps(training, blobs())
    assert steps == 2 * steps_per_epoch  # optimizer.step() calls, counted by torch's global hook
    assert [h.iterations for h in result.history] == [steps_per_epoch] * 2
    assert [h.examples for h in result.history] == [examples] * 2


# --------------------------------------------------------------------------
# Optimizers: the first steps equal torch.optim's with the same seed and gradients

OPTIMIZERS = [
    ("sgd { learning_rate: 0.1 momentum: 0.9 nesterov: true weight_decay: 0.01 }",
     lambda p: torch.optim.SGD(p, lr=0.1, momentum=0.9, nesterov=True, weight_decay=0.01)),
    ("sgd { learning_rate: 0.05 momentum: 0.5 }", lambda p: torch.optim.SGD(p, lr=0.05, momentum=0.5)),
    ("adam { learning_rate: 0.01 beta1: 0.8 beta2: 0.99 weight_decay: 0.1 }",
     lambda p: torch.optim.Adam(p, lr=0.01, betas=(0.8, 0.99), weight_decay=0.1)),
    ("adamw { learning_rate: 0.01 weight_decay: 0.2 }", lambda p: torch.optim.AdamW(p, lr=0.01, weight_decay=0.2)),
    ("adamw { learning_rate: 0.01 }", lambda p: torch.optim.AdamW(p, lr=0.01, weight_decay=0.01)),
    ("rmsprop { learning_rate: 0.01 alpha: 0.9 momentum: 0.3 }",
     lambda p: torch.optim.RMSprop(p, lr=0.01, alpha=0.9, momentum=0.3)),
    ("adagrad { learning_rate: 0.1 lr_decay: 0.01 weight_decay: 0.001 }",
     lambda p: torch.optim.Adagrad(p, lr=0.1, lr_decay=0.01, weight_decay=0.001)),
]


FUSED = ("sgd", "adam", "adamw", "adagrad")  # torch's fused implementation on the CPU (make_optimizer)


@pytest.mark.parametrize("text, reference", OPTIMIZERS, ids=[t.split()[0] for t, _ in OPTIMIZERS])
def test_optimizer_matches_torch_optim(text, reference):
    """A small network's first steps equal torch.optim's default implementation's, to the bit."""
    config = cfg(f"optimizer {{ {text} }}").optimizer
    torch.manual_seed(0)
    ours = [nn.Parameter(torch.randn(3, 4)), nn.Parameter(torch.randn(4))]
    theirs = [nn.Parameter(p.detach().clone()) for p in ours]
    opt_a, opt_b = train.make_optimizer(config, ours), reference(theirs)
    assert not opt_a.defaults.get("fused") and not opt_b.defaults.get("fused")  # too small to pay for threads
    same_steps(ours, opt_a, theirs, opt_b, steps=4, rtol=0, atol=0)


@pytest.mark.parametrize("text, reference", OPTIMIZERS, ids=[t.split()[0] for t, _ in OPTIMIZERS])
def test_a_big_network_steps_with_the_fused_optimizers(text, reference):
    """From FUSED_CPU_MIN_PARAMETERS on, SGD, Adam, AdamW and Adagrad step with torch's fused
    implementation, whose steps equal the default one's to float32 rounding."""
    config = cfg(f"optimizer {{ {text} }}").optimizer
    torch.manual_seed(0)
    ours = [nn.Parameter(torch.randn(1024, train.FUSED_CPU_MIN_PARAMETERS // 1024)), nn.Parameter(torch.randn(4))]
    theirs = [nn.Parameter(p.detach().clone()) for p in ours]
    opt_a, opt_b = train.make_optimizer(config, ours), reference(theirs)
    fused = text.split()[0] in FUSED
    assert bool(opt_a.defaults.get("fused")) is fused and not opt_b.defaults.get("fused")
    tolerance = {"rtol": 1e-5, "atol": 1e-6} if fused else {"rtol": 0, "atol": 0}
    same_steps(ours, opt_a, theirs, opt_b, steps=4, **tolerance)


def test_channels_last_parameters_take_the_default_implementation():
    config = cfg("optimizer { adam { learning_rate: 0.01 } }").optimizer
    conv = nn.Conv2d(64, train.FUSED_CPU_MIN_PARAMETERS // (64 * 9) + 1, 3).to(memory_format=torch.channels_last)
    assert not conv.weight.is_contiguous() and conv.weight.numel() >= train.FUSED_CPU_MIN_PARAMETERS
    assert not train.make_optimizer(config, conv.parameters()).defaults.get("fused")


def same_steps(ours, opt_a, theirs, opt_b, *, steps: int, **tolerance) -> None:
    """Steps both optimizers with the same random gradients; their parameters must agree after each."""
    for step in range(steps):
        grads = [torch.randn_like(p) for p in ours]
        for params, opt in ((ours, opt_a), (theirs, opt_b)):
            for p, g in zip(params, grads):
                p.grad = g.clone()
            opt.step()
        for a, b in zip(ours, theirs):
            torch.testing.assert_close(a, b, msg=f"step {step + 1}", **tolerance)


def test_gradient_clipping_bounds_the_update():
    training = SGD_FULL.replace("0.1", "1.0") + " epochs: 1 "
    free = run(MLP, training, blobs(), seed=2)
    clipped = run(MLP, training + "gradient_clip_norm: 0.01", blobs(), seed=2)
    torch.manual_seed(2)
    initial = nets.build_network(net(MLP), (4,))
    moved = torch.cat([(a - b).detach().ravel() for a, b in zip(clipped.model.parameters(), initial.parameters())])
    assert moved.norm() == pytest.approx(0.01, rel=1e-4)  # one SGD step of lr 1 with a gradient of norm 0.01
    assert clipped.history[0].max_gradient_norm > 0.01 and free.history[0].max_gradient_norm is None


# --------------------------------------------------------------------------
# Schedules: the learning rate of each epoch


def _rates(schedule: str, epochs: int, optimizer: str = "sgd { learning_rate: 0.1 }", data=None,
           extra: str = "") -> list[float]:
    training = (f"loss {{ cross_entropy {{}} }} optimizer {{ {optimizer} }} batching {{ full_batch {{}} }} "
                f"epochs: {epochs} schedule {{ {schedule} }} {extra}")
    result = run(MLP, training, data or blobs())
    return [h.learning_rate for h in result.history], result


def _torch_rates(make_scheduler, epochs: int, metrics_=None) -> list[float]:
    opt = torch.optim.SGD([nn.Parameter(torch.zeros(1))], lr=0.1)
    scheduler, rates = make_scheduler(opt), []
    for e in range(epochs):
        rates.append(opt.param_groups[0]["lr"])
        opt.step()
        scheduler.step(*([metrics_[e]] if metrics_ else []))
    return rates


def test_step_schedule():
    rates, _ = _rates("step { step_size: 3 gamma: 0.5 }", 8)
    expected = _torch_rates(lambda o: torch.optim.lr_scheduler.StepLR(o, step_size=3, gamma=0.5), 8)
    assert rates == pytest.approx(expected, rel=1e-6)
    assert rates[:4] == pytest.approx([0.1, 0.1, 0.1, 0.05])


def test_exponential_schedule():
    rates, _ = _rates("exponential { gamma: 0.8 }", 6)
    expected = _torch_rates(lambda o: torch.optim.lr_scheduler.ExponentialLR(o, gamma=0.8), 6)
    assert rates == pytest.approx(expected, rel=1e-6)


def test_cosine_schedule_without_warmup_is_torchs_cosine_annealing():
    rates, _ = _rates("cosine { min_learning_rate: 0.01 }", 6)
    expected = _torch_rates(lambda o: torch.optim.lr_scheduler.CosineAnnealingLR(o, T_max=6, eta_min=0.01), 6)
    assert rates == pytest.approx(expected, rel=1e-6)


def test_cosine_schedule_with_linear_warmup():
    rates, _ = _rates("cosine { warmup_epochs: 3 }", 7)
    warm = [0.1 * e / 4 for e in (1, 2, 3)]
    cos = [0.1 * (1 + math.cos(math.pi * t / 4)) / 2 for t in range(4)]
    assert rates == pytest.approx(warm + cos, rel=1e-6)


def test_reduce_on_plateau_matches_torch():
    # A rate of 1e-30 keeps the loss flat: every epoch after the first is a plateau epoch.
    rates, result = _rates("reduce_on_plateau { factor: 0.5 patience: 2 monitor: METRIC_TRAIN_LOSS "
                           "min_learning_rate: 1e-31 }", 8, optimizer="sgd { learning_rate: 1e-30 }")
    losses = [h.train_loss for h in result.history]
    opt = torch.optim.SGD([nn.Parameter(torch.zeros(1))], lr=1e-30)
    # torch's patience p reduces after p + 1 bad epochs; ours (like Keras) after p.
    scheduler = torch.optim.lr_scheduler.ReduceLROnPlateau(opt, factor=0.5, patience=1, threshold=0,
                                                           threshold_mode="abs", min_lr=1e-31)
    expected = []
    for loss in losses:
        expected.append(opt.param_groups[0]["lr"])
        scheduler.step(loss)
    assert rates == pytest.approx(expected, rel=1e-6)
    assert rates[0] == pytest.approx(1e-30) and rates[-1] == pytest.approx(1e-31)  # reduced, then floored


# --------------------------------------------------------------------------
# Losses


def _share_predicted(result: train.TrainResult, data: train.TrainingData, cls: int) -> float:
    with torch.no_grad():
        out = result.model(torch.from_numpy(data.features))
    return float((train.predicted_classes(out) == cls).float().mean())


def test_class_weights_shift_predictions_toward_the_weighted_class():
    data = overlapping()
    training = ("optimizer { adam { learning_rate: 0.05 } } batching { full_batch {} } epochs: 60 "
                "loss { cross_entropy { %s } }")
    plain = run(MLP.replace("units: 3", "units: 2"), training % "", data)
    weighted = run(MLP.replace("units: 3", "units: 2"), training % "class_weights: [1, 5]", data)
    assert _share_predicted(weighted, data, 1) > _share_predicted(plain, data, 1) + 0.2


def test_label_smoothing_softens_the_confidence():
    data = blobs()
    training = "optimizer { adam { learning_rate: 0.05 } } batching { full_batch {} } epochs: 80 loss { cross_entropy { %s } }"
    sharp, smooth = (run(MLP, training % extra, data) for extra in ("", "label_smoothing: 0.3"))

    def confidence(result):
        with torch.no_grad():
            return float(torch.softmax(result.model(torch.from_numpy(data.features)), 1).max(1).values.mean())

    assert confidence(smooth) < confidence(sharp) - 0.05


def test_binary_cross_entropy_trains_one_logit_and_exports_sigmoid(tmp_path):
    import onnxruntime as ort

    from gradwire_server import export

    data = overlapping()
    net_text = "layers { dense { units: 8 activation { tanh {} } } } layers { dense { units: 1 } }"
    result = run(net_text, "loss { binary_cross_entropy {} } optimizer { adam { learning_rate: 0.05 } } "
                           "batching { mini_batch { batch_size: 32 } } epochs: 30 validation_split: 0.2", data)
    assert result.binary and result.history[-1].validation_accuracy > 0.55
    path = tmp_path / "m.onnx"
    export.export_onnx(result, input_shape=(2,), label_kind=datasets_pb2.LABEL_KIND_CLASSES, class_names=["no", "yes"],
                       path=path)
    (probs,) = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"]).run(None, {"features": data.features[:7]})
    with torch.no_grad():
        p = torch.sigmoid(result.model(torch.from_numpy(data.features[:7])))[:, 0].numpy()
    np.testing.assert_allclose(probs, np.stack([1 - p, p], 1), atol=1e-5)


@pytest.mark.parametrize("loss, reference", [("mae {}", nn.L1Loss()), ("huber { delta: 0.5 }", nn.HuberLoss(delta=0.5)),
                                             ("mse {}", nn.MSELoss())])
def test_regression_losses_are_what_they_say(loss, reference):
    fn = train.make_loss(cfg(f"loss {{ {loss} }}").loss, 2)
    a, b = torch.randn(5, 2), torch.randn(5, 2) * 3
    assert float(fn(a, b)) == pytest.approx(float(reference(a, b)))


# --------------------------------------------------------------------------
# Evaluation against scikit-learn


def test_classifier_evaluation_matches_sklearn():
    data, test = blobs(90, classes=3, seed=1), blobs(30, classes=3, seed=1)
    test.features = test.features + np.random.default_rng(9).normal(0, 2, test.features.shape).astype(np.float32)
    result = run(MLP, "loss { cross_entropy {} } optimizer { adam { learning_rate: 0.01 } } top_k: 2 "
                      "batching { mini_batch { batch_size: 16 } } epochs: 3 validation_split: 0.2", data,
                 test_data=test)
    assert [e.split for e in result.evaluations] == ["train", "validation", "test"]
    e = result.evaluations[2]
    with torch.no_grad():
        probs = torch.softmax(result.model(torch.from_numpy(test.features)), 1).numpy()
    pred = probs.argmax(1)
    assert e.example_count == 30 and e.accuracy == pytest.approx(metrics.accuracy_score(test.labels, pred))
    assert e.top_k == 2 and e.top_k_accuracy == pytest.approx(metrics.top_k_accuracy_score(test.labels, probs, k=2))
    precision, recall, f1, support = metrics.precision_recall_fscore_support(test.labels, pred, labels=[0, 1, 2],
                                                                             zero_division=0)
    np.testing.assert_allclose(e.precision, precision)
    np.testing.assert_allclose(e.recall, recall)
    np.testing.assert_allclose(e.f1, f1)
    assert e.support == support.tolist()
    np.testing.assert_array_equal(e.confusion_matrix, metrics.confusion_matrix(test.labels, pred, labels=[0, 1, 2]))
    assert e.loss == pytest.approx(metrics.log_loss(test.labels, probs, labels=[0, 1, 2]), rel=1e-4)


def test_regression_evaluation_matches_sklearn():
    rng = np.random.default_rng(0)
    x = rng.normal(size=(80, 3)).astype(np.float32)
    y = np.stack([x @ [1.0, -2.0, 0.5], x[:, 0] ** 2], 1).astype(np.float32)
    data = train.TrainingData(x, y, datasets_pb2.LABEL_KIND_REGRESSION, 2)
    result = run("layers { dense { units: 16 activation { silu {} } } } layers { dense { units: 2 } }",
                 "loss { mse {} } optimizer { adam { learning_rate: 0.02 } } batching { full_batch {} } epochs: 40 "
                 "validation_split: 0.25", data)
    e = result.evaluations[1]
    with torch.no_grad():
        pred = result.model(torch.from_numpy(x)).numpy()
    _, val_idx = train.split_indices(80, cfg("validation_split: 0.25").validation_split, torch.Generator().manual_seed(0))
    truth, guess = y[val_idx.numpy()], pred[val_idx.numpy()]
    assert e.split == "validation" and e.accuracy is None
    assert e.mse == pytest.approx(metrics.mean_squared_error(truth, guess), rel=1e-5)
    assert e.mae == pytest.approx(metrics.mean_absolute_error(truth, guess), rel=1e-5)
    assert e.r2 == pytest.approx(metrics.r2_score(truth, guess), rel=1e-5)
    assert e.r2 > 0.5


def multi_label(n: int = 120, seed: int = 0) -> train.TrainingData:
    """Three independent labels, each a linear rule of the features: any number per example."""
    rng = np.random.default_rng(seed)
    x = rng.normal(size=(n, 4)).astype(np.float32)
    labels = np.stack([x[:, 0] > 0, x[:, 1] + x[:, 2] > 0, x[:, 3] < -0.5], 1).astype(np.float32)
    return train.TrainingData(x, labels, datasets_pb2.LABEL_KIND_MULTI_LABEL, 3)


def test_multi_label_binary_cross_entropy_trains_sigmoids_and_exports_them(tmp_path):
    import onnxruntime as ort

    from gradwire_server import export

    data = multi_label()
    result = run("layers { dense { units: 16 activation { relu {} } } } layers { dense { units: 3 } }",
                 "loss { binary_cross_entropy {} } optimizer { adam { learning_rate: 0.03 } } "
                 "batching { mini_batch { batch_size: 16 } } epochs: 40 validation_split: 0.25", data)
    assert result.multi_label and not result.binary
    e = result.evaluations[1]  # validation: exact-match accuracy and per-label scores
    with torch.no_grad():
        logits = result.model(torch.from_numpy(data.features)).numpy()
    _, val_idx = train.split_indices(120, cfg("validation_split: 0.25").validation_split, torch.Generator().manual_seed(0))
    pred, truth = logits[val_idx.numpy()] > 0, data.labels[val_idx.numpy()] > 0.5
    assert e.accuracy == pytest.approx((pred == truth).all(1).mean()) and e.accuracy > 0.6
    precision, recall, f1, support = metrics.precision_recall_fscore_support(truth, pred, zero_division=0)
    np.testing.assert_allclose(e.f1, f1)
    np.testing.assert_allclose(e.precision, precision)
    assert e.support == support.tolist() and e.confusion_matrix is None

    path = tmp_path / "m.onnx"
    export.export_onnx(result, input_shape=(4,), label_kind=datasets_pb2.LABEL_KIND_MULTI_LABEL,
                       class_names=["a", "b", "c"], path=path)
    (probs,) = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"]).run(
        ["probabilities"], {"features": data.features[:7]})
    np.testing.assert_allclose(probs, 1 / (1 + np.exp(-logits[:7])), atol=1e-5)  # a sigmoid per label
