"""ImageClassifier: validation, optimiser groups, LR schedule, temperature schedule,
precision, non-finite loss."""

from __future__ import annotations

import math
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


def lr_of_record(step: int, steps_per_epoch: int, total_steps: int, lr: float, warmup_epochs: float = 0.0,
                 schedule: str = "cosine", min_lr: float = 0.0, milestones=(), gamma: float = 0.1) -> float:
    """The per-step learning rate as the suite defined it before it used torch's schedulers
    (a LambdaLR of this factor): linear warm-up ``(step + 1) / W``, then cosine to ``min_lr``,
    steps of ``gamma`` at the ``milestones`` epochs, or constant."""
    warm = warmup_epochs * steps_per_epoch
    if warm > 0 and step < warm:
        return lr * ((step + 1) / warm)
    if schedule == "cosine":
        t = min(max((step - warm) / max(total_steps - warm, 1), 0.0), 1.0)
        floor = min_lr / lr
        return lr * (floor + (1.0 - floor) * 0.5 * (1.0 + math.cos(math.pi * t)))
    if schedule == "step":
        return lr * gamma ** sum(step / steps_per_epoch >= m for m in milestones)
    return lr


def scheduled_lrs(module: ImageClassifier, steps_per_epoch: int, total_steps: int) -> list[float]:
    """The learning rate of each optimiser step, as Lightning drives the scheduler (stepped
    after every optimiser step)."""
    param = torch.nn.Parameter(torch.zeros(1))
    opt = torch.optim.SGD([param], lr=module.hparams.lr)
    sched = module.build_lr_scheduler(opt, steps_per_epoch, total_steps)
    lrs = []
    for _ in range(total_steps):
        lrs.append(opt.param_groups[0]["lr"])
        opt.step()
        sched.step()
    return lrs


# (ImageClassifier arguments, steps per epoch, epochs): the recipe of record (experiments/
# cifar10_resnet18.yaml: 45k training images, batch 128, 200 epochs) and the warm-up recipe
# (sweeps/cifar10_cpu.yaml: lr 0.2, 0.5 warm-up epochs, 6 epochs), then min_lr, step, constant.
RECIPES = [
    ({"lr": 0.1}, 352, 200),
    ({"lr": 0.2, "warmup_epochs": 0.5}, 352, 6),
    ({"lr": 0.1, "warmup_epochs": 2, "min_lr": 0.001}, 10, 10),
    ({"lr": 0.1, "warmup_epochs": 1, "schedule": "step", "milestones": [3, 6], "gamma": 0.2}, 10, 10),
    ({"lr": 0.05, "warmup_epochs": 3, "schedule": "step", "milestones": [2, 5], "gamma": 0.5}, 7, 8),
    ({"lr": 0.1, "warmup_epochs": 1.5, "schedule": "constant"}, 4, 3),
]


@pytest.mark.parametrize("kw,spe,epochs", RECIPES)
def test_torch_schedulers_give_the_learning_rates_of_record(kw, spe, epochs):
    m = ImageClassifier(num_classes=10, model_options=TINY, **kw)
    total = spe * epochs
    got = scheduled_lrs(m, spe, total)
    want = [lr_of_record(s, spe, total, **kw) for s in range(total)]
    # The optimiser applies the rate in float32 (the parameters' dtype): equal there, every step.
    assert torch.equal(torch.tensor(got, dtype=torch.float32), torch.tensor(want, dtype=torch.float32))
    assert got == pytest.approx(want, rel=1e-10, abs=1e-14)


def test_fractional_warmup_is_rounded_up_to_whole_steps():
    # 0.5 epochs of 7 steps: 4 warm-up steps at lr * (s + 1) / 4, then the cosine from lr.
    m = ImageClassifier(num_classes=10, model_options=TINY, lr=0.1, warmup_epochs=0.5)
    got = scheduled_lrs(m, 7, 14)
    assert got[:5] == pytest.approx([0.025, 0.05, 0.075, 0.1, 0.1])
    assert got[4:] == pytest.approx([0.05 * (1 + math.cos(math.pi * k / 10)) for k in range(10)])
    assert max(got) == pytest.approx(0.1)


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


def test_bf16_mixed_fit_on_cpu(tmp_path):
    m = ImageClassifier("cifar_resnet18", conv="odconv4x", num_classes=10, model_options=TINY)
    trainer = quick_trainer(tmp_path, precision="bf16-mixed")
    trainer.fit(m, tiny_dm())
    assert math.isfinite(float(trainer.callback_metrics["val/loss"]))
    assert all(p.dtype == torch.float32 for p in m.parameters())  # bf16 compute, float32 weights


def test_bf16_validation_metrics_are_the_means_over_every_image(tmp_path):
    """Under bf16-mixed (autocast on CPU) the logged val/loss and val/acc_top1 are means over
    every validation image, the smaller last batch weighted by its size: recomputed here from
    the autocast logits with the cross-entropy written out, in float64."""
    m = ImageClassifier("cifar_resnet18", conv="odconv4x", num_classes=10, model_options=TINY)
    dm = tiny_dm(batch_size=6)  # 20 validation images: batches of 6, 6, 6 and 2
    trainer = quick_trainer(tmp_path, precision="bf16-mixed", limit_val_batches=1.0)
    (res,) = trainer.validate(m, dm)
    m.eval()
    total, wins, wins_or_ties, sizes = 0.0, 0, 0, []
    with torch.no_grad(), torch.autocast("cpu", dtype=torch.bfloat16):
        for batch in dm.val_dataloader():
            x = dm.transform_batch(batch[0], batch[2], False)  # eval: normalisation only
            y = batch[1]
            z = m(x).double()
            target = z[torch.arange(len(y)), y]
            total += float((torch.logsumexp(z, dim=1) - target).sum())
            others = z.scatter(1, y[:, None], -math.inf).amax(dim=1)
            wins += int((target > others).sum())
            wins_or_ties += int((target >= others).sum())
            sizes.append(len(y))
    n = sum(sizes)
    assert sizes == [6, 6, 6, 2]
    assert res["val/loss"] == pytest.approx(total / n, rel=1e-5)
    assert wins / n - 1e-6 <= res["val/acc_top1"] <= wins_or_ties / n + 1e-6  # bf16 logits can tie


def test_nonfinite_loss_fails_with_reason(tmp_path):
    m = ImageClassifier(num_classes=10, model_options=TINY)

    class NaNLoss(torch.nn.Module):
        def forward(self, logits, y):
            return logits.sum() * float("nan")

    m.train_loss_fn = NaNLoss()
    with pytest.raises(FloatingPointError, match="non-finite training loss"):
        quick_trainer(tmp_path).fit(m, tiny_dm())
