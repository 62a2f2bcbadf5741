"""``odconv-sweep`` at the command line with bad input: one ``error:`` line naming the bad value
(and what is valid), exit code 2, no traceback. Each case runs the command's entry point in
process; two of them also run the real command in a subprocess."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[1]
BASE = str(ROOT / "experiments" / "smoke.yaml")


def sweep_env_keys() -> list[str]:
    """The environment variables odconv-sweep reads (none may leak in from the caller)."""
    return ["STORAGE", "WORKERS", "GPUS", "DEVICES_PER_TRIAL", "STUDY", "SWEEP_OUTAGE_LIMIT_S", "LAUNCHER",
            "SLURM_JOBS", *[k for k in os.environ if k.startswith("ODCONV_SLURM_")]]


def odconv_sweep(*args: str, cwd: Path = ROOT) -> subprocess.CompletedProcess:
    env = dict(os.environ, CUDA_VISIBLE_DEVICES="")
    for k in sweep_env_keys():
        env.pop(k, None)
    return subprocess.run([sys.executable, "-m", "sweeps", *args], cwd=cwd, env=env, capture_output=True, text=True,
                          timeout=300)


@pytest.fixture(scope="module")
def ran_sweep(tmp_path_factory) -> tuple[Path, Path]:
    """A results root holding a sweep's study (created by the real storage code, no training)."""
    root = tmp_path_factory.mktemp("results")
    sweep_yaml = root / "tiny.yaml"
    sweep_yaml.write_text(yaml.safe_dump({"name": "tiny", "base_config": BASE,
                                          "grid": {"conv": ["static"], "seed": [0]}}))
    from sweeps.definition import load_sweep
    from sweeps.running.grid_queue import enqueue_grid
    from sweeps.running.storage import make_storage
    from sweeps.running.study import create_study
    sweep = load_sweep(sweep_yaml)
    st = create_study(make_storage(None, "tiny", root), "tiny")
    enqueue_grid(st, sweep)
    (root / "tiny").mkdir(exist_ok=True)
    import json
    (root / "tiny" / "sweep.json").write_text(json.dumps(sweep.to_dict()))
    grid = {"conv": ["static"], "seed": [0]}
    (root / "badslurm.yaml").write_text(yaml.safe_dump({"name": "badslurm", "base_config": BASE, "grid": grid,
                                                        "slurm": {"partitoin": "gpu"}}))
    (root / "tuned.yaml").write_text(yaml.safe_dump({
        "name": "tuned", "base_config": BASE, "grid": grid,
        "tune": {"params": {"model.lr": {"type": "float", "low": 0.01, "high": 0.1}}}}))
    return root, sweep_yaml


CASES = [
    # (arguments, words the one error line must contain); {root} and {yaml} are filled in
    (["run", "no-such-sweep"], ["no-such-sweep", "not found", "available"]),
    (["run", "{yaml}", "--workers", "0", "--results-root", "{root}"], ["--workers", "0", ">= 1"]),
    (["run", "{yaml}", "--gpus", "0,x", "--results-root", "{root}"], ["--gpus", "'0,x'", "cpu"]),
    (["run", "{yaml}", "--gpus", "0", "--devices-per-trial", "2", "--results-root", "{root}"],
     ["DEVICES_PER_TRIAL=2", "1 GPU"]),
    (["run", "{yaml}", "--storage", "bogus://host/db", "--results-root", "{root}"], ["--storage", "bogus", "postgresql://"]),
    (["run", "{yaml}", "--outage-limit", "-5"], ["--outage-limit", "> 0"]),
    (["run", "{yaml}", "--launcher", "pbs"], ["--launcher/LAUNCHER", "local, slurm", "'pbs'"]),
    (["run", "{yaml}", "--slurm", "partition=gpu"], ["--slurm", "need --launcher slurm"]),
    (["run", "{yaml}", "--launcher", "slurm", "--slurm", "partiton=gpu"], ["'partiton'", "valid", "partition"]),
    (["run", "{yaml}", "--launcher", "slurm", "--slurm", "time_min=0"], ["slurm.time_min", ">= 1", "0"]),
    (["run", "{yaml}", "--launcher", "slurm", "--slurm", "time_min=1"],
     ["slurm.signal_before_s", "time_min 1 = 60 s", "got 120"]),
    (["run", "{yaml}", "--launcher", "slurm", "--slurm", "gpu"], ["--slurm", "KEY=VALUE", "'gpu'"]),
    (["run", "{yaml}", "--launcher", "slurm", "--workers", "2"], ["--workers", "--launcher local", "--slurm-jobs"]),
    (["run", "{yaml}", "--launcher", "slurm", "--slurm-jobs", "0", "--results-root", "{root}"],
     ["--slurm-jobs", ">= 1", "0"]),
    (["run", "{root}/tuned.yaml", "--launcher", "slurm", "--results-root", "{root}"],
     ["tuning stage", "--launcher local"]),
    (["check", "{root}/badslurm.yaml"], ["badslurm.yaml", "'partitoin'", "valid keys", "partition"]),
    (["status", "no-such-sweep"], ["no-such-sweep", "not found"]),
    (["status", "tiny", "--results-root", "{root}", "--study", "other"], ["'other'", "studies there: tiny"]),
    (["status", "{yaml}", "--results-root", "{root}/empty"], ["has no storage", "has it been run"]),
    (["results", "no-such-sweep"], ["no-such-sweep", "not found"]),
    (["drain", "no-such-sweep"], ["no-such-sweep", "not found"]),
    (["drain", "{yaml}", "--results-root", "{root}/empty"], ["has no storage", "has it been run"]),
    (["estimate", "{yaml}", "--device", "tpu"], ["--device", "'tpu'", "cpu, cuda or cuda:N"]),
    (["estimate", "{yaml}", "--device", "cuda"], ["cuda", "no CUDA device", "valid: cpu"]),
    (["check", "{root}/missing.yaml"], ["missing.yaml", "not found"]),
    (["dashboard", "no-such-sweep"], ["no-such-sweep", "not found"]),
    (["bench", "no-such-sweep"], ["no-such-sweep", "not found"]),
    (["bench", "{yaml}", "--train-repeats", "0"], ["--train-repeats", ">= 1", "'0'"]),
    (["bench", "{yaml}", "--device", "cuda"], ["cuda", "no CUDA device", "valid: cpu"]),
]


