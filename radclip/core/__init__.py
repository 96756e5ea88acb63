"""The core layer: models, losses, metrics and preprocessing on plain arguments and tensors.

Nothing here imports the params schema, MLflow, Ray, Optuna or DVC (tests/code/test_architecture.py
checks it): the data layer, the jobs and the io adapters build on it, never the other way round.
"""
