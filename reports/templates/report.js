// servesim reports: sortable tables and interactive figures, with no network access.
// When every figure has been drawn, <html data-report-status> is "ok"; on any failure it is
// "error: <message>" and the error is logged, so a headless browser test can read the outcome.
(function () {
  "use strict";
  var root = document.documentElement;

  function sortKey(td) {
    var raw = td.getAttribute("data-sort");
    if (raw !== null && raw !== "") { return { num: true, v: parseFloat(raw) }; }
    return { num: false, v: td.textContent.trim().toLowerCase() };
  }

  function sortTable(table, col, th) {
    var body = table.tBodies[0];
    var rows = Array.prototype.slice.call(body.rows);
    var ascending = th.getAttribute("aria-sort") !== "ascending";
    rows.sort(function (a, b) {
      var x = sortKey(a.cells[col]), y = sortKey(b.cells[col]);
      var order;
      if (x.num && y.num) { order = x.v - y.v; }
      else if (x.num !== y.num) { return x.num ? -1 : 1; }  // numbers before text ("n/a")
      else { order = x.v < y.v ? -1 : (x.v > y.v ? 1 : 0); }
      return ascending ? order : -order;
    });
    rows.forEach(function (r) { body.appendChild(r); });
    Array.prototype.forEach.call(table.tHead.rows[0].cells, function (h) {
      h.removeAttribute("aria-sort");
    });
    th.setAttribute("aria-sort", ascending ? "ascending" : "descending");
  }

  function initTables() {
    document.querySelectorAll("table.sortable").forEach(function (table) {
      Array.prototype.forEach.call(table.tHead.rows[0].cells, function (th, col) {
        th.title = "click to sort";
        th.addEventListener("click", function () { sortTable(table, col, th); });
      });
    });
  }

  function drawFigures() {
    var plots = document.querySelectorAll("div.plot[data-spec]");
    if (!plots.length) { return Promise.resolve(); }
    if (typeof Plotly === "undefined") { return Promise.reject(new Error("plotly.js missing")); }
    var done = [];
    plots.forEach(function (div) {
      var spec = JSON.parse(document.getElementById(div.getAttribute("data-spec")).textContent);
      var config = { responsive: true, displaylogo: false, scrollZoom: false };
      done.push(Plotly.newPlot(div, spec.data, spec.layout, config));
    });
    return Promise.all(done);
  }

  function start() {
    try {
      initTables();
      drawFigures().then(function () {
        root.setAttribute("data-report-status", "ok");
      }, function (err) {
        root.setAttribute("data-report-status", "error: " + err);
        console.error("servesim report: " + err);
      });
    } catch (err) {
      root.setAttribute("data-report-status", "error: " + err);
      console.error("servesim report: " + err);
    }
  }

  if (document.readyState === "loading") {
    document.addEventListener("DOMContentLoaded", start);
  } else {
    start();
  }
})();
