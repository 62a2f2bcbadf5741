"""The training CLI: ``lightning fit --config experiments/<name>.yaml`` (also installed as
``odconv-bench``, and ``python -m lightning_modules``).

A LightningCLI over :class:`ImageClassifier` and the DataModules, with these defaults (all
stock Lightning callbacks and loggers, configured):

- ``checkpoint:`` section: a ModelCheckpoint keeping the best checkpoint by ``val/acc_top1``
  (``best-epochNNN.ckpt``); ``last_checkpoint:`` section: a ModelCheckpoint without a
  monitor that rewrites ``last.ckpt`` at the end of every epoch. Both write to the fixed
  folder ``<trainer.default_root_dir>/checkpoints``, so ``--ckpt_path last`` always finds the
  run's latest checkpoint and resumes exactly.
- logs: ``<default_root_dir>/logs/metrics.csv`` (+ ``hparams.yaml``, ``config.yaml``) by a
  :class:`~lightning_modules.callbacks.ResumableCSVLogger`, whose earlier rows
  :class:`~lightning_modules.callbacks.KeepEarlierMetrics` keeps when a run resumes (or
  validates/tests) in the same folder; plus TensorBoard in
  ``<default_root_dir>/logs/tensorboard`` when ``tensorboard`` is installed. An explicit
  ``trainer.logger`` in the config replaces both. A LearningRateMonitor logs ``train/lr``.
- ``model.num_classes`` comes from ``data.num_classes``.
- ``config.yaml`` is overwritten by a resumed run (lightning's default aborts).
- Bad values (an unknown model, conv spec, placement, optimizer, dataset class, a negative
  batch size...) end in the parser's one-line ``error:`` and exit code 2.
"""

from __future__ import annotations

import importlib
import os
import re
import sys
from typing import Any

import yaml
from lightning.pytorch import Trainer
from lightning.pytorch.callbacks import LearningRateMonitor, ModelCheckpoint
from lightning.pytorch.cli import LightningArgumentParser, LightningCLI
from lightning.pytorch.loggers import Logger, TensorBoardLogger

from .callbacks import KeepEarlierMetrics, ResumableCSVLogger
from .data import DATAMODULES, ImageDataModule
from .module import ImageClassifier

#: The ``checkpoint:`` section: the best checkpoint by validation top-1.
CHECKPOINT_DEFAULTS = {
    "checkpoint.monitor": "val/acc_top1",
    "checkpoint.mode": "max",
    "checkpoint.save_top_k": 1,
    "checkpoint.save_last": False,  # last.ckpt is the last_checkpoint section's
    "checkpoint.filename": "best-epoch{epoch:03d}",
    "checkpoint.auto_insert_metric_name": False,
    "checkpoint.enable_version_counter": False,
}
#: The ``last_checkpoint:`` section: ``last.ckpt`` rewritten at the end of every epoch (a
#: ModelCheckpoint without monitor keeps its newest ``save_top_k`` saves; with one fixed name).
LAST_CHECKPOINT_DEFAULTS = {
    "last_checkpoint.filename": ModelCheckpoint.CHECKPOINT_NAME_LAST,
    "last_checkpoint.monitor": None,
    "last_checkpoint.save_top_k": 1,
    "last_checkpoint.enable_version_counter": False,
}
#: A short usage line: the parser prints it above each ``error:`` (``--help`` lists every option).
USAGE = "%(prog)s [--config CONFIG.yaml] [--SECTION.KEY VALUE ...]"


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


def check_data_choice(value: Any) -> None:
    """Raise ``ValueError`` naming the valid DataModules when ``value`` (a ``--data`` value or
    a config's ``data.class_path``) names none of them. Dicts/paths are left to the parser."""
    if not isinstance(value, str) or not value or value.startswith(("{", "[")) or os.path.exists(value):
        return
    valid = sorted(cls.__name__ for cls in DATAMODULES.values())
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
    raise ValueError(f"unknown dataset (data class) {value!r}; valid: {', '.join(valid)} "
                     f"(or their full paths, e.g. lightning_modules.data.CIFAR10DataModule)")


def _check_data_args(args: Any) -> None:
    """Pre-check the data class named on the command line or in ``--config`` files (the
    parser's own message for an unknown class does not say which ones exist)."""
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


_NESTED_ERROR = re.compile(r"Problem with given class_path '([^']+)':\s*Parser key \"([^\"]+)\":\s*(.+)")
_KEY = re.compile(r'Parser key "([^"]+)":')


