"""The experiment runner: ``python -m experiments.run --help``."""