def check_one_error_line(code: int, stdout: str, stderr: str, words: list[str]) -> None:
    lines = [line for line in stderr.splitlines() if line.strip()]
    assert code == 2, (code, stdout, stderr)
    assert "Traceback" not in stderr and len(lines) <= 3, stderr  # argparse adds a usage line
    (err,) = [line for line in lines if "error:" in line]
    for w in words:
        assert w in err, (w, err)


@pytest.mark.parametrize("args, words", CASES, ids=[" ".join(a[:2]) + f" #{i}" for i, (a, _) in enumerate(CASES)])
def test_bad_input_one_error_line_exit_2(ran_sweep, args, words, capsys, monkeypatch):
    from sweeps.cli import main
    root, sweep_yaml = ran_sweep
    for k in sweep_env_keys():
        monkeypatch.delenv(k, raising=False)
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "")
    monkeypatch.chdir(ROOT)
    try:
        code = main([a.format(root=root, yaml=sweep_yaml) for a in args])
    except SystemExit as e:  # argparse's own errors
        code = e.code
    out = capsys.readouterr()
    check_one_error_line(code, out.out, out.err, words)


@pytest.mark.parametrize("case", [0, 1])
def test_bad_input_at_the_real_command_line(ran_sweep, case):
    root, sweep_yaml = ran_sweep
    args, words = CASES[case]
    r = odconv_sweep(*[a.format(root=root, yaml=sweep_yaml) for a in args])
    check_one_error_line(r.returncode, r.stdout, r.stderr, words)


def test_status_of_a_sweep_lists_its_points(ran_sweep):
    root, sweep_yaml = ran_sweep
    r = odconv_sweep("status", "tiny", "--results-root", str(root))
    assert r.returncode == 0, r.stderr
    assert "0/1 done, 0 running, 1 waiting, 0 failed" in r.stdout
    assert "waiting  model.conv=static,seed_everything=0" in r.stdout


def test_bench_times_every_grid_variant_against_static_in_one_run(tmp_path):
    sweep_yaml = tmp_path / "costs.yaml"
    sweep_yaml.write_text(yaml.safe_dump({"name": "costs", "base_config": BASE,
                                          "grid": {"conv": ["odconv4x", "odconv1x-channel"], "seed": [0, 1]},
                                          "reruns": {"overrides": {"model.model_options": {"strategy": "grouped",
                                                                                           "width": 0.125}},
                                                     "points": {"conv": ["odconv4x"], "seed": [0]}}}))
    r = odconv_sweep("bench", str(sweep_yaml), "--results-root", str(tmp_path), "--train-repeats", "1")
    assert r.returncode == 0, r.stderr[-3000:]
    import pandas as pd
    table = pd.read_csv(tmp_path / "costs" / "bench" / "models.csv")
    # static is added; each variant once (seeds and the rerun share it), as smoke.yaml builds it
    assert table["conv"].tolist() == ["static", "odconv4x", "odconv1x-channel"]
    assert set(table["model"]) == {"cifar_resnet18"} and set(table["width"]) == {0.125}
    assert set(table["batch"]) == {64} and set(table["precision"]) == {"fp32"}
    assert table.set_index("conv").loc["static", "train_vs_static"] == 1.0
    md = (tmp_path / "costs" / "bench" / "models.md").read_text()
    assert "Command: `odconv-sweep bench costs`" in md and "cpu:" in md

