"""The training layer: DataModules, the ``ImageClassifier`` LightningModule, callbacks and
the ``lightning``/``odconv-bench`` CLI (:mod:`lightning_modules.cli`)."""

from .callbacks import KeepEarlierMetrics, ResumableCSVLogger, TemperatureScheduler, linear_temperature
from .data import (
                   DATAMODULES,
                   CIFAR10DataModule,
                   CIFAR100DataModule,
                   ImageDataModule,
                   SyntheticDataModule,
                   TinyImageNetDataModule,
                   build_datamodule,
)
from .download import DatasetError
from .module import ImageClassifier

__all__ = ["ImageClassifier", "ImageDataModule", "SyntheticDataModule", "CIFAR10DataModule", "CIFAR100DataModule",
           "TinyImageNetDataModule", "DATAMODULES", "build_datamodule", "DatasetError", "TemperatureScheduler",
           "linear_temperature", "ResumableCSVLogger", "KeepEarlierMetrics"]
