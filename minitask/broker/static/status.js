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
    if (n === null || n === undefined) return "\u2013";
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
    $("chart-span").textContent = span ? "last " + fmtDuration(span) : "collecting\u2026";
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
      " \u00b7 fsync " + b.fsync + (b.journal_faults ? " \u00b7 " +
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
      var name = el("td", t.task ? "mono" : "muted", t.task || "—");
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
      var since = lastOk ? " \u00b7 last update " + fmtTime(lastOk / 1000) : "";
      node.textContent = errorText + since;
    } else {
      node.className = "ok";
      node.textContent = "live \u00b7 " + fmtTime(Date.now() / 1000);
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
