// Partyline operator console: the page served at /console/ by every gateway's admin listener.
// Hand-written, no build step, no framework (ES2020). Everything it fetches is relative to
// /console/ and same-origin, so the browser sends the operator's Basic credentials itself; the
// page never sees or stores them.
//
// Data: `api/stream` (server-sent events, `event: overview`, about every second), with
// `api/overview` polled every 2 s while the stream delivers nothing; `api/events` every 5 s;
// `api/room` on demand; actions POST JSON to api/drain, api/move, api/close.
"use strict";

(() => {
  const SHARDS = 4096;
  const GRID = 64;
  const HISTORY_S = 300; // the charts' window
  const FLASH_MS = 4000; // how long a shard whose owner changed stays outlined
  const MOVE_WINDOW_MS = 60000; // "changed owner in the last minute"
  const LIVE_MS = 5000; // the stream counts as live while it delivered within this
  const POLL_MS = 2000;
  const EVENTS_MS = 5000;
  const CHART_H = 150;
  const DRAIN_DISABLED = new Set(["draining", "drained", "gone"]);
  const TROUBLE = new Set(["suspect", "refusing", "cut_from_redis"]);
  const STATE_CLASS = {
    ready: "ok",
    draining: "warn",
    drained: "info",
    refusing: "bad",
    uninitialized: "warn",
    cut_from_redis: "bad",
    starting: "info",
    suspect: "bad",
    gone: "idle",
  };
  const KIND_CLASS = {
    failover: "bad",
    lease_lost: "bad",
    fenced: "bad",
    node_refused: "bad",
    refused: "warn",
    drain: "warn",
    drained: "info",
    rebalance: "info",
    action: "info",
  };
  const PALETTE = [
    "#4e79a7", "#f28e2b", "#59a14f", "#e15759", "#76b7b2", "#edc948",
    "#b07aa1", "#ff9da7", "#9c755f", "#17becf", "#bcbd22", "#8c6bb1",
  ];
  const SERIES_COLOURS = ["#3b82f6", "#ef4444", "#10b981", "#f59e0b", "#8b5cf6", "#ec4899", "#14b8a6", "#64748b", "#a16207", "#0ea5e9"];

  const $ = (id) => document.getElementById(id);
  const nf0 = new Intl.NumberFormat(undefined, { maximumFractionDigits: 0 });
  const nf1 = new Intl.NumberFormat(undefined, { maximumFractionDigits: 1 });
  const nf2 = new Intl.NumberFormat(undefined, { maximumFractionDigits: 2 });
  const num = (v) => (typeof v === "number" && Number.isFinite(v) ? v : null);

  /** An element: el("td", {class: "num", dataset: {label: "Shards"}}, "12", child...). */
  function el(tag, attrs, ...children) {
    const e = document.createElement(tag);
    for (const [k, v] of Object.entries(attrs || {})) {
      if (v == null || v === false) continue;
      if (k === "class") e.className = v;
      else if (k === "style") e.style.cssText = v; // (CSSOM: allowed by a strict style-src)
      else if (k === "dataset") {
        for (const [dk, dv] of Object.entries(v)) if (dv != null) e.dataset[dk] = String(dv);
      }
      else if (k === "text") e.textContent = v;
      else if (k.startsWith("on")) e.addEventListener(k.slice(2), v);
      else if (v === true) e.setAttribute(k, "");
      else e.setAttribute(k, String(v));
    }
    for (const c of children) if (c != null && c !== false) e.append(c instanceof Node ? c : String(c));
    return e;
  }
  const badge = (text, cls) => el("span", { class: `badge ${cls || "idle"}` }, text);
  const cssVar = (name) => getComputedStyle(document.documentElement).getPropertyValue(name).trim();

  function fmtInt(v) {
    return num(v) == null ? "—" : nf0.format(v);
  }
  function fmtRate(v) {
    if (num(v) == null) return "—";
    if (v === 0) return "0";
    if (v < 10) return nf2.format(v);
    if (v < 100) return nf1.format(v);
    return nf0.format(v);
  }
  function fmtBytes(v) {
    if (num(v) == null) return "—";
    if (v < 1024) return `${nf0.format(v)} B`;
    if (v < 1024 * 1024) return `${nf1.format(v / 1024)} KiB`;
    if (v < 1024 * 1024 * 1024) return `${nf1.format(v / 1048576)} MiB`;
    return `${nf2.format(v / 1073741824)} GiB`;
  }
  const fmtMiB = (v) => (num(v) == null ? "—" : `${nf1.format(v / 1048576)} MiB`);
  function fmtDuration(ms) {
    if (num(ms) == null || ms < 0) return "—";
    const s = Math.floor(ms / 1000);
    if (s < 60) return `${s} s`;
    const m = Math.floor(s / 60);
    if (m < 60) return `${m} min`;
    const h = Math.floor(m / 60);
    if (h < 48) return `${h} h ${m % 60} min`;
    return `${Math.floor(h / 24)} d ${h % 24} h`;
  }
  function fmtTime(ms) {
    if (num(ms) == null) return "—";
    const d = new Date(ms);
    const time = d.toLocaleTimeString(undefined, { hour: "2-digit", minute: "2-digit", second: "2-digit", hour12: false });
    const today = new Date();
    if (d.toDateString() === today.toDateString()) return time;
    return `${d.toLocaleDateString(undefined, { month: "short", day: "numeric" })} ${time}`;
  }
  /** HH:MM (HH:MM:SS when the ticks are under a minute apart) for a chart's time axis. */
  function fmtClock(ms, u) {
    const opts = { hour: "2-digit", minute: "2-digit", hour12: false };
    const span = u && u.scales.x.max - u.scales.x.min;
    if (span && span < 120) opts.second = "2-digit";
    return new Date(ms).toLocaleTimeString(undefined, opts);
  }
  function fmtRelative(ms, now = Date.now()) {
    const d = ms - now;
    return d >= 0 ? `in ${fmtDuration(d)}` : `${fmtDuration(-d)} ago`;
  }
  const byId = (a, b) => String(a).localeCompare(String(b), undefined, { numeric: true });

  // ---------------------------------------------------------------- colours per node

  const colourOf = new Map(); // node id -> colour, sticky for the page's life

  /** A stable hash of a string (FNV-1a, then a murmur finaliser). */
  function hash(s) {
    let h = 0x811c9dc5;
    for (let i = 0; i < s.length; i++) {
      h ^= s.charCodeAt(i);
      h = Math.imul(h, 0x01000193);
    }
    h ^= h >>> 16;
    h = Math.imul(h, 0x85ebca6b);
    h ^= h >>> 13;
    h = Math.imul(h, 0xc2b2ae35);
    h ^= h >>> 16;
    return h >>> 0;
  }

  /** Gives every id a colour: its hashed palette slot, or the next free one (ids in sorted
   * order, so every page showing the same nodes picks the same colours); once given, kept. */
  function assignColours(ids) {
    const used = new Set(colourOf.values());
    for (const id of [...ids].sort(byId)) {
      if (colourOf.has(id)) continue;
      const start = hash(id) % PALETTE.length;
      let colour = null;
      for (let k = 0; k < PALETTE.length; k++) {
        const c = PALETTE[(start + k) % PALETTE.length];
        if (!used.has(c)) {
          colour = c;
          break;
        }
      }
      if (!colour) colour = `hsl(${hash(id) % 360} 60% 50%)`;
      used.add(colour);
      colourOf.set(id, colour);
    }
  }

  // ---------------------------------------------------------------- state

  let last = null; // the last overview ingested
  let lastDataAt = 0; // Date.now() of the last overview (from either source)
  let lastStreamAt = 0; // Date.now() of the last overview from the stream
  let everFailed = false;
  let streamFailure = null; // {at, text}: the last `event: failure` of the stream
  let nodeSamples = new Map(); // id -> {inc, counters, cpu}
  let gatewaySamples = new Map(); // id -> {started, unix_ms, counters}
  const cpuPct = new Map(); // node id -> CPU %
  const gatewayRates = new Map(); // gateway id -> {connects, fin, fout}
  const nodesById = new Map(); // node id -> node, from the last overview

  // ---------------------------------------------------------------- header

  function renderHeader(ov) {
    $("glance-gateway").textContent = ov.gateway || "—";

    const r = ov.redis || {};
    const redis = $("glance-redis");
    redis.replaceChildren(
      `${r.mode || "?"} · `,
      el("span", { class: "mono" }, (r.primaries || []).join(", ") || "no primaries"),
      " · ",
      r.reachable ? badge("reachable", "ok") : badge("unreachable", "bad"),
      " ",
      r.marker ? badge("marker", "ok") : badge("no marker", "bad"),
    );
    if (r.error) redis.append(el("span", { class: "err-text" }, r.error));

    const l = ov.lease || {};
    $("glance-lease").textContent = l.profile
      ? `${l.profile} (TTL ${fmtSeconds(l.ttl_ms)}, self-fence ${fmtSeconds(l.fence_after_ms)})`
      : "—";

    const nodes = Array.isArray(ov.nodes) ? ov.nodes : [];
    const states = new Map();
    for (const n of nodes) states.set(n.state, (states.get(n.state) || 0) + 1);
    const glanceNodes = $("glance-nodes");
    glanceNodes.replaceChildren(`${nodes.length}: `);
    [...states.entries()].sort((a, b) => byId(a[0], b[0])).forEach(([s, c], i) => {
      if (i) glanceNodes.append(" ");
      glanceNodes.append(badge(`${c} ${s}`, STATE_CLASS[s]));
    });

    const owners = Object.values(shardCounts.owners).filter((c) => c > 0).length;
    const leased = SHARDS - shardCounts.unleased;
    const glanceShards = $("glance-shards");
    glanceShards.replaceChildren(`${fmtInt(leased)} leased by ${owners} node${owners === 1 ? "" : "s"}`);
    if (shardCounts.unleased) glanceShards.append(" ", badge(`${fmtInt(shardCounts.unleased)} without a lease`, "bad"));

    const gateways = Array.isArray(ov.gateways) ? ov.gateways : [];
    const conns = gateways.reduce((a, g) => a + (num(g.connections) || 0), 0);
    const rooms = nodes.reduce((a, n) => a + (num(n.rooms) || 0), 0);
    $("glance-clients").textContent = `${fmtInt(conns)} connections on ${gateways.length} gateway${gateways.length === 1 ? "" : "s"}, ${fmtInt(rooms)} rooms`;

    const alerts = [];
    if (!r.reachable) alerts.push(["bad", `Redis is unreachable from ${ov.gateway || "this gateway"}${r.error ? `: ${r.error}` : ""}`]);
    else if (!r.marker) alerts.push(["bad", "Redis has no cluster marker: the cluster was never initialised (partyline init) or Redis lost its data"]);
    const unleased = shardCounts.unleased;
    if (unleased > 0) {
      const one = unleased === 1;
      alerts.push([unleased === SHARDS ? "bad" : "warn", `${unleased} shard${one ? " has" : "s have"} no lease (the rooms on ${one ? "it are" : "them are"} unavailable until a node takes ${one ? "it" : "them"})`]);
    }
    for (const n of nodes) {
      if (n.state === "suspect" || n.state === "refusing" || n.state === "cut_from_redis" || n.reachable === false) {
        alerts.push(["bad", `${n.id}: ${n.state}${n.reachable === false ? ", unreachable" : ""}${n.error ? ` (${n.error})` : ""}`]);
      }
    }
    if (!nodes.some((n) => n.state === "ready")) alerts.push(["bad", "No node is ready"]);
    document.title = alerts.length ? `Partyline console (${alerts.length} alert${alerts.length === 1 ? "" : "s"})` : "Partyline console";
    $("alerts").replaceChildren(...alerts.map(([cls, text]) => el("div", { class: `alert ${cls === "warn" ? "warn" : ""}` }, text)));
  }

  function fmtSeconds(ms) {
    return num(ms) == null ? "?" : `${nf1.format(ms / 1000)} s`;
  }

  // ---------------------------------------------------------------- status

  let es = null;
  let esRetryMs = 1000;
  let esRetryTimer = 0;

  function updateStatus() {
    const now = Date.now();
    const status = $("status");
    const live = lastStreamAt > 0 && now - lastStreamAt < LIVE_MS;
    const fresh = lastDataAt > 0 && now - lastDataAt < LIVE_MS;
    const failing = streamFailure && now - streamFailure.at < LIVE_MS && streamFailure.at > lastStreamAt;
    let text;
    if (failing) text = `stream up, but the overview fails: ${streamFailure.text}`;
    else if (live) text = "live";
    else if (!everFailed && !lastDataAt) text = "connecting…";
    else if (fresh) text = "disconnected, retrying (polling every 2 s)";
    else text = "disconnected, retrying";
    if (status.textContent !== text) status.textContent = text;
    status.dataset.live = String(live && !failing);
    status.classList.toggle("down", failing || (!live && !fresh && (everFailed || lastDataAt > 0)));
    const age = $("age");
    if (lastDataAt) {
      const s = Math.max(0, Math.round((now - lastDataAt) / 1000));
      age.textContent = s <= 1 ? "updated just now" : `updated ${fmtDuration(s * 1000)} ago`;
      age.classList.toggle("stale", s >= 10);
      age.title = last ? `snapshot taken at ${new Date(last.unix_ms).toLocaleString()}` : "";
    }
  }

  function connectStream() {
    clearTimeout(esRetryTimer);
    if (es) es.close();
    if (typeof EventSource === "undefined") return;
    es = new EventSource("api/stream");
    const onData = (e) => {
      let ov;
      try {
        ov = JSON.parse(e.data);
      } catch {
        return;
      }
      lastStreamAt = Date.now();
      esRetryMs = 1000;
      ingest(ov);
    };
    es.addEventListener("overview", onData);
    es.addEventListener("message", onData); // an unnamed event, just in case
    // The gateway is up but cannot build the overview (Redis down, ...): `event: failure`.
    es.addEventListener("failure", (e) => {
      streamFailure = { at: Date.now(), text: String(e.data || "unknown error").slice(0, 300) };
      updateStatus();
    });
    es.addEventListener("open", updateStatus);
    es.addEventListener("error", () => {
      everFailed = true;
      lastStreamAt = 0;
      updateStatus();
      // The browser reconnects by itself after a network error (readyState CONNECTING); after
      // an HTTP error (a 502 from a proxy, a 401) it gives up (CLOSED): then we start over.
      if (es.readyState === EventSource.CLOSED) {
        esRetryTimer = setTimeout(connectStream, esRetryMs);
        esRetryMs = Math.min(esRetryMs * 2, 15000);
      }
    });
  }

  let polling = false;
  async function poll(force) {
    if (polling) return;
    if (!force && Date.now() - lastStreamAt < POLL_MS + 1000) return;
    polling = true;
    try {
      ingest(await getJSON("api/overview"));
    } catch {
      everFailed = true;
    } finally {
      polling = false;
      updateStatus();
    }
  }

  async function getJSON(url) {
    const res = await fetch(url, { cache: "no-store", headers: { Accept: "application/json" } });
    if (!res.ok) {
      let message = `${res.status} ${res.statusText}`;
      try {
        const body = await res.json();
        if (body && body.message) message += `: ${body.message}`;
      } catch {
        // not JSON
      }
      throw new Error(message);
    }
    return res.json();
  }

  // ---------------------------------------------------------------- ingesting a snapshot

  function ingest(ov) {
    if (!ov || typeof ov !== "object" || num(ov.unix_ms) == null) return;
    lastDataAt = Date.now();
    if (last && ov.unix_ms < last.unix_ms - 10000) last = null; // the clock went back: start over
    if (last && ov.unix_ms <= last.unix_ms) {
      updateStatus(); // the same snapshot from the poll and the stream, or an older one
      return;
    }
    const dt = last ? (ov.unix_ms - last.unix_ms) / 1000 : 0;
    computeRates(ov, dt);
    nodesById.clear();
    for (const n of ov.nodes || []) nodesById.set(String(n.id), n);
    ingestShards(ov.shards); // before the header: it shows the unleased count
    renderHeader(ov);
    renderNodes(ov);
    renderGateways(ov);
    last = ov;
    updateStatus();
  }

  /** Counter deltas between this snapshot and the previous one: per node (by incarnation) and
   * per gateway (by start time); a counter that went down (a restart) counts 0. */
  function computeRates(ov, dt) {
    const delta = (cur, prev) => {
      const c = num(cur);
      const p = num(prev);
      if (c == null || p == null) return 0;
      return Math.max(0, c - p);
    };
    const nextNodes = new Map();
    const sums = { connects: 0, refused: 0, fin: 0, fout: 0, commits: 0, commitFail: 0, gwErr: 0, leasesLost: 0, roomsRefused: 0 };
    const closes = new Map();
    for (const n of ov.nodes || []) {
      const c = n.counters;
      if (!c || typeof c !== "object") continue;
      const sample = { inc: n.inc, counters: c, cpu: num(n.cpu_seconds) };
      nextNodes.set(n.id, sample);
      const p = nodeSamples.get(n.id);
      if (!p || p.inc !== n.inc || dt <= 0) continue;
      sums.commits += delta(c.commits, p.counters.commits);
      sums.commitFail += delta(c.commit_failures, p.counters.commit_failures);
      sums.leasesLost += delta(c.leases_lost, p.counters.leases_lost);
      sums.roomsRefused += delta(c.rooms_refused, p.counters.rooms_refused);
      if (sample.cpu != null && p.cpu != null) cpuPct.set(n.id, (Math.max(0, sample.cpu - p.cpu) / dt) * 100);
    }
    for (const id of [...cpuPct.keys()]) if (!nextNodes.has(id)) cpuPct.delete(id);
    nodeSamples = nextNodes;

    const nextGateways = new Map();
    for (const g of ov.gateways || []) {
      const c = g.counters;
      if (!c || typeof c !== "object") continue;
      const at = num(g.unix_ms) ?? ov.unix_ms;
      const sample = { started: g.started_unix_ms, unix_ms: at, counters: c };
      nextGateways.set(g.id, sample);
      const p = gatewaySamples.get(g.id);
      if (!p || p.started !== g.started_unix_ms || dt <= 0) continue;
      const d = {
        connects: delta(c.connects, p.counters.connects),
        fin: delta(c.frames_in, p.counters.frames_in),
        fout: delta(c.frames_out, p.counters.frames_out),
      };
      sums.connects += d.connects;
      sums.refused += delta(c.refused, p.counters.refused);
      sums.fin += d.fin;
      sums.fout += d.fout;
      sums.gwErr += delta(c.errors, p.counters.errors);
      const pc = p.counters.closes || {};
      for (const [code, v] of Object.entries(c.closes || {})) {
        closes.set(code, (closes.get(code) || 0) + delta(v, pc[code] ?? 0));
      }
      // The gateway's own rates, over its own clock when it reports one (a snapshot may be
      // reused: then keep the last rates).
      const gdt = (at - p.unix_ms) / 1000;
      if (gdt > 0) gatewayRates.set(g.id, { connects: d.connects / gdt, fin: d.fin / gdt, fout: d.fout / gdt });
    }
    for (const id of [...gatewayRates.keys()]) if (!nextGateways.has(id)) gatewayRates.delete(id);
    gatewaySamples = nextGateways;

    if (dt > 0) {
      const rate = (v) => v / dt;
      pushHistory(ov.unix_ms / 1000, dt, {
        connects: rate(sums.connects),
        refused: rate(sums.refused),
        fin: rate(sums.fin),
        fout: rate(sums.fout),
        commits: rate(sums.commits),
        commitFail: rate(sums.commitFail),
        errTotal: rate(sums.gwErr + sums.leasesLost + sums.roomsRefused),
        gwErr: rate(sums.gwErr),
        leasesLost: rate(sums.leasesLost),
        roomsRefused: rate(sums.roomsRefused),
      }, new Map([...closes].map(([k, v]) => [k, rate(v)])));
    }
  }

  // ---------------------------------------------------------------- nodes and gateways

  const nodeRows = new Map(); // id -> {tr, cells}

  function renderNodes(ov) {
    const tbody = $("nodes").tBodies[0];
    const nodes = (Array.isArray(ov.nodes) ? [...ov.nodes] : []).sort((a, b) => byId(a.id, b.id));
    const seen = new Set();
    nodes.forEach((n) => {
      const id = String(n.id);
      seen.add(id);
      let row = nodeRows.get(id);
      if (!row) {
        const cells = {
          id: el("td", { class: "primary mono", dataset: { label: "Node" } }),
          addr: el("td", { class: "mono", dataset: { label: "Address" } }),
          inc: el("td", { class: "mono", dataset: { label: "Incarnation" } }),
          state: el("td", { dataset: { label: "State" } }),
          shards: el("td", { class: "num", dataset: { label: "Shards" } }),
          rooms: el("td", { class: "num", dataset: { label: "Rooms" } }),
          conns: el("td", { class: "num", dataset: { label: "Conns" } }),
          cpu: el("td", { class: "num", dataset: { label: "CPU" } }),
          mem: el("td", { class: "num", dataset: { label: "Memory" } }),
          up: el("td", { class: "num", dataset: { label: "Up" } }),
          actions: el("td", { class: "actions" }),
        };
        const drain = el("button", { type: "button", class: "danger", dataset: { drain: id } }, "Drain");
        drain.addEventListener("click", () => drainNode(id));
        cells.actions.append(drain);
        const tr = el("tr", { dataset: { node: id } }, ...Object.values(cells));
        row = { tr, cells, drain };
        nodeRows.set(id, row);
      }
      const { tr, cells, drain } = row;
      tbody.append(tr); // (re)orders
      const state = String(n.state || "unknown");
      tr.dataset.state = state;
      tr.dataset.shards = String(num(n.shards) ?? 0);
      tr.classList.toggle("gone", state === "gone");
      tr.classList.toggle("trouble", TROUBLE.has(state) || n.reachable === false);
      const swatch = el("span", { class: "swatch-inline", style: `display:inline-block;width:.7em;height:.7em;border-radius:2px;margin-right:.35em;background:${colourOf.get(id) || "transparent"}` });
      cells.id.replaceChildren(swatch, id);
      cells.addr.textContent = n.addr || "—";
      cells.inc.textContent = n.inc || "—";
      cells.state.replaceChildren(badge(state.replace(/_/g, " "), STATE_CLASS[state]));
      if (n.reachable === false) cells.state.append(" ", badge("unreachable", "bad"));
      if (n.error) cells.state.append(el("span", { class: "err-text" }, n.error));
      cells.shards.textContent = fmtInt(n.shards);
      cells.rooms.textContent = fmtInt(n.rooms);
      cells.conns.textContent = fmtInt(n.connections);
      const cpu = cpuPct.get(id);
      cells.cpu.textContent = cpu == null ? "—" : `${cpu < 10 ? nf1.format(cpu) : nf0.format(cpu)} %`;
      cells.mem.textContent = fmtMiB(n.rss_bytes);
      cells.up.textContent = num(n.started_unix_ms) ? fmtDuration(ov.unix_ms - n.started_unix_ms) : "—";
      drain.disabled = DRAIN_DISABLED.has(state) || busy.has(`drain:${id}`);
      drain.title = drain.disabled ? `${id} is ${state}` : `Drain ${id}: hand its shards to the other nodes`;
    });
    for (const [id, row] of nodeRows) {
      if (!seen.has(id)) {
        row.tr.remove();
        nodeRows.delete(id);
      }
    }
    $("nodes-empty").hidden = nodes.length > 0;
  }

  const gatewayRows = new Map();

  function renderGateways(ov) {
    const tbody = $("gateways").tBodies[0];
    const gateways = (Array.isArray(ov.gateways) ? [...ov.gateways] : []).sort((a, b) => byId(a.id, b.id));
    const seen = new Set();
    for (const g of gateways) {
      const id = String(g.id);
      seen.add(id);
      let row = gatewayRows.get(id);
      if (!row) {
        const cells = {
          id: el("td", { class: "primary mono", dataset: { label: "Gateway" } }),
          admin: el("td", { class: "mono", dataset: { label: "Admin" } }),
          conns: el("td", { class: "num", dataset: { label: "Conns" } }),
          links: el("td", { class: "num", dataset: { label: "Links" } }),
          live: el("td", { class: "num", dataset: { label: "Live nodes" } }),
          connects: el("td", { class: "num", dataset: { label: "Connects/s" } }),
          fin: el("td", { class: "num", dataset: { label: "Frames in/s" } }),
          fout: el("td", { class: "num", dataset: { label: "Frames out/s" } }),
          up: el("td", { class: "num", dataset: { label: "Up" } }),
        };
        row = { tr: el("tr", { dataset: { gateway: id } }, ...Object.values(cells)), cells };
        gatewayRows.set(id, row);
      }
      const { tr, cells } = row;
      tbody.append(tr);
      cells.id.replaceChildren(id, id === ov.gateway ? el("span", { class: "muted small" }, " (this one)") : "");
      cells.admin.textContent = g.admin || "—";
      cells.conns.textContent = fmtInt(g.connections);
      cells.links.textContent = fmtInt(g.links);
      cells.live.textContent = fmtInt(g.live_nodes);
      const r = gatewayRates.get(g.id);
      cells.connects.textContent = r ? fmtRate(r.connects) : "—";
      cells.fin.textContent = r ? fmtRate(r.fin) : "—";
      cells.fout.textContent = r ? fmtRate(r.fout) : "—";
      cells.up.textContent = num(g.started_unix_ms) ? fmtDuration((num(g.unix_ms) ?? ov.unix_ms) - g.started_unix_ms) : "—";
    }
    for (const [id, row] of gatewayRows) {
      if (!seen.has(id)) {
        row.tr.remove();
        gatewayRows.delete(id);
      }
    }
  }

  // ---------------------------------------------------------------- shard map

  const canvas = $("shardmap");
  let shardOwner = null; // shard -> owner id or null
  const changedAt = new Float64Array(SHARDS); // Date.now() of the last owner change
  const changedFrom = new Array(SHARDS).fill(undefined);
  let totalMoves = 0;
  const moveLog = []; // [{at, n}]
  let shardCounts = { owners: {}, unleased: 0 };
  let hoverShard = -1;
  let pinnedShard = -1; // the room lookup's shard, or a tapped one
  let focusOwner = null; // a legend entry hovered: the other owners are dimmed
  let animating = false;

  function ingestShards(shards) {
    const owners = Array.isArray(shards?.owners) ? shards.owners.map(String) : [];
    const map = Array.isArray(shards?.map) ? shards.map : [];
    assignColours([...owners, ...nodesById.keys()]);
    const next = new Array(SHARDS);
    const counts = {};
    for (const o of owners) counts[o] = 0;
    let unleased = 0;
    for (let i = 0; i < SHARDS; i++) {
      const k = map[i];
      const o = Number.isInteger(k) && k >= 0 && k < owners.length ? owners[k] : null;
      next[i] = o;
      if (o == null) unleased++;
      else counts[o]++;
    }
    const now = Date.now();
    let moved = 0;
    if (shardOwner) {
      for (let i = 0; i < SHARDS; i++) {
        if (next[i] !== shardOwner[i]) {
          changedAt[i] = now;
          changedFrom[i] = shardOwner[i];
          moved++;
        }
      }
    }
    if (moved) {
      totalMoves += moved;
      moveLog.push({ at: now, n: moved });
    }
    shardOwner = next;
    shardCounts = { owners: counts, unleased };
    canvas.dataset.owners = JSON.stringify(counts);
    canvas.dataset.unleased = String(unleased);
    canvas.dataset.moves = String(totalMoves);
    renderLegend();
    renderMoves();
    drawMap();
    updateTip();
  }

  function renderLegend() {
    const legend = $("shard-legend");
    const entries = Object.entries(shardCounts.owners).sort((a, b) => byId(a[0], b[0]));
    const items = entries.map(([id, count]) => {
      const n = nodesById.get(id);
      return el(
        "li",
        { dataset: { owner: id, count: String(count) } },
        el("span", { class: "swatch", style: `background:${colourOf.get(id)}` }),
        el("span", { class: "who mono" }, id, n && n.state !== "ready" ? " " : "", n && n.state !== "ready" ? badge(n.state.replace(/_/g, " "), STATE_CLASS[n.state]) : ""),
        el("span", { class: "count" }, fmtInt(count)),
      );
    });
    items.push(
      el(
        "li",
        { dataset: { owner: "", count: String(shardCounts.unleased) } },
        el("span", { class: "swatch", style: `background:${cssVar("--unleased")}` }),
        el("span", { class: "who" }, "no lease"),
        el("span", { class: "count" }, fmtInt(shardCounts.unleased)),
      ),
    );
    for (const li of items) {
      li.addEventListener("pointerenter", () => {
        focusOwner = li.dataset.owner;
        drawMap();
      });
      li.addEventListener("pointerleave", () => {
        focusOwner = null;
        drawMap();
      });
    }
    legend.replaceChildren(...items);
  }

  function renderMoves() {
    const now = Date.now();
    while (moveLog.length && now - moveLog[0].at > MOVE_WINDOW_MS) moveLog.shift();
    const n = moveLog.reduce((a, m) => a + m.n, 0);
    $("shard-moves").textContent = n
      ? `${nf0.format(n)} owner change${n === 1 ? "" : "s"} in the last minute (${nf0.format(totalMoves)} since this page opened).`
      : `No owner changes in the last minute${totalMoves ? ` (${nf0.format(totalMoves)} since this page opened)` : ""}.`;
  }

  function sizeCanvas() {
    const wrap = canvas.parentElement;
    const avail = Math.min(512, wrap.clientWidth || 320);
    const cssCell = Math.max(3, Math.floor(avail / GRID));
    const css = cssCell * GRID;
    const dpr = Math.max(1, Math.min(3, window.devicePixelRatio || 1));
    canvas.style.width = `${css}px`;
    canvas.style.height = `${css}px`;
    const px = Math.round(css * dpr);
    if (canvas.width !== px) {
      canvas.width = px;
      canvas.height = px;
    }
    drawMap();
  }

  function drawMap() {
    const ctx = canvas.getContext("2d");
    if (!ctx) return;
    const size = canvas.width;
    const cell = size / GRID;
    const gap = cell >= 6 ? 1 : 0;
    const unleased = cssVar("--unleased") || "#999";
    ctx.clearRect(0, 0, size, size);
    if (!shardOwner) {
      ctx.fillStyle = unleased;
      ctx.globalAlpha = 0.3;
      ctx.fillRect(0, 0, size, size);
      ctx.globalAlpha = 1;
      return;
    }
    for (let i = 0; i < SHARDS; i++) {
      const o = shardOwner[i];
      const x = (i % GRID) * cell;
      const y = Math.floor(i / GRID) * cell;
      ctx.fillStyle = o == null ? unleased : colourOf.get(o) || unleased;
      ctx.globalAlpha = focusOwner != null && (o ?? "") !== focusOwner ? 0.18 : 1;
      ctx.fillRect(x, y, cell - gap, cell - gap);
    }
    ctx.globalAlpha = 1;
    const now = Date.now();
    const fg = cssVar("--fg") || "#000";
    let flashing = false;
    ctx.lineWidth = Math.max(1, Math.round(cell / 4));
    for (let i = 0; i < SHARDS; i++) {
      const age = now - changedAt[i];
      if (!changedAt[i] || age >= FLASH_MS) continue;
      flashing = true;
      const x = (i % GRID) * cell;
      const y = Math.floor(i / GRID) * cell;
      ctx.globalAlpha = 1 - age / FLASH_MS;
      ctx.strokeStyle = fg;
      const lw = ctx.lineWidth;
      ctx.strokeRect(x + lw / 2, y + lw / 2, cell - gap - lw, cell - gap - lw);
    }
    ctx.globalAlpha = 1;
    for (const [i, colour] of [[pinnedShard, cssVar("--accent")], [hoverShard, fg]]) {
      if (i < 0) continue;
      const x = (i % GRID) * cell;
      const y = Math.floor(i / GRID) * cell;
      ctx.lineWidth = Math.max(2, Math.round(cell / 3));
      ctx.strokeStyle = colour;
      ctx.strokeRect(x - ctx.lineWidth / 2, y - ctx.lineWidth / 2, cell + ctx.lineWidth - gap, cell + ctx.lineWidth - gap);
    }
    if (flashing && !animating) {
      animating = true;
      requestAnimationFrame(() => {
        animating = false;
        drawMap();
      });
    }
  }

  function shardAt(e) {
    const rect = canvas.getBoundingClientRect();
    const x = Math.floor(((e.clientX - rect.left) / rect.width) * GRID);
    const y = Math.floor(((e.clientY - rect.top) / rect.height) * GRID);
    if (x < 0 || y < 0 || x >= GRID || y >= GRID) return -1;
    return y * GRID + x;
  }

  function updateTip() {
    const i = hoverShard >= 0 ? hoverShard : pinnedShard;
    const tip = $("shard-tip");
    if (i < 0 || !shardOwner) {
      tip.textContent = "Hover or tap a cell to see its shard.";
      return;
    }
    const o = shardOwner[i];
    const n = o != null ? nodesById.get(o) : null;
    const parts = [`Shard ${i}: `, o == null ? "no lease" : `${o}${n ? ` (${n.state})` : ""}`];
    const age = Date.now() - changedAt[i];
    if (changedAt[i] && age < MOVE_WINDOW_MS) {
      parts.push(`; owner changed ${fmtDuration(age)} ago (was ${changedFrom[i] ?? "no lease"})`);
    }
    tip.textContent = parts.join("");
  }

  canvas.addEventListener("pointermove", (e) => {
    const i = shardAt(e);
    if (i !== hoverShard) {
      hoverShard = i;
      updateTip();
      drawMap();
    }
  });
  canvas.addEventListener("pointerleave", () => {
    hoverShard = -1;
    updateTip();
    drawMap();
  });
  canvas.addEventListener("click", (e) => {
    const i = shardAt(e);
    if (i < 0) return;
    pinnedShard = i;
    $("move-shard").value = String(i);
    updateTip();
    drawMap();
  });

  $("move-form").addEventListener("submit", (e) => {
    e.preventDefault();
    const v = $("move-shard").value.trim();
    const shard = Number(v);
    if (!/^\d+$/.test(v) || shard >= SHARDS) {
      showMessage(false, `A shard is a number from 0 to ${SHARDS - 1}`);
      return;
    }
    const owner = shardOwner ? shardOwner[shard] : null;
    action(
      "api/move",
      { shard },
      `Move shard ${shard} (${owner ? `now on ${owner}` : "no lease now"}) to another node?\n\nEvery room on this shard restarts on the new owner; their clients are disconnected and reconnect.`,
      $("move-button"),
    );
  });

  // ---------------------------------------------------------------- charts

  const hist = {
    t: [],
    v: { connects: [], refused: [], fin: [], fout: [], commits: [], commitFail: [], errTotal: [], gwErr: [], leasesLost: [], roomsRefused: [] },
    closes: new Map(), // code -> values
  };
  const CHARTS = [
    { id: "connects", title: "Connects and refused /s", series: [["connects", "connects/s"], ["refused", "refused/s", "#ef4444"]] },
    { id: "messages", title: "Messages /s (gateway frames)", series: [["fin", "in/s"], ["fout", "out/s", "#10b981"]] },
    { id: "commits", title: "Commits /s (nodes)", series: [["commits", "commits/s", "#8b5cf6"], ["commitFail", "failures/s", "#ef4444"]] },
    {
      id: "errors",
      title: "Errors /s",
      series: [["errTotal", "total/s", "#ef4444"], ["gwErr", "gateway errors", "#f59e0b"], ["leasesLost", "leases lost", "#8b5cf6"], ["roomsRefused", "rooms refused", "#64748b"]],
    },
    { id: "closes", title: "Close codes /s", closes: true },
  ];
  const charts = new Map(); // id -> {def, box, plot, u, keys}

  function pushHistory(t, dt, values, closes) {
    const pushAll = (tt, get, getClose) => {
      hist.t.push(tt);
      for (const k of Object.keys(hist.v)) hist.v[k].push(get(k));
      for (const [code, arr] of hist.closes) arr.push(getClose(code));
    };
    const prevT = hist.t.length ? hist.t[hist.t.length - 1] : null;
    // A gap in the snapshots (the page lost the stream): break the lines there.
    if (prevT != null && dt > 6 && t - dt / 2 > prevT) pushAll(t - dt / 2, () => null, () => null);
    let newCode = false;
    for (const code of closes.keys()) {
      if (!hist.closes.has(code)) {
        hist.closes.set(code, hist.t.map(() => 0));
        newCode = true;
      }
    }
    pushAll(t, (k) => values[k], (code) => closes.get(code) ?? 0);
    while (hist.t.length && hist.t[0] < t - HISTORY_S) {
      hist.t.shift();
      for (const arr of Object.values(hist.v)) arr.shift();
      for (const arr of hist.closes.values()) arr.shift();
    }
    updateCharts(newCode);
  }

  function chartData(c) {
    return [hist.t, ...c.keys.map((k) => (c.def.closes ? hist.closes.get(k) : hist.v[k]))];
  }

  function makeChart(c) {
    if (c.u) {
      c.u.destroy();
      c.u = null;
    }
    if (typeof uPlot === "undefined") {
      c.plot.textContent = "Charts unavailable (uPlot did not load).";
      return;
    }
    const fg = cssVar("--muted") || "#666";
    const grid = cssVar("--grid") || "rgba(0,0,0,.1)";
    let series;
    if (c.def.closes) {
      c.keys = [...hist.closes.keys()].sort((a, b) => Number(a) - Number(b));
      series = c.keys.map((code, i) => ({ label: code, stroke: SERIES_COLOURS[i % SERIES_COLOURS.length] }));
    } else {
      c.keys = c.def.series.map((s) => s[0]);
      series = c.def.series.map(([, label, colour], i) => ({ label, stroke: colour || SERIES_COLOURS[i % SERIES_COLOURS.length] }));
    }
    const axis = { stroke: fg, grid: { stroke: grid, width: 1 }, ticks: { stroke: grid, width: 1 }, font: "11px system-ui, sans-serif" };
    const opts = {
      width: Math.max(200, c.plot.clientWidth),
      height: CHART_H,
      legend: { live: true },
      cursor: { drag: { x: false, y: false } },
      scales: {
        x: {
          time: true,
          range: (u, min, max) => {
            const end = hist.t.length ? hist.t[hist.t.length - 1] : Date.now() / 1000;
            return [Math.min(min ?? end, end - HISTORY_S), end];
          },
        },
        y: { range: (u, min, max) => [0, max > 0 ? max * 1.15 : 1] },
      },
      axes: [
        { ...axis, space: 55, values: (u, vals) => vals.map((v) => fmtClock(v * 1000, u)) },
        { ...axis, size: 46, values: (u, vals) => vals.map((v) => fmtRate(v)) },
      ],
      series: [
        { value: (u, v) => (v == null ? "—" : fmtTime(v * 1000)) },
        ...series.map((s) => ({ ...s, width: 1.5, points: { show: false }, value: (u, v) => (v == null ? "—" : fmtRate(v)) })),
      ],
    };
    c.plot.replaceChildren();
    if (c.def.closes && !c.keys.length) {
      c.plot.append(el("p", { class: "muted small" }, "No connection closed yet."));
      return;
    }
    c.u = new uPlot(opts, chartData(c), c.plot);
  }

  function buildCharts() {
    const box = $("charts");
    for (const def of CHARTS) {
      const plot = el("div", { class: "plot" });
      const section = el("figure", { class: "chart", dataset: { chart: def.id }, style: "margin:0" }, el("h3", {}, def.title), plot);
      box.append(section);
      const c = { def, box: section, plot, u: null, keys: [] };
      charts.set(def.id, c);
      makeChart(c);
    }
  }

  function updateCharts(newCode) {
    for (const c of charts.values()) {
      if (c.def.closes && (newCode || !c.u)) {
        if (hist.closes.size) makeChart(c);
        continue;
      }
      if (c.u) {
        c.u.setData(chartData(c));
        // With the cursor off the chart, the legend shows the latest rates.
        if (!(c.u.cursor.left >= 0) && hist.t.length) c.u.setLegend({ idx: hist.t.length - 1 });
      }
    }
  }

  let resizeQueued = false;
  function onResize() {
    if (resizeQueued) return;
    resizeQueued = true;
    requestAnimationFrame(() => {
      resizeQueued = false;
      sizeCanvas();
      for (const c of charts.values()) {
        if (!c.u) continue;
        const w = Math.max(200, c.plot.clientWidth);
        if (Math.abs(w - c.u.width) > 1) c.u.setSize({ width: w, height: CHART_H });
      }
    });
  }

  // ---------------------------------------------------------------- actions

  const busy = new Set();
  let messageTimer = 0;

  function showMessage(ok, text) {
    const box = $("action-message");
    clearTimeout(messageTimer);
    box.hidden = false;
    box.className = `action-message ${ok ? "ok" : "err"}`;
    box.dataset.ok = String(ok);
    const close = el("button", { type: "button", class: "link", "aria-label": "Dismiss" }, "dismiss");
    close.addEventListener("click", () => (box.hidden = true));
    box.replaceChildren(el("span", { class: "text" }, text), close);
    if (ok) messageTimer = setTimeout(() => (box.hidden = true), 60000);
  }

  /** Confirms `question`, POSTs `body` as JSON to `path`, shows the answer's message, and
   * refreshes the events (and the overview). */
  async function action(path, body, question, button, key) {
    if (!window.confirm(question)) return null;
    if (key) busy.add(key);
    if (button) button.disabled = true;
    const what = `${path.replace(/^api\//, "")} ${JSON.stringify(body)}`;
    let ok = false;
    let message;
    try {
      const res = await fetch(path, {
        method: "POST",
        headers: { "Content-Type": "application/json", Accept: "application/json" },
        body: JSON.stringify(body),
        cache: "no-store",
      });
      let answer = null;
      try {
        answer = await res.json();
      } catch {
        // not JSON
      }
      ok = res.ok && answer?.ok !== false;
      message = answer?.message || `${res.status} ${res.statusText}`;
    } catch (e) {
      message = `request failed: ${e.message}`;
    } finally {
      if (key) busy.delete(key);
      if (button) button.disabled = false;
    }
    showMessage(ok, `${what}: ${message}`);
    refreshEvents();
    poll(true);
    return ok;
  }

  function drainNode(id) {
    const n = nodesById.get(id);
    const others = [...nodesById.values()].filter((m) => m.id !== id && m.state === "ready");
    const shards = num(n?.shards) ?? 0;
    let q = `Drain ${id}${n?.addr ? ` (${n.addr})` : ""}?\n\nIt hands its ${shards} shard${shards === 1 ? "" : "s"} to the other nodes and takes no new ones; the rooms on them restart on their new owners and their clients reconnect.`;
    if (!others.length) q += `\n\nWARNING: no other node is ready to take them.`;
    const row = nodeRows.get(id);
    action("api/drain", { node: id }, q, row?.drain, `drain:${id}`);
  }

  // ---------------------------------------------------------------- room lookup

  let roomSeq = 0;
  let currentRoom = null;

  function roomHash(party, room) {
    return `#room=${encodeURIComponent(party)}/${encodeURIComponent(room)}`;
  }

  function parseHash() {
    const m = /^#room=([^/]*)\/(.*)$/.exec(location.hash);
    if (!m) return null;
    try {
      return { party: decodeURIComponent(m[1]), room: decodeURIComponent(m[2]) };
    } catch {
      return null;
    }
  }

  async function lookupRoom(party, room) {
    const seq = ++roomSeq;
    currentRoom = { party, room };
    const box = $("room-result");
    box.hidden = false;
    box.dataset.owner = "";
    delete box.dataset.shard;
    box.replaceChildren(el("p", { class: "muted" }, `Looking up ${party}/${room}…`));
    const want = roomHash(party, room);
    if (location.hash !== want) history.replaceState(null, "", want);
    let r;
    try {
      r = await getJSON(`api/room?party=${encodeURIComponent(party)}&room=${encodeURIComponent(room)}`);
    } catch (e) {
      if (seq === roomSeq) box.replaceChildren(el("p", { class: "err-text" }, `Lookup of ${party}/${room} failed: ${e.message}`));
      return;
    }
    if (seq !== roomSeq) return;
    renderRoom(r || {}, party, room);
  }

  function renderRoom(r, party, room) {
    const box = $("room-result");
    const owner = r.owner && typeof r.owner === "object" ? r.owner : null;
    box.dataset.owner = owner?.id ?? "";
    if (num(r.shard) != null) box.dataset.shard = String(r.shard);
    const conns = Array.isArray(r.connections) ? r.connections : [];
    const st = r.storage && typeof r.storage === "object" ? r.storage : null;

    const showOnMap = el("button", { type: "button", class: "link" }, "show on map");
    showOnMap.addEventListener("click", () => {
      pinnedShard = r.shard;
      $("move-shard").value = String(r.shard);
      updateTip();
      drawMap();
      canvas.scrollIntoView({ behavior: "smooth", block: "center" });
    });
    if (num(r.shard) != null) {
      pinnedShard = r.shard;
      drawMap();
      updateTip();
    }

    let storage;
    if (st) {
      const quota = num(st.quota_bytes);
      const bytes = num(st.bytes) ?? 0;
      const pct = quota ? Math.min(100, (bytes / quota) * 100) : null;
      storage = el(
        "div",
        {},
        `${fmtInt(st.keys)} key${st.keys === 1 ? "" : "s"}, ${fmtBytes(bytes)}`,
        quota ? ` of ${fmtBytes(quota)} (${pct < 1 && pct > 0 ? "<1" : nf0.format(pct)} %)` : "",
        quota
          ? el("div", { class: `quota${pct >= 80 ? " high" : ""}`, role: "meter", "aria-valuemin": 0, "aria-valuemax": quota, "aria-valuenow": bytes, "aria-label": "storage used" },
            el("div", { style: `width:${pct}%` }))
          : "",
      );
    } else storage = el("span", { class: "muted" }, "—");

    const keys = st && Array.isArray(st.first_keys) && st.first_keys.length
      ? el("ul", { class: "keys" }, ...st.first_keys.map((k) => el("li", { class: "mono" }, k)))
      : el("span", { class: "muted" }, "none");

    const alarm = num(r.next_alarm_ms) != null
      ? el("span", { title: new Date(r.next_alarm_ms).toISOString() }, `${fmtTime(r.next_alarm_ms)} (${fmtRelative(r.next_alarm_ms)})`)
      : el("span", { class: "muted" }, "none");

    const yesNo = (v) => (v == null ? "—" : v ? "yes" : "no");
    const dl = el(
      "dl",
      { class: "kv" },
      el("dt", {}, "Owner"),
      el("dd", {}, owner
        ? el("span", {}, el("span", { class: "mono" }, owner.id), owner.addr ? ` (${owner.addr})` : "", num(owner.epoch) != null ? `, epoch ${owner.epoch}` : "")
        : el("span", { class: "muted" }, "none (the shard has no lease)")),
      el("dt", {}, "Shard"),
      el("dd", {}, num(r.shard) != null ? `${r.shard} ` : "—", num(r.shard) != null ? showOnMap : ""),
      el("dt", {}, "Running"),
      el("dd", {}, yesNo(r.running), r.hibernates ? el("span", { class: "muted" }, " (hibernates)") : ""),
      el("dt", {}, "Answered by"),
      el("dd", { class: "mono" }, r.answered_by || "—"),
      el("dt", {}, "Storage"),
      el("dd", {}, storage),
      el("dt", {}, "First keys"),
      el("dd", {}, keys),
      el("dt", {}, "Next alarm"),
      el("dd", {}, alarm),
    );

    const list = conns.length
      ? el("ul", { class: "conns" }, ...conns.map((c) => el(
        "li",
        { dataset: { conn: String(c.id) } },
        el("span", { class: "mono" }, String(c.id)),
        " ",
        c.hibernating ? badge("hibernating", "info") : "",
        c.gateway ? el("span", { class: "muted small" }, ` via ${c.gateway}`) : "",
        Array.isArray(c.tags) && c.tags.length ? el("div", {}, ...c.tags.map((t) => el("span", { class: "tag" }, t))) : "",
      )))
      : el("p", { class: "muted" }, "No connections.");

    const closeBtn = el("button", { type: "button", class: "danger", id: "room-close" }, "Close connections");
    closeBtn.addEventListener("click", async () => {
      const n = conns.length;
      const ok = await action(
        "api/close",
        { party, room },
        `Close every connection of room ${party}/${room} (${n} listed now)?\n\nTheir clients are disconnected; they may reconnect.`,
        closeBtn,
      );
      if (ok != null) lookupRoom(party, room);
    });
    const moveBtn = el("button", { type: "button", class: "danger", id: "room-move" }, "Move room");
    moveBtn.addEventListener("click", async () => {
      const ok = await action(
        "api/move",
        { party, room },
        `Move room ${party}/${room} by moving its shard ${r.shard ?? "?"}${owner ? ` off ${owner.id}` : ""} to another node?\n\nEvery room on shard ${r.shard ?? "?"} restarts on the new owner; their clients are disconnected and reconnect.`,
        moveBtn,
      );
      if (ok != null) setTimeout(() => lookupRoom(party, room), 1500);
    });
    const refresh = el("button", { type: "button", id: "room-refresh" }, "Refresh");
    refresh.addEventListener("click", () => lookupRoom(party, room));

    box.replaceChildren(
      el("h3", { class: "mono", style: "margin:0" }, `${party}/${room}`),
      dl,
      el("div", {}, el("strong", {}, `Connections (${conns.length})`), list),
      el("div", { class: "buttons" }, closeBtn, moveBtn, refresh),
    );
  }

  $("room-form").addEventListener("submit", (e) => {
    e.preventDefault();
    const party = $("room-party").value.trim();
    const room = $("room-name").value.trim();
    if (party && room) lookupRoom(party, room);
  });

  function fromHash() {
    const h = parseHash();
    if (!h || (currentRoom && currentRoom.party === h.party && currentRoom.room === h.room)) return;
    $("room-party").value = h.party;
    $("room-name").value = h.room;
    lookupRoom(h.party, h.room);
    $("room-section").scrollIntoView({ block: "start" });
  }
  window.addEventListener("hashchange", fromHash);

  // ---------------------------------------------------------------- events

  let eventsBusy = false;
  let seenEvents = null;
  let eventsAt = 0;

  async function refreshEvents() {
    if (eventsBusy) return;
    eventsBusy = true;
    try {
      const list = await getJSON("api/events?n=100");
      renderEvents(Array.isArray(list) ? list : []);
      eventsAt = Date.now();
      $("events-age").textContent = "";
    } catch (e) {
      $("events-age").textContent = `(could not load: ${e.message})`;
    } finally {
      eventsBusy = false;
    }
  }

  function renderEvents(list) {
    const ul = $("events");
    const keyOf = (ev) => `${ev.unix_ms}|${ev.kind}|${ev.source}|${ev.text}`;
    const seen = new Set();
    const items = list.map((ev) => {
      const key = keyOf(ev);
      seen.add(key);
      const kind = String(ev.kind || "event");
      const meta = [];
      if (ev.source) meta.push(el("span", { class: "mono" }, ev.source));
      if (ev.who) meta.push(el("span", {}, ` by ${ev.who}`));
      if (num(ev.shard) != null) {
        const b = el("button", { type: "button", class: "link" }, `shard ${ev.shard}`);
        b.addEventListener("click", () => {
          pinnedShard = ev.shard;
          updateTip();
          drawMap();
          canvas.scrollIntoView({ behavior: "smooth", block: "center" });
        });
        meta.push(" · ", b);
      }
      if (ev.room) {
        const room = String(ev.room);
        const slash = room.indexOf("/");
        meta.push(" · ", slash > 0
          ? el("a", { href: roomHash(room.slice(0, slash), room.slice(slash + 1)) }, `room ${room}`)
          : el("span", {}, `room ${room}`));
      }
      return el(
        "li",
        { class: seenEvents && !seenEvents.has(key) ? "new" : null, dataset: { kind, who: ev.who ?? undefined } },
        el("time", { class: "time", datetime: num(ev.unix_ms) != null ? new Date(ev.unix_ms).toISOString() : null, title: num(ev.unix_ms) != null ? new Date(ev.unix_ms).toLocaleString() : null }, fmtTime(ev.unix_ms)),
        badge(kind.replace(/_/g, " "), KIND_CLASS[kind]),
        el("span", { class: "meta" }, ...meta),
        el("span", { class: "text" }, ev.text ?? ""),
      );
    });
    seenEvents = seen;
    if (!items.length) items.push(el("li", { class: "muted" }, "No events."));
    ul.replaceChildren(...items);
  }

  // ---------------------------------------------------------------- start

  buildCharts();
  sizeCanvas();
  if (typeof ResizeObserver !== "undefined") new ResizeObserver(onResize).observe($("charts-section"));
  window.addEventListener("resize", onResize);
  const dark = window.matchMedia?.("(prefers-color-scheme: dark)");
  dark?.addEventListener?.("change", () => {
    for (const c of charts.values()) makeChart(c);
    renderLegend();
    drawMap();
  });

  connectStream();
  poll(true);
  refreshEvents();
  fromHash();
  setInterval(() => poll(false), POLL_MS);
  setInterval(refreshEvents, EVENTS_MS);
  setInterval(() => {
    updateStatus();
    renderMoves();
    if (eventsAt && Date.now() - eventsAt > 3 * EVENTS_MS && !$("events-age").textContent) {
      $("events-age").textContent = "(stale)";
    }
  }, 1000);
  updateStatus();
})();
