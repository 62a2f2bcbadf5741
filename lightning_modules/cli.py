"""The training CLI: ``lightning fit --config experiments/<name>.yaml`` (also installed as
``odconv-bench``, and ``python -m lightning_modules``).

A LightningCLI over :class:`ImageClassifier` and the DataModules, with these defaults:

- ``checkpoint:`` section: a ModelCheckpoint monitoring ``val/acc_top1`` (max), keeping the
  best and ``last.ckpt`` in the fixed folder ``<trainer.default_root_dir>/checkpoints``, so
  ``--ckpt_path last`` always finds the run's last checkpoint and resumes exactly.
- logs: ``<default_root_dir>/logs/metrics.csv`` (+ ``hparams.yaml``, ``config.yaml``) through
  :class:`ResumableCSVLogger`, which appends on resume; plus TensorBoard in
  ``<default_root_dir>/logs/tensorboard`` when ``tensorboard`` is installed. An explicit
  ``trainer.logger`` in the config replaces both.
- ``model.num_classes`` comes from ``data.num_classes``.
- ``config.yaml`` is overwritten by a resumed run (lightning's default aborts).
"""

from __future__ import annotations

import importlib
import os
import sys
from typing import Any

import yaml

from lightning.pytorch import Trainer
from lightning.pytorch.callbacks import ModelCheckpoint
from lightning.pytorch.cli import LightningArgumentParser, LightningCLI
from lightning.pytorch.loggers import Logger, TensorBoardLogger

from .callbacks import ResumableCSVLogger, ResumeLogCleanup, RunCheckpoint
from .data import ImageDataModule
from .module import ImageClassifier

CHECKPOINT_DEFAULTS = {
    "checkpoint.monitor": "val/acc_top1",
    "checkpoint.mode": "max",
    "checkpoint.save_top_k": 1,
    "checkpoint.save_last": True,
    "checkpoint.filename": "best-epoch{epoch:03d}",
    "checkpoint.auto_insert_metric_name": False,
    "checkpoint.enable_version_counter": False,
}


def _tensorboard_available() -> bool:
    try:
        import tensorboard  # noqa: F401
        return True
    except ImportError:
        try:
            import tensorboardX  # noqa: F401
            return True
        except ImportError:
            return False


def default_loggers(root_dir: str) -> list[Logger]:
    """CSV (always) and TensorBoard (when installed) under ``<root_dir>/logs``."""
    loggers: list[Logger] = [ResumableCSVLogger(save_dir=root_dir, name="", version="logs")]
    if _tensorboard_available():
        loggers.append(TensorBoardLogger(save_dir=os.path.join(root_dir, "logs"), name="", version="tensorboard",
                                         default_hp_metric=False))
    return loggers


def _datamodule_classes() -> dict[str, type]:
    found: dict[str, type] = {}
    todo = [ImageDataModule]
    while todo:
        cls = todo.pop()
        for sub in cls.__subclasses__():
            todo.append(sub)
            if not sub.__name__.startswith("_"):
                found[sub.__name__] = sub
    return found


def check_data_choice(value: Any) -> None:
    """Raise ``ValueError`` naming the valid DataModules when ``value`` (a ``--data`` value or
    a config's ``data.class_path``) names none of them. Dicts/paths are left to the parser."""
    if not isinstance(value, str) or not value or value.startswith(("{", "[")) or os.path.exists(value):
        return
    valid = _datamodule_classes()
    if value in valid:
        return
    if "." in value:
        module, _, name = value.rpartition(".")
        try:
            cls = getattr(importlib.import_module(module), name)
            if isinstance(cls, type) and issubclass(cls, ImageDataModule):
                return
        except (ImportError, AttributeError):
            pass
    raise ValueError(f"unknown dataset (data class) {value!r}; valid: {', '.join(sorted(valid))} "
                     f"(or their full paths, e.g. lightning_modules.data.CIFAR10DataModule)")


def _check_data_args(args: Any) -> None:
    """Pre-check the data class named on the command line or in ``--config`` files."""
    if not isinstance(args, (list, tuple)):
        return
    args = [str(a) for a in args]
    for i, tok in enumerate(args):
        nxt = args[i + 1] if i + 1 < len(args) else None
        if tok == "--data" and nxt is not None:
            check_data_choice(nxt)
        elif tok.startswith("--data="):
            check_data_choice(tok.split("=", 1)[1])
        elif tok in ("--config", "-c") and nxt is not None and os.path.isfile(nxt):
            try:
                with open(nxt) as f:
                    cfg = yaml.safe_load(f)
            except (OSError, yaml.YAMLError):
                continue  # the parser reports it
            data = cfg.get("data") if isinstance(cfg, dict) else None
            check_data_choice(data.get("class_path") if isinstance(data, dict) else data)


class BenchCLI(LightningCLI):
    """LightningCLI with the suite's checkpoint, logger and link defaults (see module doc)."""

    def parse_arguments(self, parser: LightningArgumentParser, args: Any) -> None:
        _check_data_args(sys.argv[1:] if args is None else args)
        super().parse_arguments(parser, args)
        sub = self.config.get("subcommand")
        seed = (self.config.get(sub) if sub else self.config).get("seed_everything")
        if seed is True:
            raise ValueError("seed_everything: true means seed 0 in lightning 2.6, not a random seed; "
                             "write an explicit integer (e.g. --seed_everything 1)")

    def add_arguments_to_parser(self, parser: LightningArgumentParser) -> None:
        parser.add_lightning_class_args(RunCheckpoint, "checkpoint")
        parser.set_defaults(CHECKPOINT_DEFAULTS)
        parser.link_arguments("data.num_classes", "model.num_classes", apply_on="instantiate")

    def instantiate_trainer(self, **kwargs: Any) -> Trainer:
        trainer_cfg = self._get(self.config_init, "trainer", default={}) or {}
        logger_cfg = trainer_cfg.get("logger", None)
        trainer = super().instantiate_trainer(**kwargs)
        if (logger_cfg is None or logger_cfg is True) and not trainer.fast_dev_run:
            trainer.loggers = default_loggers(trainer.default_root_dir)
        if any(isinstance(lg, ResumableCSVLogger) for lg in trainer.loggers):
            trainer.callbacks.append(ResumeLogCleanup())
        for cb in trainer.checkpoint_callbacks:
            if isinstance(cb, ModelCheckpoint) and cb.dirpath is None:
                cb.dirpath = os.path.realpath(os.path.join(trainer.default_root_dir, "checkpoints"))
        return trainer


def main(args: list[str] | None = None, run: bool = True) -> BenchCLI:
    """Build (and with ``run`` run) the CLI. ``args`` default to ``sys.argv[1:]``.

    With ``run=False`` give the arguments without a subcommand (e.g. ``["--config", "x.yaml"]``):
    the model, DataModule and Trainer are instantiated (``cli.model``, ``cli.datamodule``,
    ``cli.trainer``) and nothing runs. Returns the CLI object (the installed scripts call
    :func:`console_main`, which exits 0).
    """
    cli = BenchCLI(
        ImageClassifier,
        ImageDataModule,
        subclass_mode_model=False,
        subclass_mode_data=True,
        args=args,
        run=run,
        save_config_kwargs={"overwrite": True},
        seed_everything_default=0,
        auto_configure_optimizers=False,
    )
    return cli


def console_main() -> int:
    """Entry point for console scripts: ``sys.exit(console_main())`` exits 0 on success."""
    main()
    return 0


if __name__ == "__main__":  # pragma: no cover
    console_main()
