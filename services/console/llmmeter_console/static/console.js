// llmmeter console: the request drawer, the Live tail (Server-Sent Events), the window dropdown, charts.
"use strict";
var llmmeter = (function () {
  function el(tag, attrs, text) {
    var e = document.createElement(tag);
    Object.keys(attrs || {}).forEach(function (k) { e.setAttribute(k, attrs[k]); });
    if (text !== undefined) e.textContent = text;
    return e;
  }

  // --- the drawer: one request in full, Pretty (sections) or JSON ---
  var drawer = document.getElementById("drawer");
  var body = document.getElementById("drawer-body");
  var current = null, mode = "pretty";

  function ms(v) { return v === undefined || v === null ? "-" : (v >= 1000 ? (v / 1000).toFixed(2) + " s" : Math.round(v) + " ms"); }
  function dur(d) { if (!d) return "-"; var s = parseFloat(String(d).replace("s", "")); return ms(s * 1000); }
  function section(title, rows) {
    var s = el("section"); s.appendChild(el("h3", {}, title));
    var t = el("table", {class: "kv"});
    rows.forEach(function (r) {
      var tr = el("tr"); tr.appendChild(el("th", {}, r[0]));
      var td = el("td"); td.textContent = r[1] === undefined || r[1] === "" ? "-" : String(r[1]); tr.appendChild(td); t.appendChild(tr);
    });
    s.appendChild(t); return s;
  }
  function renderDrawer() {
    body.innerHTML = "";
    if (!current) return;
    if (mode === "json") { body.appendChild(el("pre", {class: "json"}, JSON.stringify(current, null, 2))); return; }
    var r = current.record || {};
    body.appendChild(section("Request", [["Request id", r.request_id], ["Start", r.start_time], ["Status", r.status_code],
      ["Error", r.error_type ? r.error_type + ": " + (r.error_message || "") : ""], ["Model", r.model],
      ["Response model", r.response_model], ["Alias", r.model_alias], ["Provider", r.provider], ["Model id", r.model_id],
      ["API base", r.api_base], ["Call type", r.call_type], ["User", r.user], ["Team", r.team], ["Account", r.account],
      ["Client IP (redacted)", r.client_ip]]));
    body.appendChild(section("Metrics", [["Latency", ms(current.latency_ms)], ["Time to first token", dur(r.time_to_first_token)],
      ["Inter-token latency", ms(current.itl_ms)], ["Time per output token", ms(current.tpot_ms)], ["Streaming", r.streaming ? "yes" : "no"],
      ["Cache hit", r.cache_hit ? "yes" : "no"], ["Gateway overhead", dur(r.gateway_overhead)], ["Retries", r.retries || 0],
      ["Prompt tokens", r.input_tokens || 0], ["Completion tokens", r.output_tokens || 0], ["Cache read tokens", r.cache_read_tokens || 0],
      ["Reasoning tokens", r.reasoning_tokens || 0]]));
    var cb = r.cost_breakdown || {};
    body.appendChild(section("Cost breakdown", [["Total", "$" + (r.cost || 0)]].concat(
      Object.keys(cb).map(function (k) { return [k, "$" + cb[k]]; }))));
    var p = r.payload || {};
    var pay = el("section"); pay.appendChild(el("h3", {}, "Request & response"));
    pay.appendChild(el("pre", {class: "json"}, p.request === undefined ? "(not stored)" : JSON.stringify(p.request, null, 2)));
    pay.appendChild(el("pre", {class: "json"}, p.response === undefined ? "(not stored)" : JSON.stringify(p.response, null, 2)));
    body.appendChild(pay);
    var md = r.metadata || {};
    body.appendChild(section("Metadata", Object.keys(md).map(function (k) { return [k, md[k]]; })));
  }
  function open(id) {
    fetch("/api/requests/" + encodeURIComponent(id)).then(function (resp) { return resp.json(); }).then(function (data) {
      current = data.error ? {error: data.error} : data;
      drawer.hidden = false; drawer.dataset.requestId = id; renderDrawer();
    });
  }
  if (drawer) {
    document.getElementById("drawer-close").onclick = function () { drawer.hidden = true; };
    drawer.querySelectorAll(".toggle button").forEach(function (b) {
      b.onclick = function () {
        mode = b.dataset.mode;
        drawer.querySelectorAll(".toggle button").forEach(function (x) { x.classList.toggle("on", x === b); });
        renderDrawer();
      };
    });
  }
  var table = document.getElementById("requests");
  if (table) table.addEventListener("click", function (ev) {
    var tr = ev.target.closest("tr[data-id]"); if (tr) open(tr.dataset.id);
  });

  // --- Live: rows pushed by the server as they are stored ---
  var source = null;
  function row(d) {
    var tr = el("tr", {"data-id": d.request_id, class: "new"});
    [d.time, null, d.model, d.prompt, d.completion, d.total, d.latency, d.spend, d.request_id].forEach(function (v, i) {
      var td = el("td", i >= 3 && i <= 7 ? {class: "num"} : (i === 8 ? {class: "id"} : {}));
      if (i === 1) td.appendChild(el("span", {class: "status " + (d.success ? "ok" : "fail")}, String(d.status)));
      else td.textContent = v;
      tr.appendChild(td);
    });
    return tr;
  }
  function startLive() {
    var filter = (document.querySelector("input[name=filter]") || {}).value || "";
    source = new EventSource("/api/tail?filter=" + encodeURIComponent(filter));
    source.onmessage = function (ev) {
      var tbody = table.querySelector("tbody"), empty = tbody.querySelector("tr.empty");
      if (empty) empty.remove();
      tbody.insertBefore(row(JSON.parse(ev.data)), tbody.firstChild);
    };
    source.addEventListener("failure", function (ev) { stopLive(); alert(JSON.parse(ev.data)); });
    document.getElementById("live-banner").hidden = false;
    document.getElementById("live-toggle").classList.add("on");
  }
  function stopLive() {
    if (source) source.close();
    source = null;
    document.getElementById("live-banner").hidden = true;
    document.getElementById("live-toggle").classList.remove("on");
  }
  var toggle = document.getElementById("live-toggle");
  if (toggle) {
    toggle.onclick = function () { if (source) stopLive(); else startLive(); };
    document.getElementById("live-stop").onclick = stopLive;
  }

  // --- the window dropdown: a choice applies at once; Custom shows the from/to fields ---
  var since = document.getElementById("since");
  function customShown() {
    document.querySelectorAll("label.custom").forEach(function (l) { l.hidden = since.value !== ""; });
  }
  if (since) {
    customShown();
    since.onchange = function () { customShown(); if (since.value) { document.querySelectorAll("label.custom input").forEach(function (i) { i.value = ""; }); since.form.submit(); } };
  }
  var group = document.getElementById("group");
  if (group) group.onchange = function () { group.form.submit(); };

  // --- charts: the data the server embedded, drawn by Chart.js ---
  function charts() {
    var specs = JSON.parse(document.getElementById("chart-data").textContent);
    specs.forEach(function (c) {
      var canvas = document.getElementById("chart-" + c.id);
      if (!canvas || typeof Chart === "undefined") return;
      new Chart(canvas, {
        type: c.stacked ? "bar" : "line",
        data: {labels: c.labels.map(function (t) { return t.replace("T", " ").replace(/:00Z$/, "Z"); }),
               datasets: c.datasets.map(function (d) { return {label: d.label, data: d.data, spanGaps: true, pointRadius: 0, borderWidth: 1.5}; })},
        options: {animation: false, responsive: true, maintainAspectRatio: false,
                  scales: {x: {stacked: c.stacked, ticks: {maxTicksLimit: 8}}, y: {stacked: c.stacked, beginAtZero: true,
                    title: {display: true, text: c.unit}}},
                  plugins: {legend: {position: "bottom", labels: {boxWidth: 10}}}}
      });
    });
  }
  return {charts: charts, open: open};
})();
