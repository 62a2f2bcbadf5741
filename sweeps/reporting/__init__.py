"""Reporting on a study: trial records and bench tables in, tables, plots and the study's
statistics out (``odconv-sweep results``). Imports nothing that trains or launches (no
Lightning, Optuna, submitit, nor :mod:`sweeps.running`): tests/test_layout.py checks it."""
