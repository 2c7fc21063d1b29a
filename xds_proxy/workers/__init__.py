"""Worker processes (`--concurrency N`): the main process decides, N workers serve.

`merge.py` (pure) folds the workers' stats and `/drain_status` reports into the main
process's, so that admin shows one proxy.
"""
