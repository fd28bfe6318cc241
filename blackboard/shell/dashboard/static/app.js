// The dashboard's front end: no build step. One shell page, routed on location.pathname;
// data from /api/..., live updates from the /api/events server-sent event stream.
"use strict";

const main = document.getElementById("main");
const keyInput = document.getElementById("api-key");
keyInput.value = sessionStorage.getItem("bbApiKey") || "";
keyInput.addEventListener("change", () => {
  sessionStorage.setItem("bbApiKey", keyInput.value);
  connect();  // off loopback the stream needs the key too
});
window.dashboard = { lagPoints: 0, events: 0 };

function esc(v) {
  return String(v ?? "").replace(/[&<>"']/g, c => ({ "&": "&amp;", "<": "&lt;", ">": "&gt;", '"': "&quot;", "'": "&#39;" }[c]));
}
function num(v, digits = 0) {
  if (v === null || v === undefined || Number.isNaN(v)) return "-";
  return Number(v).toLocaleString("en", { maximumFractionDigits: digits });
}
function badge(s) { return `<span class="badge ${esc(s)}">${esc(s)}</span>`; }
function headers() {
  const h = { "Content-Type": "application/json" };
  if (keyInput.value) h["X-API-Key"] = keyInput.value;
  return h;
}
async function api(path, body) {
  const opts = body === undefined ? { headers: headers() } : { method: "POST", headers: headers(), body: JSON.stringify(body) };
  const res = await fetch(path, opts);
  const doc = await res.json().catch(() => ({ error: res.statusText }));
  if (!res.ok) throw new Error(doc.error || res.statusText);
  return doc;
}
function table(cols, rows, id) {
  const head = cols.map(c => `<th>${esc(c[0])}</th>`).join("");
  const body = rows.map(r => "<tr>" + cols.map(c => {
    const v = c[1](r);
    return `<td class="${c[2] || ""}">${v}</td>`;
  }).join("") + "</tr>").join("");
  return `<table${id ? ` id="${id}"` : ""}><thead><tr>${head}</tr></thead><tbody>${body}</tbody></table>`;
}

// -- live events -----------------------------------------------------------------------------
let onSample = null;
let source = null;
function connect() {
  if (source) source.close();
  const key = keyInput.value ? `?key=${encodeURIComponent(keyInput.value)}` : "";
  source = new EventSource(`/api/events${key}`);
  const live = document.getElementById("live");
  source.addEventListener("sample", ev => {
    window.dashboard.events += 1;
    live.textContent = "live · " + new Date().toLocaleTimeString();
    if (onSample) onSample(JSON.parse(ev.data));
  });
  source.onerror = () => { live.textContent = "reconnecting…"; };
}

// -- publish throttles (backpressure) --------------------------------------------------------
function groupLink(g) {
  return g ? `<a href="/groups/${encodeURIComponent(g)}">${esc(g)}</a>` : "-";
}
function expectedWait(t) {
  // null: not measured yet, or infinite (lag left and nothing drains; JSON has no infinity)
  const w = t["bb.throttle.expected_wait_s"];
  if (w === null || w === undefined) return t["bb.throttle.lag"] > 0 ? "never (nothing drains)" : "-";
  return num(w, 1) + " s";
}
// Publishers (agents) whose throttle on a topic is not normal; `group` marks the rows whose
// slowest consumer group is the group the page shows.
function throttledTable(list, id, group) {
  return table([
    ["publisher", t => esc(t.agent)], ["slot", t => esc(t.slot)], ["topic", t => esc(t.topic)],
    ["state", t => badge(t["bb.throttle.state"])], ["rate / s", t => num(t["bb.throttle.rate"], 1), "n"],
    ["lag", t => num(t["bb.throttle.lag"]), "n"], ["expected wait", t => expectedWait(t), "n"],
    ["slowest group", t => group && t["bb.throttle.group"] === group ? `<b>this group</b>` : groupLink(t["bb.throttle.group"])],
    ["reported", t => esc(new Date(t.updated * 1000).toLocaleTimeString())],
  ], list, id);
}

// -- overview --------------------------------------------------------------------------------
function renderOverview(o) {
  const open = o.backpressure.open_circuits.length;
  const throttled = o.backpressure.throttled;
  document.getElementById("ov-cards").innerHTML = [
    ["total lag", num(o.total_lag), "ov-lag"], ["consumed / s", num(o.throughput, 1), "ov-tput"],
    ["appended / s", num(o.produced_per_s, 1), "ov-prod"], ["DLQ depth", num(o.dlq_depth), "ov-dlq"],
    ["open circuits", num(open), "ov-open"], ["throttled publishers", num(throttled.length), "ov-throttled"],
  ].map(c => `<div class="card"><div class="v" id="${c[2]}">${c[1]}</div><div class="l">${c[0]}</div></div>`).join("");
  document.getElementById("ov-groups").innerHTML = o.groups.length ? table([
    ["group", g => `<a href="/groups/${encodeURIComponent(g.group)}">${esc(g.group)}</a>`],
    ["health", g => badge(g.status)], ["lag", g => num(g.total_lag), "n"],
    ["consumed / s", g => num(g.throughput, 1), "n"], ["partitions", g => num(g.partitions), "n"],
    ["desired workers", g => num(g.desired_workers), "n"],
    ["holding back", g => g.throttling ? `<span class="badge throttled holding">${num(g.throttling)} publisher(s)</span>` : "-"],
  ], o.groups, "groups-table") : `<p class="muted">no consumer groups yet</p>`;
  document.getElementById("ov-throttled-list").innerHTML = throttled.length
    ? throttledTable(throttled, "throttled-table", null)
    : `<p class="muted" id="no-throttled">no publisher is throttled</p>`;
  document.getElementById("ov-agents").innerHTML = o.agents.length ? table([
    ["agent", a => esc(a.agent)], ["slot", a => esc(a.slot)], ["group", a => esc(a.group)],
    ["circuit", a => a.breaker ? badge(a.breaker) : "-"], ["failures in a row", a => num(a.consecutive_failures), "n"],
    ["cool-down s", a => num(a.cooldown_s, 1), "n"], ["opened", a => num(a.opens), "n"],
    ["backpressure", a => Object.entries(a.throttle || {}).map(([t, f]) =>
      `${esc(t)} ${badge(f["bb.throttle.state"])} ${num(f["bb.throttle.rate"], 1)}/s`).join("<br>") || "-"],
    ["updated", a => esc(new Date(a.updated * 1000).toLocaleTimeString())],
  ], o.agents, "agents-table") : `<p class="muted">no runner has reported a status</p>`;
}
async function overviewPage() {
  main.innerHTML = `<h1>Overview</h1><div class="cards" id="ov-cards"></div>
    <h2>Consumer groups</h2><div id="ov-groups"></div>
    <h2>Throttled publishers (backpressure)</h2><div id="ov-throttled-list"></div>
    <h2>Agents (circuit breaker / backpressure)</h2><div id="ov-agents"></div>`;
  renderOverview(await api("/api/overview"));
  onSample = renderOverview;
}

// -- one group -------------------------------------------------------------------------------
function renderGroupTable(g) {
  document.getElementById("grp-summary").innerHTML = [
    ["health", badge(g.status)], ["total lag", num(g.total_lag)], ["consumed / s", num(g.throughput, 1)],
    ["partitions", num(g.partitions)],
    ["desired workers", `<span id="desired-workers">${num(g.desired_workers)}</span> <span class="muted">(ceil(lag / ${num(g.lag_threshold)}), ≤ partitions)</span>`],
  ].map(c => `<div class="card"><div class="v">${c[1]}</div><div class="l">${c[0]}</div></div>`).join("");
  document.getElementById("grp-rows").innerHTML = table([
    ["topic", r => esc(r.topic)], ["partition", r => num(r.partition), "n"],
    ["end", r => num(r.end_offset), "n"], ["committed", r => r.committed_offset === null ? "-" : num(r.committed_offset), "n"],
    ["lag", r => num(r.lag), "n"], ["health", r => badge(r.status)],
    ...(g.rows.some(r => "pending" in r) ? [["delivered", r => num(r.delivered), "n"], ["pending", r => num(r.pending), "n"]] : []),
  ], g.rows, "partitions-table");
}
async function groupPage(group) {
  main.innerHTML = `<h1>Group <code>${esc(group)}</code></h1><div class="cards" id="grp-summary"></div>
    <h2>Lag</h2><div id="lag-chart" class="chart" data-points="0"></div>
    <h2>Publishers throttled on its topics</h2><div id="grp-throttled"></div>
    <h2>Partitions</h2><div id="grp-rows"></div>`;
  const g = await api(`/api/groups/${encodeURIComponent(group)}`);
  renderGroupTable(g);
  let topics = new Set(g.rows.map(r => r.topic));
  const renderThrottled = list => {
    document.getElementById("grp-throttled").innerHTML = list.length
      ? throttledTable(list, "group-throttled-table", group)
      : `<p class="muted" id="no-group-throttled">no publisher is throttled on ${esc([...topics].join(", ") || "its topics")}</p>`;
  };
  renderThrottled(g.throttled);
  const chart = document.getElementById("lag-chart");
  const xs = g.history.map(p => new Date(p[0] * 1000)), ys = g.history.map(p => p[1]);
  Plotly.newPlot(chart, [{ x: xs, y: ys, mode: "lines+markers", name: "lag", line: { color: "#2f6fd6" } }],
    { margin: { t: 20, r: 20, b: 40, l: 60 }, yaxis: { title: { text: "records behind" }, rangemode: "tozero" } },
    { displayModeBar: false, responsive: true });
  let last = xs.length ? g.history[g.history.length - 1][0] : 0;
  window.dashboard.lagPoints = xs.length;
  chart.dataset.points = String(xs.length);
  onSample = ev => {
    const point = ev.lag[group];
    if (point) topics = new Set(point.rows.map(r => r.topic));
    renderThrottled(ev.backpressure.throttled.filter(t => topics.has(t.topic)));
    if (!point || point.ts <= last) return;
    last = point.ts;
    Plotly.extendTraces(chart, { x: [[new Date(point.ts * 1000)]], y: [[point.lag]] }, [0], 300);
    window.dashboard.lagPoints += 1;
    chart.dataset.points = String(window.dashboard.lagPoints);
    chart.dataset.lastLag = String(point.lag);
    const summary = ev.groups.find(x => x.group === group);
    if (summary) renderGroupTable({ ...summary, rows: point.rows });
  };
}

// -- topics ----------------------------------------------------------------------------------
function renderTopics(topics) {
  document.getElementById("topics").innerHTML = table([
    ["topic", t => esc(t.topic) + (t.dlq ? ' <span class="muted">(DLQ)</span>' : "")],
    ["partitions", t => num(t.partitions), "n"], ["end offsets", t => num(t.end_offset), "n"],
    ["appended / s", t => num(t.rate, 1), "n"],
  ], topics, "topics-table");
  Plotly.react("topics-chart", [{ type: "bar", x: topics.map(t => t.topic), y: topics.map(t => t.rate) }],
    { margin: { t: 20, r: 20, b: 120, l: 60 }, yaxis: { title: { text: "records / s" }, rangemode: "tozero" } },
    { displayModeBar: false, responsive: true });
}
async function topicsPage() {
  main.innerHTML = `<h1>Topics</h1><div id="topics-chart" class="chart"></div><h2>Throughput (end-offset deltas)</h2><div id="topics"></div>`;
  renderTopics((await api("/api/topics")).topics);
  onSample = async () => renderTopics((await api("/api/topics")).topics);
}

// -- dead letters ----------------------------------------------------------------------------
function dlqFilter() {
  const f = {};
  for (const k of ["type", "agent", "stage", "since"]) {
    const v = document.getElementById(`f-${k}`).value;
    if (v) f[k] = v;
  }
  return f;
}
function selectedIds() {
  return [...document.querySelectorAll("input.pick:checked")].map(i => i.value);
}
async function loadDlq() {
  const q = new URLSearchParams(dlqFilter());
  if (document.getElementById("f-all").checked) q.set("all", "true");
  const doc = await api(`/api/dlq?${q}`);
  for (const k of ["type", "agent", "stage"]) {
    const sel = document.getElementById(`f-${k}`), cur = sel.value;
    sel.innerHTML = `<option value="">any</option>` + doc.facets[k].map(v => `<option${v === cur ? " selected" : ""}>${esc(v)}</option>`).join("");
  }
  document.getElementById("dlq-count").textContent = `${doc.dead_letters.length} dead letter(s)`;
  document.getElementById("dlq-list").innerHTML = table([
    ["", e => e.disposition ? "" : `<input type="checkbox" class="pick" value="${esc(e.id)}">`],
    ["entry", e => `<a href="#" class="inspect" data-id="${esc(e.id)}">${esc(e.id)}</a>`],
    ["agent", e => esc(e.agent)], ["stage", e => esc(e.stage)], ["attempt", e => num(e.attempt), "n"],
    ["replays", e => num(e.replays), "n"], ["error", e => esc(`${e.exception.split(".").pop()}: ${e.message}`)],
    ["failed at", e => esc(e.failed_at.replace("T", " ").slice(0, 19))], ["settled", e => esc(e.disposition || "")],
  ], doc.dead_letters, "dlq-table");
  for (const a of document.querySelectorAll("a.inspect")) {
    a.addEventListener("click", ev => { ev.preventDefault(); inspect(a.dataset.id); });
  }
  await loadAudit();
}
async function inspect(id) {
  const [d] = (await api(`/api/dlq/${encodeURIComponent(id)}`)).dead_letters;
  document.getElementById("dlq-detail").innerHTML = `<div class="panel" id="dlq-inspect">
    <h2>${esc(d.id)} <span class="muted">artifact ${esc(d.artifact_id)}</span></h2>
    <p>${esc(d.exception)}: ${esc(d.message)} — agent <b>${esc(d.agent)}</b>, stage <b>${esc(d.stage)}</b>, attempt ${num(d.attempt)}</p>
    <h2>Headers</h2>${table([["name", h => esc(h[0])], ["value", h => esc(h[1])]], Object.entries(d.headers), "dlq-headers")}
    <h2>Payload</h2><pre id="dlq-payload">${esc(JSON.stringify(d.payload, null, 2))}</pre>
    <h2>Stack trace</h2><pre id="dlq-stack">${esc(d.stacktrace)}</pre></div>`;
}
function message(text, cls) {
  document.getElementById("dlq-message").innerHTML = `<span class="${cls}">${esc(text)}</span>`;
}
async function act(verb, scope) {
  const body = scope === "selected" ? { ids: selectedIds() } : { ...dlqFilter() };
  if (scope === "selected" && !body.ids.length) return message("select dead letters first", "error");
  if (scope === "filter" && !Object.keys(body).length) body.all = true;
  const confirmBox = document.getElementById("dlq-confirm");
  try {
    const dry = await api(`/api/dlq/${verb}`, { ...body, dry_run: true });
    const ids = verb === "replay" ? dry.replayed : dry.purged;
    confirmBox.innerHTML = `<div class="panel confirm" id="confirm-panel"><b>Dry run:</b> would ${verb} ${ids.length} dead letter(s)
      <pre>${esc(ids.join("\n"))}</pre>
      <button id="confirm-yes">Confirm ${verb}</button> <button id="confirm-no">Cancel</button></div>`;
    document.getElementById("confirm-no").onclick = () => { confirmBox.innerHTML = ""; message("cancelled", "muted"); };
    document.getElementById("confirm-yes").onclick = async () => {
      confirmBox.innerHTML = "";
      try {
        // Exactly what the dry run listed, not whatever the filter matches by now.
        if (!ids.length) return message(`nothing to ${verb}`, "muted");
        const done = await api(`/api/dlq/${verb}`, { ids });
        const n = (verb === "replay" ? done.replayed : done.purged).length;
        message(`${verb === "replay" ? "replayed" : "purged"} ${n} dead letter(s)`, "ok");
      } catch (err) { message(`${verb} refused: ${err.message}`, "error"); }
      await loadDlq();
    };
  } catch (err) {
    confirmBox.innerHTML = "";
    message(`${verb} refused: ${err.message}`, "error");
    await loadAudit();
  }
}
async function loadAudit() {
  const doc = await api("/api/audit?limit=20");
  document.getElementById("dlq-audit").innerHTML = table([
    ["time", a => esc(new Date(a.ts * 1000).toLocaleTimeString())], ["action", a => esc(a.action)],
    ["outcome", a => esc(a.outcome)], ["client", a => esc(a.client)],
    ["request", a => esc(JSON.stringify(a.request))],
    ["affected", a => esc((a.replayed || a.purged || []).join(", ") || a.error || "")],
  ], doc.audit, "audit-table");
}
async function dlqPage() {
  main.innerHTML = `<h1>Dead letters</h1>
    <div class="filters">
      <label>type <select id="f-type"></select></label><label>agent <select id="f-agent"></select></label>
      <label>stage <select id="f-stage"></select></label><label>since <input id="f-since" placeholder="15m, 2h, ISO time" size="12"></label>
      <label><span><input type="checkbox" id="f-all"> replayed and purged too</span></label>
      <button id="f-apply">Filter</button>
    </div>
    <p><span id="dlq-count"></span> ·
      <button id="replay-selected">Replay selected…</button> <button id="replay-filter">Replay filter…</button>
      <button id="purge-selected">Purge selected…</button> <button id="purge-filter">Purge filter…</button></p>
    <div id="dlq-message"></div><div id="dlq-confirm"></div>
    <div id="dlq-list"></div><div id="dlq-detail"></div>
    <h2>Audit log</h2><div id="dlq-audit"></div>`;
  document.getElementById("f-apply").onclick = loadDlq;
  document.getElementById("replay-selected").onclick = () => act("replay", "selected");
  document.getElementById("replay-filter").onclick = () => act("replay", "filter");
  document.getElementById("purge-selected").onclick = () => act("purge", "selected");
  document.getElementById("purge-filter").onclick = () => act("purge", "filter");
  await loadDlq();
}

// -- runs ------------------------------------------------------------------------------------
// A cost in USD (priced calls only; null: none priced), and how many calls had no price.
function usd(v, unpriced) {
  const more = unpriced ? ` (+${num(unpriced)} unpriced)` : "";
  return (v === null || v === undefined ? "-" : "$" + num(v, 6)) + more;
}
function llmTable(rows, key, label, id) {
  return table([[label, x => esc(x[key])], ["calls", x => num(x.calls), "n"], ["failed", x => num(x.failed), "n"],
    ["tokens in", x => num(x.input_tokens), "n"], ["tokens out", x => num(x.output_tokens), "n"],
    ["cost", x => usd(x.cost_usd, x.unpriced), "n"], ["re-asks", x => num(x.reasks), "n"]], rows, id);
}
function kv(obj, id) {
  return table([["", r => esc(r[0])], ["", r => esc(typeof r[1] === "number" ? num(r[1], 2) : r[1])]], Object.entries(obj), id);
}
async function showRun(runId) {
  const r = await api(`/api/runs/${encodeURIComponent(runId)}`);
  const s = r.summary;
  document.getElementById("run-report").innerHTML = `
    <div class="cards">${[["makespan ms", num(s.wall_ms, 1)], ["processed", num(s.processed)], ["processed / s", num(s.processed_per_s, 1)],
      ["process p50 ms", num(s.process_p50_ms, 2)], ["p95 ms", num(s.process_p95_ms, 2)], ["p99 ms", num(s.process_p99_ms, 2)],
      ["dead letters", num(s.dead_letters)], ["spans lost", num(s.spans_lost)]]
      .map(c => `<div class="card"><div class="v">${c[1]}</div><div class="l">${c[0]}</div></div>`).join("")}</div>
    <h2>Makespan per correlation id</h2>${kv(r.makespan, "makespan-table")}
    <h2>RED over time (process spans, ${num(r.bucket_ms, 1)} ms buckets)</h2><div id="red-chart" class="chart"></div>
    <h2>Latency per agent</h2>${table([["agent", x => esc(x.agent)], ["type", x => esc(x.artifact_type)], ["n", x => num(x.n), "n"],
      ["p50 ms", x => num(x.p50_ms, 2), "n"], ["p95 ms", x => num(x.p95_ms, 2), "n"], ["p99 ms", x => num(x.p99_ms, 2), "n"]], r.latency, "latency-table")}
    <h2>Model calls</h2>${r.llm_by_agent.length
      ? llmTable(r.llm_by_agent, "agent", "agent", "llm-agent-table") + llmTable(r.llm_by_model, "model", "model", "llm-model-table")
      : `<p id="llm-none">No model calls in this run.</p>`}
    <h2>Summary</h2>${kv(s, "summary-table")}`;
  const agents = [...new Set(r.red.map(x => x.agent))];
  const traces = agents.flatMap(a => {
    const rows = r.red.filter(x => x.agent === a);
    return [
      { x: rows.map(x => x.bucket_ms / 1000), y: rows.map(x => x.rate_per_s), name: `${a} rate/s`, mode: "lines+markers" },
      { x: rows.map(x => x.bucket_ms / 1000), y: rows.map(x => x.p95_ms), name: `${a} p95 ms`, mode: "lines", yaxis: "y2", line: { dash: "dot" } },
      { x: rows.map(x => x.bucket_ms / 1000), y: rows.map(x => x.errors), name: `${a} errors`, type: "bar", yaxis: "y" },
    ];
  });
  Plotly.newPlot("red-chart", traces, {
    margin: { t: 20, r: 60, b: 40, l: 60 }, xaxis: { title: { text: "s from run start" } },
    yaxis: { title: { text: "rate / errors" } }, yaxis2: { title: { text: "p95 ms" }, overlaying: "y", side: "right" },
  }, { displayModeBar: false, responsive: true });
}
async function runsPage() {
  main.innerHTML = `<h1>Runs</h1><div id="runs-body"></div>`;
  let runs;
  try { runs = (await api("/api/runs")).runs; } catch (err) {
    document.getElementById("runs-body").innerHTML = `<p class="error" id="runs-error">${esc(err.message)}</p>`; return;
  }
  const opts = sel => runs.map((r, i) => `<option value="${esc(r.run_id)}"${i === sel ? " selected" : ""}>${esc(r.run_id)} · ${esc(r.scenario)}</option>`).join("");
  document.getElementById("runs-body").innerHTML = `
    ${table([["run", r => esc(r.run_id)], ["scenario", r => esc(r.scenario)], ["policy", r => esc(r.policy)], ["store", r => esc(r.store)],
      ["started", r => esc(r.started_at)], ["spans", r => num(r.spans_written), "n"], ["lost", r => num(r.spans_lost), "n"],
      ["model calls", r => num(r.llm_calls), "n"], ["tokens in", r => num(r.llm_input_tokens), "n"], ["tokens out", r => num(r.llm_output_tokens), "n"],
      ["cost", r => usd(r.llm_cost_usd, r.llm_unpriced), "n"]], runs, "runs-table")}
    <div class="filters"><label>run <select id="run-pick">${opts(runs.length - 1)}</select></label>
      <label>compare A <select id="cmp-a">${opts(Math.max(0, runs.length - 2))}</select></label>
      <label>with B <select id="cmp-b">${opts(runs.length - 1)}</select></label><button id="cmp-go">Compare</button></div>
    <div id="compare"></div><div id="run-report"></div>`;
  document.getElementById("run-pick").onchange = e => showRun(e.target.value);
  document.getElementById("cmp-go").onclick = async () => {
    const a = document.getElementById("cmp-a").value, b = document.getElementById("cmp-b").value;
    try {
      const c = await api(`/api/runs/compare?a=${encodeURIComponent(a)}&b=${encodeURIComponent(b)}`);
      const cols = c.rows.length ? Object.keys(c.rows[0]) : [];
      document.getElementById("compare").innerHTML = `<h2>B vs A</h2>` + table(cols.map(k => [k, r => esc(typeof r[k] === "number" ? num(r[k], 3) : r[k]), typeof c.rows[0][k] === "number" ? "n" : ""]), c.rows, "compare-table");
    } catch (err) { document.getElementById("compare").innerHTML = `<p class="error">${esc(err.message)}</p>`; }
  };
  if (runs.length) await showRun(runs[runs.length - 1].run_id);
}

// -- router ----------------------------------------------------------------------------------
async function route() {
  const path = location.pathname;
  const page = path.startsWith("/groups/") ? "overview" : (path.slice(1) || "overview");
  for (const a of document.querySelectorAll("nav a")) a.classList.toggle("active", a.dataset.page === page);
  try {
    if (path.startsWith("/groups/")) await groupPage(decodeURIComponent(path.slice(8)));
    else if (path === "/topics") await topicsPage();
    else if (path === "/dlq") await dlqPage();
    else if (path === "/runs") await runsPage();
    else await overviewPage();
    document.body.dataset.ready = "1";
  } catch (err) {
    main.insertAdjacentHTML("beforeend", `<p class="error" id="page-error">${esc(err.message)}</p>`);
    document.body.dataset.ready = "1";
  }
}
connect();
route();
