"""The status page itself: one self-contained HTML document, served by `broker/http.py`.

No outside scripts, fonts or stylesheets: the style and the script are inline, and the page
builds every element from the JSON endpoints with `textContent` (never `innerHTML`), so task
ids, names and tracebacks are shown as text whatever they contain. The server sends a
Content-Security-Policy that allows exactly these two inline blocks, by hash.

The script polls ``api/status.json`` and ``api/history.json?since=T`` once a second (relative
paths, so the page also works behind a proxy under a prefix), keeps the last 300 samples for
its charts, and fetches ``api/failures.json`` only when the newest failure changes.
"""

import base64
import hashlib

__all__ = ["PAGE", "STYLE", "SCRIPT", "content_security_policy"]

STYLE = """
:root { color-scheme: light dark;
  --bg: #f6f7f9; --panel: #ffffff; --text: #1d2129; --muted: #667085; --line: #e3e6eb;
  --accent: #2f6fdf; --good: #16894b; --warn: #b7791f; --bad: #c8372d; --chip: #eef1f5;
  --c1: #2f6fdf; --c2: #16a37f; --c3: #c27c0e; --c4: #9b5de5; }
@media (prefers-color-scheme: dark) { :root {
  --bg: #121417; --panel: #1b1e23; --text: #e4e7ec; --muted: #98a2b3; --line: #2c3138;
  --accent: #6ea2ff; --good: #4cc38a; --warn: #e2b14a; --bad: #f06a5f; --chip: #252a31;
  --c1: #6ea2ff; --c2: #4cc3a0; --c3: #e2b14a; --c4: #b794f6; } }
* { box-sizing: border-box; }
body { margin: 0; background: var(--bg); color: var(--text);
  font: 14px/1.45 system-ui, -apple-system, "Segoe UI", Roboto, "Helvetica Neue", sans-serif; }
.num, td.n, .mono { font-family: ui-monospace, "SF Mono", Menlo, Consolas, "DejaVu Sans Mono",
  monospace; font-variant-numeric: tabular-nums; }
header { display: flex; flex-wrap: wrap; align-items: baseline; gap: 6px 18px;
  padding: 14px 24px; border-bottom: 1px solid var(--line); background: var(--panel); }
header h1 { font-size: 18px; margin: 0; letter-spacing: .2px; }
header .meta { color: var(--muted); font-size: 13px; }
#live { margin-left: auto; font-size: 13px; color: var(--muted); }
#live::before { content: ""; display: inline-block; width: 8px; height: 8px; margin-right: 6px;
  border-radius: 50%; background: var(--muted); vertical-align: 1px; }
#live.ok::before { background: var(--good); } #live.bad::before { background: var(--bad); }
#live.bad { color: var(--bad); }
main { padding: 18px 24px 40px; max-width: 1400px; margin: 0 auto; }
.tiles { display: grid; grid-template-columns: repeat(auto-fit, minmax(112px, 1fr));
  gap: 12px; margin-bottom: 18px; }
.tile { background: var(--panel); border: 1px solid var(--line); border-radius: 8px;
  padding: 10px 14px; }
.tile .label { color: var(--muted); font-size: 11px; text-transform: uppercase;
  letter-spacing: .4px; white-space: nowrap; overflow: hidden; text-overflow: ellipsis; }
.tile .value { font-size: 24px; font-weight: 600; margin-top: 2px; }
.tile .value small { font-size: 12px; color: var(--muted); font-weight: 400; }
.dot { display: inline-block; width: 8px; height: 8px; border-radius: 2px; margin-right: 5px; }
section { background: var(--panel); border: 1px solid var(--line); border-radius: 8px;
  margin-bottom: 18px; overflow: hidden; }
section h2 { font-size: 14px; margin: 0; padding: 10px 14px; border-bottom: 1px solid var(--line);
  display: flex; gap: 12px; align-items: baseline; }
section h2 .count { color: var(--muted); font-weight: 400; }
.legend { margin-left: auto; font-weight: 400; color: var(--muted); font-size: 12px; }
.legend span { margin-left: 12px; }
.chart { padding: 8px 14px 4px; }
.chart svg { width: 100%; height: 120px; display: block; }
.chart .axis { display: flex; justify-content: space-between; color: var(--muted);
  font-size: 11px; padding-bottom: 6px; }
.scroll { overflow-x: auto; }
table { width: 100%; border-collapse: collapse; }
th, td { text-align: left; padding: 6px 12px; border-bottom: 1px solid var(--line);
  white-space: nowrap; }
th { color: var(--muted); font-weight: 500; font-size: 12px; background: var(--panel); }
td.n, th.n { text-align: right; }
tr:last-child td { border-bottom: 0; }
td.wrap { white-space: normal; word-break: break-all; }
.muted { color: var(--muted); }
.zero { color: var(--muted); }
.hot { color: var(--warn); } .dead { color: var(--bad); }
.spark { vertical-align: middle; }
.empty { padding: 14px; color: var(--muted); }
.chip { display: inline-block; padding: 0 6px; border-radius: 4px; background: var(--chip);
  font-size: 12px; margin-left: 6px; font-family: system-ui, sans-serif; }
.failures { list-style: none; margin: 0; padding: 0; }
.failures li { border-bottom: 1px solid var(--line); }
.failures li:last-child { border-bottom: 0; }
.failures summary { cursor: pointer; padding: 8px 14px; display: flex; flex-wrap: wrap;
  gap: 4px 14px; align-items: baseline; }
.failures summary .exc { color: var(--bad); font-weight: 600; }
.failures summary .msg { flex: 1 1 300px; overflow-wrap: anywhere; }
.failures pre { margin: 0; padding: 10px 14px 14px; background: var(--bg); overflow-x: auto;
  font-size: 12px; line-height: 1.4; border-top: 1px solid var(--line); }
footer { color: var(--muted); font-size: 12px; text-align: center; padding: 8px; }
a { color: var(--accent); }
/* Colours by class, never by style attribute, so the CSP allows no inline styles but this. */
.dot.c1 { background: var(--c1); } .dot.c2 { background: var(--c2); }
.dot.c3 { background: var(--c3); }
.tile.rate { border-top: 3px solid var(--line); } .tile.c1 { border-top-color: var(--c1); }
.tile.c2 { border-top-color: var(--c2); } .tile.c3 { border-top-color: var(--c3); }
svg .line { fill: none; stroke-width: 1.5; stroke-linejoin: round; }
svg .line.thin { stroke-width: 1; }
svg .line.wide { stroke-width: 2; vector-effect: non-scaling-stroke; }
svg .area { stroke: none; fill-opacity: .18; }
svg .line.c1 { stroke: var(--c1); } svg .line.c2 { stroke: var(--c2); }
svg .line.c3 { stroke: var(--c3); } svg .line.wide.c3 { stroke-dasharray: 6 4; }
svg .area.c1 { fill: var(--c1); }
svg .grid { stroke: var(--line); stroke-width: 1; vector-effect: non-scaling-stroke; }
"""

