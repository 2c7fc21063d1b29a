"""control-plane-stub: a small but real xDS management server for tests and demos.

SotW and Delta, plain LDS, CDS and RDS and ADS, many nodes, served with grpc.aio; resource sets are
pushed through a gRPC control API (proto/xds_stub/v1/control.proto) by the CLI
(`serve`, `push`, `status`, `wait`) or by `control_plane_stub.client.StubClient`.
"""
