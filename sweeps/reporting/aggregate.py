"""``odconv-sweep results <sweep>`` (``make results``): load a sweep's trial records, analyse
them and write the tables, text and plots under ``results/<sweep>/``.

:func:`aggregate` is the one place the three concerns meet:

- loading (:mod:`sweeps.reporting.loading`): records and benchmark tables -> pandas frames;
- analysis, frames in and frames out: :mod:`sweeps.reporting.analysis` (summary, reruns),
  :mod:`sweeps.reporting.attentions` (attention pairs, attention factorial and its conditional
  effects), :mod:`sweeps.reporting.precision` (detectable differences, precision goals),
  :mod:`sweeps.reporting.curves` (learning curves), :mod:`sweeps.reporting.isocost` (each
  variant against a static width ladder at equal cost); the statistics they use are
  :mod:`sweeps.reporting.stats`' and :mod:`sweeps.reporting.linear_models`';
- reporting: markdown, CSV and plots from those frames, in the files
  :class:`sweeps.layout.SweepLayout` names (:mod:`sweeps.reporting.tables`,
  :mod:`sweeps.reporting.effects_report`, :mod:`sweeps.reporting.isocost_report`; drawing in
  :mod:`sweeps.reporting.plots`, number formats in :mod:`sweeps.reporting.formats`).

What each file says and how to read it: ``docs/results.md``. Partial sweeps aggregate too:
seeds not (yet) done are listed in the ``missing`` column.
"""

from __future__ import annotations

import os
from typing import Any

from ..analysis_plan import read_plans
from ..definition import SweepDef
from ..layout import DEFAULT_ROOT, SweepLayout
from .analysis import add_pareto_fronts, rerun_table, summary_table, train_time_column
from .attentions import attention_table, conditional_effects_table, effects_table
from .claims_report import variant_families, write_claims
from .contrasts import plan_contrasts, plan_ladder
from .curves import curves_table
from .effects_report import write_effects
from .isocost import bench_costs, cost_frame, find_ladder, isocost, results_frame
from .isocost_report import write_isocost
from .loading import bench_machine, load_sweep_data, load_sweep_for_results
from .plan_status import plan_status
from .precision import power_summary
from .tables import write_accuracy_plots, write_attention, write_curves, write_summary

# the keys of aggregate()'s answer that name its main files
MAIN_FILES = {"summary_csv": "summary.csv", "summary_md": "summary.md", "attention_csv": "attention.csv",
              "effects_csv": "effects.csv", "effects_md": "effects.md",
              "conditional_effects_csv": "conditional_effects.csv", "val_curves_csv": "val_curves.csv"}


def aggregate(sweep_name: str, results_root: str | os.PathLike = DEFAULT_ROOT, sweep: SweepDef | None = None,
              study=None, bench_csv: str | os.PathLike | None = None) -> dict[str, Any]:
    """Write the tables and plots of sweep ``sweep_name`` (its definition: ``sweep``, else the
    study's snapshot ``<results_root>/<sweep>/sweep.json``, else the sweep YAML) under
    ``<results_root>/<sweep>/``, every path named by its :class:`sweeps.layout.SweepLayout`.
    ``study``: also use records stored in the Optuna study; ``bench_csv``: the benchmark table
    for cost ratios (default: the sweep's own, ``<results_root>/<sweep>/bench/models.csv`` from
    ``odconv-sweep bench``, else ``<results_root>/bench/models.csv`` from ``make bench``).

    Returns the paths of the main files, ``files`` (every file written), ``plots`` (the PNGs)
    and the frames: ``summary``, ``attention``, ``effects``, ``conditional_effects``,
    ``power`` (a dict), ``records``, ``reruns``, ``val_curves``, ``isocost`` (None without a
    static ladder) with ``isocost_line``, one line saying what the iso-cost step did."""
    sweep = sweep or load_sweep_for_results(sweep_name, results_root)
    layout = SweepLayout(sweep.name, results_root)
    out_dir = layout.dir
    out_dir.mkdir(parents=True, exist_ok=True)
    data = load_sweep_data(sweep, results_root, study, bench_csv)

    # analysis: frames in, frames out
    summary = summary_table(sweep, data.records, data.bench)
    time_col = train_time_column(summary)
    add_pareto_fronts(summary, time_col)
    attention = attention_table(sweep, summary)
    effects = effects_table(sweep, data.records)
    conditional = conditional_effects_table(effects)
    power = power_summary(sweep, data.records, summary, effects)
    reruns = rerun_table(sweep, data.point_records)
    references = dict(zip(summary["variant"], summary["reference"])) if len(summary) else {}
    curves = curves_table(data.records, references)
    costs = cost_frame(summary, bench_costs(summary, data.bench))
    plan = sweep.plan()
    iso = isocost(results_frame(data.records), summary, costs, orders=plan.frontier_order if plan else None)
    status = plan_status(sweep.analysis, data.records, read_plans(layout),
                         plan_ladder(plan, summary) if plan else find_ladder(summary))
    contrasts = (plan_contrasts(plan, results_frame(data.records), summary, costs, status.prespecified,
                                sweep.grid_seeds())
                 if plan and plan.contrasts else None)

    # reporting: each step writes its files from the frames above and returns their paths
    files = write_summary(out_dir, sweep, data, summary, attention, effects, power, reruns)
    files += write_attention(out_dir, sweep, attention)
    files += write_accuracy_plots(out_dir, sweep, data, summary, time_col)
    files += write_curves(out_dir, sweep, curves)
    files += write_effects(out_dir, sweep, effects, conditional, power)
    iso_files, iso_line = write_isocost(out_dir, iso, sweep.name, data.metric, bench_machine(data.bench_csv),
                                        str(data.bench_csv), status)
    files += iso_files
    files += write_claims(out_dir, sweep, status, iso, contrasts, variant_families(summary))
    # A further analysis goes here: its frame from those above (e.g. a table from `summary` and
    # `data.records`), then `files += write_<it>(out_dir, sweep, <its frame>)`, and the frame
    # in the dict below.

    main = {key: layout.report(name) for key, name in MAIN_FILES.items()}
    return {**main, "files": files,
            "plots": [p for p in files if p.suffix == ".png"],
            "summary": summary, "attention": attention, "effects": effects.table, "conditional_effects": conditional,
            "power": power, "records": data.records, "reruns": reruns, "val_curves": curves,
            "isocost": iso.table() if iso is not None else None, "isocost_line": iso_line,
            "plan_status": status, "contrasts": contrasts}


__all__ = ["aggregate"]
