"""Admin endpoints with Envoy's paths, methods and formats.

The handlers read the server through an `AdminView` and act on it through `AdminCommands`
(`admin/view.py`), never through the server object itself. The JSON documents are built as
the official `envoy.admin.v3` messages and printed with protobuf's JSON printer, so their
shape is Envoy's by construction.
"""

from __future__ import annotations

import json
import re
from collections.abc import Callable
from typing import TYPE_CHECKING

from envoy.admin.v3 import config_dump_pb2, config_dump_shared_pb2, listeners_pb2, server_info_pb2
from google.protobuf import timestamp_pb2

from xds_proxy.admin.page import AdminPage
from xds_proxy.admin.server import AdminResponse
from xds_proxy.admin.view import AdminCommands, AdminView
from xds_proxy.config.redact import redact_sensitive
from xds_proxy.lazy import lazy_import
from xds_proxy.listener.actions import PipeAddress, SocketAddress

if TYPE_CHECKING:
    from xds_proxy.admin import clusters as cluster_pages
    from xds_proxy.admin import json_render, plan_input
    from xds_proxy.listener.manager import ListenerVersion
else:  # loaded by the first request of a page that needs them (xds_proxy/lazy.py)
    cluster_pages = lazy_import("xds_proxy.admin.clusters")
    json_render = lazy_import("xds_proxy.admin.json_render")
    plan_input = lazy_import("xds_proxy.admin.plan_input")

JSON = "application/json"
Query = dict[str, list[str]]


def _to_json(message) -> str:
    return json_render.message_json(message)


def _timestamp(seconds: float) -> timestamp_pb2.Timestamp:
    stamp = timestamp_pb2.Timestamp()
    stamp.FromMilliseconds(int(seconds * 1000))  # Envoy prints milliseconds
    return stamp


