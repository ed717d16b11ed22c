// The HTML map of `dirtlog sweep`: one self-contained page (no script needed, no network),
// per vCPU count a grid per metric — guest size down, dirty rate across — each cell coloured
// by the kind of mode that wins it (bitmap blue, ring orange, grey for a tie), deeper the
// more it wins by, with the winner, the ratio and both values written in it. Measured and
// projected grids of the same question side by side; every cell's figures in a table below;
// the sweep's JSON embedded for whoever wants the numbers.
import { fmtNum } from "./report_charts.js";
import {
  compactRate,
  compactSize,
  gridsOf,
  SWEEP_METRICS,
  type SweepCell,
  type SweepResult,
  type SweepWinner,
} from "./sweep.js";

const ENTITIES: Record<string, string> = { "&": "&amp;", "<": "&lt;", ">": "&gt;", '"': "&quot;", "'": "&#39;" };
const esc = (s: unknown): string => String(s).replace(/[&<>"']/g, (c) => ENTITIES[c] ?? c);
/** JSON safe inside <script type="application/json">. */
const jsonForScript = (v: unknown): string => JSON.stringify(v).replace(/<\//g, "<\\/").replace(/<!--/g, "\\u003c!--");

/** The maps, in order: [measured metric, projected metric or null, the question]. */
export const SWEEP_MAPS: Array<[string, string | null, string]> = [
  ["harvest latency (median)", "kernel harvest time per call", "How long does one harvest take?"],
  [
    "collector time per reported page",
    "kernel time per reported page",
    "What does each dirty page cost the collector?",
  ],
  [
    "vCPU time stalled on a full ring",
    "kernel vCPU stall on a full ring",
    "How long do the vCPUs wait on a full ring?",
  ],
  ["tracking memory", null, "How much memory does tracking take?"],
];

const HUE = { bitmap: 212, ring: 28 };

/** A cell's colours: hue by the winner's kind, depth by log10(ratio) (×1 pale, ×100 and "none vs some" full). */
export function cellColors(w: SweepWinner | undefined): { background: string; color: string } {
  if (!w || w.kind === "tie") return { background: "#e9ecef", color: "#1d2430" };
  const t = w.ratio === null ? 1 : Math.min(1, Math.max(0, Math.log10(w.ratio) / 2));
  const light = Math.round(90 - 48 * t);
  return { background: `hsl(${HUE[w.kind]}, 75%, ${light}%)`, color: light > 62 ? "#1d2430" : "#ffffff" };
}

const sizeText = (b: number) => compactSize(b).replace(/([0-9])([A-Z])/, "$1 $2");
const rateText = (d: number) => (d === 0 ? "max" : `${compactRate(d)}/s`);
const cellLabelShort = (c: SweepCell) => `${sizeText(c.memoryBytes)} × ${rateText(c.dirtyRatePagesPerSec)}`;
const times = (r: number) => `×${r.toFixed(r < 10 ? 2 : r < 100 ? 1 : 0)}`;

function mapCell(c: SweepCell, metric: string): string {
  const def = SWEEP_METRICS.find((m) => m.metric === metric);
  const w = c.winners.find((x) => x.metric === metric);
  const attrs = `data-cell="${c.memoryBytes}/${c.dirtyRatePagesPerSec}" data-key="${esc(c.key)}"`;
  if (c.error !== undefined || !def || !w) {
    return `<td class="cell error" ${attrs} data-kind="error" title="${esc(c.error ?? "no figures")}"><b>error</b></td>`;
  }
  const { background, color } = cellColors(w);
  const title = [
    `${cellLabelShort(c)}: ${w.kind === "tie" ? "tie" : w.winner} against ${w.kind === "tie" ? w.runnerUp : `${w.runnerUp} (the best of the other kind)`}`,
    ...c.modes.map((m) => `${m.mode}: ${def.format(def.value(m))}${m.ok ? "" : " (correctness FAILED)"}`),
  ].join("\n");
  const head =
    w.kind === "tie"
      ? `<b>tie</b><span class="ratio">${w.value === 0 && w.runnerUpValue === 0 ? "none" : times(w.ratio ?? 1)}</span>`
      : `<b>${esc(w.winner)}</b><span class="ratio">${w.ratio === null ? "none vs some" : times(w.ratio)}</span>`;
  // a tie at 0 between the best of each kind: say which modes (if any) are not at 0
  const nonZero = c.modes.filter((m) => def.value(m) !== 0);
  const vals =
    w.kind === "tie"
      ? w.value === 0 && w.runnerUpValue === 0
        ? nonZero.length === 0
          ? "0 in every mode"
          : `0; ${nonZero.map((m) => `${esc(m.mode)} ${esc(def.format(def.value(m)))}`).join(", ")}`
        : `${esc(def.format(w.value))} ≈ ${esc(def.format(w.runnerUpValue))}`
      : `${esc(def.format(w.value))} vs ${esc(def.format(w.runnerUpValue))}`;
  const bad = c.ok ? "" : `<span class="bad" title="a correctness check failed">✗</span>`;
  return (
    `<td class="cell${c.ok ? "" : " failed"}" ${attrs} data-kind="${w.kind}" data-winner="${esc(w.winner)}" data-runner-up="${esc(w.runnerUp)}"` +
    ` data-ratio="${w.ratio ?? "none"}" style="background:${background};color:${color}" title="${esc(title)}">` +
    `${head}${bad}<span class="vals">${vals}</span></td>`
  );
}

function mapTable(r: SweepResult, rows: SweepCell[][], metric: string, basis: string, vcpus: number): string {
  const def = SWEEP_METRICS.find((m) => m.metric === metric);
  const head = `<tr><th class="corner">memory \\ dirty rate</th>${r.scenario.dirtyRatesPagesPerSec.map((d) => `<th>${esc(rateText(d))}</th>`).join("")}</tr>`;
  const body = rows
    .map(
      (row, k) =>
        `<tr><th>${esc(sizeText(r.scenario.memoryBytes[k]))}</th>${row.map((c) => mapCell(c, metric)).join("")}</tr>`,
    )
    .join("\n");
  return (
    `<figure class="map" data-map="${esc(metric)}" data-basis="${basis}" data-vcpus="${vcpus}">` +
    `<figcaption><span class="basis ${basis}">${basis}</span> ${esc(metric)} <span class="better">(${esc(def?.better ?? "lower")} is better)</span></figcaption>` +
    `<table class="grid"><thead>${head}</thead><tbody>\n${body}\n</tbody></table></figure>`
  );
}

function legend(): string {
  const sw = (kind: "bitmap" | "ring", ratio: number | null, label: string) => {
    const { background, color } = cellColors({ kind, ratio } as SweepWinner);
    return `<span class="sw" style="background:${background};color:${color}">${esc(label)}</span>`;
  };
  return (
    `<p class="legend">` +
    `bitmap wins: ${sw("bitmap", 1.1, "×1.1")}${sw("bitmap", 10, "×10")}${sw("bitmap", 100, "×100+")} &nbsp; ` +
    `ring wins: ${sw("ring", 1.1, "×1.1")}${sw("ring", 10, "×10")}${sw("ring", 100, "×100+")} &nbsp; ` +
    `<span class="sw" style="background:#e9ecef">tie (within 5 %)</span></p>`
  );
}

function cellsTable(r: SweepResult): string {
  const rows: string[] = [];
  for (const c of r.cells) {
    if (c.error !== undefined) {
      rows.push(
        `<tr><td>${esc(sizeText(c.memoryBytes))}</td><td>${esc(rateText(c.dirtyRatePagesPerSec))}</td><td>${c.vcpus}</td><td colspan="12" class="bad">${esc(c.error)}</td></tr>`,
      );
      continue;
    }
    for (const [k, m] of c.modes.entries()) {
      const lead = k === 0 ? `<td rowspan="${c.modes.length}">` : "";
      rows.push(
        `<tr${k === 0 ? ' class="first"' : ""}>` +
          (k === 0
            ? `${lead}${esc(sizeText(c.memoryBytes))}</td>${lead}${esc(rateText(c.dirtyRatePagesPerSec))}</td>${lead}${c.vcpus}${c.resumed ? ' <span class="note" title="loaded from the cell store">(resumed)</span>' : ""}</td>`
            : "") +
          `<td>${esc(m.mode)}</td>` +
          [
            fmtNum(m.latencyUs.median, 1),
            fmtNum(m.latencyUs.p99, 1),
            fmtNum(m.harvests),
            fmtNum(m.nsPerReportedPage, 1),
            fmtNum(m.stallMs, 1),
            SWEEP_METRICS[4].format(m.trackingBytes),
            SWEEP_METRICS[3].format(m.storesPerSec),
            fmtNum(m.projected.harvestUsPerCall, 1),
            fmtNum(m.projected.nsPerReportedPage, 1),
            fmtNum(m.projected.stallMs, 1),
          ]
            .map((v) => `<td class="n">${esc(v)}</td>`)
            .join("") +
          `<td>${m.ok ? '<span class="ok">✓</span>' : '<span class="bad">✗ FAIL</span>'}</td></tr>`,
      );
    }
  }
  const head =
    `<tr><th rowspan="2">Memory</th><th rowspan="2">Dirty rate<br>per vCPU</th><th rowspan="2">vCPUs</th><th rowspan="2">Mode</th>` +
    `<th colspan="7">measured (this model)</th><th colspan="3">projected (kernel costs)</th><th rowspan="2">Correct</th></tr>` +
    `<tr><th>latency median µs</th><th>p99 µs</th><th>harvests</th><th>ns / page</th><th>stall ms</th><th>tracking</th><th>stores/s reached</th>` +
    `<th>harvest µs / call</th><th>ns / page</th><th>stall ms</th></tr>`;
  return `<table class="cells" data-table="cells"><thead>${head}</thead><tbody>\n${rows.join("\n")}\n</tbody></table>`;
}

function kvTable(o: object): string {
  return `<table class="kv">${Object.entries(o)
    .map(([k, v]) => `<tr><th>${esc(k)}</th><td>${esc(v)}</td></tr>`)
    .join("")}</table>`;
}

const STYLE = `
:root { color-scheme: light; }
body { font-family: system-ui, -apple-system, "Segoe UI", Roboto, "Helvetica Neue", Arial, sans-serif;
  margin: 24px auto; max-width: 1560px; padding: 0 16px; color: #1d2430; background: #fff; line-height: 1.4; }
h1 { font-size: 22px; margin: 0 0 4px; }
h2 { font-size: 18px; margin: 28px 0 8px; border-bottom: 1px solid #e3e6ea; padding-bottom: 4px; }
h3 { font-size: 15px; margin: 18px 0 4px; }
.sub { color: #4a5563; margin: 0 0 6px; }
.note { color: #5d6776; font-size: 13px; margin: 0 0 6px; }
table { border-collapse: collapse; font-size: 13px; margin: 6px 0; }
th, td { border: 1px solid #dde1e6; padding: 4px 8px; text-align: left; vertical-align: top; }
thead th { background: #f3f5f7; font-weight: 600; }
.pair { display: flex; flex-wrap: wrap; gap: 24px; align-items: flex-start; }
figure.map { margin: 4px 0; }
figcaption { font-weight: 600; font-size: 14px; margin-bottom: 2px; }
figcaption .better { font-weight: 400; color: #5d6776; }
table.grid th { background: #f3f5f7; white-space: nowrap; vertical-align: middle; }
table.grid td.cell { min-width: 104px; height: 54px; text-align: center; vertical-align: middle; border: 2px solid #fff; }
table.grid td.cell b { display: block; font-size: 13.5px; }
table.grid td.cell .ratio { display: block; font-size: 17px; font-weight: 700; font-variant-numeric: tabular-nums; }
table.grid td.cell .vals { display: block; font-size: 11px; white-space: nowrap; opacity: 0.9; font-variant-numeric: tabular-nums; }
table.grid td.failed { outline: 3px solid #c62828; outline-offset: -3px; }
table.grid td.error { background: repeating-linear-gradient(45deg, #fde7e7, #fde7e7 6px, #fff 6px, #fff 12px); color: #c62828; }
table.cells td.n { text-align: right; font-variant-numeric: tabular-nums; }
table.cells tr.first td { border-top: 2px solid #b8c0ca; }
table.kv th { background: #f8f9fa; font-weight: 500; }
.legend { font-size: 13px; }
.sw { display: inline-block; padding: 1px 8px; margin: 0 2px; border-radius: 3px; font-weight: 600; }
.basis { font-size: 12px; padding: 1px 6px; border-radius: 8px; background: #eef1f4; font-weight: 500; }
.basis.projected { background: #fff2dc; }
.ok { color: #1a7f37; font-weight: 600; }
.bad { color: #c62828; font-weight: 700; }
.badge { display: inline-block; padding: 2px 10px; border-radius: 10px; font-weight: 600; font-size: 13px; }
.badge.ok { background: #e6f4ea; }
.badge.bad { background: #fde7e7; }
details { margin: 6px 0; font-size: 13.5px; }
footer { color: #8a93a0; font-size: 12px; margin-top: 28px; }
`;

/** The number of map grids the page draws for a result (maps × vCPU counts). */
export function sweepMapCount(r: SweepResult): number {
  return r.scenario.vcpus.length * SWEEP_MAPS.reduce((a, [, projected]) => a + (projected ? 2 : 1), 0);
}

/** A self-contained HTML page for a sweep result. */
export function renderSweepHtml(r: SweepResult): string {
  const s = r.scenario;
  const b = s.base;
  const summary = [
    `${r.cells.length} cells`,
    `${s.memoryBytes.map(sizeText).join(", ")}${b.backed ? " backed" : " unbacked"}`,
    `× ${s.dirtyRatesPagesPerSec.map(rateText).join(", ")} stores per vCPU`,
    `× ${s.vcpus.join(", ")} vCPU${s.vcpus.length === 1 && s.vcpus[0] === 1 ? "" : "s"}`,
    b.pattern,
    `${b.durationMs} ms per mode`,
    `harvest every ${b.intervalMs} ms`,
    `seed ${b.seed}`,
  ].join(" · ");
  const sections = gridsOf(r)
    .map((g) => {
      const maps = SWEEP_MAPS.map(
        ([measured, projected, question]) =>
          `<h3>${esc(question)}</h3><div class="pair">${mapTable(r, g.rows, measured, "measured", g.vcpus)}${
            projected ? mapTable(r, g.rows, projected, "projected", g.vcpus) : ""
          }</div>`,
      ).join("\n");
      return `<section data-vcpus="${g.vcpus}"><h2>${g.vcpus} vCPU${g.vcpus === 1 ? "" : "s"}</h2>\n${maps}</section>`;
    })
    .join("\n");
  const env = r.environment;
  return `<!doctype html>
<html lang="en">
<head>
<meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1">
<title>${esc(`dirtlog sweep — ${s.modes.join(" vs ")}`)}</title>
<style>${STYLE}</style>
</head>
<body data-maps="${sweepMapCount(r)}">
<header>
<h1>dirtlog sweep: ${esc(s.modes.join(" vs "))}</h1>
<p class="sub">${esc(summary)}</p>
<p class="sub">${r.ok ? `<span class="badge ok">✓ every cell correct</span>` : `<span class="badge bad">✗ ${r.failed.length} cell${r.failed.length === 1 ? "" : "s"} failed</span>`}
 &nbsp;${esc(String(env.cpu ?? "?"))}, ${esc(String(env.cores ?? "?"))} cores · ${esc(r.tool)} ${esc(r.version)} · ${r.ran} run, ${r.resumed} resumed</p>
<p class="note">Each cell: the mode that wins the metric, how many times better it is than the best mode of the other kind
(ring against bitmap), and the two values. <b>Measured</b> figures come from this model (WASM core, worker threads);
<b>projected</b> ones apply the kernel's per-operation costs (${esc(r.costs.source)}) to the events each mode counted.
Hover a cell for every mode's value.</p>
${legend()}
</header>
${sections}
${r.failed.length ? `<h2>Failed cells</h2><ul>${r.failed.map((f) => `<li class="bad">${esc(f.label)}: ${esc(f.error ?? `correctness check failed in ${f.modes.join(", ")}`)}</li>`).join("")}</ul>` : ""}
<h2>Every cell</h2>
${cellsTable(r)}
<details><summary>Kernel cost table (ns)</summary>${kvTable(r.costs)}</details>
<details><summary>Environment</summary>${kvTable(env)}</details>
<footer>Generated by ${esc(r.tool)} ${esc(r.version)}.</footer>
<script type="application/json" id="dirtlog-sweep">${jsonForScript(r)}</script>
</body>
</html>
`;
}
