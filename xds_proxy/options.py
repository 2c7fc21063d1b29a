"""The command-line options, as parsed by `cli.py` and read by the server and the admin
endpoints (`/server_info` prints them). A leaf module: it imports nothing of ours."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Options:
    config_path: str | None = None
    config_yaml: str | None = None
    mode: str = "serve"  # "serve" | "validate"
    drain_time_s: int = 600
    drain_strategy: str = "gradual"  # "gradual" | "immediate"
    parent_shutdown_time_s: int = 900
    restart_epoch: int = 0
    base_id: int = 0
    disable_hot_restart: bool = False
    concurrency: int = 1
    log_level: str = "info"
    log_path: str | None = None
    service_node: str | None = None
    service_cluster: str | None = None
    admin_address_path: str | None = None
    file_flush_interval_msec: int = 1000  # access-log buffers are written at least this often
    # Ours (issue 24; docs/draining.md "Controlling drains"); the defaults keep Envoy's behaviour.
    drain_max_closes_per_second: float = 0.0  # a drain tells at most this many per second; 0: any
    drain_on_sigterm: bool = False  # SIGTERM drains every listener, exits when none is left
    min_drain_time_s: float = 0.0  # an exit-when-drained never exits before this
