"""CUDA checks (`make gpu-check`, marked ``gpu``; skipped without a CUDA device): every
strategy on the GPU agrees with the reference on the CPU (outputs and all gradients), the
auto choice runs, models train a step and export with a dynamic batch, and the benchmark runs
on CUDA. Unmarked: `scripts/gpu_check.sh` itself, without CUDA (it must skip cleanly) and, as
a slow test, its CPU rehearsal."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

ROOT = Path(__file__).resolve().parents[1]
needs_cuda = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")


@pytest.fixture()
def _exact_matmul():
    old = torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32
    torch.backends.cuda.matmul.allow_tf32 = torch.backends.cudnn.allow_tf32 = False
    yield
    torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32 = old


def _strategies():
    from odconv import STRATEGIES

    return [s for s in sorted(STRATEGIES) if s != "compiled"]


@pytest.mark.gpu
@needs_cuda
@pytest.mark.usefixtures("_exact_matmul")
@pytest.mark.parametrize("strategy", ["auto", *_strategies()])
@pytest.mark.parametrize("case", ["cfsk", "k_bias", "depthwise", "pointwise", "batch1"])
def test_cuda_matches_cpu_reference(strategy, case):
    from odconv import dynamic_conv2d

    g = torch.Generator().manual_seed(0)
    b, i, o, k, groups, n = {"cfsk": (4, 8, 16, 3, 1, 4), "k_bias": (4, 8, 16, 3, 2, 4),
                             "depthwise": (4, 16, 16, 3, 16, 4), "pointwise": (4, 8, 16, 1, 1, 4),
                             "batch1": (1, 8, 16, 3, 1, 4)}[case]
    x = torch.randn(b, i, 10, 10, generator=g)
    w = torch.randn(n, o, i // groups, k, k, generator=g)
    att = {"kernel": torch.rand(b, n, generator=g), "channel": torch.rand(b, i, generator=g)}
    if k > 1:
        att["spatial"] = torch.rand(b, k, k, generator=g)
    if case != "depthwise":
        att["filter"] = torch.rand(b, o, generator=g)
    if case == "k_bias":
        att = {"kernel": att["kernel"], "bias": torch.randn(n, o, generator=g)}
    geo = dict(stride=1, padding=k // 2, groups=groups)

    def run(device, name):
        ins = [t.to(device).requires_grad_() for t in (x, w, *att.values())]
        out = dynamic_conv2d(ins[0], ins[1], **dict(zip(att, ins[2:])), **geo, strategy=name)
        go = torch.ones_like(out).mul_(torch.arange(out.numel(), device=device).view_as(out) % 7 - 3)
        grads = torch.autograd.grad(out, ins, go)
        return [out.cpu(), *(t.cpu() for t in grads)]

    ref = run("cpu", "grouped")
    for a, r in zip(run("cuda", strategy), ref):
        torch.testing.assert_close(a, r, rtol=1e-4, atol=1e-4 * (1 + r.abs().max().item()))


@pytest.mark.gpu
@needs_cuda
@pytest.mark.usefixtures("_exact_matmul")
@pytest.mark.parametrize("conv", ["odconv4x", "odconv1x", "condconv8x", "dyconv4x"])
def test_cuda_model_train_step_and_export(conv):
    from odconv import build_model
    from odconv.export import export_model

    model = build_model("cifar_resnet18", num_classes=10, conv=conv, width=0.25).cuda()
    x = torch.randn(8, 3, 32, 32, device="cuda")
    loss = torch.nn.functional.cross_entropy(model(x), torch.randint(0, 10, (8,), device="cuda"))
    loss.backward()
    assert all(torch.isfinite(p.grad).all() for p in model.parameters() if p.grad is not None)
    program = export_model(model, x[:2])
    with torch.no_grad():
        torch.testing.assert_close(program.module()(x), model.eval()(x), rtol=1e-3, atol=1e-3)


@pytest.mark.gpu
@needs_cuda
def test_cuda_quick_bench(tmp_path):
    from odconv.bench.cli import main

    assert main(["--quick", "--device", "cuda", "--out", str(tmp_path)]) == 0
    for name in ("layers", "models", "targets"):
        assert "gpu:" in (tmp_path / f"{name}.md").read_text()
    assert not (tmp_path / "workers.md").exists()   # CPU worker layouts: not a CUDA question


def _gpu_check(env: dict[str, str], *args: str, timeout: float = 120) -> subprocess.CompletedProcess:
    return subprocess.run(["bash", str(ROOT / "scripts" / "gpu_check.sh"), *args], cwd=ROOT, capture_output=True,
                          text=True, timeout=timeout, env={**os.environ, "PY": sys.executable, **env})


def test_gpu_check_skips_cleanly_without_cuda(tmp_path):
    proc = _gpu_check({"CUDA_VISIBLE_DEVICES": "", "GPU_CHECK_OUT": str(tmp_path / "out")})
    assert proc.returncode == 0, proc.stderr
    assert "no CUDA device visible" in proc.stdout and "skipping" in proc.stdout
    assert not (tmp_path / "out").exists()


def test_gpu_check_names_a_bad_device():
    proc = _gpu_check({"GPU_CHECK_DEVICE": "tpu"})
    assert proc.returncode == 2
    assert proc.stderr.strip() == "error: GPU_CHECK_DEVICE=tpu; valid: cuda, cpu (rehearsal)"


@pytest.mark.slow
def test_gpu_check_rehearsal_on_cpu(tmp_path):
    """The GPU check's steps on CPU (quick benchmark, smoke estimate and bench): what a GPU window runs,
    minus CUDA."""
    proc = _gpu_check({"GPU_CHECK_DEVICE": "cpu", "GPU_CHECK_OUT": str(tmp_path)}, "--threads", "1", timeout=900)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    for name in ("layers.md", "models.md", "targets.md", "ablation_estimate.md"):
        assert (tmp_path / name).exists()
    assert "# Estimated wall time of sweep `smoke` on cpu" in (tmp_path / "ablation_estimate.md").read_text()
    assert "Command: `odconv-sweep bench smoke`" in (tmp_path / "smoke" / "bench" / "models.md").read_text()
