"""Research workflows as commands: hyper-parameter sweeps (sweep.py) and side-by-side
comparison of experiments (compare.py); entry points in cli.py."""
