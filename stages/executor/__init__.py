"""The Ray executor: `python -m stages.executor` runs `dvc repro's stages in parallel (parallel.py), in warm
worker processes (worker.py), recording each through DVC (ledger.py)."""
