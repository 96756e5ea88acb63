"""io adapters: the only modules that import MLflow, Optuna and Ray (tests/code/test_architecture.py).

Jobs call these; the core and data layers never do, so a library user can train, embed and
evaluate without a tracking server, a study or a cluster.
"""
