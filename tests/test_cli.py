"""The ``lightning`` CLI: smoke config in a subprocess, validate/test/print_config, exact
resume from ``--ckpt_path last``, 2-process DDP on CPU, bad configs. The tests that train
(the subprocess fit, resume, DDP, last.ckpt) are in the integration tier."""

from __future__ import annotations

import csv
import os
import re
import subprocess
import sys

import pytest
import torch
import yaml

from lightning_modules import ImageClassifier
from lightning_modules.cli import main

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SMOKE = os.path.join(ROOT, "experiments", "smoke.yaml")
EXPERIMENTS = ["cifar10_resnet18", "cifar100_resnet18", "cifar10_mobilenetv2", "cifar100_mobilenetv2",
               "tinyimagenet_resnet18", "smoke"]
CONTRACT = ["train/loss", "train/acc_top1", "val/loss", "val/acc_top1", "val/acc_top5"]
# A smaller smoke run for the in-process tests.
SMALL = ["--data.init_args.num_train", "96", "--data.init_args.num_test", "16", "--data.init_args.batch_size", "16",
         "--trainer.enable_progress_bar", "false"]


def run_cli(args, timeout=240, env_extra=None):
    env = dict(os.environ, OMP_NUM_THREADS="1", PYTHONWARNINGS="ignore")
    env.update(env_extra or {})
    return subprocess.run([sys.executable, "-m", "lightning_modules", *args], cwd=ROOT, env=env,
                          capture_output=True, text=True, timeout=timeout)


def read_metrics(root) -> list[dict[str, str]]:
    with open(os.path.join(root, "logs", "metrics.csv"), newline="") as f:
        return list(csv.DictReader(f))


def epoch_values(rows, key) -> dict[int, float]:
    return {int(r["epoch"]): float(r[key]) for r in rows if r.get(key)}


@pytest.mark.integration  # a fit in a subprocess, then validate/test
def test_smoke_config_through_the_real_cli(tmp_path):
    root = tmp_path / "run"
    p = run_cli(["fit", "--config", SMOKE, "--trainer.default_root_dir", str(root)])
    assert p.returncode == 0, p.stdout[-3000:] + p.stderr[-5000:]
    rows = read_metrics(root)
    for key in CONTRACT + ["train/temperature", "train/lr"]:
        assert any(r.get(key) for r in rows), f"{key} not logged: {rows[:2]}"
    assert os.path.isfile(root / "checkpoints" / "last.ckpt")
    assert [n for n in os.listdir(root / "checkpoints") if n.startswith("best-")]
    assert os.path.isfile(root / "logs" / "config.yaml") and os.path.isfile(root / "logs" / "hparams.yaml")
    hp = yaml.safe_load(open(root / "logs" / "hparams.yaml"))
    assert hp["model_params"] > 0 and hp["num_classes"] == 10
    ckpt = torch.load(root / "checkpoints" / "last.ckpt", map_location="cpu", weights_only=False)
    assert ckpt["callbacks"] and all(k.startswith("model.") for k in ckpt["state_dict"])
    # The checkpoint loads without a DataModule (num_classes is in its hyperparameters).
    m = ImageClassifier.load_from_checkpoint(root / "checkpoints" / "last.ckpt", map_location="cpu")
    assert m.hparams.num_classes == 10 and m.hparams.conv == "odconv4x"

    # validate / test with the same config and checkpoint, in-process; the fit's rows stay
    fit_rows = read_metrics(root)
    for sub in ("validate", "test"):
        cli = main([sub, "--config", SMOKE, "--trainer.default_root_dir", str(root), *SMALL,
                    "--ckpt_path", str(root / "checkpoints" / "last.ckpt")])
        assert f"{sub if sub == 'test' else 'val'}/acc_top1" in cli.trainer.callback_metrics
    rows = read_metrics(root)
    assert [{k: v for k, v in r.items() if v} for r in rows[:len(fit_rows)]] == [
        {k: v for k, v in r.items() if v} for r in fit_rows]
    assert any(r.get("test/acc_top1") for r in rows[len(fit_rows):])
    assert not [n for n in os.listdir(root / "logs") if n.endswith(".earlier")]

    # Re-running fit in the same folder does not abort on the existing config.yaml.
    p = run_cli(["fit", "--config", SMOKE, "--trainer.default_root_dir", str(root), *SMALL])
    assert p.returncode == 0, p.stderr[-3000:]
    assert not [n for n in os.listdir(root / "checkpoints") if "-v1" in n]


