// plugin-health dashboard: polls the read API with ETags and draws what it answers. Read-only.
//
// Every plugin-provided string (names, reasons, error types, messages) reaches the page as a text node or an
// attribute value set through the DOM, never as markup. URLs are relative, so the page also works mounted
// under a path prefix.
"use strict";

(() => {
  const STATES = ["RUNNING", "FAILED", "UNAVAILABLE", "INITIALIZED", "LOADED"];
  const STATUSES = ["pass", "warn", "fail"];
  const params = new URLSearchParams(window.location.search);
  const intervalMs = 1000 * clamp(Number.parseFloat(params.get("interval") ?? ""), 0.2, 60, 1);
  const etags = new Map(); // URL -> the ETag of the last answer drawn
  const dateFormat = new Intl.DateTimeFormat(undefined, { dateStyle: "short", timeStyle: "medium" });
  let filter = STATES.includes(params.get("state")) ? params.get("state") : "";
  let diagramKey = null;

  const $ = (id) => document.getElementById(id);

  function clamp(value, low, high, fallback) {
    return Number.isFinite(value) ? Math.min(high, Math.max(low, value)) : fallback;
  }

  function setText(node, text) {
    const value = text ?? "";
    if (node.textContent !== value) node.textContent = value;
  }

  // The answer's JSON, or null when the server says nothing changed (304) since the last one drawn.
  async function poll(url, okStatuses) {
    const headers = { Accept: "application/json" };
    const etag = etags.get(url);
    if (etag) headers["If-None-Match"] = etag;
    const response = await fetch(url, {
      headers,
      cache: "no-store", // we revalidate ourselves; the browser cache must not answer in our place
      credentials: "same-origin",
      signal: AbortSignal.timeout(Math.max(5000, 3 * intervalMs)),
    });
    if (response.status === 304) return null;
    if (!okStatuses.includes(response.status)) throw new Error(`${url} answered HTTP ${response.status}`);
    const body = await response.json();
    etags.set(url, response.headers.get("ETag"));
    return body;
  }

  function cell(row, index, tag = "td") {
    while (row.cells.length <= index) row.appendChild(document.createElement(tag));
    return row.cells[index];
  }

  function newRow(name) {
    const row = document.createElement("tr");
    row.id = `plugin-${name}`;
    row.dataset.plugin = name;
    const head = document.createElement("th");
    head.scope = "row";
    row.appendChild(head);
    for (let i = 1; i < 6; i += 1) row.appendChild(document.createElement("td"));
    const badge = document.createElement("span");
    badge.className = "badge";
    row.cells[1].appendChild(badge);
    row.cells[4].appendChild(document.createElement("time"));
    row.cells[5].className = "number";
    return row;
  }

  function fillRow(row, plugin) {
    const state = STATES.includes(plugin.state) ? plugin.state : "UNKNOWN";
    if (row.dataset.state && row.dataset.state !== state) {
      row.classList.remove("changed");
      void row.offsetWidth; // restart the highlight animation
      row.classList.add("changed");
    }
    row.dataset.state = state;
    for (const known of [...STATES, "UNKNOWN"]) row.classList.toggle(`state-${known.toLowerCase()}`, known === state);
    row.classList.toggle("unhealthy", state === "RUNNING" && plugin.healthy === false);
    setText(cell(row, 0, "th"), plugin.name);
    setText(row.cells[1].firstChild, plugin.state);
    setText(cell(row, 2), plugin.reason);
    const errorType = cell(row, 3);
    setText(errorType, plugin.error_type);
    if (plugin.error) errorType.title = plugin.error; else errorType.removeAttribute("title");
    const since = row.cells[4].firstChild;
    since.dateTime = plugin.since ?? "";
    since.title = plugin.since ?? "";
    const date = plugin.since ? new Date(plugin.since) : null;
    setText(since, date && !Number.isNaN(date.getTime()) ? dateFormat.format(date) : plugin.since);
    setText(cell(row, 5), String(plugin.restarts ?? ""));
  }

  function renderPlugins(plugins) {
    const body = $("plugin-rows");
    const previous = new Map([...body.rows].map((row) => [row.dataset.plugin, row]));
    const counts = Object.fromEntries(STATES.map((state) => [state, 0]));
    const current = new Set(plugins.map((plugin) => plugin.name));
    for (const [name, gone] of previous) if (!current.has(name)) gone.remove();
    plugins.forEach((plugin, index) => {
      const row = previous.get(plugin.name) ?? newRow(plugin.name);
      fillRow(row, plugin);
      // In the API's order (by name); a row already in place is not moved (moving restarts its animation).
      if (body.rows[index] !== row) body.insertBefore(row, body.rows[index] ?? null);
      if (plugin.state in counts) counts[plugin.state] += 1;
    });
    body.dataset.renders = String(Number(body.dataset.renders ?? 0) + 1);
    for (const count of document.querySelectorAll("#filters .count")) {
      setText(count, String(count.dataset.count ? counts[count.dataset.count] : plugins.length));
    }
    applyFilter();
    refreshDiagram(counts);
  }

  function applyFilter() {
    const rows = [...$("plugin-rows").rows];
    let shown = 0;
    for (const row of rows) {
      row.hidden = filter !== "" && row.dataset.state !== filter;
      if (!row.hidden) shown += 1;
    }
    for (const button of document.querySelectorAll("#filters button")) {
      button.setAttribute("aria-pressed", String(button.dataset.filter === filter));
    }
    $("plugins").dataset.filter = filter;
    setText($("shown"), filter ? `${shown} of ${rows.length}` : `${rows.length}`);
    $("empty").hidden = shown > 0 || rows.length === 0;
  }

  function chooseFilter(event) {
    const button = event.target.closest("button[data-filter]");
    if (!button) return;
    filter = button.dataset.filter;
    const url = new URL(window.location.href);
    if (filter) url.searchParams.set("state", filter); else url.searchParams.delete("state");
    window.history.replaceState(null, "", url);
    applyFilter();
  }

  // The diagram shows the number of plugins in each state: fetch it again only when those numbers change.
  function refreshDiagram(counts) {
    const key = STATES.map((state) => `${state}:${counts[state]}`).join(",");
    if (key === diagramKey) return;
    diagramKey = key;
    const image = $("diagram");
    image.dataset.counts = key;
    image.src = `v1/lifecycle/diagram?format=svg&counts=${encodeURIComponent(key)}`;
  }

  function renderHealth(document_) {
    const status = STATUSES.includes(document_.status) ? document_.status : "unknown";
    const aggregate = $("aggregate");
    aggregate.dataset.status = status;
    aggregate.className = `aggregate status-${status}`;
    setText($("aggregate-status"), status);
    const notes = Array.isArray(document_.notes) ? document_.notes.map(String) : [];
    setText($("notes"), notes.join("; "));
    $("notes").hidden = notes.length === 0;
  }

  // The cluster grid: a row per plugin, a column per instance (GET /v1/cluster), drawn anew on every 200.
  function instanceHeader(instance) {
    const head = document.createElement("th");
    head.scope = "col";
    const status = STATUSES.includes(instance.status) ? instance.status : "unknown";
    head.className = "instance";
    head.classList.toggle("gone", instance.gone === true);
    head.classList.toggle("self", instance.self === true);
    head.dataset.instance = String(instance.id);
    head.dataset.status = status;
    head.dataset.gone = String(instance.gone === true);
    const part = (className, text) => {
      const span = document.createElement("span");
      span.className = className;
      setText(span, text);
      head.appendChild(span);
    };
    part("instance-id", instance.id);
    if (instance.self === true) part("instance-self", "this one");
    part("instance-status", status);
    part("instance-ready", instance.ready === true ? "ready" : "not ready");
    const age = Number.isFinite(instance.age) ? `heartbeat ${instance.age.toFixed(1)} s ago` : "no heartbeat";
    part("instance-age", age);
    if (instance.gone === true) part("instance-gone", "gone");
    return head;
  }

  function gridCell(instance, plugin) {
    const cell = document.createElement("td");
    cell.dataset.instance = String(instance.id);
    cell.classList.toggle("gone", instance.gone === true);
    if (!plugin) {
      cell.classList.add("absent");
      cell.dataset.state = "";
      setText(cell, "\u2014");
      return cell;
    }
    const state = STATES.includes(plugin.state) ? plugin.state : "UNKNOWN";
    cell.dataset.state = state;
    cell.classList.add(`state-${state.toLowerCase()}`);
    const unhealthy = state === "RUNNING" && plugin.healthy === false;
    cell.classList.toggle("unhealthy", unhealthy);
    cell.classList.toggle("stale", plugin.stale === true);
    const badge = document.createElement("span");
    badge.className = "badge";
    setText(badge, plugin.state);
    cell.appendChild(badge);
    if (unhealthy) {
      const flag = document.createElement("span");
      flag.className = "flag";
      setText(flag, plugin.stale === true ? "stale" : "unhealthy");
      cell.appendChild(flag);
    }
    const why = [plugin.reason, plugin.error_type].filter(Boolean).join(": ");
    if (why) cell.title = why;
    return cell;
  }

  function renderCluster(cluster) {
    const instances = Array.isArray(cluster.instances) ? cluster.instances : [];
    const names = Array.isArray(cluster.plugins) ? cluster.plugins.map(String) : [];
    const head = document.createElement("tr");
    const corner = document.createElement("td");
    corner.className = "corner";
    setText(corner, "plugin");
    head.appendChild(corner);
    for (const instance of instances) head.appendChild(instanceHeader(instance));
    $("cluster-head").replaceChildren(head);
    $("cluster-rows").replaceChildren(...names.map((name) => {
      const row = document.createElement("tr");
      row.dataset.plugin = name;
      const label = document.createElement("th");
      label.scope = "row";
      setText(label, name);
      row.appendChild(label);
      for (const instance of instances) {
        const plugins = instance.plugins ?? {};
        // Own properties only: a plugin may be called "constructor" or "__proto__".
        row.appendChild(gridCell(instance, Object.hasOwn(plugins, name) ? plugins[name] : null));
      }
      return row;
    }));
    const gone = instances.filter((instance) => instance.gone === true).length;
    setText($("cluster-count"), gone ? `${instances.length} (${gone} gone)` : `${instances.length}`);
    $("cluster").dataset.instances = String(instances.length);
    const degraded = typeof cluster.degraded === "string" ? cluster.degraded : "";
    setText($("cluster-degraded"), degraded ? `the last known states: ${degraded}` : "");
    $("cluster-degraded").hidden = !degraded;
  }

  function setConnection(error) {
    const connection = $("connection");
    connection.dataset.connection = error ? "lost" : "live";
    setText(connection, error ? `connection lost (${error.message}), retrying` : `live, every ${intervalMs / 1000} s`);
    document.body.classList.toggle("stale", Boolean(error));
    if (!error) setText($("updated"), `updated ${new Date().toLocaleTimeString()}`);
  }

  async function tick() {
    try {
      const [plugins, health, cluster] = await Promise.all([
        poll("v1/plugins/", [200]),
        poll("v1/health", [200, 503]), // 503 is the answer for an aggregate "fail", with the same document
        poll("v1/cluster", [200]),
      ]);
      if (plugins !== null) renderPlugins(plugins);
      if (health !== null) renderHealth(health);
      if (cluster !== null) renderCluster(cluster);
      setConnection(null);
    } catch (error) {
      setConnection(error);
    } finally {
      window.setTimeout(tick, intervalMs);
    }
  }

  function start() {
    $("filters").addEventListener("click", chooseFilter);
    $("diagram").addEventListener("error", () => { $("diagram-error").hidden = false; });
    $("diagram").addEventListener("load", () => { $("diagram-error").hidden = true; });
    $("plugin-rows").addEventListener("animationend", (event) => event.target.classList.remove("changed"));
    applyFilter();
    tick();
  }

  start();
})();
