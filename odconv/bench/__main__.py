"""``python -m odconv.bench``: the benchmark's command line (:func:`odconv.bench.cli.main`)."""

from .cli import main

raise SystemExit(main())
