"""Benchmark of dynamic convolution against static convolution (``make bench``,
``python -m odconv.bench``; docs/benchmark.md).

- :mod:`~odconv.bench.measurement`: the one way to measure a model's costs,
  :func:`~odconv.bench.measurement.measure_model_costs` (also used by the sweeps), and the
  machine description;
- :mod:`~odconv.bench.layers`, :mod:`~odconv.bench.models`, :mod:`~odconv.bench.workers`:
  the sections (layer shapes under each strategy; whole models, strategies, floors; CPU
  worker layouts);
- :mod:`~odconv.bench.report`: CSV and markdown tables, the project's targets;
- :mod:`~odconv.bench.cli`: the command line.
"""
