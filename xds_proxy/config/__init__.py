"""The config compiler: every Envoy message passes through here once. The PGV rules and the
support table check it (the only place that decides whether a field is accepted), then pure
builders translate it into frozen dataclasses that the runtime, codecs and upstreams use.

A leaf package (stdlib, protobuf and the generated Envoy messages, and the leaf helpers
`xds_proxy.errors`, `xds_proxy.bounded_cache`, `xds_proxy.extensions`): nothing here imports
the runtime, the codecs, the upstreams or the xDS clients (tests/unit/test_config_leaf.py).

Checks
- `pgv`: the protoc-gen-validate rules of the xds-protos descriptors (what Envoy validates).
- `rules`: the kinds of rule a field can have (`Supported`, `NotYet("why")`, `Inert`, ...).
- `table`: the one table of the fields we accept, per message type, with per-place tables
  where the same message means different things in different places.
- `support`: the walker over the table, and the checks built on it: `listener_errors` (LDS),
  `bootstrap_findings`, `require_supported` (the table alone), `require_valid` (PGV, then
  the table: a CDS cluster).
- `overload`: what the overload manager may configure (the global connection limit).

Builders (input: a message that passed the checks)
- `hcm`: an HCM's settings (`HcmSettings`, `ProxyPolicy`); http/conn_manager.py adds the
  route table, stat handles and local replies.
- `tcp_proxy`: `TcpProxySettings`; `cluster`: `ClusterConfig`; `weighted`: `WeightedClusters`.
- `access_log`: the `access_log` lists of HCMs and tcp_proxies (`AccessLogSpec`: sink, parsed
  format, filter); xds_proxy/access_log/ compiles and writes them (docs/access-logs.md).
- `tls`: both directions' TLS settings and SSL context holders; `tls_material`: the one
  loader of a certificate and its key (memfd: the key never touches a disk); `secrets`: a
  `Secret` (SDS or static) as its material, a TLS context's references to secrets;
  `redact`: what `/config_dump` must not show (Envoy's sensitive fields).
- `values`: durations and the one DataSource reader.

Every field the table accepts is read by a builder, and no builder reads a field the table
refuses: tests/unit/test_config_invariant.py.
"""