SCRIPT = """
"use strict";
(function () {
  var KEEP = 300, POLL_MS = 1000;
  var samples = [], lastStatus = null, failureKey = null, failureRows = {};
  var lastOk = 0, errorText = "";

  function $(id) { return document.getElementById(id); }
  function el(tag, cls, text) {
    var node = document.createElement(tag);
    if (cls) node.className = cls;
    if (text !== undefined && text !== null) node.textContent = String(text);
    return node;
  }
  function clear(node) { while (node.firstChild) node.removeChild(node.firstChild); }
  function fmtInt(n) {
    if (n === null || n === undefined) return "\\u2013";
    return Number(n).toLocaleString("en-US");
  }
  function fmtRate(x) {
    if (!x) return "0";
    return x >= 100 ? Math.round(x).toLocaleString("en-US") : x.toFixed(1);
  }
  function fmtBytes(n) {
    var units = ["B", "KiB", "MiB", "GiB", "TiB"], i = 0;
    while (n >= 1024 && i < units.length - 1) { n /= 1024; i++; }
    return (i ? n.toFixed(1) : String(n)) + " " + units[i];
  }
  function fmtDuration(s) {
    s = Math.max(0, Math.floor(s || 0));
    var d = Math.floor(s / 86400), h = Math.floor(s / 3600) % 24, m = Math.floor(s / 60) % 60;
    if (d) return d + "d " + h + "h";
    if (h) return h + "h " + m + "m";
    if (m) return m + "m " + (s % 60) + "s";
    return s + "s";
  }
  function fmtTime(t) {
    var d = new Date(t * 1000);
    function two(x) { return (x < 10 ? "0" : "") + x; }
    return two(d.getHours()) + ":" + two(d.getMinutes()) + ":" + two(d.getSeconds());
  }
  function numCell(value, field, cls) {
    var td = el("td", "n" + (value ? "" : " zero") + (cls && value ? " " + cls : ""),
                fmtInt(value));
    if (field) td.setAttribute("data-field", field);
    return td;
  }

  var SVG = "http://www.w3.org/2000/svg";
  function svgNode(tag, attrs) {
    var node = document.createElementNS(SVG, tag);
    for (var key in attrs) node.setAttribute(key, attrs[key]);
    return node;
  }
  function points(values, width, height, top) {
    var out = [], n = values.length, step = n > 1 ? width / (n - 1) : 0;
    for (var i = 0; i < n; i++) {
      var v = values[i] || 0;
      var y = height - 1 - (top ? v / top : 0) * (height - 3);
      out.push((i * step).toFixed(1) + "," + y.toFixed(1));
    }
    return out.join(" ");
  }
  function maxOf(lists) {
    var top = 0;
    lists.forEach(function (list) { list.forEach(function (v) { if (v > top) top = v; }); });
    return top;
  }
  // A small depth sparkline: ready (filled) and unacked (line) over the kept samples.
  function sparkline(ready, unacked, width, height) {
    var svg = svgNode("svg", {width: width, height: height, viewBox: "0 0 " + width + " " + height,
                              "class": "spark", role: "img"});
    var top = maxOf([ready, unacked]);
    if (ready.length > 1) {
      var line = points(ready, width, height, top);
      var area = "0," + height + " " + line + " " + width + "," + height;
      svg.appendChild(svgNode("polygon", {points: area, "class": "area c1"}));
      svg.appendChild(svgNode("polyline", {points: line, "class": "line c1"}));
      svg.appendChild(svgNode("polyline", {points: points(unacked, width, height, top),
        "class": "line thin c3"}));
    }
    var title = svgNode("title", {});
    title.textContent = "ready, unacked over the last " + ready.length + " s (max " + top + ")";
    svg.appendChild(title);
    return svg;
  }

  function series(field) { return samples.map(function (s) { return s[field]; }); }
  function queueSeries(name, index) {
    return samples.map(function (s) { var q = s.queues[name]; return q ? q[index] : null; });
  }

  function drawThroughput() {
    var svg = $("throughput"), width = 1000, height = 120;
    clear(svg);
    var lists = [series("published_rate"), series("delivered_rate"), series("acked_rate")];
    var top = maxOf(lists);
    for (var g = 1; g < 4; g++) {
      var y = (height * g / 4).toFixed(1);
      svg.appendChild(svgNode("line", {x1: 0, x2: width, y1: y, y2: y, "class": "grid"}));
    }
    lists.forEach(function (list, i) {
      if (list.length < 2) return;
      svg.appendChild(svgNode("polyline", {points: points(list, width, height, top),
        "class": "line wide c" + (i + 1)}));
    });
    $("chart-top").textContent = fmtRate(top) + " msg/s";
    var span = samples.length > 1 ? samples[samples.length - 1].time - samples[0].time : 0;
    $("chart-span").textContent = span ? "last " + fmtDuration(span) : "collecting\\u2026";
  }

  function setTile(id, text, title) {
    var node = $(id);
    node.textContent = text;
    if (title) node.title = title;
  }

  function renderStatus(status) {
    var b = status.broker, rates = status.rates || {};
    $("version").textContent = b.version;
    $("pid").textContent = "pid " + b.pid;
    $("uptime").textContent = "up " + fmtDuration(b.uptime);
    $("storage").textContent = b.persistent ? "journal " + fmtBytes(b.journal_bytes) +
      " \\u00b7 fsync " + b.fsync + (b.journal_faults ? " \\u00b7 " +
      b.journal_records_lost + " records lost at start (see the log)" : "") :
      "in memory (--no-persist)";
    var ready = 0, unacked = 0, delayed = 0, dead = 0;
    status.queues.forEach(function (q) {
      ready += q.ready; unacked += q.unacked; delayed += q.delayed; dead += q.dead;
    });
    setTile("rate-published", fmtRate(rates.published));
    setTile("rate-delivered", fmtRate(rates.delivered));
    setTile("rate-acked", fmtRate(rates.acked));
    setTile("total-ready", fmtInt(ready));
    setTile("total-unacked", fmtInt(unacked));
    setTile("total-delayed", fmtInt(delayed));
    setTile("count-workers", fmtInt(status.workers.length));
    setTile("count-connections", fmtInt(b.connections));
    setTile("count-results", fmtInt(b.results));
    renderQueues(status.queues);
    renderWorkers(status.workers);
    renderRunning(status);
  }

  function renderQueues(queues) {
    var body = $("queues"), queueRates = (lastStatus.rates || {}).queues || {};
    clear(body);
    $("queue-count").textContent = queues.length;
    queues.forEach(function (q) {
      var tr = el("tr");
      tr.setAttribute("data-queue", q.name);
      var name = el("td", "mono", q.name);
      if (!q.durable) name.appendChild(el("span", "chip", "transient"));
      if (q.exclusive) name.appendChild(el("span", "chip", "exclusive"));
      tr.appendChild(name);
      tr.appendChild(numCell(q.ready, "ready", "hot"));
      tr.appendChild(numCell(q.unacked, "unacked"));
      tr.appendChild(numCell(q.delayed, "delayed"));
      tr.appendChild(numCell(q.dead, "dead", "dead"));
      tr.appendChild(numCell(q.consumers, "consumers"));
      var r = queueRates[q.name] || {};
      var rate = el("td", "n", fmtRate(r.published) + " / " + fmtRate(r.acked));
      rate.setAttribute("data-field", "rates");
      tr.appendChild(rate);
      tr.appendChild(numCell(q.published, "published"));
      tr.appendChild(numCell(q.acked, "acked"));
      var spark = el("td");
      spark.appendChild(sparkline(queueSeries(q.name, 0), queueSeries(q.name, 1), 110, 24));
      tr.appendChild(spark);
      body.appendChild(tr);
    });
    if (!queues.length) body.appendChild(emptyRow(10, "no queues declared yet"));
  }

  function emptyRow(span, text) {
    var tr = el("tr"), td = el("td", "empty", text);
    td.colSpan = span;
    tr.appendChild(td);
    return tr;
  }

  function renderWorkers(workers) {
    var body = $("workers");
    clear(body);
    $("worker-count").textContent = workers.length;
    workers.forEach(function (w) {
      var tr = el("tr");
      tr.setAttribute("data-worker", String(w.hostname || ""));
      tr.appendChild(el("td", "mono", w.hostname || "?"));
      var pid = el("td", "n", w.pid);
      pid.setAttribute("data-field", "pid");
      tr.appendChild(pid);
      tr.appendChild(numCell(w.concurrency, "concurrency"));
      tr.appendChild(numCell(w.reserved, "reserved"));
      tr.appendChild(numCell(w.running, "running", "hot"));
      tr.appendChild(numCell(w.delivered, "delivered"));
      tr.appendChild(el("td", "n", fmtDuration(w.connected_for)));
      tr.appendChild(el("td", "wrap", (w.queues || []).join(", ")));
      tr.appendChild(el("td", "mono muted", w.peer));
      body.appendChild(tr);
    });
    if (!workers.length) body.appendChild(emptyRow(9, "no workers connected"));
  }

  function renderRunning(status) {
    var body = $("running"), rows = status.running || [], total = 0;
    status.workers.forEach(function (w) { total += w.running || 0; });
    clear(body);
    $("running-count").textContent = total;
    rows.slice(0, 100).forEach(function (t) {
      var tr = el("tr");
      tr.setAttribute("data-task-id", t.task_id);
      tr.appendChild(el("td", "mono", t.task_id));
      var name = el("td", t.task ? "mono" : "muted", t.task || "\u2014");
      if (!t.task) name.title = "the broker keeps a task's name only until it is acked";
      tr.appendChild(name);
      tr.appendChild(el("td", "mono", t.worker + (t.pid ? " [" + t.pid + "]" : "")));
      body.appendChild(tr);
    });
    if (total > rows.slice(0, 100).length) {
      body.appendChild(emptyRow(3, "and " + (total - rows.slice(0, 100).length) + " more"));
    }
    if (!total) body.appendChild(emptyRow(3, "nothing running"));
  }

  function failureItem(f) {
    var li = el("li"), details = el("details"), summary = el("summary");
    li.setAttribute("data-task-id", f.task_id);
    summary.appendChild(el("span", "mono muted", fmtTime(f.time)));
    summary.appendChild(el("span", "mono", f.task || "?"));
    summary.appendChild(el("span", "exc", f.exc_type || f.state || "FAILURE"));
    summary.appendChild(el("span", "msg", f.exc_message || ""));
    summary.appendChild(el("span", "mono muted", f.task_id));
    details.appendChild(summary);
    details.appendChild(el("pre", "mono", f.traceback || "(no traceback stored)"));
    li.appendChild(details);
    return li;
  }

  function renderFailures(data) {
    var list = $("failures"), kept = {};
    clear(list);
    $("failure-count").textContent = data.failures.length;
    data.failures.forEach(function (f) {
      var key = f.time + " " + f.task_id;
      var li = failureRows[key] || failureItem(f);      // keeps an open traceback open
      kept[key] = li;
      list.appendChild(li);
    });
    failureRows = kept;
    if (!data.failures.length) list.appendChild(el("li", "empty", "no failures recently"));
  }

  function getJSON(path) {
    return fetch(path, {cache: "no-store", credentials: "same-origin"}).then(function (r) {
      if (!r.ok) throw new Error("HTTP " + r.status + " from " + path);
      return r.json();
    });
  }

  function mergeHistory(data) {
    data.samples.forEach(function (s) {
      if (!samples.length || s.time > samples[samples.length - 1].time) samples.push(s);
    });
    if (samples.length > KEEP) samples.splice(0, samples.length - KEEP);
  }

  function showLive() {
    var node = $("live");
    if (errorText) {
      node.className = "bad";
      var since = lastOk ? " \\u00b7 last update " + fmtTime(lastOk / 1000) : "";
      node.textContent = errorText + since;
    } else {
      node.className = "ok";
      node.textContent = "live \\u00b7 " + fmtTime(Date.now() / 1000);
    }
  }

  function tick() {
    var since = samples.length ? samples[samples.length - 1].time : 0;
    Promise.all([getJSON("api/status.json"), getJSON("api/history.json?since=" + since)])
      .then(function (both) {
        lastStatus = both[0];
        mergeHistory(both[1]);
        renderStatus(lastStatus);
        drawThroughput();
        var newest = lastStatus.recent_failures[0];
        var key = newest ? newest.time + " " + newest.task_id : "";
        if (key !== failureKey) {
          return getJSON("api/failures.json").then(function (data) {
            failureKey = key;
            renderFailures(data);
          });
        }
      })
      .then(function () { errorText = ""; lastOk = Date.now(); },
            function (err) { errorText = String(err && err.message || err); })
      .then(function () { showLive(); setTimeout(tick, POLL_MS); });
  }
  tick();
})();
"""

