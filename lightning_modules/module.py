"""``ImageClassifier``: one model from ``odconv.build_model`` trained with cross-entropy."""

from __future__ import annotations

import math
from typing import Any, get_args

import lightning.pytorch as L
import torch
from jsonargparse.typing import NonNegativeFloat, PositiveFloat
from lightning.pytorch.utilities import rank_zero_info
from torch import nn
from torch.optim.lr_scheduler import ConstantLR, CosineAnnealingLR, LinearLR, LRScheduler, MultiStepLR, SequentialLR
from torchmetrics.classification import MulticlassAccuracy

from odconv.counting import count_macs, count_params
from odconv.models import build_model, list_models

from .arg_types import ConvSpecName, ModelName, OptimizerName, Placement, ScheduleName
from .callbacks import TemperatureScheduler

OPTIMIZERS: tuple[str, ...] = get_args(OptimizerName)
SCHEDULES: tuple[str, ...] = get_args(ScheduleName)
#: The name under which the learning rate is logged (by ``LearningRateMonitor``).
LR_LOG_NAME = "train/lr"


def attached_trainer(module: L.LightningModule) -> L.Trainer | None:
    """The Trainer ``module`` is attached to, or None. ``LightningModule.trainer`` raises
    ``RuntimeError`` when the module is attached to none (checked against lightning 2.6.6);
    this is the one place that relies on it."""
    try:
        return module.trainer
    except RuntimeError:
        return None


def _check_choice(what: str, value: Any, valid: tuple[str, ...]) -> None:
    if value not in valid:
        raise ValueError(f"unknown {what} {value!r}; valid: {', '.join(valid)}")


