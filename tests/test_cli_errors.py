"""Values the ``lightning`` CLI's parser lets through but the Trainer, the model, the
DataModule or a callback reject when they are built: one ``error:`` line naming the value,
exit code 2, no traceback (``lightning_modules.cli.TrainingCLI.reject``). Also the epoch
progress file every CLI fit writes (``EpochProgress``)."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest

from lightning_modules.cli import main, rejected_value_message
from lightning_modules.contract import read_progress

pytestmark = pytest.mark.filterwarnings("ignore:LightningCLI's args parameter")
ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SMOKE = os.path.join(ROOT, "experiments", "smoke.yaml")
SMALL = ["--data.init_args.num_train", "64", "--data.init_args.num_test", "16", "--data.init_args.batch_size", "16",
         "--trainer.enable_progress_bar", "false", "--trainer.logger", "false"]


def error_lines(text: str) -> list[str]:
    return [line for line in text.splitlines() if line.startswith("error:")]


@pytest.mark.parametrize("arg, named", [
    ("--trainer.max_epochs=-5", ["trainer", "max_epochs", "-5"]),
    ("--trainer.accelerator=bogus", ["trainer", "bogus", "cpu"]),   # with the valid names
    ("--trainer.precision=bogus", ["trainer.precision", "bogus", "bf16-mixed"]),
])
def test_bad_trainer_value_is_one_error_line(tmp_path, arg, named):
    env = dict(os.environ, OMP_NUM_THREADS="1", PYTHONWARNINGS="ignore")
    r = subprocess.run([sys.executable, "-m", "lightning_modules", "fit", "--config", SMOKE, arg,
                        f"--trainer.default_root_dir={tmp_path}"],
                       cwd=ROOT, env=env, capture_output=True, text=True, timeout=240)
    out = r.stdout + r.stderr
    assert r.returncode == 2, out
    assert "Traceback" not in out
    lines = error_lines(r.stderr)
    assert len(lines) == 1, out
    for word in named:
        assert word in lines[0], lines[0]
    assert not os.listdir(tmp_path)  # nothing was written


@pytest.mark.parametrize("args, named", [
    (["--model.model_options", "{bogus: 1}"], ["model (ImageClassifier)", "bogus", "width"]),
    (["--data.init_args.image_size", "3"], ["data (lightning_modules.data.SyntheticDataModule)", "image_size=3"]),
    (["--checkpoint.mode", "bogus"], ["callback (ModelCheckpoint)", "bogus", "min, max"]),
    (["--trainer.devices", "0"], ["trainer", "devices='0'"]),
])
def test_value_rejected_while_building_is_one_error_line(tmp_path, capsys, args, named):
    with pytest.raises(SystemExit) as exc:
        main(["--config", SMOKE, *SMALL, *args, f"--trainer.default_root_dir={tmp_path}"], run=False)
    assert exc.value.code == 2
    err = capsys.readouterr().err
    assert "Traceback" not in err
    lines = error_lines(err)
    assert len(lines) == 1, err
    for word in named:
        assert word in lines[0], lines[0]


def test_message_names_the_hardware_settings_when_lightning_does_not():
    msg = rejected_value_message(ValueError("No supported gpu backend found!"), "trainer",
                                 {"accelerator": "gpu", "devices": 1, "max_epochs": 3})
    assert msg == "trainer: No supported gpu backend found! (with trainer.accelerator='gpu', trainer.devices=1)"
    # a message that names its key stays as it is
    msg = rejected_value_message(ValueError("`max_epochs` must be ... You passed in -5.\n"), "trainer",
                                 {"accelerator": "cpu", "max_epochs": -5})
    assert msg == "trainer: `max_epochs` must be ... You passed in -5."


def test_fit_writes_its_epoch_progress(tmp_path):
    cli = main(["--config", SMOKE, *SMALL, "--trainer.max_epochs", "2", "--trainer.limit_val_batches", "0",
                f"--trainer.default_root_dir={tmp_path}"], run=False)
    cli.trainer.fit(cli.model, datamodule=cli.datamodule)
    progress = read_progress(tmp_path)
    assert progress is not None
    assert (progress.epoch, progress.max_epochs, progress.start_epoch) == (2, 2, 0)
