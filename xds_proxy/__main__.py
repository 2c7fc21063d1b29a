import os

# Worker processes (`--concurrency N`) are forked and exec'ed at once: gRPC's fork handlers
# have nothing to protect, and they would log a line for every fork. Set before gRPC loads.
os.environ.setdefault("GRPC_ENABLE_FORK_SUPPORT", "false")

from xds_proxy.cli import main  # after the environment is set

raise SystemExit(main())
