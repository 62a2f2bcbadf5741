"""ImageClassifier: validation, optimiser groups, LR schedule, temperature schedule,
precision, non-finite loss."""

from __future__ import annotations

import math
import warnings
from types import SimpleNamespace

import lightning.pytorch as L
import pytest
import torch

from lightning_modules import ImageClassifier, SyntheticDataModule
from lightning_modules.callbacks import TemperatureScheduler, linear_temperature, temperature_modules

TINY = {"width": 0.125}


def tiny_dm(**kw):
    args = dict(num_train=64, num_test=16, image_size=16, batch_size=16, val_split=0.25)
    args.update(kw)
    return SyntheticDataModule(**args)


def quick_trainer(tmp_path, **kw):
    args = dict(accelerator="cpu", devices=1, max_epochs=1, limit_train_batches=2, limit_val_batches=1,
                logger=False, enable_checkpointing=False, enable_progress_bar=False, enable_model_summary=False,
                num_sanity_val_steps=0, default_root_dir=str(tmp_path))
    args.update(kw)
    return L.Trainer(**args)


@pytest.mark.parametrize("kw,match", [
    ({"model": "resnet99"}, r"unknown model 'resnet99'; valid: .*cifar_resnet18"),
    ({"conv": "odconv3y"}, r"bad conv spec 'odconv3y'; valid: static"),
    ({"placement": "papr"}, r"unknown placement 'papr'; valid: matched, paper"),
    ({"optimizer": "adam"}, r"unknown optimizer 'adam'; valid: sgd, adamw"),
    ({"schedule": "poly"}, r"unknown schedule 'poly'; valid: cosine, step, constant"),
    ({"schedule": "step"}, r"needs increasing milestones"),
    ({"lr": 0.0}, r"lr must be > 0"),
    ({"model_options": {"wdth": 1.0}, "num_classes": 10}, r"unknown option\(s\) \['wdth'\]"),
    ({"temperature_init": 0.0}, r"temperatures must be > 0"),
])
def test_bad_arguments_name_the_value_and_the_valid_ones(kw, match):
    with pytest.raises(ValueError, match=match):
        ImageClassifier(**kw)


def test_model_is_exposed_with_model_prefix_and_metrics_are_micro():
    m = ImageClassifier("cifar_resnet18", conv="odconv1x", num_classes=10, model_options=TINY)
    assert isinstance(m.model, torch.nn.Module)
    keys = list(m.state_dict())
    assert keys and all(k.startswith("model.") for k in keys)
    assert m.val_top1.average == "micro" and m.val_top5.top_k == 5 and m.train_top1.top_k == 1
    assert m.has_temperature
    static = ImageClassifier(num_classes=10, model_options=TINY)
    assert not static.has_temperature and static.configure_callbacks()[0]._apply(static, 0.0) is None
    assert ImageClassifier(num_classes=3, model_options=TINY).val_top5.top_k == 3


def test_weight_decay_groups():
    m = ImageClassifier(num_classes=10, model_options=TINY, no_decay_norm_bias=True, weight_decay=0.1)
    g = m.parameter_groups()
    assert [x["weight_decay"] for x in g] == [0.1, 0.0]
    assert all(p.ndim > 1 for p in g[0]["params"]) and all(p.ndim <= 1 for p in g[1]["params"])
    assert sum(p.numel() for x in g for p in x["params"]) == sum(p.numel() for p in m.model.parameters())
    m2 = ImageClassifier(num_classes=10, model_options=TINY)
    assert len(m2.parameter_groups()) == 1