def test_print_config_and_overrides(capsys):
    with pytest.raises(SystemExit) as e:
        main(["fit", "--config", SMOKE, "--model.conv", "odconv1x-channel+spatial", "--print_config"])
    assert e.value.code in (0, None)
    cfg = yaml.safe_load(capsys.readouterr().out)
    assert cfg["model"]["conv"] == "odconv1x-channel+spatial"
    assert cfg["checkpoint"]["monitor"] == "val/acc_top1" and cfg["checkpoint"]["mode"] == "max"
    assert cfg["seed_everything"] == 0


def test_run_false_instantiates_only(tmp_path):
    cli = main(["--config", SMOKE, "--trainer.default_root_dir", str(tmp_path), "--model.conv", "condconv4x"],
               run=False)
    assert cli.model.hparams.num_classes == 10 and cli.model.hparams.conv == "condconv4x"
    assert cli.datamodule.synthetic and cli.datamodule.describe()["dataset"] == "synthetic"
    ck = cli.trainer.checkpoint_callback  # the first ModelCheckpoint: the best one
    assert ck.dirpath == os.path.realpath(tmp_path / "checkpoints") and ck.monitor == "val/acc_top1"
    last = [cb for cb in cli.trainer.checkpoint_callbacks if cb is not ck]
    assert len(last) == 1 and last[0].monitor is None and last[0].filename == "last"
    assert last[0].dirpath == ck.dirpath
    assert cli.trainer.logger.log_dir == os.path.join(str(tmp_path), "logs")
    assert not os.path.exists(tmp_path / "checkpoints")  # nothing ran


@pytest.mark.parametrize("script", ["lightning", "odconv-bench"])
def test_installed_scripts_exit_zero(script, tmp_path):
    # Both names are installed into the venv by `make setup` and run the same CLI.
    exe = os.path.join(os.path.dirname(sys.executable), script)
    proc = subprocess.run([exe, "fit", "--config", SMOKE, "--print_config"], capture_output=True, text=True,
                          cwd=tmp_path, timeout=300)
    assert proc.returncode == 0, proc.stderr
    assert "conv: odconv4x" in proc.stdout


# (arguments, what the one error line must name: the argument, the value, what is valid)
BAD_ARGUMENTS = [
    (["--model.conv", "odconv4x-channel"], ["model.conv", "'odconv4x-channel'", "needs 'kernel' attention",
                                             "valid examples: static, odconv1x"]),
    (["--model.conv", "odconv4x-channel+colour"], ["model.conv", "bad conv spec", "colour", "valid"]),
    (["--data.init_args.batch_size", "-3"], ["data.init_args.batch_size", "-3", "v>0"]),
    (["--data.init_args.val_split", "1.0"], ["data.init_args.val_split", "1.0", "v>=0 and v<1"]),
    (["--model.placement", "papr"], ["model.placement", "papr", "'matched', 'paper'"]),
    (["--model.model", "resnet99"], ["model.model", "resnet99", "'cifar_resnet18'", "'resnet18'"]),
    (["--model.optimizer", "adam"], ["model.optimizer", "adam", "'sgd', 'adamw'"]),
    (["--model.lr", "-0.1"], ["model.lr", "-0.1", "v>0"]),
    (["--data", "Cifar11DataModule"], ["unknown dataset", "'Cifar11DataModule'", "valid: CIFAR100DataModule, "
                                       "CIFAR10DataModule, SyntheticDataModule, TinyImageNetDataModule"]),
    (["--seed_everything", "true"], ["seed_everything: true", "explicit integer"]),
]


def check_one_error_line(code: int, stderr: str, names: list[str]) -> None:
    assert code == 2, stderr[-3000:]
    assert "Traceback" not in stderr
    lines = stderr.strip().splitlines()
    assert 1 <= len(lines) <= 3, stderr  # the short usage, the --help tip, the error
    errors = [line for line in lines if line.startswith("error: ")]
    assert len(errors) == 1 and errors[0] == lines[-1], stderr
    for name in names:
        assert name in errors[0], (name, errors[0])
    assert "../shared" not in stderr