_BODY = """
<header>
  <h1>minitask broker</h1>
  <span class="meta mono" id="version">\u2026</span>
  <span class="meta mono" id="pid"></span>
  <span class="meta" id="uptime"></span>
  <span class="meta" id="storage"></span>
  <span id="live">connecting\u2026</span>
</header>
<main>
  <div class="tiles">
%(tiles)s
  </div>
  <section>
    <h2>Throughput <span class="count" id="chart-span"></span>
      <span class="legend"><span><span class="dot c1"></span>published</span>
        <span><span class="dot c2"></span>delivered</span>
        <span><span class="dot c3"></span>acked</span></span></h2>
    <div class="chart">
      <div class="axis"><span id="chart-top"></span><span>messages per second</span></div>
      <svg id="throughput" viewBox="0 0 1000 120" preserveAspectRatio="none" role="img"
           aria-label="published, delivered and acked per second"></svg>
    </div>
  </section>
  <section>
    <h2>Queues <span class="count" id="queue-count"></span></h2>
    <div class="scroll"><table>
      <thead><tr><th>name</th><th class="n">ready</th><th class="n">unacked</th>
        <th class="n">delayed</th><th class="n">dead</th><th class="n">consumers</th>
        <th class="n">in / acked per s</th><th class="n">published</th><th class="n">acked</th>
        <th>depth</th></tr></thead>
      <tbody id="queues"></tbody>
    </table></div>
  </section>
  <section>
    <h2>Workers <span class="count" id="worker-count"></span></h2>
    <div class="scroll"><table>
      <thead><tr><th>hostname</th><th class="n">pid</th><th class="n">concurrency</th>
        <th class="n">reserved</th><th class="n">running</th><th class="n">delivered</th>
        <th class="n">connected</th><th>queues</th><th>peer</th></tr></thead>
      <tbody id="workers"></tbody>
    </table></div>
  </section>
  <section>
    <h2>Running tasks <span class="count" id="running-count"></span></h2>
    <div class="scroll"><table>
      <thead><tr><th>task id</th><th>task</th><th>worker</th></tr></thead>
      <tbody id="running"></tbody>
    </table></div>
  </section>
  <section>
    <h2>Recent failures <span class="count" id="failure-count"></span></h2>
    <ul class="failures" id="failures"><li class="empty">loading\u2026</li></ul>
  </section>
  <noscript><section><div class="empty">This page needs JavaScript; the same data is at
    <a href="api/status.json">api/status.json</a> and <a href="metrics">metrics</a>.</div>
  </section></noscript>
</main>
<footer>updated every second \u00b7 <a href="api/status.json">status.json</a> \u00b7
  <a href="api/history.json">history.json</a> \u00b7 <a href="api/failures.json">failures.json</a>
  \u00b7 <a href="metrics">metrics</a></footer>
"""