def test_lr_schedules():
    cos = ImageClassifier(num_classes=10, model_options=TINY, lr=0.1, schedule="cosine", warmup_epochs=2,
                          min_lr=0.001)
    spe, total = 10, 100
    assert cos.lr_factor(0, spe, total) == pytest.approx(1 / 20)
    assert cos.lr_factor(19, spe, total) == pytest.approx(1.0)
    assert cos.lr_factor(20, spe, total) == pytest.approx(1.0)
    assert cos.lr_factor(60, spe, total) == pytest.approx(0.01 + 0.99 * 0.5)
    assert cos.lr_factor(100, spe, total) == pytest.approx(0.01)
    step = ImageClassifier(num_classes=10, model_options=TINY, schedule="step", milestones=[3, 6], gamma=0.2)
    assert [step.lr_factor(s, spe, total) for s in (0, 29, 30, 59, 60, 99)] == pytest.approx(
        [1, 1, 0.2, 0.2, 0.04, 0.04])
    const = ImageClassifier(num_classes=10, model_options=TINY, schedule="constant")
    assert const.lr_factor(77, spe, total) == 1.0


def test_linear_temperature_matches_official_formula():
    # official ODConv: 1 + max(0, (temp_init - 1) * (total_iter - iter) / total_iter)
    ipe, temp_epoch = 7, 10
    for it in range(0, ipe * 12, 5):
        official = 1.0 + max(0.0, (30.0 - 1.0) * (ipe * temp_epoch - it) / (ipe * temp_epoch))
        assert linear_temperature(it / ipe, 30.0, 1.0, temp_epoch) == pytest.approx(official)
    assert linear_temperature(3.0, 30.0, 1.0, 0) == 1.0


def test_temperature_scheduler_sets_buffers():
    m = ImageClassifier("cifar_resnet18", conv="odconv4x", num_classes=10, model_options=TINY,
                        temperature_epochs=2)
    sched = m.configure_callbacks()[0]
    assert isinstance(sched, TemperatureScheduler)
    mods = temperature_modules(m.model)
    assert mods
    sched.on_fit_start(SimpleNamespace(current_epoch=1), m)
    assert all(float(x.temperature) == pytest.approx(15.5) for x in mods)
    sched._apply(m, 1.5)
    assert all(float(x.temperature) == pytest.approx(30 - 29 * 0.75) for x in mods)
    sched._apply(m, 9.0)
    assert all(float(x.temperature) == 1.0 for x in mods)
    assert "temperature" in "".join(k for k in m.state_dict())  # travels in checkpoints


def test_num_classes_from_datamodule_and_training_moves_temperature(tmp_path):
    m = ImageClassifier("cifar_resnet18", conv="dyconv2x", model_options=TINY, temperature_epochs=4)
    assert m.model is None
    dm = tiny_dm(num_classes=7)
    trainer = quick_trainer(tmp_path)
    trainer.fit(m, dm)
    assert m.hparams.num_classes == 7 and m.model.fc.out_features == 7
    t = float(temperature_modules(m.model)[0].temperature)
    assert t == pytest.approx(linear_temperature(1 / 2, 30, 1, 4))  # last step: batch 1 of 2 (limited), epoch 0
    assert m.model_stats["params"] > 0


@pytest.mark.parametrize("precision", ["bf16-mixed", "16-mixed"])
def test_mixed_precision_on_cpu(tmp_path, precision):
    m = ImageClassifier("cifar_resnet18", conv="odconv4x", num_classes=10, model_options=TINY)
    with warnings.catch_warnings(record=True) as rec:
        warnings.simplefilter("always")
        trainer = quick_trainer(tmp_path, precision=precision)
        trainer.fit(m, tiny_dm())
    # lightning runs "16-mixed" on CPU as bf16 (fp16 AMP is not supported on CPU) and says so
    if precision == "16-mixed":
        assert trainer.precision == "bf16-mixed"
        assert any("bf16-mixed" in str(w.message) for w in rec)
    assert math.isfinite(float(trainer.callback_metrics["val/loss"]))


def test_nonfinite_loss_fails_with_reason(tmp_path):
    m = ImageClassifier(num_classes=10, model_options=TINY)

    class NaNLoss(torch.nn.Module):
        def forward(self, logits, y):
            return logits.sum() * float("nan")

    m.train_loss_fn = NaNLoss()
    with pytest.raises(FloatingPointError, match="non-finite training loss"):
        quick_trainer(tmp_path).fit(m, tiny_dm())