@pytest.mark.parametrize("extra,names", BAD_ARGUMENTS, ids=lambda v: "=".join(v) if isinstance(v, list) else None)
def test_bad_argument_is_one_error_line_and_exit_2(tmp_path, capsys, monkeypatch, extra, names):
    """In process (the CLI's own entry point; the real command line below, twice)."""
    monkeypatch.setattr(sys, "argv", ["lightning"])  # not pytest's arguments
    with pytest.raises(SystemExit) as e:
        main(["fit", "--config", SMOKE, "--trainer.default_root_dir", str(tmp_path), *extra])
    check_one_error_line(e.value.code, capsys.readouterr().err, names)
    assert not os.path.exists(tmp_path / "checkpoints") and not os.path.exists(tmp_path / "logs")


@pytest.mark.parametrize("case", [0, 8])
def test_bad_argument_at_the_real_command_line(tmp_path, case):
    extra, names = BAD_ARGUMENTS[case]
    p = run_cli(["fit", "--config", SMOKE, "--trainer.default_root_dir", str(tmp_path), *extra], timeout=120)
    check_one_error_line(p.returncode, p.stderr, names)
    assert not os.path.exists(tmp_path / "checkpoints") and not os.path.exists(tmp_path / "logs")


def test_seed_everything_true_is_refused(tmp_path, capsys):
    with pytest.raises(SystemExit) as e:
        main(["--config", SMOKE, "--seed_everything", "true", "--trainer.default_root_dir", str(tmp_path)], run=False)
    assert e.value.code == 2 and "explicit integer" in capsys.readouterr().err
    cli = main(["--config", SMOKE, "--seed_everything", "7", "--trainer.default_root_dir", str(tmp_path)], run=False)
    assert os.environ["PL_GLOBAL_SEED"] == "7" and cli.datamodule.run_seed == 7


def test_bad_dataset_in_a_config_file(tmp_path, capsys):
    cfg = yaml.safe_load(open(SMOKE))
    cfg["data"]["class_path"] = "lightning_modules.data.ImageNet22kDataModule"
    path = tmp_path / "bad.yaml"
    path.write_text(yaml.safe_dump(cfg))
    with pytest.raises(SystemExit) as e:
        main(["fit", "--config", str(path)], run=True)
    assert e.value.code == 2
    assert re.search(r"error: unknown dataset .*ImageNet22kDataModule.*valid: CIFAR100DataModule",
                     capsys.readouterr().err)


@pytest.mark.parametrize("name", EXPERIMENTS)
def test_experiment_configs_parse(name, tmp_path):
    cli = main(["--config", os.path.join(ROOT, "experiments", f"{name}.yaml"), "--trainer.default_root_dir",
                str(tmp_path), "--trainer.accelerator", "cpu"], run=False)
    assert cli.model.model is not None
    assert isinstance(cli.config["seed_everything"], int)  # never `true` (= seed 0 in disguise)
    if name != "smoke":
        assert cli.trainer.max_epochs >= 100 and cli.datamodule.batch_size == 128
        assert cli.datamodule.has_test_set


class Crash(Exception):
    pass


@pytest.mark.integration  # a training run
def test_resume_from_last_reproduces_the_uninterrupted_run(tmp_path):
    args = ["--config", SMOKE, *SMALL, "--trainer.max_epochs", "2", "--trainer.log_every_n_steps", "1",
            "--model.model_options", "{width: 0.125, dropout: 0.3}", "--model.temperature_epochs", "2"]
    a, b = tmp_path / "a", tmp_path / "b"
    main(["fit", *args, "--trainer.default_root_dir", str(a)])

    from lightning.pytorch.callbacks import Callback

    class CrashMidEpoch(Callback):
        def on_train_batch_end(self, trainer, *rest):
            if trainer.current_epoch == 1 and trainer.fit_loop.epoch_loop.batch_idx >= 2:
                raise Crash()

    cli = main([*args, "--trainer.default_root_dir", str(b)], run=False)
    cli.trainer.callbacks.append(CrashMidEpoch())
    with pytest.raises(Crash):
        cli.trainer.fit(cli.model, cli.datamodule)
    assert os.path.isfile(b / "checkpoints" / "last.ckpt")
    main(["fit", *args, "--trainer.default_root_dir", str(b), "--ckpt_path", "last"])

    ra, rb = read_metrics(a), read_metrics(b)
    assert len(ra) == len(rb)
    for key in CONTRACT + ["train/temperature", "train/lr"]:
        va = [(r["epoch"], r["step"], r.get(key, "")) for r in ra if r.get(key)]
        vb = [(r["epoch"], r["step"], r.get(key, "")) for r in rb if r.get(key)]
        assert len(va) == len(vb) and va, key
        for (ea, sa, xa), (eb, sb, xb) in zip(va, vb):
            assert (ea, sa) == (eb, sb)
            assert float(xa) == pytest.approx(float(xb), rel=1e-5, abs=1e-6), (key, ea, sa)
    assert set(epoch_values(rb, "val/acc_top1")) == {0, 1}
    wa = torch.load(a / "checkpoints" / "last.ckpt", map_location="cpu", weights_only=False)["state_dict"]
    wb = torch.load(b / "checkpoints" / "last.ckpt", map_location="cpu", weights_only=False)["state_dict"]
    assert torch.load(a / "checkpoints" / "last.ckpt", map_location="cpu", weights_only=False)["global_step"] == 10
    for k in wa:
        assert torch.allclose(wa[k].float(), wb[k].float(), rtol=1e-5, atol=1e-6), k