_TILES = (("rate c1", "published/s", "rate-published"),
          ("rate c2", "delivered/s", "rate-delivered"), ("rate c3", "acked/s", "rate-acked"),
          ("", "ready", "total-ready"), ("", "unacked", "total-unacked"),
          ("", "delayed", "total-delayed"), ("", "workers", "count-workers"),
          ("", "connections", "count-connections"), ("", "results", "count-results"))

_BODY %= {"tiles": "\n".join(
    '    <div class="tile %s"><div class="label">%s</div>\n'
    '      <div class="value num" id="%s">\u2013</div></div>' % tile for tile in _TILES)}

PAGE = ("<!doctype html>\n<html lang=\"en\">\n<head>\n<meta charset=\"utf-8\">\n"
        "<meta name=\"viewport\" content=\"width=device-width, initial-scale=1\">\n"
        "<title>minitask broker</title>\n<link rel=\"icon\" href=\"data:,\">\n"
        "<style>" + STYLE + "</style>\n</head>\n<body>" + _BODY
        + "<script>" + SCRIPT + "</script>\n</body>\n</html>\n")


def _sha256(text):
    return "'sha256-%s'" % base64.b64encode(hashlib.sha256(text.encode("utf-8")).digest()).decode()


def content_security_policy():
    """Only this page's own inline style and script may run, and only same-origin fetches."""
    return ("default-src 'none'; script-src %s; style-src %s; connect-src 'self'; "
            "img-src data:; base-uri 'none'; form-action 'none'; frame-ancestors 'none'"
            % (_sha256(SCRIPT), _sha256(STYLE)))
