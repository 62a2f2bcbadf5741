"""Short-run diagnostics of a dynamic-conv variant: how far it trains in a few epochs of a
sweep's recipe, how saturated its attentions are, and whether its BatchNorm running
statistics match its batch statistics.

    .venv/bin/python scripts/attention_diagnostics.py --sweep cifar10_cpu --conv odconv4x --epochs 2 \
        [--set model.temperature_epochs=0 --set model.lr=0.1] [--seed 0]

Trains one fit (the sweep's base config and overrides, the given conv/seed/epochs and any
``--set key=value``; value parsed as YAML), then prints one JSON line: test top-1, fit
seconds, per attention the fraction of sigmoid values below 0.02 or above 0.98 (channel,
filter, spatial) or the mean largest kernel weight (kernel) on the first 256 test images,
and top-1 on the first 2048 test images in eval mode against train mode (batch statistics).
results/cifar10_cpu/README.md quotes its output for the cifar10_cpu sweep.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
import warnings
from pathlib import Path

import torch
import yaml

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from lightning_modules.cli import main as cli_main  # noqa: E402
from odconv.layers.odconv import OmniAttention  # noqa: E402
from sweeps.definition import load_sweep  # noqa: E402
from sweeps.running.trial_spec import build_cli_args  # noqa: E402


def attention_stats(model: torch.nn.Module, x: torch.Tensor) -> dict[str, dict[str, float]]:
    sums: dict[str, list[float]] = {}

    def hook(module, inputs, out):
        for name, a in out.items():
            a = a.flatten(1)
            value = (a.max(1).values.mean() if name == "kernel" else ((a < 0.02) | (a > 0.98)).float().mean()).item()
            sums.setdefault(name, []).append(value)

    handles = [m.register_forward_hook(hook) for m in model.modules() if isinstance(m, OmniAttention)]
    with torch.no_grad():
        model(x)
    for h in handles:
        h.remove()
    key = {"kernel": "mean_max_weight"}
    return {name: {key.get(name, "saturated_fraction"): round(sum(v) / len(v), 3)} for name, v in sums.items()}


def main(argv: list[str] | None = None) -> dict:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--sweep", default="cifar10_cpu")
    p.add_argument("--conv", required=True)
    p.add_argument("--epochs", type=int, default=2)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE")
    args = p.parse_args(argv)
    # Lightning's advice on a short CPU fit (workers, log interval) is noise in a diagnostic
    warnings.filterwarnings("ignore", category=UserWarning, module=r"lightning\.")
    sweep = load_sweep(args.sweep)
    extra = {}
    for item in args.set:
        if "=" not in item:
            p.error(f"--set expects KEY=VALUE, got {item!r}")
        k, v = item.split("=", 1)
        extra[k] = yaml.safe_load(v)
    overrides = {**sweep.overrides, "trainer.max_epochs": args.epochs, "model.conv": args.conv,
                 "seed_everything": args.seed, "trainer.logger": False, **extra}
    with tempfile.TemporaryDirectory() as tmp:
        cli = cli_main(build_cli_args(sweep.base_config, overrides, tmp), run=False)
        start = time.time()
        cli.trainer.fit(cli.model, cli.datamodule)
        fit_s = time.time() - start
        test = cli.trainer.test(cli.model, cli.datamodule, verbose=False)[0]
    model, dm = cli.model.model, cli.datamodule
    model.eval()
    images = next(iter(dm.test_dataloader()))[0][:256]
    out = {"conv": args.conv, "epochs": args.epochs, "seed": args.seed, "set": extra,
           "test_top1": round(100 * float(test["test/acc_top1"]), 2), "fit_s": round(fit_s),
           "attention": attention_stats(model, dm.transform_batch(images, None, False))}
    batches, seen = [], 0
    for batch in dm.test_dataloader():
        if seen >= 2048:
            break
        batches.append((dm.transform_batch(batch[0], None, False), batch[1]))
        seen += len(batch[1])
    correct = {}
    for mode in ("eval", "train"):  # eval first: train-mode passes update the running statistics
        model.train(mode == "train")
        with torch.no_grad():
            correct[mode] = sum(int((model(x).argmax(1) == y).sum()) for x, y in batches)
    model.eval()
    out["top1_first_2048"] = {mode: round(100 * c / seen, 2) for mode, c in correct.items()}
    print(json.dumps(out), flush=True)
    return out


if __name__ == "__main__":
    main()