@pytest.mark.integration  # 2-process DDP
def test_ddp_two_processes_on_cpu(tmp_path):
    root = tmp_path / "ddp"
    p = run_cli(["fit", "--config", SMOKE, "--trainer.default_root_dir", str(root), "--trainer.strategy", "ddp",
                 "--trainer.devices", "2", "--trainer.accelerator", "cpu", *SMALL], timeout=300)
    assert p.returncode == 0, p.stdout[-3000:] + p.stderr[-5000:]
    assert "MEMBER: 2/2" in p.stdout + p.stderr or "world_size=2" in p.stdout + p.stderr
    rows = read_metrics(root)
    assert epoch_values(rows, "val/acc_top1") and os.path.isfile(root / "checkpoints" / "last.ckpt")


@pytest.mark.integration  # a training run
def test_last_checkpoint_is_refreshed_when_the_best_is_not(tmp_path):
    # monitor "epoch" in mode min: epoch 0 stays the best, so the best checkpoint is never
    # saved again; last.ckpt must still follow every epoch (what --ckpt_path last resumes).
    main(["fit", "--config", SMOKE, *SMALL, "--trainer.max_epochs", "3", "--trainer.default_root_dir", str(tmp_path),
          "--checkpoint.monitor", "epoch", "--checkpoint.mode", "min"])
    ckpts = sorted(os.listdir(tmp_path / "checkpoints"))
    assert ckpts == ["best-epoch000.ckpt", "last.ckpt"]
    last = torch.load(tmp_path / "checkpoints" / "last.ckpt", map_location="cpu", weights_only=False)
    best = torch.load(tmp_path / "checkpoints" / "best-epoch000.ckpt", map_location="cpu", weights_only=False)
    assert (last["epoch"], last["global_step"]) == (2, 15) and (best["epoch"], best["global_step"]) == (0, 5)


def test_earlier_metrics_survive_a_run_that_died_before_writing_them_back(tmp_path):
    from types import SimpleNamespace

    from lightning_modules.callbacks import KeepEarlierMetrics, ResumableCSVLogger

    logs = tmp_path / "logs"
    logs.mkdir()
    text = "epoch,step,train/lr,val/loss\n0,0,0.1,\n,1,0.0416666679084301,\n0,1,,2.3054871559143066\n1,2,,1e-05\n"
    (logs / "metrics.csv").write_text(text)

    def trainer_with(logger, step=0):
        return SimpleNamespace(is_global_zero=True, loggers=[logger], global_step=step)

    first = ResumableCSVLogger(save_dir=str(tmp_path), name="", version="logs")
    first.log_metrics({"val/loss": 9.0}, step=0)  # starts writing ... and the process dies before a save
    assert not (logs / "metrics.csv").exists() and (logs / "metrics.csv.earlier").read_text() == text
    (logs / "metrics.csv").write_text("step,val/loss\n0,9.0\n")  # as if it had saved a partial file

    second = ResumableCSVLogger(save_dir=str(tmp_path), name="", version="logs")
    keep = KeepEarlierMetrics()
    _ = second.experiment  # Lightning creates it before the callbacks' setup
    keep.setup(trainer_with(second), None, "fit")
    keep.on_train_start(trainer_with(second, step=2), None)  # resumed at global step 2: rows of steps 0, 1 stay
    assert (logs / "metrics.csv").read_text().replace("\r\n", "\n") == "\n".join(text.splitlines()[:4]) + "\n"
    assert not (logs / "metrics.csv.earlier").exists()