class ImageClassifier(L.LightningModule):
    """Image classification with any registered model and conv spec.

    Args:
        model: a name from ``odconv.list_models()`` (e.g. ``cifar_resnet18``, ``resnet18``).
        conv: a conv spec (``static``, ``odconv4x``, ``odconv1x-channel+spatial``, ``condconv8x``...).
        placement: ``matched`` (default: the spec where the official repo puts ODConv) or ``paper``.
        model_options: extra keyword options of ``build_model`` (``width``, ``dropout``,
            ``reduction``, ``strategy``...).
        num_classes: output classes. ``None`` (the default): taken from the DataModule (the CLI
            links ``data.num_classes`` into it; a plain ``Trainer`` fit builds the model in
            ``setup`` from ``trainer.datamodule.num_classes``). The value used is stored in the
            checkpoint's hyperparameters, so ``load_from_checkpoint`` needs no DataModule.
        optimizer: ``sgd`` (momentum, nesterov) or ``adamw`` (betas).
        lr, momentum, nesterov, weight_decay, betas: optimiser settings. ``lr`` is the LR of the
            whole (per-process batch x processes) batch: scale it yourself when changing either.
        no_decay_norm_bias: no weight decay on 1-D parameters (norm weights/biases and biases).
        schedule: ``cosine`` (per step, to ``min_lr`` at the end), ``step`` (x ``gamma`` at each
            epoch in ``milestones``) or ``constant``; all after ``warmup_epochs`` of linear warm-up
            (rounded up to whole steps). Built from torch schedulers, stepped every optimiser
            step: see :meth:`build_lr_scheduler`. The scheduler is named ``train/lr``: a
            ``LearningRateMonitor`` (the CLI adds one) logs the rate under that name.
        label_smoothing: of the cross-entropy (training loss only; val/test loss is plain CE).
        temperature_init, temperature_final, temperature_epochs: the dynamic-conv attention
            temperature goes linearly from init to final over the first ``temperature_epochs``
            epochs, updated every step (official ODConv: 30 -> 1 over 10 epochs). The schedule is
            the conv family's (:meth:`odconv.families.ConvFamily.temperature_schedule`, given
            these three values): ODConv and DyConv as just said; none for static and CondConv;
            a registered family may use its own (e.g. KernelWarehouse: 1 -> 0). Applied by a
            :class:`TemperatureScheduler` callback that this module adds itself.
            ``temperature_epochs=0`` holds ``temperature_final`` from the start.
        stop_on_nonfinite: raise ``FloatingPointError`` when the training loss is NaN/inf (a
            diverged run fails with that reason instead of training on garbage).
    """

    def __init__(self, model: ModelName = "cifar_resnet18", conv: ConvSpecName = "static",
                 placement: Placement = "matched", model_options: dict[str, Any] | None = None,
                 num_classes: int | None = None, optimizer: OptimizerName = "sgd", lr: PositiveFloat = 0.1,
                 momentum: NonNegativeFloat = 0.9, nesterov: bool = True, weight_decay: NonNegativeFloat = 5e-4,
                 betas: tuple[float, float] = (0.9, 0.999), no_decay_norm_bias: bool = False,
                 schedule: ScheduleName = "cosine", warmup_epochs: NonNegativeFloat = 0.0,
                 milestones: list[int] | None = None, gamma: PositiveFloat = 0.1, min_lr: NonNegativeFloat = 0.0,
                 label_smoothing: NonNegativeFloat = 0.0, temperature_init: PositiveFloat = 30.0,
                 temperature_final: PositiveFloat = 1.0, temperature_epochs: NonNegativeFloat = 10.0,
                 stop_on_nonfinite: bool = True) -> None:
        super().__init__()
        # The command line checks the typed arguments while parsing; the checks here serve
        # Python callers (cheap, before any data or training, with the same messages).
        _check_choice("model", model, tuple(list_models()))  # now: a model may be registered after import
        conv = str(ConvSpecName(conv))
        _check_choice("placement", placement, get_args(Placement))
        _check_choice("optimizer", optimizer, OPTIMIZERS)
        _check_choice("schedule", schedule, SCHEDULES)
        # Plain builtins in the hyperparameters (hparams.yaml, checkpoints), not the parser's types.
        model, placement, optimizer, schedule = str(model), str(placement), str(optimizer), str(schedule)
        lr, momentum, weight_decay = float(lr), float(momentum), float(weight_decay)
        gamma, min_lr, warmup_epochs, label_smoothing = float(gamma), float(min_lr), float(warmup_epochs), \
            float(label_smoothing)
        temperature_init, temperature_final = float(temperature_init), float(temperature_final)
        temperature_epochs = float(temperature_epochs)
        if not lr > 0:
            raise ValueError(f"lr must be > 0, got {lr}")
        if weight_decay < 0 or not 0 <= momentum < 1 or not 0 <= label_smoothing < 1:
            raise ValueError(f"need weight_decay >= 0, 0 <= momentum < 1, 0 <= label_smoothing < 1; got "
                             f"{weight_decay}, {momentum}, {label_smoothing}")
        if warmup_epochs < 0 or min_lr < 0 or gamma <= 0:
            raise ValueError(f"need warmup_epochs >= 0, min_lr >= 0, gamma > 0; got {warmup_epochs}, {min_lr}, {gamma}")
        milestones = [int(m) for m in milestones or []]
        if schedule == "step" and (not milestones or sorted(milestones) != milestones):
            raise ValueError(f"schedule 'step' needs increasing milestones (epochs), got {milestones}")
        if model_options is not None and not isinstance(model_options, dict):
            raise ValueError(f"model_options must be a mapping, got {model_options!r}")
        self._temperature = TemperatureScheduler(temperature_init, temperature_final, temperature_epochs, conv=conv)
        self.save_hyperparameters()
        self.model: nn.Module | None = None
        self.model_stats: dict[str, Any] = {}
        if num_classes is not None:
            self._build(num_classes)

    # -- construction --------------------------------------------------------------------
    def _build(self, num_classes: int) -> None:
        hp = self.hparams
        self.model = build_model(hp.model, num_classes=num_classes, conv=hp.conv, placement=hp.placement,
                                        **dict(hp.model_options or {}))
        self.hparams.num_classes = num_classes
        top5 = min(5, num_classes)
        self.train_top1 = MulticlassAccuracy(num_classes, top_k=1, average="micro")
        self.val_top1 = MulticlassAccuracy(num_classes, top_k=1, average="micro")
        self.val_top5 = MulticlassAccuracy(num_classes, top_k=top5, average="micro")
        self.test_top1 = MulticlassAccuracy(num_classes, top_k=1, average="micro")
        self.test_top5 = MulticlassAccuracy(num_classes, top_k=top5, average="micro")
        self.train_loss_fn = nn.CrossEntropyLoss(label_smoothing=hp.label_smoothing)
        self.eval_loss_fn = nn.CrossEntropyLoss()

    def setup(self, stage: str) -> None:
        if self.model is None:
            dm = getattr(self.trainer, "datamodule", None)
            n = getattr(dm, "num_classes", None)
            if not n:
                raise ValueError("ImageClassifier(num_classes=None) needs a DataModule with num_classes "
                                 "(or pass num_classes)")
            self._build(int(n))

    def configure_callbacks(self):
        # Always attached (the model may only be built in setup); a no-op without temperature.
        return [self._temperature]

    @property
    def has_temperature(self) -> bool:
        return self.model is not None and bool(self._temperature.targets(self.model))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.model(x)

    # -- cost summary --------------------------------------------------------------------
    def compute_model_stats(self, image_size: int | None = None) -> dict[str, Any]:
        """Params and MACs per image (``odconv.counting``)."""
        if image_size is None:
            dm = getattr(attached_trainer(self), "datamodule", None)
            image_size = int(getattr(dm, "image_size", 32) or 32)
        stats: dict[str, Any] = {"params": sum(p.numel() for p in self.model.parameters()), "input_size": image_size}
        try:
            stats["params"] = int(count_params(self.model))
            stats["macs"] = int(count_macs(self.model, input_size=(3, image_size, image_size)))
        except Exception as err:  # noqa: BLE001 - cost counting must never stop training
            stats["macs_error"] = f"{type(err).__name__}: {err}"
        self.model_stats = stats
        return stats

    def on_fit_start(self) -> None:
        stats = self.compute_model_stats()
        macs = stats.get("macs")
        rank_zero_info(f"{self.hparams.model} conv={self.hparams.conv} placement={self.hparams.placement}: "
                       f"{stats['params'] / 1e6:.3f}M params"
                       + (f", {macs / 1e6:.2f}M MACs/image at {stats['input_size']}px" if macs is not None else ""))
        for lg in self.loggers:
            lg.log_hyperparams({f"model_{k}": v for k, v in stats.items()})

    # -- steps ---------------------------------------------------------------------------
    def training_step(self, batch: Any, batch_idx: int) -> torch.Tensor:
        x, y = batch[0], batch[1]
        logits = self(x)
        loss = self.train_loss_fn(logits, y)
        if self.hparams.stop_on_nonfinite and not torch.isfinite(loss.detach()).all():
            raise FloatingPointError(f"non-finite training loss ({loss.item()}) at epoch {self.current_epoch}, "
                                     f"step {self.global_step}: the run diverged (lower the lr?)")
        self.train_top1(logits.detach(), y)
        n = len(y)
        self.log("train/loss", loss, on_step=False, on_epoch=True, sync_dist=True, batch_size=n)
        self.log("train/acc_top1", self.train_top1, on_step=False, on_epoch=True, batch_size=n)
        self.log("loss", loss, on_step=True, on_epoch=False, prog_bar=True, logger=False, batch_size=n)
        return loss

    def _eval_step(self, batch: Any, split: str) -> None:
        x, y = batch[0], batch[1]
        logits = self(x)
        loss = self.eval_loss_fn(logits.float(), y)
        top1, top5 = getattr(self, f"{split}_top1"), getattr(self, f"{split}_top5")
        top1(logits, y)
        top5(logits, y)
        n = len(y)
        self.log(f"{split}/loss", loss, on_step=False, on_epoch=True, sync_dist=True, batch_size=n)
        self.log(f"{split}/acc_top1", top1, on_step=False, on_epoch=True, prog_bar=True, batch_size=n)
        self.log(f"{split}/acc_top5", top5, on_step=False, on_epoch=True, batch_size=n)

    def validation_step(self, batch: Any, batch_idx: int) -> None:
        self._eval_step(batch, "val")

    def test_step(self, batch: Any, batch_idx: int) -> None:
        self._eval_step(batch, "test")

    def predict_step(self, batch: Any, batch_idx: int) -> torch.Tensor:
        return self(batch[0]).softmax(-1)

    # -- optimisation --------------------------------------------------------------------
    def parameter_groups(self) -> list[dict[str, Any]]:
        hp = self.hparams
        decay, no_decay = [], []
        for p in self.model.parameters():
            if not p.requires_grad:
                continue
            (no_decay if hp.no_decay_norm_bias and p.ndim <= 1 else decay).append(p)
        groups = [{"params": decay, "weight_decay": hp.weight_decay}]
        if no_decay:
            groups.append({"params": no_decay, "weight_decay": 0.0})
        return groups

    def build_lr_scheduler(self, optimizer: torch.optim.Optimizer, steps_per_epoch: int,
                           total_steps: int) -> LRScheduler:
        """The learning-rate schedule over optimiser steps ``0 .. total_steps - 1``, to be
        stepped after every optimiser step:

        - warm-up: ``W = ceil(warmup_epochs * steps_per_epoch)`` steps; step ``s < W`` runs at
          ``lr * (s + 1) / W`` (``LinearLR``);
        - then, from step ``W``: ``cosine`` from ``lr`` to ``min_lr`` at ``total_steps``
          (``CosineAnnealingLR``), ``step``: ``lr * gamma**k`` after ``k`` of the
          ``milestones`` epochs (``MultiStepLR``), or ``constant`` (``ConstantLR`` of factor 1).
        """
        hp = self.hparams
        warm = math.ceil(hp.warmup_epochs * steps_per_epoch)
        if hp.schedule == "cosine":
            main: LRScheduler = CosineAnnealingLR(optimizer, T_max=max(total_steps - warm, 1), eta_min=hp.min_lr)
        elif hp.schedule == "step":
            # milestones counted from the end of the warm-up; those inside it apply from its end
            main = MultiStepLR(optimizer, milestones=[m * steps_per_epoch - warm for m in hp.milestones],
                               gamma=hp.gamma)
        else:
            main = ConstantLR(optimizer, factor=1.0, total_iters=0)
        if warm == 0:
            return main
        warmup = LinearLR(optimizer, start_factor=1.0 / warm, end_factor=1.0, total_iters=warm - 1)
        return SequentialLR(optimizer, [warmup, main], milestones=[warm])

    def configure_optimizers(self):
        hp = self.hparams
        groups = self.parameter_groups()
        if hp.optimizer == "sgd":
            opt = torch.optim.SGD(groups, lr=hp.lr, momentum=hp.momentum, nesterov=hp.nesterov and hp.momentum > 0)
        else:
            opt = torch.optim.AdamW(groups, lr=hp.lr, betas=tuple(hp.betas))
        total = int(self.trainer.estimated_stepping_batches)
        nb = self.trainer.num_training_batches
        if isinstance(nb, int) and nb > 0:
            spe = max(1, math.ceil(nb / self.trainer.accumulate_grad_batches))
        else:  # pragma: no cover - unsized loaders
            spe = max(1, total // max(self.trainer.max_epochs or 1, 1))
        sched = self.build_lr_scheduler(opt, spe, total)
        return {"optimizer": opt,
                "lr_scheduler": {"scheduler": sched, "interval": "step", "frequency": 1, "name": LR_LOG_NAME}}

    # -- exact resume: the global RNG (dropout) travels in the checkpoint ----------------
    def on_save_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        checkpoint["odconv_bench_rng"] = {"torch": torch.get_rng_state()}
        if torch.cuda.is_available() and torch.cuda.is_initialized():
            checkpoint["odconv_bench_rng"]["cuda"] = torch.cuda.get_rng_state_all()

    def on_load_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        hp = checkpoint.get("hyper_parameters", {})
        if self.model is None and hp.get("num_classes"):
            self._build(int(hp["num_classes"]))
        state = checkpoint.get("odconv_bench_rng")
        trainer = attached_trainer(self)
        if state and trainer is not None and trainer.world_size == 1:
            torch.set_rng_state(state["torch"])
            if "cuda" in state and torch.cuda.is_available():
                try:
                    torch.cuda.set_rng_state_all(state["cuda"])
                except Exception:  # noqa: BLE001 - a different GPU count: keep the current state
                    pass


__all__ = ["ImageClassifier", "OPTIMIZERS", "SCHEDULES", "LR_LOG_NAME"]
