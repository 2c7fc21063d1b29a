"""The config compiler's checks: every Envoy message passes through here once.

A leaf package (stdlib, protobuf and the generated Envoy messages, and the leaf helpers
`xds_proxy.errors`, `xds_proxy.bounded_cache`, `xds_proxy.extensions`): nothing here imports
the runtime, the codecs or the upstreams.

- `pgv`: the protoc-gen-validate rules of the xds-protos descriptors (what Envoy validates).
- `rules`: the kinds of rule a field can have (`Supported`, `NotYet("why")`, `Inert`, ...).
- `table`: the one table of the fields we accept, per message type, with per-place overrides
  where the same message means different things in different places.
- `support`: the walker that checks a message against the table, and the LDS and bootstrap
  checks built on it (`listener_errors`, `check_bootstrap`, `require_supported`).
- `overload`: what the bootstrap's overload manager may configure (the global connection limit).
- `values`: reading values the builders share (durations, DataSources, TLS material).
"""
