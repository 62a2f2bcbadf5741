"""``python -m lightning_modules fit --config experiments/smoke.yaml`` = the ``lightning`` CLI."""

from .cli import console_main

if __name__ == "__main__":
    console_main()
