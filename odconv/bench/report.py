"""The benchmark's output: CSV and markdown tables, and the project's targets checked against them.

Targets (``targets.csv|md``): for the ``cifar_resnet18`` training step at the models table's
batch, each variant's time, peak memory and (ODConv-4x) batch-1 latency over the static
model's; for every layer row, the default strategy against the reference and the fastest
strategy, after the recheck pass (docs/benchmark.md, "Reading the tables").
"""

from __future__ import annotations

import csv
import os
from typing import Sequence

# The project's targets (model training step of cifar_resnet18, batch 128): time of each
# variant's step over the static model's, peak training memory over static's, batch-1
# latency of ODConv-4x over static's, and the default strategy per layer row.
TIME_TARGETS = {"odconv4x": 2.0, "odconv1x": 1.5, "dyconv4x": 1.8, "condconv8x": 1.8}
MEMORY_TARGET = 1.5
LATENCY_TARGETS = {"odconv4x": 1.5}
BEST_TOLERANCE = 0.10        # auto at most 10% slower than the fastest single strategy
REFERENCE_TOLERANCE = 0.05   # "at or below the reference within noise"


def final_ratios(row: dict) -> tuple[float, float]:
    """An ``auto`` layer row's (time / reference, time / fastest strategy): the recheck's if rechecked."""
    if row["rechecked"]:
        return float(row["recheck_vs_reference"]), float(row["recheck_vs_best"])
    return float(row["time_vs_reference"]), float(row["time_vs_best"])


def evaluate_targets(model_rows: Sequence[dict], layer_rows: Sequence[dict], ref_tol: float = REFERENCE_TOLERANCE,
                     best_tol: float = BEST_TOLERANCE) -> list[dict]:
    """The project's targets against this run: one row per (target, precision, model, width)
    for the model targets (``auto`` strategy rows), and one per layer target over all rows."""
    out: list[dict] = []
    static = {(r["model"], r["width"], r["precision"]): r for r in model_rows if r["conv"] == "static"}
    auto = [r for r in model_rows if r["conv"] != "static" and r["strategy"] == "auto"]
    for r in auto:
        where = dict(precision=r["precision"], model=r["model"], width=r["width"])
        if (r["model"], r["width"], r["precision"]) not in static:
            continue
        if r["conv"] in TIME_TARGETS:
            out.append(dict(where, target=f"{r['conv']} train step / static", limit=TIME_TARGETS[r["conv"]],
                            measured=float(r["train_vs_static"])))
        out.append(dict(where, target=f"{r['conv']} train peak memory / static", limit=MEMORY_TARGET,
                        measured=float(r["mem_vs_static"])))
        if r["conv"] in LATENCY_TARGETS:
            out.append(dict(where, target=f"{r['conv']} batch-1 latency / static", limit=LATENCY_TARGETS[r["conv"]],
                            measured=float(r["latency_vs_static"])))
    auto_layers = [r for r in layer_rows if r["strategy"] == "auto"]
    if auto_layers:
        ratios = [(final_ratios(r), r) for r in auto_layers]
        for i, (name, tol) in enumerate((("layer rows: auto / reference (worst row)", ref_tol),
                                         ("layer rows: auto / fastest strategy (worst row)", best_tol))):
            worst, row = max(ratios, key=lambda p: p[0][i])
            over = sum(1 for p, _ in ratios if p[i] > 1 + tol)
            out.append(dict(precision="fp32", model="layers", width="", target=name, limit=round(1 + tol, 3),
                            measured=worst[i],
                            note=f"{len(ratios) - over}/{len(ratios)} rows within; worst {row['shape']} "
                                 f"B={row['batch']} {row['mode']} ({row['runs']})"))
    for t in out:
        t["met"] = t["measured"] <= t["limit"]
        t.setdefault("note", "")
    return out


