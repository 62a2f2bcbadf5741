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
  batch size...) end in the parser's one-line ``error:`` and exit code 2. So do values the
  parser lets through but the classes reject when they are built (``--trainer.max_epochs -5``,
  ``--trainer.accelerator bogus``, a model option the model lacks): one mechanism,
  :meth:`TrainingArgumentParser.error`, reached through :meth:`TrainingCLI.reject`. With
  ``JSONARGPARSE_DEBUG=true`` the error is raised with its traceback instead.
"""

from __future__ import annotations

import importlib
import importlib.util
import os
import re
import sys
import traceback
from typing import Any, NoReturn

import yaml
from jsonargparse import Namespace
from lightning.pytorch import LightningDataModule, LightningModule, Trainer
from lightning.pytorch.callbacks import Callback, LearningRateMonitor, ModelCheckpoint
from lightning.pytorch.cli import LightningArgumentParser, LightningCLI
from lightning.pytorch.loggers import Logger, TensorBoardLogger
from lightning.pytorch.utilities.exceptions import MisconfigurationException

from .callbacks import EpochProgress, KeepEarlierMetrics, ResumableCSVLogger
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


def tensorboard_available() -> bool:
    """Whether ``tensorboard`` (or ``tensorboardX``) is installed. Optional on purpose: it is no
    dependency of this project, and without it the CLI logs to CSV only (an explicit
    ``TensorBoardLogger`` in ``trainer.logger`` then fails with Lightning's own message)."""
    return any(importlib.util.find_spec(name) is not None for name in ("tensorboard", "tensorboardX"))


def default_loggers(root_dir: str) -> list[Logger]:
    """CSV (always) and TensorBoard (when installed) under ``<root_dir>/logs``."""
    loggers: list[Logger] = [ResumableCSVLogger(save_dir=root_dir, name="", version="logs")]
    if tensorboard_available():
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


#: Errors by which Lightning and the suite's classes reject a value when they are built (the
#: parser has let it through): Lightning raises ``MisconfigurationException`` or ``ValueError``.
REJECTED_VALUE_ERRORS = (ValueError, MisconfigurationException)
#: Where :func:`section_of` looks for the class that rejected a value, first match wins.
_SECTIONS = ((Trainer, "trainer"), (LightningModule, "model"), (LightningDataModule, "data"), (Callback, "callback"))
_UNION = re.compile(r"Does not validate against any of the Union subtypes")
_CLASS_PATH = re.compile(r"class_path='([^']+)'")
#: Trainer settings named in a message that names none of the trainer keys (e.g. Lightning's
#: "No supported gpu backend found!" for ``--trainer.accelerator gpu`` without a GPU).
HARDWARE_KEYS = ("accelerator", "devices", "strategy", "precision", "num_nodes")


def section_of(err: BaseException) -> str | None:
    """The config section (``trainer``, ``model``, ``data``, ``callback``) whose class raised
    ``err`` while being built: the outermost ``__init__`` in its traceback that belongs to one
    of these classes; None when there is none."""
    for frame, _ in traceback.walk_tb(err.__traceback__):
        obj = frame.f_locals.get("self") if frame.f_code.co_name == "__init__" else None
        for cls, section in _SECTIONS:
            if isinstance(obj, cls):
                name = type(obj).__name__
                return section if section == "trainer" else f"{section} ({name})"
    return None


def rejected_value_message(err: BaseException, section: str | None = None,
                           settings: dict[str, Any] | None = None) -> str:
    """One line for a value rejected while the model, DataModule, callbacks or Trainer were
    built: ``<section>: <the class's own message>``. The DataModule (a subclass-mode section)
    comes wrapped by jsonargparse (4.53) in a report on every type ``data`` could take; only
    its class and the class's own message are kept. ``settings``: the section's values; the
    hardware ones are added when the message names none of the section's keys."""
    text = str(err)
    if _UNION.search(text):
        errors = [line.strip()[2:].strip() for line in text.splitlines() if line.strip().startswith("- ")]
        errors = [e for e in errors if "NoneType" not in e] or errors
        cls = _CLASS_PATH.search(text)
        section = f"data ({cls.group(1)})" if cls else (section or "data")
        text = "; ".join(errors) or text
    text = " ".join(line.strip() for line in text.splitlines() if line.strip())
    section = section or section_of(err)
    if settings and not any(key in text for key in settings):
        named = ", ".join(f"{section}.{k}={settings[k]!r}" for k in HARDWARE_KEYS if k in settings)
        if named:
            text += f" (with {named})"
    return f"{section}: {text}" if section else text


def config_section(config: Namespace, subcommand: str | None, key: str, default: Any = None) -> Any:
    """``key`` of a parsed or instantiated LightningCLI config, inside the subcommand's part
    when there is one (what ``LightningCLI._get`` does, through jsonargparse's public
    ``Namespace.get``)."""
    return config.get(str(subcommand), config).get(key, default)


class TrainingArgumentParser(LightningArgumentParser):
    """The training CLI's parser: reports a bad value in one ``error:`` line (after the short usage)."""

    def error(self, message: str, ex: Exception | None = None):
        super().error(one_line_error(message), ex)


class TrainingCLI(LightningCLI):
    """The training CLI: LightningCLI with the suite's checkpoint, logger and link defaults (see module doc)."""

    def reject(self, message: str, err: BaseException | None = None) -> NoReturn:
        """The one way a bad value ends the CLI: the parser's one ``error:`` line, exit code 2."""
        self.parser.error(message, err if isinstance(err, Exception) else None)

    def instantiate_classes(self) -> None:
        """Build the model, DataModule, callbacks and Trainer; a value one of them rejects is
        reported by :meth:`reject` (the Trainer's by :meth:`instantiate_trainer`)."""
        try:
            super().instantiate_classes()
        except REJECTED_VALUE_ERRORS as err:
            self.reject(rejected_value_message(err), err)

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
        trainer_cfg = config_section(self.config_init, self.subcommand, "trainer", default={}) or {}
        logger_cfg = trainer_cfg.get("logger", None)
        try:
            trainer = super().instantiate_trainer(**kwargs)
        except REJECTED_VALUE_ERRORS as err:
            self.reject(rejected_value_message(err, "trainer", {**trainer_cfg, **kwargs}), err)
        if (logger_cfg is None or logger_cfg is True) and not trainer.fast_dev_run:
            trainer.loggers = default_loggers(trainer.default_root_dir)
        if any(isinstance(lg, ResumableCSVLogger) for lg in trainer.loggers):
            trainer.callbacks.append(KeepEarlierMetrics())
        if trainer.loggers:
            trainer.callbacks.append(LearningRateMonitor(logging_interval="step"))
        trainer.callbacks.append(EpochProgress())
        for cb in trainer.checkpoint_callbacks:
            if isinstance(cb, ModelCheckpoint) and cb.dirpath is None:
                cb.dirpath = os.path.realpath(os.path.join(trainer.default_root_dir, "checkpoints"))
        return trainer


def main(args: list[str] | None = None, run: bool = True) -> TrainingCLI:
    """Build (and with ``run`` run) the CLI. ``args`` default to ``sys.argv[1:]``.

    With ``run=False`` give the arguments without a subcommand (e.g. ``["--config", "x.yaml"]``):
    the model, DataModule and Trainer are instantiated (``cli.model``, ``cli.datamodule``,
    ``cli.trainer``) and nothing runs. Returns the CLI object (the installed scripts call
    :func:`console_main`, which exits 0). A bad argument, or a value the model, DataModule,
    callbacks or Trainer reject when built, exits with code 2 (``SystemExit``) after printing
    one ``error:`` line.
    """
    # the subcommands' usage (or, without subcommands, the main one); the main parser's own
    # usage names the subcommands and stays as argparse writes it
    parser_kwargs: dict[str, Any] = {sub: {"usage": USAGE} for sub in LightningCLI.subcommands()}
    if not run:
        parser_kwargs["usage"] = USAGE
    if os.path.basename(sys.argv[0]) == "__main__.py":  # python -m lightning_modules
        parser_kwargs["prog"] = "python -m lightning_modules"
    cli = TrainingCLI(
        ImageClassifier,
        ImageDataModule,
        subclass_mode_model=False,
        subclass_mode_data=True,
        parser_class=TrainingArgumentParser,
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
