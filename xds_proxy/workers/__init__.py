"""Worker processes (`--concurrency N`): the main process decides, N workers serve.

`supervisor.py` starts and restarts the workers (each runs `xds_proxy/worker.py`) and asks
them for their state; `relay.py` is the main process's ADS server that feeds them what it
accepted (`published.py`); `channel.py` carries requests and listen sockets between the
processes; `merge.py` (pure) folds the workers' stats into the main process's, so that admin
shows one proxy.
"""
