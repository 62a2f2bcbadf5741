"""CUDA checks (`make gpu-check`; skipped without a CUDA device): every strategy on the GPU
agrees with the reference on the CPU (outputs and all gradients), the auto choice runs,
models train a step and export with a dynamic batch, and the benchmark runs on CUDA."""

from __future__ import annotations

import pytest
import torch

pytestmark = [pytest.mark.gpu,
              pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")]


@pytest.fixture(autouse=True)
def _exact_matmul():
    old = torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32
    torch.backends.cuda.matmul.allow_tf32 = torch.backends.cudnn.allow_tf32 = False
    yield
    torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32 = old


def _strategies():
    from odconv.functional import STRATEGIES

    return [s for s in sorted(STRATEGIES) if s != "compiled"]


@pytest.mark.parametrize("strategy", ["auto", *_strategies()])
@pytest.mark.parametrize("case", ["cfsk", "k_bias", "depthwise", "pointwise", "batch1"])
def test_cuda_matches_cpu_reference(strategy, case):
    from odconv.functional import dynamic_conv2d

    g = torch.Generator().manual_seed(0)
    b, i, o, k, groups, n = {"cfsk": (4, 8, 16, 3, 1, 4), "k_bias": (4, 8, 16, 3, 2, 4), "depthwise": (4, 16, 16, 3, 16, 4),
                             "pointwise": (4, 8, 16, 1, 1, 4), "batch1": (1, 8, 16, 3, 1, 4)}[case]
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


def test_cuda_quick_bench(tmp_path):
    from odconv.bench import main

    assert main(["--quick", "--device", "cuda", "--out", str(tmp_path)]) == 0
    assert (tmp_path / "layers.md").exists() and (tmp_path / "models.md").exists()
