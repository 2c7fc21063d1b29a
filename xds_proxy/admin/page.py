"""The admin home page, `GET /`: what an operator wants to see during a drain, on one page.

The page is static HTML with inline CSS and JavaScript (no external assets: it must work on an
air-gapped host). It refreshes itself once a second from the JSON endpoints that already exist
(`/listeners?format=json`, `/config_dump`, `/drain_status`, `/stats?format=json`), so it shows
nothing those do not, plus `/?format=json`: the recent LDS update outcomes (ACK or NACK with the
error text), kept in a small ring buffer because no other endpoint remembers them.
"""

from __future__ import annotations

import json
from collections.abc import Callable

from xds_proxy.admin.server import AdminResponse

Query = dict[str, list[str]]
UPDATE_LOG_SIZE = 32


class AdminPage:
    """`GET /`: the HTML page; `GET /?format=json`: the LDS update log it shows."""

    def __init__(self, lds_updates: Callable[[], list[dict]]) -> None:
        self.lds_updates = lds_updates

    def handle(self, query: Query) -> AdminResponse:
        if query.get("format", [""])[0] == "json":
            body = json.dumps({"lds_updates": self.lds_updates()}, indent=1) + "\n"
            return AdminResponse(200, body, "application/json")
        return AdminResponse(
            200, PAGE, "text/html; charset=UTF-8", headers=(("cache-control", "no-store"),)
        )


