// plugin-health dashboard: polls the read API with ETags, listens to GET /v1/events to refresh at once on a
// transition, and draws what it answers. Read-only: it performs no operator action.
//
// Every plugin-provided string (names, reasons, error types, messages, check output) reaches the page as a text
// node or an attribute value set through the DOM, never as markup. The one piece of markup it takes is the
// lifecycle diagram, an SVG this server draws, which is parsed as XML and copied over element by element, keeping
// only drawing elements and attributes. URLs are resolved against the page's own (document.baseURI), so the page
// also works mounted under a path prefix. The operator token, if given, lives in sessionStorage (this tab only)
// and goes with every request as `Authorization: Bearer`: the API then shows error messages.
"use strict";

(() => {
  const STATES = ["RUNNING", "FAILED", "UNAVAILABLE", "INITIALIZED", "LOADED"];
  const STATUSES = ["pass", "warn", "fail"];
  const TOKEN_KEY = "plugin-health-token";
  const TIMELINE_LENGTH = 8; // transitions shown per plugin
  const HISTORY_FETCHES = 3; // history requests in flight at once
  const STREAM_RETRY_MS = 30000; // after the server refused the event stream
  // Rows drawn at once, and added by each "show more": a table of 10,000 rows takes seconds to lay out, so the page
  // draws the first of the plugins that match the filter and the search, and counts them all.
  const WINDOW = 200;
  const EVENT_SETTLE_MS = 150; // after a transition's event, the poll for the rest
  const MEASURES_KEPT = 100; // performance measures of transitions kept (dashboard:transition)
  const SVG_NS = "http://www.w3.org/2000/svg";
  // What of the server's SVG is copied into the page: drawing elements and attributes, nothing that runs or links.
  const SVG_ELEMENTS = new Set(["svg", "g", "title", "path", "polygon", "polyline", "ellipse", "circle", "rect",
    "line", "text", "tspan"]);
  const SVG_ATTRIBUTES = new Set(["id", "class", "viewBox", "width", "height", "transform", "d", "points", "cx",
    "cy", "rx", "ry", "r", "x", "y", "x1", "y1", "x2", "y2", "fill", "stroke", "stroke-width", "stroke-dasharray",
    "font-family", "font-size", "font-weight", "text-anchor", "preserveAspectRatio"]);

  const params = new URLSearchParams(window.location.search);
  const intervalMs = 1000 * clamp(Number.parseFloat(params.get("interval") ?? ""), 0.2, 60, 1);
  const etags = new Map(); // URL -> the ETag of the last answer drawn
  const timelines = new Map(); // plugin name -> {since: the `since` its timeline was drawn for, loading}
  const historyQueue = [];
  let historyFetches = 0;
  let filter = STATES.includes(params.get("state")) ? params.get("state") : "";
  let selected = null; // the plugin whose own diagram is drawn (null: every plugin's)
  let diagramKey = null;
  let diagramText = null;
  const svgs = new Map(); // diagram path -> the last SVG it answered (a 304 means: that one)
  let plugins = new Map(); // name -> the plugin as last drawn
  let listed = false; // whether the whole list has been drawn (before: the first page only)
  let moved = 0; // bumped whenever a plugin's last transition changes (the diagram's key)
  const drawnRows = new Map(); // name -> its row in the table (only the plugins in the window have one)
  const newer = new Map(); // name -> the time (ms) of a transition an event drew before the list held it
  let search = (params.get("q") ?? "").trim();
  let limit = WINDOW; // rows in the window: WINDOW, and WINDOW more for each "show more"
  let cluster = null; // the last cluster document, drawn again when the search or the window changes
  const gridKeys = new WeakMap(); // a cluster grid row -> what it was drawn from
  let stream = null;
  let streamLive = false;
  let timer = null;
  let ticking = false;
  let tickAgain = null; // the delay of the poll asked for while one was in flight (null: none asked for)
  let due = Infinity; // when (performance.now()) the next poll is scheduled
  let lastError = null;

  const $ = (id) => document.getElementById(id);
  const api = (path) => new URL(path, document.baseURI);

  function clamp(value, low, high, fallback) {
    return Number.isFinite(value) ? Math.min(high, Math.max(low, value)) : fallback;
  }

  function setText(node, text) {
    const value = text ?? "";
    if (node.textContent !== value) node.textContent = value;
  }

  function element(tag, className, text) {
    const node = document.createElement(tag);
    if (className) node.className = className;
    if (text !== undefined) setText(node, text);
    return node;
  }

  // --- time: ISO 8601 in UTC on the page, how long ago on hover ------------------------------------------------

  function parseTime(value) {
    const date = typeof value === "string" ? new Date(value) : null;
    return date && !Number.isNaN(date.getTime()) ? date : null;
  }

  function isoUtc(date) {
    return date.toISOString().replace(/\.\d{3}Z$/, "Z"); // 2026-01-12T10:00:03Z
  }

  function ago(date) {
    const seconds = Math.max(0, Math.round((Date.now() - date.getTime()) / 1000));
    if (seconds < 90) return `${seconds} s ago`;
    if (seconds < 90 * 60) return `${Math.round(seconds / 60)} min ago`;
    if (seconds < 36 * 3600) return `${Math.round(seconds / 3600)} h ago`;
    return `${Math.round(seconds / 86400)} days ago`;
  }

  function setTime(node, value) {
    const date = parseTime(value);
    node.dateTime = date ? date.toISOString() : "";
    setText(node, date ? isoUtc(date) : (value ?? ""));
    if (date) node.title = `${value} (${ago(date)})`; else node.removeAttribute("title");
  }

  // --- the token ----------------------------------------------------------------------------------------------

  function token() {
    try {
      return window.sessionStorage.getItem(TOKEN_KEY) ?? "";
    } catch {
      return ""; // storage refused (a sandboxed frame): no token
    }
  }

  function authorization() {
    const value = token();
    return value ? { Authorization: `Bearer ${value}` } : {};
  }

  function showToken() {
    const held = token() !== "";
    $("token-forget").hidden = !held;
    $("token-form").dataset.token = held ? "set" : "none";
    setText($("token-state"), held ? "token in use (this tab only)" : "");
  }

  function useToken(value) {
    try {
      if (value) window.sessionStorage.setItem(TOKEN_KEY, value); else window.sessionStorage.removeItem(TOKEN_KEY);
    } catch {
      setText($("token-state"), "this browser keeps no token here");
      return;
    }
    // Answers differ with the token (error messages): draw everything again from fresh answers.
    etags.clear();
    timelines.clear();
    diagramKey = null;
    showToken();
    refreshNow();
  }

  function submitToken(event) {
    event.preventDefault(); // nothing is posted anywhere: the token stays in this tab
    const input = $("token");
    const value = input.value.trim();
    input.value = "";
    if (value) useToken(value);
  }

  // --- reading the API ----------------------------------------------------------------------------------------

  // The answer's JSON (or text), or null when the server says nothing changed (304) since the last one drawn.
  async function poll(path, okStatuses, asText = false) {
    const url = api(path).href;
    const headers = { Accept: asText ? "image/svg+xml" : "application/json", ...authorization() };
    const etag = etags.get(url);
    if (etag) headers["If-None-Match"] = etag;
    const response = await fetch(url, {
      headers,
      cache: "no-store", // we revalidate ourselves; the browser cache must not answer in our place
      credentials: "same-origin",
      signal: AbortSignal.timeout(Math.max(5000, 3 * intervalMs)),
    });
    if (response.status === 304) return null;
    if (!okStatuses.includes(response.status)) throw new Error(`${path} answered HTTP ${response.status}`);
    const body = asText ? await response.text() : await response.json();
    etags.set(url, response.headers.get("ETag"));
    return body;
  }

  // --- the plugin table ---------------------------------------------------------------------------------------

  function newRow(name) {
    const row = document.createElement("tr");
    row.id = `plugin-${name}`;
    row.dataset.plugin = name;
    const head = document.createElement("th");
    head.scope = "row";
    const button = element("button", "plugin-name", name);
    button.type = "button";
    button.dataset.plugin = name;
    button.setAttribute("aria-pressed", "false");
    button.title = `draw ${name}'s own lifecycle`;
    const critical = element("span", "critical", "critical");
    critical.setAttribute("role", "img");
    critical.setAttribute("aria-label", "critical plugin");
    critical.title = "critical: when it is not healthy, the service fails (/readyz, /v1/health)";
    critical.hidden = true;
    head.append(button, critical);
    row.appendChild(head);
    const state = element("td", "state");
    state.append(element("span", "badge"), element("span", "flag degraded-flag"));
    const reason = element("td", "reason");
    reason.append(element("span", "reason-text"), element("div", "error-detail"));
    const check = element("td", "check");
    check.append(element("span", "check-status"), element("span", "observed"), element("div", "check-output"));
    const since = element("td", "since");
    since.appendChild(document.createElement("time"));
    const timeline = element("td", "timeline-cell");
    const list = element("ol", "timeline");
    list.setAttribute("aria-label", `recent transitions of ${name}, oldest first`);
    timeline.appendChild(list);
    row.append(state, reason, element("td", "error-type"), check, since, timeline, element("td", "number"));
    return row;
  }

  function fillRow(row, plugin) {
    const state = STATES.includes(plugin.state) ? plugin.state : "UNKNOWN";
    if (row.dataset.state && row.dataset.state !== state) highlight(row);
    row.dataset.state = state;
    for (const known of [...STATES, "UNKNOWN"]) row.classList.toggle(`state-${known.toLowerCase()}`, known === state);
    row.classList.toggle("unhealthy", state === "RUNNING" && plugin.healthy === false);
    const critical = plugin.critical === true;
    row.classList.toggle("critical-plugin", critical);
    row.dataset.critical = String(critical);
    row.querySelector(".critical").hidden = !critical;
    const [head, stateCell, reasonCell, errorType, check, since, , restarts] = row.cells;
    setText(head.querySelector(".plugin-name"), plugin.name);
    setText(stateCell.querySelector(".badge"), plugin.state);
    const degraded = plugin.degraded === true;
    row.classList.toggle("degraded", degraded);
    const flag = stateCell.querySelector(".degraded-flag");
    setText(flag, degraded ? "degraded" : "");
    flag.hidden = !degraded;
    setText(reasonCell.querySelector(".reason-text"), plugin.reason);
    const detail = reasonCell.querySelector(".error-detail");
    const message = typeof plugin.error === "string" ? plugin.error : "";
    setText(detail, message);
    detail.hidden = !message;
    setText(errorType, plugin.error_type);
    if (message) errorType.title = message; else errorType.removeAttribute("title");
    fillCheck(check, plugin);
    setTime(since.firstChild, plugin.since);
    setText(restarts, String(plugin.restarts ?? ""));
  }

  // Outline a row whose state changed. Restarted without reading the layout (offsetWidth would lay the table out
  // at once): a row still outlined loses its outline now and gets it back two frames later.
  function highlight(row) {
    if (!row.classList.contains("changed")) {
      row.classList.add("changed");
      return;
    }
    row.classList.remove("changed");
    requestAnimationFrame(() => requestAnimationFrame(() => row.classList.add("changed")));
  }

  // The richer health fields, where the API gives them: the last check's status, what it observed, its output.
  function hasCheck(plugin) {
    return ["check_status", "observed_value", "check_output"].some((key) => plugin[key] !== undefined && plugin[key] !== null);
  }

  function fillCheck(cell, plugin) {
    const status = STATUSES.includes(plugin.check_status) ? plugin.check_status : "";
    const pill = cell.querySelector(".check-status");
    pill.dataset.status = status;
    setText(pill, status);
    pill.hidden = !status;
    const observed = plugin.observed_value;
    const shown = observed === undefined || observed === null ? ""
      : `${typeof observed === "object" ? JSON.stringify(observed) : String(observed)}${
        plugin.observed_unit ? ` ${String(plugin.observed_unit)}` : ""}`;
    const value = cell.querySelector(".observed");
    setText(value, shown);
    value.hidden = !shown;
    const output = cell.querySelector(".check-output");
    const text = plugin.check_output === undefined || plugin.check_output === null ? "" : String(plugin.check_output);
    setText(output, text);
    output.hidden = !text;
    if (text) output.title = text; else output.removeAttribute("title");
  }

  // Whether two answers about a plugin say the same (their fields are strings, numbers, booleans, null or short
  // arrays of strings): an unchanged plugin's row is not touched.
  function samePlugin(a, b) {
    const keys = Object.keys(b);
    if (Object.keys(a).length !== keys.length) return false;
    return keys.every((key) => a[key] === b[key]
      || (Array.isArray(a[key]) && Array.isArray(b[key]) && a[key].join("\u0000") === b[key].join("\u0000")));
  }

  // Draw the list (every plugin, in the API's order): each plugin that changed since the last answer gets its row
  // filled again; a plugin an event showed a later transition of than this answer holds (an answer on its way as
  // the transition happened) stays as the event drew it. `partial`: the first page, drawn before the whole list
  // is in (no counts yet).
  function renderPlugins(list, partial = false) {
    const fresh = new Map();
    const changed = new Set();
    for (const plugin of list) {
      const name = String(plugin.name);
      const before = plugins.get(name);
      const shown = newer.get(name);
      if (shown !== undefined && before && Date.parse(plugin.since) < shown) {
        fresh.set(name, before); // the event's is later: kept until an answer catches up
        continue;
      }
      newer.delete(name);
      fresh.set(name, plugin);
      if (!before || !samePlugin(before, plugin)) changed.add(name);
      if (!before || before.since !== plugin.since) moved += 1;
    }
    for (const name of plugins.keys()) {
      if (!fresh.has(name)) {
        timelines.delete(name);
        etags.delete(api(historyPath(name)).href); // one coming back draws its timeline from a full answer
        if (!partial) changed.add(name);
      }
    }
    if (partial) for (const [name, plugin] of plugins) if (!fresh.has(name)) fresh.set(name, plugin);
    plugins = fresh;
    if (!partial) listed = true;
    drawWindow(changed);
    $("plugins").classList.toggle("has-checks", list.some(hasCheck));
    if (!partial) {
      const body = $("plugin-rows");
      body.dataset.renders = String(Number(body.dataset.renders ?? 0) + 1);
      if (selected !== null && !plugins.has(selected)) select(null);
    }
    return currentCounts();
  }

  // The search: part of a name, in any case.
  const nameMatches = (name) => search === "" || name.toLowerCase().includes(search.toLowerCase());

  function matches(plugin) {
    return (filter === "" || plugin.state === filter) && nameMatches(plugin.name);
  }

  // The table: a row for each of the first `limit` plugins that match the filter and the search, in the API's
  // order. Rows already drawn stay (moved only if out of order: moving restarts their animation); a row is filled
  // again only if its plugin is in `changed` (null: all of them), or new in the window.
  function drawWindow(changed = null) {
    const body = $("plugin-rows");
    const wanted = [];
    let matching = 0;
    for (const plugin of plugins.values()) {
      if (!matches(plugin)) continue;
      matching += 1;
      if (wanted.length < limit) wanted.push(plugin);
    }
    const keep = new Set(wanted.map((plugin) => plugin.name));
    for (const [name, row] of drawnRows) {
      if (keep.has(name)) continue;
      observer?.unobserve(row);
      row.remove();
      drawnRows.delete(name);
      timelines.delete(name); // drawn again from a full answer if it comes back into the window
      etags.delete(api(historyPath(name)).href);
    }
    let next = body.firstElementChild;
    wanted.forEach((plugin) => {
      let row = drawnRows.get(plugin.name);
      if (!row) {
        row = newRow(plugin.name);
        row.querySelector(".plugin-name").setAttribute("aria-pressed", String(plugin.name === selected));
        drawnRows.set(plugin.name, row);
        fillRow(row, plugin);
        observer?.observe(row);
      } else if (changed === null || changed.has(plugin.name)) {
        fillRow(row, plugin);
      }
      if (row === next) next = next.nextElementSibling; else body.insertBefore(row, next);
      if (row.dataset.visible === "true") wantTimeline(plugin.name);
    });
    showCounts(matching, wanted.length);
  }

  function showCounts(matching, drawn) {
    const counts = currentCounts();
    for (const count of document.querySelectorAll("#filters .count")) {
      setText(count, listed ? String(count.dataset.count ? counts[count.dataset.count] : plugins.size) : "");
    }
    for (const button of document.querySelectorAll("#filters button")) {
      button.setAttribute("aria-pressed", String(button.dataset.filter === filter));
    }
    $("plugins").dataset.filter = filter;
    $("plugins").dataset.matching = String(matching);
    const narrowed = filter !== "" || search !== "";
    setText($("shown"), !listed ? "" : narrowed ? `${matching} of ${plugins.size}` : `${plugins.size}`);
    $("empty").hidden = !listed || matching > 0 || plugins.size === 0;
    const more = matching - drawn;
    $("more").hidden = more <= 0;
    setText($("more-count"), more > 0 ? `${drawn} of ${matching} shown` : "");
    setText($("more-show"), `show ${Math.min(WINDOW, more)} more`);
  }

  function applyFilter() {
    limit = WINDOW;
    drawWindow();
    if (cluster !== null) renderCluster(cluster);
  }

  function chooseFilter(event) {
    const button = event.target.closest("button[data-filter]");
    if (!button) return;
    filter = button.dataset.filter;
    remember("state", filter);
    applyFilter();
  }

  function chooseSearch() {
    const value = $("search").value.trim();
    if (value === search) return;
    search = value;
    remember("q", search);
    applyFilter();
  }

  function showMore() {
    limit += WINDOW;
    drawWindow();
    if (cluster !== null) renderCluster(cluster);
  }

  // The filter and the search in the page's address, so that a view can be bookmarked.
  function remember(key, value) {
    const url = new URL(window.location.href);
    if (value) url.searchParams.set(key, value); else url.searchParams.delete(key);
    window.history.replaceState(null, "", url);
  }

  // --- timelines: each visible plugin's recent transitions, fetched when it moved ----------------------------

  const observer = "IntersectionObserver" in window ? new IntersectionObserver((entries) => {
    for (const entry of entries) {
      entry.target.dataset.visible = String(entry.isIntersecting);
      if (entry.isIntersecting) wantTimeline(entry.target.dataset.plugin);
    }
  }) : null;

  const historyPath = (name) => `v1/plugins/${encodeURIComponent(name)}/history`;

  function wantTimeline(name) {
    const plugin = plugins.get(name);
    if (!plugin) return;
    const known = timelines.get(name);
    if (known && (known.loading || known.since === plugin.since)) return;
    timelines.set(name, { since: plugin.since, loading: true });
    historyQueue.push(name);
    pumpHistories();
  }

  function pumpHistories() {
    while (historyFetches < HISTORY_FETCHES && historyQueue.length) {
      const name = historyQueue.shift();
      historyFetches += 1;
      loadTimeline(name).finally(() => {
        historyFetches -= 1;
        pumpHistories();
      });
    }
  }

  async function loadTimeline(name) {
    const wanted = timelines.get(name);
    try {
      const history = await poll(historyPath(name), [200]);
      const row = $(`plugin-${name}`);
      if (history !== null && row) drawTimeline(row.querySelector(".timeline"), history);
      if (wanted) wanted.loading = false;
    } catch {
      timelines.delete(name); // tried again when it is next drawn
    }
  }

  function drawTimeline(list, history) {
    const recent = Array.isArray(history) ? history.slice(-TIMELINE_LENGTH) : [];
    list.replaceChildren(...recent.map((entry) => {
      const state = STATES.includes(entry.to) ? entry.to : "UNKNOWN";
      const step = element("li", `step state-${state.toLowerCase()}`);
      step.dataset.state = state;
      const at = parseTime(entry.at);
      const when = at ? isoUtc(at) : String(entry.at ?? "");
      const why = [entry.reason, entry.error_type, entry.error].filter(Boolean).join(": ");
      const where = entry.instance ? ` on ${entry.instance}` : "";
      step.title = `${when}${where}: ${entry.from ?? "(new)"} \u2192 ${entry.to} (${entry.trigger})${why ? `, ${why}` : ""}`;
      step.appendChild(element("span", "visually-hidden", `${entry.to} at ${when}`));
      return step;
    }));
    list.dataset.count = String(recent.length);
  }

  // --- the lifecycle diagram: the server's SVG, drawn inline ----------------------------------------------

  function select(name) {
    selected = name;
    for (const button of document.querySelectorAll("#plugin-rows .plugin-name")) {
      button.setAttribute("aria-pressed", String(button.dataset.plugin === name));
    }
    setText($("diagram-of"), name === null ? "of every plugin" : `of ${name}`);
    $("diagram").setAttribute("aria-label", name === null
      ? "the plugin lifecycle state diagram: the number of plugins in each state, the number of transitions on each arrow"
      : `the lifecycle state diagram of ${name}: its state filled, the number of its transitions on each arrow`);
    $("diagram-all").hidden = name === null;
    diagramKey = null;
    refreshNow();
  }

  function choosePlugin(event) {
    const button = event.target.closest("button.plugin-name");
    if (button) select(selected === button.dataset.plugin ? null : button.dataset.plugin);
  }

  // A copy of the server's SVG holding only drawing elements and attributes (no script, link, style or handler).
  function cleanSvg(text) {
    const parsed = new DOMParser().parseFromString(text, "image/svg+xml");
    const root = parsed.documentElement;
    if (root.namespaceURI !== SVG_NS || root.localName !== "svg") throw new Error("the diagram is not SVG");
    const copy = (node) => {
      if (node.nodeType === Node.TEXT_NODE) return document.createTextNode(node.nodeValue);
      if (node.nodeType !== Node.ELEMENT_NODE || node.namespaceURI !== SVG_NS || !SVG_ELEMENTS.has(node.localName)) {
        return null;
      }
      const made = document.createElementNS(SVG_NS, node.localName);
      for (const attribute of node.attributes) {
        if (!attribute.namespaceURI && SVG_ATTRIBUTES.has(attribute.name)) made.setAttribute(attribute.name, attribute.value);
      }
      for (const child of node.childNodes) {
        const kept = copy(child);
        if (kept) made.appendChild(kept);
      }
      return made;
    };
    const svg = copy(root);
    svg.removeAttribute("width"); // the page sizes it (the viewBox keeps its proportions)
    svg.removeAttribute("height");
    svg.setAttribute("aria-hidden", "true"); // the figure's label says what it shows
    return svg;
  }

  // Drawn again when what it shows may have changed: the counts per state, or any plugin's last transition.
  async function refreshDiagram(counts) {
    const key = `${selected ?? ""}|${STATES.map((state) => `${state}:${counts[state]}`).join(",")}|${moved}`;
    if (key === diagramKey) return;
    const path = selected === null ? "v1/lifecycle/diagram?format=svg"
      : `v1/plugins/${encodeURIComponent(selected)}/diagram?format=svg`;
    const figure = $("diagram");
    try {
      const fresh = await poll(path, [200], true);
      if (fresh !== null) svgs.set(path, fresh);
      const text = svgs.get(path);
      diagramKey = key;
      figure.dataset.counts = STATES.map((state) => `${state}:${counts[state]}`).join(",");
      figure.dataset.plugin = selected ?? "";
      $("diagram-error").hidden = true;
      if (text === undefined || text === diagramText) return;
      figure.replaceChildren(cleanSvg(text));
      diagramText = text;
      figure.dataset.renders = String(Number(figure.dataset.renders ?? 0) + 1);
    } catch {
      diagramKey = null; // tried again at the next poll
      $("diagram-error").hidden = false;
    }
  }

  // --- the aggregate and the cluster grid -----------------------------------------------------------------

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

  // The cluster grid: a row per plugin, a column per instance (GET /v1/cluster), drawn anew on every 200; like
  // the table, only the first `limit` plugins that match the search.
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
    const part = (className, text) => head.appendChild(element("span", className, text));
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
    cell.appendChild(element("span", "badge", plugin.state));
    if (unhealthy) cell.appendChild(element("span", "flag", plugin.stale === true ? "stale" : "unhealthy"));
    if (plugin.degraded === true) cell.appendChild(element("span", "flag degraded-flag", "degraded"));
    cell.dataset.check = STATUSES.includes(plugin.check_status) ? plugin.check_status : "";
    const why = [plugin.reason, plugin.error_type].filter(Boolean).join(": ");
    if (why) cell.title = why;
    return cell;
  }

  function renderCluster(document_) {
    cluster = document_;
    const instances = Array.isArray(cluster.instances) ? cluster.instances : [];
    const every = Array.isArray(cluster.plugins) ? cluster.plugins.map(String) : [];
    const matching = search === "" ? every : every.filter(nameMatches);
    const names = matching.slice(0, limit);
    setText($("cluster-shown"), names.length < every.length
      ? `${names.length} of ${every.length} plugins shown (search, or show more above)` : "");
    $("cluster-shown").hidden = names.length === every.length;
    const head = document.createElement("tr");
    head.appendChild(element("td", "corner", "plugin"));
    for (const instance of instances) head.appendChild(instanceHeader(instance));
    $("cluster-head").replaceChildren(head);
    // A row is built again only when what it shows changed (its cells' answers, its instances' ids and gone
    // flags): the document changes at every poll (heartbeats age), its plugins' states seldom.
    const columns = JSON.stringify(instances.map((instance) => [instance.id, instance.gone === true]));
    const body = $("cluster-rows");
    const before = new Map([...body.rows].map((row) => [row.dataset.plugin, row]));
    const keep = new Set(names);
    for (const [name, row] of before) if (!keep.has(name)) row.remove();
    let next = body.firstElementChild;
    for (const name of names) {
      // Own properties only: a plugin may be called "constructor" or "__proto__".
      const cells = instances.map((instance) => {
        const found = instance.plugins ?? {};
        return Object.hasOwn(found, name) ? found[name] : null;
      });
      const key = `${columns}|${JSON.stringify(cells)}`;
      let row = before.get(name);
      if (!row || gridKeys.get(row) !== key) {
        const fresh = document.createElement("tr");
        fresh.dataset.plugin = name;
        const label = element("th", "", name);
        label.scope = "row";
        fresh.appendChild(label);
        instances.forEach((instance, index) => fresh.appendChild(gridCell(instance, cells[index])));
        gridKeys.set(fresh, key);
        if (row) {
          if (row === next) next = fresh;
          row.replaceWith(fresh);
        }
        row = fresh;
      }
      if (row === next) next = next.nextElementSibling; else body.insertBefore(row, next);
    }
    const gone = instances.filter((instance) => instance.gone === true).length;
    setText($("cluster-count"), gone ? `${instances.length} (${gone} gone)` : `${instances.length}`);
    $("cluster").dataset.instances = String(instances.length);
    const degraded = typeof cluster.degraded === "string" ? cluster.degraded : "";
    setText($("cluster-degraded"), degraded ? `the last known states: ${degraded}` : "");
    $("cluster-degraded").hidden = !degraded;
  }

  // --- staying live: polling, and the event stream that makes it immediate ------------------------------------

  function showConnection() {
    const connection = $("connection");
    connection.dataset.connection = lastError ? "lost" : "live";
    connection.dataset.stream = streamLive ? "open" : "closed";
    const how = streamLive ? `live: events, and polling every ${intervalMs / 1000} s`
      : `live: polling every ${intervalMs / 1000} s`;
    setText(connection, lastError ? `connection lost (${lastError.message}), retrying` : how);
    document.body.classList.toggle("stale", Boolean(lastError));
  }

  function schedule(delay) {
    window.clearTimeout(timer);
    due = performance.now() + delay;
    timer = window.setTimeout(tick, delay);
  }

  // Poll within `delay` ms (something changed): unless a poll is due sooner; after the poll in flight, if any.
  function refreshNow(delay = 0) {
    if (ticking) tickAgain = Math.min(tickAgain ?? delay, delay);
    else if (performance.now() + delay < due) schedule(delay);
  }

  async function tick() {
    ticking = true;
    due = Infinity;
    tickAgain = null;
    try {
      // On the first load the table comes first, its first page then the whole list (the server's CPUs go to
      // them: with thousands of plugins the aggregate and the grid cost as much to answer), then the rest. Each
      // answer is drawn as it comes: the table never waits for the aggregate or the grid.
      const first = !listed;
      if (first) await firstPage();
      const table = poll("v1/plugins/", [200]).then((list) => {
        if (list === null) return;
        renderPlugins(list);
        rendered("dashboard:list");
      });
      if (first) await table;
      await Promise.all([
        table,
        // 503 is the answer for an aggregate "fail", with the same document
        poll("v1/health", [200, 503]).then((health) => { if (health !== null) renderHealth(health); }),
        poll("v1/cluster", [200]).then((grid) => { if (grid !== null) renderCluster(grid); }),
      ]);
      await refreshDiagram(currentCounts());
      lastError = null;
      setText($("updated"), `updated ${isoUtc(new Date())}`);
    } catch (error) {
      lastError = error;
    } finally {
      showConnection();
      ticking = false;
      schedule(tickAgain ?? intervalMs);
    }
  }

  // The first page of the list (a fresh worker takes a while to answer the whole of a long one): its rows drawn
  // at once, the counts once the whole list is in.
  async function firstPage() {
    if (plugins.size > 0) return;
    try {
      const page = await poll(`v1/plugins/?limit=${WINDOW}`, [200]);
      if (page !== null && !listed) {
        renderPlugins(page, true);
        rendered("dashboard:first-page");
      }
    } catch {
      // the whole list follows
    }
  }

  // performance.measure(name) from the navigation's start to the frame that shows what was just drawn (the first
  // time only), for bench/dashboard.py and the browser's developer tools.
  function rendered(name, start = 0) {
    const taken = performance.getEntriesByName(name).length;
    if (taken > 0 && start === 0) return;
    if (taken >= MEASURES_KEPT) performance.clearMeasures(name); // a tab open for days keeps the last ones only
    requestAnimationFrame(() => window.setTimeout(() => {
      try {
        performance.measure(name, { start, end: performance.now() });
      } catch {
        // no User Timing (an old browser): nothing to record
      }
    }, 0));
  }

  function currentCounts() {
    const counts = Object.fromEntries(STATES.map((state) => [state, 0]));
    for (const plugin of plugins.values()) if (plugin.state in counts) counts[plugin.state] += 1;
    return counts;
  }

  // GET /v1/events: each transition refreshes the page at once (the poll draws it); polling goes on regardless,
  // so a page whose stream is refused or lost still follows every change, a poll period later.
  function listen() {
    if (!("EventSource" in window)) return;
    const source = new EventSource(api("v1/events").href);
    stream = source;
    source.addEventListener("open", () => {
      streamLive = true;
      showConnection();
    });
    source.addEventListener("transition", (event) => {
      let entry = null;
      try {
        entry = JSON.parse(event.data);
      } catch {
        return;
      }
      $("connection").dataset.lastEvent = event.lastEventId;
      if (entry && typeof entry.plugin === "string") {
        timelines.delete(entry.plugin);
        drawTransition(entry, performance.now());
      }
      // The row is drawn: the rest can wait for the transitions that come together (an enable is three) to be in,
      // and be fetched once.
      refreshNow(EVENT_SETTLE_MS);
    });
    source.addEventListener("error", () => {
      streamLive = source.readyState === EventSource.OPEN;
      showConnection();
      if (source.readyState === EventSource.CLOSED && stream === source) { // refused (503, 404): poll, retry later
        stream = null;
        window.setTimeout(() => { if (!stream && document.visibilityState !== "hidden") listen(); }, STREAM_RETRY_MS);
      }
    });
  }

  // A transition the stream told of, drawn at once on its plugin's row (if the row is in the window) and in the
  // counts, before the poll it sets off brings the plugin's whole answer. The event has no error message (a stream
  // carries no token): the poll brings it to a tab that has one.
  function drawTransition(entry, received) {
    const before = plugins.get(entry.plugin);
    const at = Date.parse(entry.at);
    if (!before || !STATES.includes(entry.to) || !Number.isFinite(at) || at < Date.parse(before.since)) return;
    const after = {
      ...before, state: entry.to, since: entry.at, reason: entry.reason ?? null,
      error_type: entry.error_type ?? null, error: entry.error ?? null,
      healthy: entry.to === "RUNNING" ? undefined : false, // not checked yet in its new state: not marked
    };
    plugins.set(entry.plugin, after);
    newer.set(entry.plugin, at);
    moved += 1;
    drawWindow(new Set([entry.plugin]));
    rendered("dashboard:transition", received);
  }

  // A hidden tab gives its stream back (browsers hold few connections per server) and polls; shown, it listens.
  function visibility() {
    if (document.visibilityState === "hidden" && stream) {
      stream.close();
      stream = null;
      streamLive = false;
      showConnection();
    } else if (document.visibilityState === "visible" && !stream) {
      listen();
      refreshNow();
    }
  }

  function start() {
    $("filters").addEventListener("click", chooseFilter);
    $("search").value = search;
    $("search").addEventListener("input", chooseSearch);
    $("search-form").addEventListener("submit", (event) => {
      event.preventDefault(); // nothing is posted: the search narrows the table as it is typed
      chooseSearch();
    });
    $("more-show").addEventListener("click", showMore);
    $("plugin-rows").addEventListener("click", choosePlugin);
    $("diagram-all").addEventListener("click", () => select(null));
    $("token-form").addEventListener("submit", submitToken);
    $("token-forget").addEventListener("click", () => useToken(""));
    document.addEventListener("visibilitychange", visibility);
    $("plugin-rows").addEventListener("animationend", (event) => event.target.classList.remove("changed"));
    $("plugin-rows").dataset.window = String(WINDOW); // rows drawn at first (bench/dashboard.py reads it)
    showToken();
    drawWindow();
    listen();
    tick();
  }

  start();
})();
