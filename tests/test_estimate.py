"""``odconv-sweep estimate``: image counts per trial and the wall-time arithmetic."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from lightning_modules.data import CIFAR10DataModule, CIFAR100DataModule, SyntheticDataModule, TinyImageNetDataModule
from sweeps.cli import main as cli_main
from sweeps.definition import load_sweep
from sweeps.running.estimate import VariantEstimate, estimate_sweep, format_estimate, limited_images

ROOT = Path(__file__).resolve().parents[1]


@pytest.mark.parametrize("num_train, val_split", [(512, 0.25), (1000, 0.1), (103, 0.3), (200, 0.0)])
def test_split_sizes_match_what_setup_builds(num_train, val_split):
    dm = SyntheticDataModule(num_train=num_train, num_test=77, val_split=val_split, image_size=8)
    predicted = dm.split_sizes()
    dm.setup("fit")
    assert predicted == (len(dm.train_set), len(dm.val_set), len(dm.test_set))


def test_official_split_sizes():
    assert CIFAR10DataModule(val_split=0.1).split_sizes() == (45_000, 5_000, 10_000)
    assert CIFAR100DataModule(val_split=0.1).split_sizes() == (45_000, 5_000, 10_000)
    assert CIFAR100DataModule(val_split=0.0).split_sizes() == (50_000, 10_000, 10_000)
    assert TinyImageNetDataModule(val_split=0.05).split_sizes() == (95_000, 5_000, 10_000)


def test_limited_images_follows_lightning_limits():
    assert limited_images(1000, 64, None) == 1000
    assert limited_images(1000, 64, 1.0) == 1000
    assert limited_images(1000, 64, 4) == 256
    assert limited_images(1000, 64, 0.25) == 4 * 64      # 16 batches -> 4
    assert limited_images(100, 64, 5) == 100               # fewer batches than the limit


def test_trial_time_arithmetic():
    e = VariantEstimate("v", seeds=2, train_images_per_epoch=1000, epochs=3, eval_images=400, train_img_s=100.0,
                        eval_img_s=400.0, overhead_s=5.0)
    assert e.trial_s == pytest.approx(3 * 1000 / 100 + 400 / 400 + 5)


@pytest.mark.integration  # measures every variant of the smoke sweep (a benchmark run)
def test_estimate_smoke_sweep(capsys):
    sweep = load_sweep(str(ROOT / "sweeps" / "smoke.yaml"))
    rows = estimate_sweep(sweep, "cpu", overhead_s=0.0, repeats=1, log=lambda s: None)
    assert [r.variant for r in rows] == sweep.variants()
    for r in rows:
        # smoke: 512 synthetic images, val 0.25 -> 382 train; 4 batches of 64 per epoch, 2 epochs;
        # eval: 2 batches of 64 of val per epoch + 2 of test
        assert (r.train_images_per_epoch, r.epochs, r.eval_images, r.seeds) == (256, 2, 2 * 128 + 128, 2)
        assert r.train_img_s > 0 and r.eval_img_s > r.train_img_s / 20
    text = format_estimate(sweep, rows, "cpu", workers=2)
    assert "14 trials" in text and "with 2 worker(s)" in text


def test_cpu_estimate_measures_with_each_workers_threads(monkeypatch, capsys):
    import sweeps.running.estimate as E

    seen = []

    def fake_measure(base, overrides, device, repeats):
        seen.append(torch.get_num_threads())
        return dict(train_images_per_epoch=100, epochs=1, eval_images=10, train_img_s=10.0, eval_img_s=10.0)

    monkeypatch.setattr(E, "measure_point", fake_measure)
    before = torch.get_num_threads()
    sweep = load_sweep(str(ROOT / "sweeps" / "smoke.yaml"))
    assert E.worker_threads(2, cpus=8) == 4 and E.worker_threads(3, cpus=2) == 1
    E.main(sweep, "cpu", workers=2, overhead_s=0.0, repeats=1)
    expected = E.worker_threads(2)
    assert seen and set(seen) == {expected} and torch.get_num_threads() == before
    assert f"Measured with {expected} thread(s)" in capsys.readouterr().out


def test_estimate_cli_names_a_bad_sweep(capsys):
    assert cli_main(["estimate", "no-such-sweep"]) == 2
    assert "no-such-sweep" in capsys.readouterr().err
