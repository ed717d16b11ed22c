// The HTML report of `dirtlog compare`: one self-contained page (uPlot and its CSS inlined,
// the result embedded as JSON) that opens with no network. The tables are rendered here;
// the charts are drawn in the page by a small inline script from the embedded result.
import { readFile } from "node:fs/promises";
import { createRequire } from "node:module";
import { dirname, join } from "node:path";
import type { CompareResult, ModeResult } from "./compare_types.js";
import { fmtBytes, fmtNum, fmtSi, scenarioSummary } from "./report_charts.js";

export { scenarioSummary };

/** uPlot's IIFE build and stylesheet, from the installed package. */
async function readUplot(): Promise<{ js: string; css: string }> {
  const jsPath = createRequire(import.meta.url).resolve("uplot/dist/uPlot.iife.min.js");
  const [js, css] = await Promise.all([
    readFile(jsPath, "utf8"),
    readFile(join(dirname(jsPath), "uPlot.min.css"), "utf8"),
  ]);
  return { js, css };
}

const esc = (s: unknown): string => String(s).replace(/[&<>"']/g, (c) => ENTITIES[c] ?? c);
const ENTITIES: Record<string, string> = { "&": "&amp;", "<": "&lt;", ">": "&gt;", '"': "&quot;", "'": "&#39;" };

/** Text inside <script>/<style> must not close the element early. */
const rawText = (s: string, tag: string): string => s.replace(new RegExp(`</(${tag})`, "gi"), "<\\/$1");

/** JSON safe inside <script type="application/json">: `<` only occurs inside JSON strings. */
const jsonForScript = (v: unknown): string => JSON.stringify(v).replace(/<\//g, "<\\/").replace(/<!--/g, "\\u003c!--");

const sum = (xs: number[]): number => xs.reduce((a, b) => a + b, 0);

function table(head: string[], rows: string[][], cls: string): string {
  const th = head.map((h) => `<th>${h}</th>`).join("");
  const trs = rows.map((r) => `<tr>${r.map((c) => `<td>${c}</td>`).join("")}</tr>`).join("\n");
  return `<table class="${cls}"><thead><tr>${th}</tr></thead><tbody>\n${trs}\n</tbody></table>`;
}

const okMark = (ok: boolean): string => (ok ? `<span class="ok">✓ ok</span>` : `<span class="bad">✗ FAIL</span>`);

function verdictTable(r: CompareResult): string {
  const rows = r.verdict.map((v) => [
    esc(v.metric),
    esc(v.better),
    `<span class="basis ${esc(v.basis)}">${esc(v.basis)}</span>`,
    `<b>${esc(v.winner)}</b>`,
    esc(v.runnerUp),
    v.ratio === null ? "—" : `×${fmtNum(v.ratio, 2)}`,
    esc(v.text),
  ]);
  return table(["Metric", "Better", "Basis", "Winner", "Runner-up", "Ratio", "Verdict"], rows, "verdict").replace(
    "<table",
    `<table data-table="verdict"`,
  );
}

function correctnessTable(r: CompareResult): string {
  const anyMigration = r.modes.some((m) => m.correctness.migrationEqual !== undefined);
  const head = ["Mode", "Lost pages", "Reports outside", "Reset mismatches", "Reports − faults"];
  if (anyMigration) head.push("Migration equal");
  head.push("Correct");
  const rows = r.modes.map((m) => {
    const c = m.correctness;
    const cell = (n: number) => (n === 0 ? "0" : `<span class="bad">${fmtNum(n)}</span>`);
    const row = [
      esc(m.mode),
      cell(c.lost),
      cell(c.outside),
      cell(c.resetMismatches),
      c.reportsMinusFaults === null
        ? `<span title="PML logs without faulting">— (PML)</span>`
        : cell(c.reportsMinusFaults),
    ];
    if (anyMigration)
      row.push(c.migrationEqual === undefined ? "—" : c.migrationEqual ? "yes" : `<span class="bad">no</span>`);
    row.push(okMark(c.ok));
    return row;
  });
  return table(head, rows, "correctness").replace("<table", `<table data-table="correctness"`);
}

function modeTable(r: CompareResult): string {
  const rows = r.modes.map((m: ModeResult) => {
    const l = m.collector.latencyUs;
    return [
      `<b>${esc(m.mode)}</b>`,
      fmtNum(m.collector.harvests),
      fmtNum(l.median, 1),
      fmtNum(l.p99, 1),
      fmtNum(l.max, 1),
      fmtNum(m.collector.nsPerReportedPage, 1),
      fmtNum(m.projection.nsPerReportedPage, 1),
      fmtSi(sum(m.guest.storesPerSec)),
      fmtSi(m.collector.reportedPerSec),
      fmtNum(m.guest.ringFullExits),
      fmtNum(m.guest.ringFullStallMs, 1),
      fmtBytes(m.trackingBytes),
    ];
  });
  const head =
    `<tr><th rowspan="2">Mode</th><th rowspan="2">Harvests</th><th colspan="3">Harvest latency, µs</th>` +
    `<th colspan="2">ns per reported page</th><th rowspan="2">Stores/s<br>(all vCPUs)</th>` +
    `<th rowspan="2">Reported/s</th><th colspan="2">Ring full</th><th rowspan="2">Tracking<br>memory</th></tr>` +
    `<tr><th>median</th><th>p99</th><th>max</th><th>measured</th><th>projected</th><th>exits</th><th>stall ms</th></tr>`;
  const trs = rows.map((row) => `<tr>${row.map((c) => `<td>${c}</td>`).join("")}</tr>`).join("\n");
  return `<table class="modes num" data-table="modes"><thead>${head}</thead><tbody>\n${trs}\n</tbody></table>`;
}

function kvTable(o: object): string {
  return `<table class="kv">${Object.entries(o)
    .map(([k, v]) => `<tr><th>${esc(k)}</th><td>${esc(v)}</td></tr>`)
    .join("")}</table>`;
}

/** The charts the inline script draws, in order: [data-chart name, heading, note]. */
const CHARTS: [string, string, string][] = [
  ["latency", "Harvest latency over time", "Each point is one harvest (µs); x is time since the mode's vCPUs started."],
  [
    "dirty-rate",
    "Dirty rate over time",
    "Pages per second: written by the guest (solid) vs reported by the collector (dashed), per harvest interval.",
  ],
  ["vcpu-rate", "Per-vCPU store rate", "Guest stores per second for each vCPU, per harvest interval (dash = vCPU)."],
  ["tracking", "Tracking memory", "Bytes each mode keeps to track the guest (log scale)."],
  ["ns-per-page", "Collector ns per reported page", "Measured in this model vs projected from the kernel cost table."],
];

const STYLE = `
:root { color-scheme: light; }
body { font-family: system-ui, -apple-system, "Segoe UI", Roboto, "Helvetica Neue", Arial, sans-serif;
  margin: 24px auto; max-width: 1120px; padding: 0 16px; color: #1d2430; background: #fff; line-height: 1.4; }
h1 { font-size: 22px; margin: 0 0 4px; }
h2 { font-size: 17px; margin: 28px 0 8px; border-bottom: 1px solid #e3e6ea; padding-bottom: 4px; }
h3 { font-size: 15px; margin: 0 0 2px; }
.sub { color: #4a5563; margin: 0 0 6px; }
.note { color: #5d6776; font-size: 13px; margin: 0 0 6px; }
table { border-collapse: collapse; font-size: 13.5px; margin: 6px 0; }
th, td { border: 1px solid #dde1e6; padding: 4px 8px; text-align: left; vertical-align: top; }
thead th { background: #f3f5f7; font-weight: 600; }
table.num td:not(:first-child), table.correctness td:not(:first-child) { text-align: right; font-variant-numeric: tabular-nums; }
table.verdict td:nth-child(6) { text-align: right; font-variant-numeric: tabular-nums; white-space: nowrap; }
table.kv th { background: #f8f9fa; font-weight: 500; }
.ok { color: #1a7f37; font-weight: 600; }
.bad { color: #c62828; font-weight: 700; }
.badge { display: inline-block; padding: 2px 10px; border-radius: 10px; font-weight: 600; font-size: 13px; }
.badge.ok { background: #e6f4ea; }
.badge.bad { background: #fde7e7; }
.basis { font-size: 12px; padding: 1px 6px; border-radius: 8px; background: #eef1f4; }
.basis.projected { background: #fff2dc; }
.chart { margin: 18px 0 8px; }
.chart .plot { width: 100%; }
.nodata { color: #c62828; font-size: 13px; margin: 0; }
details { margin: 6px 0; font-size: 13.5px; }
footer { color: #8a93a0; font-size: 12px; margin-top: 28px; }
`;

/** Draws the charts from the embedded result; plain browser JS (no modules, no network). */
const CLIENT = `
(function () {
  "use strict";
  var R = JSON.parse(document.getElementById("dirtlog-result").textContent);
  var modes = R.modes;
  var PALETTE = ["#1f77b4", "#d62728", "#2ca02c", "#ff7f0e", "#9467bd", "#17becf", "#e377c2", "#bcbd22"];
  var DASHES = [[], [7, 4], [2, 3], [10, 3, 2, 3], [4, 4]];
  function color(i) { return PALETTE[i % PALETTE.length]; }
  function si(v) {
    if (v == null) return "–";
    var a = Math.abs(v);
    if (a >= 1e9) return +(v / 1e9).toPrecision(3) + "G";
    if (a >= 1e6) return +(v / 1e6).toPrecision(3) + "M";
    if (a >= 1e3) return +(v / 1e3).toPrecision(3) + "k";
    return +v.toPrecision(3) + "";
  }
  function bytes(v) {
    if (v == null) return "";
    var u = ["B", "KiB", "MiB", "GiB", "TiB"], i = 0;
    while (Math.abs(v) >= 1024 && i < u.length - 1) { v /= 1024; i++; }
    return +v.toPrecision(3) + " " + u[i];
  }
  function siAxis(u, splits) { return splits.map(function (v) { return v == null ? "" : si(v); }); }
  function secAxis(u, splits) { return splits.map(function (v) { return +v.toPrecision(4) + " s"; }); }

  function plot(name, opts, data) {
    var box = document.querySelector('[data-chart="' + name + '"]');
    var el = box.querySelector(".plot");
    opts.width = Math.max(480, el.clientWidth || 900);
    opts.height = opts.height || 300;
    opts.hooks = opts.hooks || {};
    (opts.hooks.draw = opts.hooks.draw || []).push(function (u) {
      var b = u.bbox;
      box.dataset.bbox = [b.left, b.top, b.width, b.height].map(Math.round).join(",");
      box.dataset.drawn = "1";
    });
    if (!data[0].length) {
      var msg = document.createElement("p");
      msg.className = "nodata";
      msg.textContent = "No data to plot (no harvests recorded).";
      box.insertBefore(msg, el);
      box.dataset.empty = "1";
    }
    return new uPlot(opts, data, el);
  }

  /** Time since the previous harvest, s (the first from 0). */
  function intervals(m) {
    var prev = 0;
    return m.timeline.map(function (p) { var dt = (p.tMs - prev) / 1000; prev = p.tMs; return dt; });
  }
  function rate(n, dt) { return dt > 0 ? n / dt : null; }
  function join(tables) {
    return tables.length ? uPlot.join(tables) : [[]];
  }
  function lineSeries(label, i, dash) {
    return { label: label, stroke: color(i), width: 1.75, dash: dash || [], spanGaps: true,
      points: { show: true, size: 5, fill: color(i) }, value: function (u, v) { return si(v); } };
  }
  var xSec = { stroke: "#4a5563", values: secAxis, grid: { stroke: "#eef0f2" } };
  function yAxis(label, values) {
    return { stroke: "#4a5563", label: label, values: values || siAxis, size: 60, grid: { stroke: "#eef0f2" } };
  }

  var charts = {
    "latency": function () {
      var tables = modes.map(function (m) {
        return [m.timeline.map(function (p) { return p.tMs / 1000; }), m.timeline.map(function (p) { return p.latencyUs; })];
      });
      plot("latency", {
        scales: { x: { time: false } },
        series: [{ label: "t", value: function (u, v) { return v == null ? "–" : v.toFixed(3) + " s"; } }]
          .concat(modes.map(function (m, i) { return lineSeries(m.mode, i); })),
        axes: [xSec, yAxis("µs per harvest")],
      }, join(tables));
    },
    "dirty-rate": function () {
      var tables = [], series = [{ label: "t", value: function (u, v) { return v == null ? "–" : v.toFixed(3) + " s"; } }];
      modes.forEach(function (m, i) {
        var dt = intervals(m), x = m.timeline.map(function (p) { return p.tMs / 1000; });
        tables.push([x, m.timeline.map(function (p, k) { return rate(p.stores, dt[k]); })]);
        tables.push([x, m.timeline.map(function (p, k) { return rate(p.reported, dt[k]); })]);
        series.push(lineSeries(m.mode + " written", i));
        series.push(lineSeries(m.mode + " reported", i, [6, 4]));
      });
      plot("dirty-rate", { scales: { x: { time: false } }, series: series,
        axes: [xSec, yAxis("pages / s")] }, join(tables));
    },
    "vcpu-rate": function () {
      var tables = [], series = [{ label: "t", value: function (u, v) { return v == null ? "–" : v.toFixed(3) + " s"; } }];
      modes.forEach(function (m, i) {
        var dt = intervals(m), x = m.timeline.map(function (p) { return p.tMs / 1000; });
        var n = R.scenario.vcpus;
        for (var v = 0; v < n; v++) {
          var prev = 0;
          tables.push([x, x.map(function (_, k) {
            var row = m.vcpuStores[k], c = row ? row[v] : null;
            if (c == null) return null;
            var r = rate(c - prev, dt[k]); prev = c; return r;
          })]);
          series.push(lineSeries(m.mode + " vCPU " + v, i, DASHES[v % DASHES.length]));
        }
      });
      plot("vcpu-rate", { scales: { x: { time: false } }, series: series,
        axes: [xSec, yAxis("stores / s")] }, join(tables));
    },
    "tracking": function () {
      var x = modes.map(function (_, i) { return i; });
      var series = [{ label: "mode", value: function (u, v) { return v == null || !modes[v] ? "–" : modes[v].mode; } }];
      var data = [x];
      modes.forEach(function (m, i) {
        data.push(x.map(function (k) { return k === i ? m.trackingBytes : null; }));
        series.push({ label: m.mode, stroke: color(i), fill: color(i) + "cc", width: 1,
          paths: uPlot.paths.bars({ size: [0.6, 120] }), points: { show: false },
          value: function (u, v) { return bytes(v); }, fillTo: function (u) { return u.scales.y.min; } });
      });
      var vals = modes.map(function (m) { return m.trackingBytes; }).filter(function (v) { return v > 0; });
      var lo = vals.length ? Math.pow(2, Math.floor(Math.log2(Math.min.apply(null, vals))) - 1) : 1;
      var hi = vals.length ? Math.pow(2, Math.ceil(Math.log2(Math.max.apply(null, vals))) + 1) : 1024;
      plot("tracking", {
        scales: { x: { time: false, range: [-0.5, modes.length - 0.5] }, y: { distr: 3, log: 2, range: [lo, hi] } },
        legend: { live: false },
        cursor: { show: false },
        series: series,
        axes: [
          { stroke: "#4a5563", splits: function () { return x; },
            values: function (u, s) { return s.map(function (k) { return modes[k] ? modes[k].mode : ""; }); }, grid: { show: false } },
          yAxis("bytes", function (u, s) { return s.map(bytes); }),
        ],
        hooks: { draw: [function (u) { labelBars(u, function (v) { return bytes(v); }); }] },
      }, data);
    },
    "ns-per-page": function () {
      var off = 0.18, x = [], meas = [], proj = [];
      modes.forEach(function (m, i) {
        x.push(i - off, i + off);
        meas.push(m.collector.nsPerReportedPage, null);
        proj.push(null, m.projection.nsPerReportedPage);
      });
      function bar(label, c) {
        return { label: label, stroke: c, fill: c + "cc", width: 1, paths: uPlot.paths.bars({ size: [0.9, 80] }),
          points: { show: false }, value: function (u, v) { return v == null ? "–" : v.toFixed(1) + " ns"; } };
      }
      plot("ns-per-page", {
        scales: { x: { time: false, range: [-0.5, modes.length - 0.5] }, y: { range: function (u, mn, mx) { return [0, (mx || 1) * 1.15]; } } },
        legend: { live: false },
        cursor: { show: false },
        series: [{ label: "mode" }, bar("measured (this model)", "#1f77b4"), bar("projected (kernel costs)", "#ff7f0e")],
        axes: [
          { stroke: "#4a5563", splits: function () { return modes.map(function (_, i) { return i; }); },
            values: function (u, s) { return s.map(function (k) { return modes[k] ? modes[k].mode : ""; }); }, grid: { show: false } },
          yAxis("ns per reported page", function (u, s) { return s.map(function (v) { return +v.toPrecision(3) + ""; }); }),
        ],
        hooks: { draw: [function (u) { labelBars(u, function (v) { return v.toFixed(1); }); }] },
      }, [x, meas, proj]);
    },
  };

  /** Writes each bar's value above it (dark grey, so it does not count as plotted data). */
  function labelBars(u, fmt) {
    var ctx = u.ctx, dpr = devicePixelRatio || 1;
    ctx.save();
    ctx.font = Math.round(11 * dpr) + "px system-ui, sans-serif";
    ctx.fillStyle = "#333";
    ctx.textAlign = "center";
    ctx.textBaseline = "bottom";
    for (var s = 1; s < u.series.length; s++) {
      var ys = u.data[s];
      for (var k = 0; k < ys.length; k++) {
        if (ys[k] == null) continue;
        var px = u.valToPos(u.data[0][k], "x", true), py = u.valToPos(ys[k], "y", true);
        ctx.fillText(fmt(ys[k]), px, py - 3 * dpr);
      }
    }
    ctx.restore();
  }

  Object.keys(charts).forEach(function (name) {
    try { charts[name](); } catch (e) { console.error("chart " + name + ": " + (e && e.stack || e)); }
  });
  // uPlot draws in a microtask; count the charts that have drawn once they all had the chance.
  setTimeout(function () {
    document.body.dataset.charts = String(document.querySelectorAll("[data-chart][data-drawn]").length);
  }, 0);
})();
`;

/** The number of charts the page draws (what `body[data-charts]` reaches). */
export const REPORT_CHART_COUNT = CHARTS.length;

/** A self-contained HTML page for a compare result (no network needed to open it). */
export async function renderReportHtml(result: CompareResult): Promise<string> {
  const { js, css } = await readUplot();
  const s = result.scenario;
  const allOk = result.ok && result.modes.every((m) => m.correctness.ok);
  const charts = CHARTS.map(
    ([name, title, note]) =>
      `<section class="chart" data-chart="${name}"><h3>${esc(title)}</h3><p class="note">${esc(note)}</p><div class="plot"></div></section>`,
  ).join("\n");
  return `<!doctype html>
<html lang="en">
<head>
<meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1">
<title>${esc(`dirtlog compare — ${s.modes.join(" vs ")}`)}</title>
<style>${rawText(css, "style")}</style>
<style>${STYLE}</style>
</head>
<body>
<header>
<h1>dirtlog compare: ${esc(s.modes.join(" vs "))}</h1>
<p class="sub">${esc(scenarioSummary(s))}</p>
<p class="sub">${allOk ? `<span class="badge ok">✓ all modes correct</span>` : `<span class="badge bad">✗ correctness failure</span>`}
 &nbsp;seed ${esc(s.seed)} · ${esc(result.tool)} ${esc(result.version)}</p>
${result.rationale ? `<p class="note">${esc(result.rationale)}</p>` : ""}
</header>
<h2>Verdict</h2>
${verdictTable(result)}
<p class="note">“measured” figures come from this model; “projected” ones apply the kernel cost table (${esc(result.costs.source)}) to the same event counts.</p>
<h2>Correctness</h2>
${correctnessTable(result)}
<h2>Modes</h2>
${modeTable(result)}
<details><summary>Kernel cost table (ns)</summary>${kvTable(result.costs)}</details>
<details><summary>Environment</summary>${kvTable(result.environment)}</details>
<h2>Charts</h2>
${charts}
<footer>Generated by ${esc(result.tool)} ${esc(result.version)}. Charts: uPlot (MIT).</footer>
<script type="application/json" id="dirtlog-result">${jsonForScript(result)}</script>
<script>${rawText(js, "script")}</script>
<script>${rawText(CLIENT, "script")}</script>
</body>
</html>
`;
}