PAGE = """<!doctype html>
<html lang="en">
<head>
<meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1">
<title>xds-proxy admin</title>
<style>
  :root { --fg: #1d2330; --muted: #66707f; --line: #dde2ea; --ok: #1f7a3d; --bad: #b3261e;
          --warn: #a15c00; --bar: #3b6fd8; }
  body { font: 14px/1.45 system-ui, sans-serif; color: var(--fg); margin: 1.5rem auto;
         max-width: 70rem; padding: 0 1rem; }
  h1 { font-size: 1.35rem; margin: 0 0 .25rem; }
  h2 { font-size: 1.05rem; margin: 1.6rem 0 .5rem; }
  .summary { color: var(--muted); }
  .summary b { color: var(--fg); }
  table { border-collapse: collapse; width: 100%; }
  th, td { text-align: left; padding: .3rem .6rem; border-bottom: 1px solid var(--line);
           vertical-align: top; }
  th { font-weight: 600; color: var(--muted); }
  code { font: 12.5px ui-monospace, monospace; }
  .state { font-weight: 600; }
  .state.active, .ACK { color: var(--ok); }
  .state.draining { color: var(--warn); }
  .state.error, .NACK { color: var(--bad); font-weight: 600; }
  td.time { white-space: nowrap; }
  .empty { color: var(--muted); font-style: italic; }
  .bar { background: #eef1f6; border-radius: 4px; height: .8rem; width: 14rem;
         overflow: hidden; display: inline-block; vertical-align: middle; }
  .bar > div { background: var(--bar); height: 100%; }
  .error-text { color: var(--bad); white-space: pre-wrap; font: 12.5px ui-monospace, monospace; }
  #status.stale { color: var(--bad); }
  a { color: var(--bar); }
</style>
</head>
<body>
<h1>xds-proxy</h1>
<div class="summary" id="summary">loading&hellip;</div>
<div class="summary" id="status"></div>

<h2>Listeners</h2>
<table id="listeners">
  <thead><tr><th>Name</th><th>Address</th><th>Version</th><th>State</th>
  <th>Last updated</th></tr></thead>
  <tbody></tbody>
</table>

<h2>Warming</h2>
<table id="warming">
  <thead><tr><th>Listener</th><th>Version</th><th>Waiting for (RDS)</th><th>Since</th>
  <th>Times out at</th><th>Serving meanwhile</th></tr></thead>
  <tbody></tbody>
</table>

<h2>Draining</h2>
<table id="drains">
  <thead><tr><th>What</th><th>Version</th><th>Trigger and why</th><th>Progress to deadline</th>
  <th>Connections left</th></tr></thead>
  <tbody></tbody>
</table>

<h2>Plan a push</h2>
<form id="plan-form">
<textarea id="plan-body" rows="6" cols="90" spellcheck="false"
 placeholder="listeners: [...] (JSON or YAML: a DiscoveryResponse, Listeners, a stub file)">
</textarea><br>
<label><input type="checkbox" id="plan-delta"> delta (these listeners, plus removed: [names])
</label>
<button type="submit">Plan (changes nothing)</button>
</form>
<div class="summary" id="plan-verdict"></div>
<table id="plan">
  <thead><tr><th>Listener</th><th>Outcome</th><th>Connections that drain</th><th>Detail</th>
  </tr></thead>
  <tbody></tbody>
</table>

<h2>Recent LDS updates</h2>
<table id="updates">
  <thead><tr><th>Time (UTC)</th><th>Version</th><th>Outcome</th><th>Listeners</th>
  <th>Error</th></tr></thead>
  <tbody></tbody>
</table>

<p class="summary">JSON: <a href="/listeners?format=json">/listeners</a> &middot;
<a href="/config_dump">/config_dump</a> &middot; <a href="/drain_status">/drain_status</a> &middot;
<a href="/stats?format=json">/stats</a> &middot; <a href="/?format=json">/?format=json</a>
(LDS updates) &middot; <a href="/help">/help</a></p>

<script>
"use strict";
const STATES = ["LIVE", "DRAINING", "PRE_INITIALIZING", "INITIALIZING"];

async function getJson(path) {
  const response = await fetch(path, {cache: "no-store"});
  if (!response.ok) throw new Error(path + ": HTTP " + response.status);
  return response.json();
}

function cell(row, text, className) {
  const td = document.createElement("td");
  if (text instanceof Node) td.appendChild(text); else td.textContent = text;
  if (className) td.className = className;
  row.appendChild(td);
  return td;
}

function fill(tableId, rows, emptyText, columns) {
  const body = document.querySelector("#" + tableId + " tbody");
  body.replaceChildren();
  if (rows.length === 0) {
    const tr = body.insertRow();
    cell(tr, emptyText, "empty").colSpan = columns;
    return;
  }
  for (const render of rows) render(body.insertRow());
}

function address(listener) {
  const socket = ((listener || {}).address || {}).socket_address;
  if (!socket) return "";
  const host = socket.address.includes(":") ? "[" + socket.address + "]" : socket.address;
  return host + ":" + (socket.port_value || 0);
}

function shortTime(stamp) {
  if (!stamp) return "";
  return stamp.replace("T", " ").replace(/(\\.\\d{3})\\d*/, "$1").replace(/Z|\\+00:00/, "");
}

function listenerRows(dump) {
  const rows = [];
  for (const config of dump.configs || []) {
    for (const item of config.static_listeners || []) {
      rows.push({name: item.listener.name, address: address(item.listener), version: "static",
                 state: "active", updated: item.last_updated});
    }
    for (const item of config.dynamic_listeners || []) {
      for (const [key, state] of [["active_state", "active"], ["warming_state", "warming"],
                                  ["draining_state", "draining"]]) {
        const entry = item[key];
        if (entry) rows.push({name: item.name, address: address(entry.listener),
                              version: entry.version_info || "", state: state,
                              updated: entry.last_updated});
      }
      if (item.error_state) {
        rows.push({name: item.name || "(whole response)", address: "", version: "",
                   state: "error", updated: item.error_state.last_update_attempt,
                   details: item.error_state.details});
      }
    }
  }
  return rows;
}

function progress(drain) {
  const total = (Date.parse(drain.deadline) - Date.parse(drain.started_at)) / 1000;
  const fraction = total > 0 ? Math.min(1, drain.elapsed_s / total) : 1;
  const wrap = document.createElement("span");
  const bar = document.createElement("span");
  bar.className = "bar";
  bar.setAttribute("role", "progressbar");
  bar.setAttribute("aria-valuenow", String(Math.round(fraction * 100)));
  const fillDiv = document.createElement("div");
  fillDiv.style.width = (fraction * 100).toFixed(1) + "%";
  bar.appendChild(fillDiv);
  wrap.appendChild(bar);
  const left = Math.max(0, total - drain.elapsed_s);
  wrap.appendChild(document.createTextNode(
    " " + Math.round(fraction * 100) + "% \\u00b7 " + left.toFixed(1) + " s left of " +
    total.toFixed(0) + " s (" + drain.strategy + ")"));
  return wrap;
}

function drainWhy(drain) {
  // The trigger, then why: the push (version, nonce), what changed, the policy it runs under.
  const parts = [drain.trigger];
  if (drain.cause) {
    parts.push("push " + drain.cause.version_info + " (nonce " + drain.cause.nonce + ")");
    if (drain.cause.chains) parts.push("chains " + drain.cause.chains.join(", "));
    if (drain.cause.changed && drain.cause.changed.length) {
      parts.push("changed " + drain.cause.changed.join(", "));
    }
  }
  if (drain.policy && drain.policy.source === "listener") {
    parts.push("listener's own policy" + (drain.policy.max_closes_per_second
      ? ", at most " + drain.policy.max_closes_per_second + "/s" : ""));
  }
  return parts.join(" \u00b7 ");
}

function planDetail(entry) {
  const parts = [];
  if (entry.draining_chains) {
    parts.push("chains " + entry.draining_chains.map(
      (c) => c.chain + " (" + c.connections + ")").join(", "));
  }
  if (entry.draining_version !== undefined) parts.push("version " + entry.draining_version);
  if (entry.would_warm) parts.push("would warm on " + entry.would_warm.join(", "));
  if (entry.changed) parts.push("changed " + entry.changed.join(", "));
  if (entry.reason) parts.push(entry.reason);
  if (entry.nack) parts.push(entry.nack);
  return parts.join("; ");
}

async function plan(event) {
  event.preventDefault();
  const verdict = document.getElementById("plan-verdict");
  const delta = document.getElementById("plan-delta").checked;
  try {
    const response = await fetch("/listeners/plan" + (delta ? "?delta" : ""), {
      method: "POST", body: document.getElementById("plan-body").value});
    const text = await response.text();
    if (!response.ok) throw new Error("HTTP " + response.status + ": " + text);
    const doc = JSON.parse(text);
    verdict.textContent = (doc.would_ack ? "would ACK" : "would NACK: " + doc.nack) +
      " \u00b7 connections that would drain: " + doc.connections_to_drain;
    fill("plan", doc.listeners.map((entry) => (tr) => {
      cell(tr, entry.name);
      cell(tr, entry.outcome);
      cell(tr, entry.connections === undefined ? "-" : String(entry.connections));
      cell(tr, planDetail(entry));
    }), "no listener", 4);
  } catch (error) {
    verdict.textContent = "cannot plan: " + error.message;
  }
}

document.getElementById("plan-form").addEventListener("submit", plan);
// `/#plan=<url-encoded body>` fills the box and plans it at once (a link to a plan).
if (location.hash.startsWith("#plan=")) {
  document.getElementById("plan-body").value = decodeURIComponent(location.hash.slice(6));
  document.getElementById("plan-form").requestSubmit();
}

function drainSubject(drain) {
  if (drain.kind === "server") return "all listeners (" + drain.direction + ")";
  if (drain.kind === "filter_chain") {
    return "listener " + drain.listener + ", filter chain " + (drain.filter_chain || "(unnamed)");
  }
  return "listener " + drain.listener;
}

async function refresh() {
  const status = document.getElementById("status");
  try {
    const [dump, drains, stats, updates] = await Promise.all([
      getJson("/config_dump"),
      getJson("/drain_status"),
      getJson("/stats?format=json"),
      getJson("/?format=json"),
    ]);
    const stat = {};
    for (const s of stats.stats || []) stat[s.name] = s.value;
    const listenersDump = (dump.configs || []).filter(
      (c) => (c["@type"] || "").endsWith("ListenersConfigDump"));
    const rows = listenerRows({configs: listenersDump});
    const state = STATES[stat["server.state"]] || String(stat["server.state"]);
    const lds = stat["listener_manager.lds.version_text"];
    const summary = document.getElementById("summary");
    summary.replaceChildren();
    for (const [label, value] of [
        ["server", state],
        ["LDS version", lds === undefined ? "(none)" : (lds || "(empty)")],
        ["updates", (stat["listener_manager.lds.update_success"] || 0) + " accepted, " +
                    (stat["listener_manager.lds.update_rejected"] || 0) + " rejected"],
        ["connections", stat["server.total_connections"] || 0]]) {
      summary.appendChild(document.createTextNode(label + ": "));
      const b = document.createElement("b");
      b.textContent = value;
      summary.appendChild(b);
      summary.appendChild(document.createTextNode("   "));
    }

    fill("listeners", rows.map((r) => (tr) => {
      cell(tr, r.name);
      cell(tr, r.address);
      cell(tr, r.version);
      const td = cell(tr, r.state, "state " + r.state);
      if (r.details) {
        const detail = document.createElement("div");
        detail.className = "error-text";
        detail.textContent = r.details;
        td.appendChild(detail);
      }
      cell(tr, shortTime(r.updated), "time");
    }), "no listeners", 5);

    fill("warming", (drains.warming || []).map((w) => (tr) => {
      cell(tr, w.listener);
      cell(tr, w.version_info);
      cell(tr, (w.waiting_for || []).join(", "));
      cell(tr, shortTime(w.since), "time");
      cell(tr, w.timeout_at ? shortTime(w.timeout_at) : "never", "time");
      cell(tr, w.serving_version === undefined ? "(nothing: refused)" : w.serving_version);
    }), "nothing is warming", 6);

    fill("drains", (drains.drains || []).map((d) => (tr) => {
      cell(tr, drainSubject(d));
      cell(tr, d.version_info);
      cell(tr, drainWhy(d));
      cell(tr, progress(d));
      cell(tr, String(d.connections));
    }), "nothing is draining", 5);

    fill("updates", (updates.lds_updates || []).slice().reverse().map((u) => (tr) => {
      cell(tr, shortTime(u.at), "time");
      cell(tr, u.kind === "ttl" ? "(TTL expiry)" : u.version_info);
      cell(tr, u.outcome, u.outcome);
      cell(tr, u.kind === "sotw" ? u.updated + " in response"
                                 : u.updated + " updated, " + u.removed + " removed");
      cell(tr, u.error, "error-text");
    }), "no LDS update yet", 5);

    status.className = "";
    status.textContent = "refreshed " + new Date().toISOString().slice(11, 19) + " UTC";
  } catch (error) {
    status.className = "stale";
    status.textContent = "cannot refresh: " + error.message;
  }
}

refresh();
setInterval(refresh, 1000);
</script>
</body>
</html>
"""