class AdminHandlers:
    def __init__(self, view: AdminView, commands: AdminCommands) -> None:
        self.view = view
        self.commands = commands
        # path -> (method, handler, help text); method None: any.
        self.routes: dict[str, tuple[str, Callable[[Query], AdminResponse], str]] = {
            "/": (
                "GET",
                AdminPage(view.lds_updates).handle,
                "admin home page (HTML; ?format=json: LDS log)",
            ),
            "/ready": ("GET", self.ready, "print server state, return 200 if LIVE, otherwise 503"),
            "/server_info": ("GET", self.server_info, "print server version/status information"),
            "/listeners": ("GET", self.listeners, "print listener info"),
            "/clusters": ("GET", self.clusters, "upstream cluster status"),
            "/config_dump": ("GET", self.config_dump, "dump current Envoy configs"),
            "/stats": ("GET", self.stats, "print server stats"),
            "/stats/prometheus": (
                "GET",
                self.prometheus,
                "print server stats in prometheus format",
            ),
            "/drain_status": ("GET", self.drain_status, "every drain in progress (xds-proxy)"),
            "/quitquitquit": ("POST", self.quit, "exit the server"),
            "/healthcheck/fail": (
                "POST",
                self.healthcheck_fail,
                "cause the server to fail health checks",
            ),
            "/healthcheck/ok": (
                "POST",
                self.healthcheck_ok,
                "cause the server to pass health checks",
            ),
            "/drain_listeners": (
                "POST",
                self.drain_listeners,
                "drain listeners (flags: graceful, inboundonly, skip_exit)",
            ),
            "/help": ("GET", self.help, "print out list of admin commands"),
            "/drain_and_exit": (
                "POST",
                self.drain_and_exit,
                "drain every listener, exit once no connection is left (xds-proxy)",
            ),
            "/listeners/plan": (
                "POST",
                lambda query: self.plan(query, b""),  # `handle` passes the body
                "what a listener push would do, changing nothing (body: listeners; "
                "flag: delta) (xds-proxy)",
            ),
        }
        # Paths whose request body is read (by the admin transport, up to its limit).
        self.body_paths = frozenset({"/listeners/plan"})

    async def handle(
        self, method: str, path: str, query: Query, body: bytes | None = None
    ) -> AdminResponse:
        route = self.routes.get(path)
        if route is None:
            return AdminResponse(404, "invalid path. admin commands are:\n" + self._help_text())
        wanted, handler, _ = route
        if wanted == "POST" and method != "POST":
            return AdminResponse(405, "Method GET not allowed, POST required.")
        if path in self.body_paths:
            return self.plan(query, body or b"")
        return handler(query)

    def _help_text(self) -> str:
        return "".join(f"  {path}: {text}\n" for path, (_, _, text) in sorted(self.routes.items()))

    def help(self, query: Query) -> AdminResponse:
        return AdminResponse(200, "admin commands are:\n" + self._help_text())

    def quit(self, query: Query) -> AdminResponse:
        self.commands.quit()
        return AdminResponse(200, "OK\n")

    def healthcheck_fail(self, query: Query) -> AdminResponse:
        self.commands.set_health(True)
        return AdminResponse(200, "OK\n")

    def healthcheck_ok(self, query: Query) -> AdminResponse:
        self.commands.set_health(False)
        return AdminResponse(200, "OK\n")

    def drain_listeners(self, query: Query) -> AdminResponse:
        self.commands.drain_listeners(
            "graceful" in query,  # graceful
            "inboundonly" in query,  # inbound_only
            "skip_exit" in query,  # skip_exit
        )
        return AdminResponse(200, "OK\n")

    def drain_and_exit(self, query: Query) -> AdminResponse:
        return AdminResponse(200, self.commands.drain_and_exit())

    def plan(self, query: Query, body: bytes) -> AdminResponse:
        """`POST /listeners/plan`: what the push in the body would do (docs/admin.md)."""
        if self.view.plan_listeners is None:
            return AdminResponse(503, "no listener manager\n")
        try:
            pushed = plan_input.parse_plan_body(body, "delta" in query)
        except plan_input.PlanInputError as error:
            return AdminResponse(400, f"{error}\n")
        report = self.view.plan_listeners(pushed.version_info, pushed.listeners, pushed.removed)
        return AdminResponse(200, json.dumps(report, indent=1) + "\n", JSON)

    def ready(self, query: Query) -> AdminResponse:
        state = self.view.state()
        return AdminResponse(200 if state == "LIVE" else 503, f"{state}\n")

    def server_info(self, query: Query) -> AdminResponse:
        options = self.view.options
        info = server_info_pb2.ServerInfo(
            version=f"xds-proxy/{self.view.version}",
            state=server_info_pb2.ServerInfo.State.Value(self.view.state()),
            hot_restart_version=self.view.hot_restart_version,
        )
        info.uptime_current_epoch.seconds = self.view.uptime()
        info.uptime_all_epochs.seconds = self.view.uptime_all_epochs()
        cli = info.command_line_options
        cli.base_id = options.base_id
        cli.concurrency = options.concurrency
        cli.config_path = options.config_path or ""
        cli.config_yaml = options.config_yaml or ""
        cli.admin_address_path = options.admin_address_path or ""
        cli.log_level = options.log_level
        cli.log_path = options.log_path or ""
        cli.service_cluster = options.service_cluster or ""
        cli.service_node = options.service_node or ""
        cli.drain_time.seconds = options.drain_time_s
        cli.drain_strategy = (
            server_info_pb2.CommandLineOptions.Immediate
            if options.drain_strategy == "immediate"
            else server_info_pb2.CommandLineOptions.Gradual
        )
        cli.parent_shutdown_time.seconds = options.parent_shutdown_time_s
        cli.mode = (
            server_info_pb2.CommandLineOptions.Validate
            if options.mode == "validate"
            else server_info_pb2.CommandLineOptions.Serve
        )
        cli.disable_hot_restart = options.disable_hot_restart
        cli.restart_epoch = options.restart_epoch
        info.node.CopyFrom(self.view.bootstrap.node)
        return AdminResponse(200, _to_json(info), JSON)

    # -- listeners ------------------------------------------------------------------------

    def _bound(self, version: ListenerVersion) -> list[SocketAddress]:
        return self.view.bound_addresses(version.id)

    def listeners(self, query: Query) -> AdminResponse:
        active = list(self.view.listeners.active.values())
        active += list(self.view.listeners.listed_warming)
        if query.get("format", [""])[0] == "json":
            doc = listeners_pb2.Listeners()
            for version in active:
                status = doc.listener_statuses.add(name=version.name)
                for i, address in enumerate(self._bound(version)):
                    target = (
                        status.local_address if i == 0 else status.additional_local_addresses.add()
                    )
                    if isinstance(address, PipeAddress):
                        target.pipe.path = address.path
                        continue
                    target.socket_address.address = address[0]
                    target.socket_address.port_value = address[1]
            return AdminResponse(200, _to_json(doc), JSON)
        lines = []
        for version in active:
            for address in self._bound(version):
                if isinstance(address, PipeAddress):
                    shown = address.path
                else:
                    ip, port = address
                    shown = f"[{ip}]:{port}" if ":" in ip else f"{ip}:{port}"
                lines.append(f"{version.name}::{shown}\n")
        return AdminResponse(200, "".join(lines))

    def _listeners_dump(
        self, name_regex: re.Pattern[str] | None
    ) -> config_dump_shared_pb2.ListenersConfigDump:
        manager = self.view.listeners
        dump = config_dump_shared_pb2.ListenersConfigDump(version_info=manager.version_info)
        dynamic: dict[str, config_dump_shared_pb2.ListenersConfigDump.DynamicListener] = {}

        def entry(name: str):
            found = dynamic.get(name)
            if found is None:
                found = dynamic[name] = config_dump_shared_pb2.ListenersConfigDump.DynamicListener(
                    name=name
                )
            return found

        def fill(state, version: ListenerVersion) -> None:
            state.version_info = version.version_info
            state.listener.Pack(version.config)
            state.last_updated.CopyFrom(_timestamp(version.last_updated))

        for version in manager.active.values():
            if name_regex is not None and not name_regex.search(version.name):
                continue
            if version.static:
                static = dump.static_listeners.add()
                static.listener.Pack(version.config)
                static.last_updated.CopyFrom(_timestamp(version.last_updated))
            else:
                fill(entry(version.name).active_state, version)
        for version in manager.warming.values():
            if name_regex is None or name_regex.search(version.name):
                fill(entry(version.name).warming_state, version)
        for version in manager.draining.values():
            if name_regex is None or name_regex.search(version.name):
                fill(entry(version.name).draining_state, version)
        for name, error in manager.errors.items():
            if name_regex is None or name_regex.search(name):
                self._fill_error(entry(name).error_state, error)
        ordered = list(dynamic.values())
        for error in manager.overall_errors:
            nameless = config_dump_shared_pb2.ListenersConfigDump.DynamicListener()
            self._fill_error(nameless.error_state, error)
            ordered.append(nameless)
        dump.dynamic_listeners.extend(ordered)
        return dump

    @staticmethod
    def _fill_error(state, error) -> None:
        state.failed_configuration.Pack(error.failed_configuration)
        state.last_update_attempt.CopyFrom(_timestamp(error.last_update_attempt))
        state.details = error.details

    def config_dump(self, query: Query) -> AdminResponse:
        regex_text = query.get("name_regex", [""])[0]
        try:
            name_regex = re.compile(regex_text) if regex_text else None
        except re.error as error:
            return AdminResponse(400, f"Invalid regex: {error}\n")
        resource = query.get("resource", [""])[0]
        listeners = self._listeners_dump(name_regex)
        clusters = self._clusters_dump(name_regex)
        routes = self._routes_dump(name_regex)
        secrets = self._secrets_dump(name_regex)
        include_eds = "include_eds" in query
        endpoints = (
            cluster_pages.endpoints_dump(self.view.clusters, name_regex) if include_eds else None
        )
        if resource:
            sections = {
                "dynamic_listeners": listeners,
                "static_listeners": listeners,
                "static_clusters": clusters,
                "dynamic_active_clusters": clusters,
                "dynamic_route_configs": routes,
                "static_secrets": secrets,
                "dynamic_active_secrets": secrets,
                "dynamic_warming_secrets": secrets,
            }
            if endpoints is not None:
                sections["static_endpoint_configs"] = endpoints
                sections["dynamic_endpoint_configs"] = endpoints
            section = sections.get(resource)
            if section is None:
                return AdminResponse(404, f"{resource} not found in config dump\n")
            wrapper = config_dump_pb2.ConfigDump()
            for item in getattr(section, resource):
                wrapper.configs.add().Pack(item)
            redact_sensitive(wrapper)  # private keys and other secrets, as Envoy's
            return AdminResponse(200, _to_json(wrapper), JSON)
        dump = config_dump_pb2.ConfigDump()
        bootstrap = config_dump_pb2.BootstrapConfigDump()
        bootstrap.bootstrap.CopyFrom(self.view.bootstrap)
        bootstrap.last_updated.CopyFrom(_timestamp(self.view.started_at))
        dump.configs.add().Pack(bootstrap)
        dump.configs.add().Pack(clusters)
        if endpoints is not None:  # as Envoy: after the clusters
            dump.configs.add().Pack(endpoints)
        dump.configs.add().Pack(listeners)
        if routes.dynamic_route_configs:  # as Envoy: the (empty) scoped routes come first
            dump.configs.add().Pack(config_dump_shared_pb2.ScopedRoutesConfigDump())
            dump.configs.add().Pack(routes)
        if secrets.ByteSize():  # only when there are secrets (static or from SDS)
            dump.configs.add().Pack(secrets)
        redact_sensitive(dump)  # private keys and other secrets, as Envoy's
        return AdminResponse(200, _to_json(dump), JSON)

    def _secrets_dump(
        self, name_regex: re.Pattern[str] | None
    ) -> config_dump_pb2.SecretsConfigDump:
        dump = config_dump_pb2.SecretsConfigDump()
        if self.view.secrets is None:
            return dump
        dump.CopyFrom(self.view.secrets())
        for section in (
            dump.static_secrets,
            dump.dynamic_active_secrets,
            dump.dynamic_warming_secrets,
        ):
            kept = [item for item in section if name_regex is None or name_regex.search(item.name)]
            del section[:]
            section.extend(kept)
        return dump

    def _routes_dump(
        self, name_regex: re.Pattern[str] | None
    ) -> config_dump_shared_pb2.RoutesConfigDump:
        """RDS: every route configuration held (version_info, last_updated)."""
        dump = config_dump_shared_pb2.RoutesConfigDump()
        for name, version_info, config, last_updated in self.view.route_configs():
            if name_regex is not None and not name_regex.search(name):
                continue
            held = dump.dynamic_route_configs.add(version_info=version_info)
            held.route_config.Pack(config)
            held.last_updated.CopyFrom(_timestamp(last_updated))
        return dump

    def _clusters_dump(
        self, name_regex: re.Pattern[str] | None
    ) -> config_dump_shared_pb2.ClustersConfigDump:
        return cluster_pages.clusters_dump(
            self.view.clusters, self.view.cds_version_info(), name_regex
        )

    def clusters(self, query: Query) -> AdminResponse:
        extra = self.view.worker_host_counts() if self.view.worker_host_counts else {}
        if query.get("format", [""])[0] == "json":
            return AdminResponse(
                200, _to_json(cluster_pages.clusters_message(self.view.clusters, extra)), JSON
            )
        return AdminResponse(200, cluster_pages.clusters_text(self.view.clusters, extra))

    # -- stats and drains -----------------------------------------------------------------

    def _filter(self, query: Query) -> str | None:
        return query.get("filter", [""])[0] or None

    def stats(self, query: Query) -> AdminResponse:
        try:
            if query.get("format", [""])[0] == "json":
                return AdminResponse(200, self.view.stats.render_json(self._filter(query)), JSON)
            if query.get("format", [""])[0] == "prometheus":
                return self.prometheus(query)
            return AdminResponse(200, self.view.stats.render_text(self._filter(query)))
        except re.error as error:
            return AdminResponse(400, f"Invalid regex: {error}\n")

    def prometheus(self, query: Query) -> AdminResponse:
        try:
            body = self.view.stats.render_prometheus(self._filter(query))
        except re.error as error:
            return AdminResponse(400, f"Invalid regex: {error}\n")
        return AdminResponse(200, body, "text/plain; charset=UTF-8")

    def drain_status(self, query: Query) -> AdminResponse:
        drains = self.view.drain_report()
        report = {"drains": drains, "warming": self.view.warming_report()}
        return AdminResponse(200, json.dumps(report, indent=1) + "\n", JSON)