def write_csv(path: str, rows: Sequence[dict]) -> None:
    """``rows`` as a CSV with the first row's keys as header; nothing when there are no rows."""
    if not rows:
        return
    with open(path, "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=list(rows[0]))
        w.writeheader()
        w.writerows(rows)



def _md_table(header: list[str], lines: list[list]) -> str:
    out = ["| " + " | ".join(header) + " |", "|" + "|".join("---" for _ in header) + "|"]
    out += ["| " + " | ".join(str(v) for v in line) + " |" for line in lines]
    return "\n".join(out)


def _md_header(title: str, info: dict[str, str], argv: Sequence[str], command: str = "python -m odconv.bench") -> str:
    lines = [f"# {title}", "", f"Command: `{command} {' '.join(argv)}`".rstrip(), ""]
    lines += [f"- {k}: {v}" for k, v in info.items()]
    if hasattr(os, "getloadavg"):  # the load while it ran: high figures mean noisier timings
        lines.append("- load_average_at_end: " + " ".join(f"{v:.2f}" for v in os.getloadavg()))
    return "\n".join(lines) + "\n"


def layers_markdown(rows: list[dict], strategies: Sequence[str], info: dict[str, str], argv: Sequence[str],
                    rounds: int, keep_within: float, ref_tol: float, best_tol: float, recheck_rounds: int) -> str:
    keyed: dict[tuple, dict[str, dict]] = {}
    for r in rows:
        key = (r["model"], r["shape"], r["attentions"], r["n"], r["batch"], r["mode"])
        keyed.setdefault(key, {})[r["strategy"]] = r
    md = [_md_header("Dynamic conv layers: strategies against the static conv, the reference and each other",
                     info, argv)]
    md.append(
        "Each row: one dynamic-conv shape (ODConv-4x attentions as the model builds them: c=channel, f=filter, "
        "s=spatial, k=kernel; n kernels), batch B, forward (no grad) or forward+backward. Strategy columns: time "
        "(then peak memory) as a multiple of the static conv of the same shape. `auto` is the strategy the default "
        "chooses; `/ ref` its time over the reference (`grouped`), `/ best` over the fastest strategy of the row. "
        f"Times are medians of {rounds} interleaved rounds; strategies slower than {keep_within:g}x the fastest after "
        f"the first round are timed once. Rows where `auto` looked slower than the reference by more than "
        f"{ref_tol:.0%} or than the fastest strategy by more than {best_tol:.0%} were re-timed with only those "
        f"contenders ({recheck_rounds} rounds, median of per-round ratios): `recheck` shows the first pass's "
        "ratios, and the `/ ref`, `/ best` columns the rechecked ones.\n")
    header = ["model", "shape", "att", "B", "mode", "static ms", *strategies, "auto", "/ ref", "/ best", "recheck"]
    lines = []
    for (model, shape, att, n, batch, mode), d in keyed.items():
        a = d["auto"]
        vs_ref, vs_best = final_ratios(a)
        first = (f"yes (was {float(a['time_vs_reference']):.2f} / {float(a['time_vs_best']):.2f})"
                 if a["rechecked"] else "")
        lines.append([model.replace("cifar_", ""), shape, f"{att} n{n}", batch, mode, d["static"]["time_ms"],
                      *[f"{d[s]['time_vs_static']:.2f}" for s in strategies], a["runs"], f"{vs_ref:.2f}",
                      f"{vs_best:.2f}", first])
    md.append("## Time (x static)\n\n" + _md_table(header, lines) + "\n")
    autos = [d["auto"] for d in keyed.values()]
    finals = [final_ratios(a) for a in autos]
    md.append(f"`auto` over {len(autos)} rows ({sum(bool(a['rechecked']) for a in autos)} rechecked): "
              f"{sum(r <= 1 + ref_tol for r, _ in finals)} at or below the reference within {ref_tol:.0%}, "
              f"{sum(b <= 1 + best_tol for _, b in finals)} within {best_tol:.0%} of the fastest strategy.\n")
    header = ["model", "shape", "att", "B", "mode", "static MB", *strategies, "auto", "auto / ref"]
    lines = [[model.replace("cifar_", ""), shape, f"{att} n{n}", batch, mode, d["static"]["peak_mb"],
              *[f"{d[s]['mem_vs_static']:.2f}" for s in strategies], d["auto"]["runs"],
              f"{d['auto']['mem_vs_reference']:.2f}"] for (model, shape, att, n, batch, mode), d in keyed.items()]
    md.append("## Peak memory (x static)\n\n" + _md_table(header, lines) + "\n")
    return "\n".join(md)


def models_markdown(rows: list[dict], info: dict[str, str], argv: Sequence[str], train_rounds: int,
                    latency_rounds: int, command: str = "python -m odconv.bench") -> str:
    md = [_md_header("Whole models: dynamic convs against the static model", info, argv, command)]
    md.append("Training step (forward + backward + SGD step, batch B, train mode), batch-1 inference latency "
              "(eval, inference mode) and training peak memory, each also as a multiple of the static model of the "
              "same precision in the same run (times: median of the per-round ratios over "
              f"{train_rounds} interleaved rounds for training, {latency_rounds} for latency). `auto` is the "
              "default strategy choice; `grouped` the reference algorithm. bf16: the forward pass under "
              "`torch.autocast(dtype=torch.bfloat16)` (Lightning's `bf16-mixed`), fp32 weights and optimizer.\n")
    header = ["model", "width", "conv", "strategy", "B", "params (M)", "train step ms", "x static",
              "latency ms", "x static", "train peak MB", "x static"]
    for precision in dict.fromkeys(r["precision"] for r in rows):
        lines = [[r["model"], r["width"], r["conv"], r["strategy"], r["batch"], r["params_m"], r["train_step_ms"],
                  f"{r['train_vs_static']:.2f}", r["latency_b1_ms"], f"{r['latency_vs_static']:.2f}",
                  r["train_peak_mb"], f"{r['mem_vs_static']:.2f}"] for r in rows if r["precision"] == precision]
        md.append(f"## {precision}\n\n" + _md_table(header, lines) + "\n")
    return "\n".join(md)


def strategies_markdown(rows: list[dict], info: dict[str, str], argv: Sequence[str], train_rounds: int) -> str:
    md = [_md_header("Execution strategies in whole models: time against memory", info, argv)]
    md.append("The models table's training step (batch B) with each dynamic model run under each strategy named "
              "(`auto`: the default choice; every strategy computes the same function), as multiples of the static "
              f"model of the same width and precision in the same run (time: median of per-round ratios over "
              f"{train_rounds} interleaved rounds; peak memory of one step). The memory target is "
              f"<= {MEMORY_TARGET:g}x static.\n")
    header = ["model", "width", "conv", "strategy", "B", "train step ms", "x static", "train peak MB", "x static"]
    for precision in dict.fromkeys(r["precision"] for r in rows):
        lines = [[r["model"], r["width"], r["conv"], r["strategy"], r["batch"], r["train_step_ms"],
                  f"{r['train_vs_static']:.2f}", r["train_peak_mb"], f"{r['mem_vs_static']:.2f}"]
                 for r in rows if r["precision"] == precision]
        md.append(f"## {precision}\n\n" + _md_table(header, lines) + "\n")
    md.append(memory_floor_summary(rows) + "\n")
    return "\n".join(md)


def floors_markdown(rows: list[dict], info: dict[str, str], argv: Sequence[str], train_rounds: int,
                    latency_rounds: int) -> str:
    md = [_md_header("Floors: the attention branch against the dynamic conv", info, argv)]
    md.append("Each dynamic model as in the models table (`computed`), and again with every attention branch "
              "replaced by the attentions it computed for the same input, kept as constants (`constant`: the same "
              "kernels and the same dynamic conv with its backward; no pooling, FCs, BatchNorm, sigmoid/softmax, "
              "nor their backward and parameters). Times as multiples of the static model of the same width and "
              f"precision in the same run (medians of per-round ratios over {train_rounds} interleaved rounds for "
              f"training, {latency_rounds} for latency). `branch` = computed - constant: the attention branch's "
              "share of a static step; `constant` is what the dynamic conv costs without it, the floor no faster "
              "branch can go below.\n")
    header = ["model", "width", "conv", "B", "train x static", "constant", "branch", "latency x static", "constant",
              "branch"]
    for precision in dict.fromkeys(r["precision"] for r in rows):
        by = {(r["model"], r["width"], r["conv"], r["attention"]): r for r in rows if r["precision"] == precision}
        lines = []
        for (model, width, conv, attention), r in by.items():
            if attention != "computed" or conv == "static":
                continue
            c = by[(model, width, conv, "constant")]
            lines.append([model, width, conv, r["batch"], f"{r['train_vs_static']:.2f}", f"{c['train_vs_static']:.2f}",
                          f"{r['train_vs_static'] - c['train_vs_static']:.2f}", f"{r['latency_vs_static']:.2f}",
                          f"{c['latency_vs_static']:.2f}", f"{r['latency_vs_static'] - c['latency_vs_static']:.2f}"])
        md.append(f"## {precision}\n\n" + _md_table(header, lines) + "\n")
    return "\n".join(md)


def memory_floor_summary(rows: Sequence[dict], limit: float = MEMORY_TARGET) -> str:
    """One line per (precision, model, width, conv): the strategy of least peak memory, its
    memory and time against static, and whether it meets ``limit``."""
    best: dict[tuple, dict] = {}
    for r in rows:
        if r["conv"] == "static":
            continue
        key = (r["precision"], r["model"], r["width"], r["conv"])
        if key not in best or r["mem_vs_static"] < best[key]["mem_vs_static"]:
            best[key] = r
    lines = ["Least memory per model (the strategy, its memory and time against static):", ""]
    for (precision, model, width, conv), r in best.items():
        verdict = "within" if r["mem_vs_static"] <= limit else "above"
        lines.append(f"- {precision} {model.replace('cifar_', '')} w{width:g} {conv}: `{r['strategy']}`, "
                     f"{r['mem_vs_static']:.2f}x memory ({verdict} {limit:g}x), {r['train_vs_static']:.2f}x time")
    return "\n".join(lines)


def workers_markdown(rows: list[dict], info: dict[str, str], argv: Sequence[str], seconds: float, repeats: int) -> str:
    md = [_md_header("Worker layout: P processes x 1 thread against 1 process x P threads", info, argv)]
    md.append("Training throughput (forward + backward + SGD step, images/s of all processes together) of the "
              "sweeps' small CPU model, each process training its own model side by side as sweep workers do: "
              f"{seconds:g} s windows started together, median over {repeats} alternating repeats. `threads seen` "
              "is what each worker's torch reported.\n")
    header = ["model", "width", "conv", "B", "processes", "threads each", "threads seen", "images/s",
              "x 1 process"]
    lines = [[r["model"], r["width"], r["conv"], r["batch"], r["processes"], r["threads_per_process"],
              r["threads_seen"], r["images_per_s"], f"{r['vs_one_process']:.2f}"] for r in rows]
    md.append(_md_table(header, lines) + "\n")
    md.append(workers_advice(rows) + "\n")
    return "\n".join(md)


def workers_advice(rows: list[dict]) -> str:
    """One sentence: which layout trained more images/s for every conv measured."""
    multi = [r for r in rows if r["processes"] > 1]
    if not multi:
        return ""
    gains = ", ".join(f"{r['conv']} {r['vs_one_process']:.2f}x" for r in multi)
    p = multi[0]["processes"]
    if all(r["vs_one_process"] > 1 for r in multi):
        return (f"{p} single-thread processes trained more images/s than one {p}-thread process ({gains}): "
                f"on this machine a CPU sweep finishes sooner with `WORKERS={p}`.")
    if all(r["vs_one_process"] < 1 for r in multi):
        return (f"One {p}-thread process trained more images/s than {p} single-thread processes ({gains}): "
                f"on this machine a CPU sweep finishes sooner with one worker.")
    return f"Mixed result ({p} processes against one: {gains}): the layouts are within noise of each other."


def targets_markdown(targets: list[dict], info: dict[str, str], argv: Sequence[str]) -> str:
    md = [_md_header("Targets: measured against the project's limits", info, argv)]
    md.append("Model targets: the training step of each model at the models table's batch, the default strategy, "
              "as multiples of the static model of the same width and precision in the same run (`models.md`); one "
              "column per model and width. Layer targets: over every row of `layers.md`, the default strategy's "
              "time against the reference and against the fastest single strategy, after the recheck pass. A "
              "target is met when measured <= limit, for every model and width.\n")
    model_targets = [t for t in targets if t["model"] != "layers"]
    if model_targets:
        columns = list(dict.fromkeys((t["model"], t["width"]) for t in model_targets))
        grouped: dict[tuple[str, str], dict[tuple, dict]] = {}
        for t in model_targets:
            grouped.setdefault((t["target"], t["precision"]), {})[(t["model"], t["width"])] = t
        header = ["target", "precision", "limit",
                  *[f"{m.replace('cifar_', '')} w{w:g}" for m, w in columns], "met"]
        lines = []
        for (name, precision), cells in grouped.items():
            limit = next(iter(cells.values()))["limit"]
            lines.append([name, precision, f"<= {limit:g}",
                          *[("-" if c not in cells else f"{cells[c]['measured']:.2f}" if cells[c]["met"]
                             else f"**{cells[c]['measured']:.2f}**") for c in columns],
                          "met" if all(t["met"] for t in cells.values()) else "**not met**"])
        md.append("## Models\n\n" + _md_table(header, lines) + "\n")
    layer_targets = [t for t in targets if t["model"] == "layers"]
    if layer_targets:
        lines = [[t["target"], f"<= {t['limit']:g}", f"{t['measured']:.2f}",
                  "met" if t["met"] else "**not met**", t["note"]] for t in layer_targets]
        md.append("## Layers\n\n" + _md_table(["target", "limit", "worst row", "met", "rows"], lines) + "\n")
    met = sum(t["met"] for t in targets)
    md.append(f"{met} of {len(targets)} (target, model, width, precision) checks met; figures over a limit in bold.\n")
    return "\n".join(md)



def kw_official_markdown(rows: list[dict], agreement: list[dict], info: dict[str, str], argv: Sequence[str],
                         train_rounds: int, latency_rounds: int, temperature: float) -> str:
    """``kw_official.md``: per KW spec, ours, the official module and static ResNet-18, whether
    ours trains at least as fast as the official module (median per-round ratio <= 1), and how
    closely the two agree (``agreement``: :func:`odconv.bench.kw_official.official_agreement` rows)."""
    md = [_md_header("KernelWarehouse ResNet-18: this project's module against the official one", info, argv)]
    md.append("ResNet-18 (ImageNet layout, 1000 classes) with each KW config, built by `odconv.build_model` and by "
              "the official `kw_resnet18` from the checkout given to `--kw-official`, with the same weights (our "
              "state dict loaded strictly into the official module); static: the plain ResNet-18.\n")
    md.append("## Agreement\n\nOne batch of 2 through float64 copies of both modules, loss `sum(output * w)` with "
              "w fixed, per temperature and mode: the largest difference in the output, the input gradient and any "
              "parameter's gradient (parameters matched by name), beside the largest output and parameter gradient "
              "for scale. Between 0 and 1 the official attention computes `t * temp_bias` in float32 (`temp_bias` "
              "is a plain tensor attribute, which `.double()` leaves as it is), so differences of float32 size "
              "remain there; at 0 and 1 that product is exact.\n")
    header = ["conv", "temperature", "mode", "max abs diff output", "max abs output", "max abs diff input grad",
              "max abs diff param grad", "max abs param grad"]
    lines = [[r["conv"], f"{r['temperature']:g}", r["mode"], f"{r['max_output_diff']:.1e}", f"{r['max_output']:.3g}",
              f"{r['max_input_grad_diff']:.1e}", f"{r['max_param_grad_diff']:.1e}", f"{r['max_param_grad']:.3g}"]
             for r in agreement]
    md.append(_md_table(header, lines) + "\n")
    md.append(f"## Speed\n\nBoth modules at temperature {temperature:g}. Training step (forward + backward + SGD "
              "step, train mode) and batch-1 eval latency; `x official` and `x static` are medians of the per-round "
              f"ratios over {train_rounds} interleaved rounds for training, {latency_rounds} for latency; `IQR` the "
              "quartiles of the training ratios; `max abs diff` the largest output difference of the agreement "
              "checks.\n")
    header = ["conv", "module", "B", "image", "params (M)", "max abs diff", "train step ms", "x official", "IQR",
              "x static", "latency ms", "x official", "train peak MB", "x official"]
    lines = [[r["conv"], r["module"], r["batch"], r["image_size"], r["params_m"],
              "-" if r["module"] == "static" else f"{r['max_output_diff']:.1e}", r["train_step_ms"],
              f"{r['train_vs_official']:.3f}", f"{r['train_vs_official_q1']:.3f}-{r['train_vs_official_q3']:.3f}",
              f"{r['train_vs_static']:.2f}", r["latency_b1_ms"], f"{r['latency_vs_official']:.3f}",
              r["train_peak_mb"], f"{r['mem_vs_official']:.2f}"] for r in rows]
    md.append(_md_table(header, lines) + "\n")
    ours = [r for r in rows if r["module"] == "ours"]
    met = [r["conv"] for r in ours if r["train_vs_official"] <= 1.0]
    missed = [f"{r['conv']} (x{r['train_vs_official']:.3f})" for r in ours if r["train_vs_official"] > 1.0]
    md.append(f"Ours trains at least as fast as the official module (median ratio <= 1) in {len(met)} of "
              f"{len(ours)} configs" + (f"; slower: {', '.join(missed)}" if missed else "") + ".\n")
    return "\n".join(md)