def one_line_error(message: str) -> str:
    """jsonargparse's report of a bad value (format of jsonargparse 4.53), on one line; any
    other format is joined into one line as it is. A bad field of the data class
    (``--data.init_args.batch_size -3``) comes wrapped in a report on every type the
    ``data`` section could take; only the nested error matters:
    ``Parser key "data.init_args.batch_size" (lightning_modules.data.SyntheticDataModule): ...``."""
    nested, key = _NESTED_ERROR.search(message), _KEY.match(message.strip())
    if nested and key:
        return f'Parser key "{key.group(1)}.init_args.{nested.group(2)}" ({nested.group(1)}): {nested.group(3).strip()}'
    return " ".join(line.strip() for line in message.splitlines() if line.strip())


class BenchArgumentParser(LightningArgumentParser):
    """The CLI's parser: reports a bad value in one ``error:`` line (after the short usage)."""

    def error(self, message: str, ex: Exception | None = None):
        super().error(one_line_error(message), ex)


class BenchCLI(LightningCLI):
    """LightningCLI with the suite's checkpoint, logger and link defaults (see module doc)."""

    def parse_arguments(self, parser: LightningArgumentParser, args: Any) -> None:
        try:
            _check_data_args(sys.argv[1:] if args is None else args)
        except ValueError as err:
            parser.error(str(err))
        super().parse_arguments(parser, args)
        sub = self.config.get("subcommand")
        seed = (self.config.get(sub) if sub else self.config).get("seed_everything")
        if seed is True:
            parser.error("seed_everything: true means seed 0 in lightning 2.6, not a random seed; "
                         "write an explicit integer (e.g. --seed_everything 1)")

    def add_arguments_to_parser(self, parser: LightningArgumentParser) -> None:
        parser.add_lightning_class_args(ModelCheckpoint, "checkpoint")
        parser.add_lightning_class_args(ModelCheckpoint, "last_checkpoint")
        parser.set_defaults({**CHECKPOINT_DEFAULTS, **LAST_CHECKPOINT_DEFAULTS})
        parser.link_arguments("data.num_classes", "model.num_classes", apply_on="instantiate")

    def instantiate_trainer(self, **kwargs: Any) -> Trainer:
        trainer_cfg = self._get(self.config_init, "trainer", default={}) or {}
        logger_cfg = trainer_cfg.get("logger", None)
        trainer = super().instantiate_trainer(**kwargs)
        if (logger_cfg is None or logger_cfg is True) and not trainer.fast_dev_run:
            trainer.loggers = default_loggers(trainer.default_root_dir)
        if any(isinstance(lg, ResumableCSVLogger) for lg in trainer.loggers):
            trainer.callbacks.append(KeepEarlierMetrics())
        if trainer.loggers:
            trainer.callbacks.append(LearningRateMonitor(logging_interval="step"))
        for cb in trainer.checkpoint_callbacks:
            if isinstance(cb, ModelCheckpoint) and cb.dirpath is None:
                cb.dirpath = os.path.realpath(os.path.join(trainer.default_root_dir, "checkpoints"))
        return trainer


def main(args: list[str] | None = None, run: bool = True) -> BenchCLI:
    """Build (and with ``run`` run) the CLI. ``args`` default to ``sys.argv[1:]``.

    With ``run=False`` give the arguments without a subcommand (e.g. ``["--config", "x.yaml"]``):
    the model, DataModule and Trainer are instantiated (``cli.model``, ``cli.datamodule``,
    ``cli.trainer``) and nothing runs. Returns the CLI object (the installed scripts call
    :func:`console_main`, which exits 0). A bad argument exits with code 2 (``SystemExit``)
    after printing the parser's ``error:`` line.
    """
    # the subcommands' usage (or, without subcommands, the main one); the main parser's own
    # usage names the subcommands and stays as argparse writes it
    parser_kwargs: dict[str, Any] = {sub: {"usage": USAGE} for sub in LightningCLI.subcommands()}
    if not run:
        parser_kwargs["usage"] = USAGE
    if os.path.basename(sys.argv[0]) == "__main__.py":  # python -m lightning_modules
        parser_kwargs["prog"] = "python -m lightning_modules"
    cli = BenchCLI(
        ImageClassifier,
        ImageDataModule,
        subclass_mode_model=False,
        subclass_mode_data=True,
        parser_class=BenchArgumentParser,
        args=args,
        run=run,
        parser_kwargs=parser_kwargs,
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
