// The demo page: controls, a Run button, live charts, the ring and bitmap views and the
// verdict. The comparison itself runs in the collector worker (collector-worker.ts), which
// starts one more worker per vCPU; this thread only draws what they report.
import "uplot/dist/uPlot.min.css";
import "./style.css";
import { type CompareResult, type CompareScenario, METRICS, type RingSnapshot } from "../dist/compare.js";
import { capabilities, parseLogMode } from "../dist/index.js";
import { fmtBytes, fmtNum, scenarioSummary } from "../dist/report_charts.js";
import { CHARTS, LiveCharts, type ModeSeries } from "./charts.js";
import type { FromCollector, SampleBatch, ToCollector } from "./protocol.js";
import { drawBitmap, drawPlaceholder, drawRing } from "./views.js";

const $ = <T extends HTMLElement = HTMLElement>(id: string): T => {
  const el = document.getElementById(id);
  if (!el) throw new Error(`#${id} is missing`);
  return el as T;
};
const input = (id: string) => $<HTMLInputElement>(id);
const setState = (s: string) => {
  document.body.dataset.state = s;
};

const ringCanvas = $<HTMLCanvasElement>("ring-view");
const bitmapCanvas = $<HTMLCanvasElement>("bitmap-view");
const runButton = $<HTMLButtonElement>("run");
const statusEl = $("status");

// ---- the chart boxes ----------------------------------------------------------------------
$("charts").replaceChildren(
  ...CHARTS.map(([name, title, note]) => {
    const box = document.createElement("section");
    box.className = "chart";
    box.dataset.chart = name;
    const h = document.createElement("h3");
    h.textContent = title;
    const p = document.createElement("p");
    p.className = "note";
    p.textContent = note;
    const plot = document.createElement("div");
    plot.className = "plot";
    box.append(h, p, plot);
    return box;
  }),
);
drawPlaceholder(ringCanvas, "the ring of a ring mode shows here");
drawPlaceholder(bitmapCanvas, "the bitmap of a bitmap mode shows here");

// ---- can this page run it at all? ---------------------------------------------------------
function showProblems(problems: string[], where: string): void {
  const list = $("capability-problems");
  list.replaceChildren(
    ...problems.map((text) => {
      const li = document.createElement("li");
      li.textContent = text;
      return li;
    }),
  );
  $("capability-where").textContent = `Checked ${where} with dirtlog's capabilities().`;
  $("capabilities").hidden = false;
  runButton.disabled = true;
  setState("unsupported");
}

const caps = capabilities();
if (!caps.ok) {
  showProblems(caps.problems, "in the page");
} else {
  runButton.disabled = false;
  setState("ready");
}

// ---- modes: the text field is what runs; the chips add or remove one ---------------------
const modesInput = input("modes");
const modeList = () =>
  modesInput.value
    .split(",")
    .map((m) => m.trim())
    .filter((m) => m !== "");
function syncChips(): void {
  const names = new Set(
    modeList().map((m) => {
      try {
        return parseLogMode(m).name;
      } catch {
        return m;
      }
    }),
  );
  for (const b of document.querySelectorAll<HTMLButtonElement>("#mode-chips button")) {
    b.classList.toggle("on", names.has(parseLogMode(b.dataset.mode ?? "").name));
  }
}
$("mode-chips").addEventListener("click", (e) => {
  const b = (e.target as HTMLElement).closest<HTMLButtonElement>("button[data-mode]");
  if (!b?.dataset.mode) return;
  const name = parseLogMode(b.dataset.mode).name;
  const list = modeList();
  const without = list.filter((m) => {
    try {
      return parseLogMode(m).name !== name;
    } catch {
      return true;
    }
  });
  modesInput.value = (without.length === list.length ? [...list, b.dataset.mode] : without).join(",");
  syncChips();
});
modesInput.addEventListener("input", syncChips);
syncChips();

// ---- the form → a scenario (the same checks as dirtlog compare's options) ----------------
function readScenario(): CompareScenario {
  const memoryBytes = Number($<HTMLSelectElement>("memory").value);
  const vcpus = Number(input("vcpus").value);
  if (!Number.isInteger(vcpus) || vcpus < 1 || vcpus > 16) throw new Error("vCPUs: a whole number from 1 to 16");
  const rate = Number(input("rate").value);
  if (!(rate >= 0) || rate > 1e9)
    throw new Error("dirty rate: pages per second per vCPU, 0 (as fast as it goes) to 1e9");
  const names: string[] = [];
  for (const m of modeList()) {
    try {
      names.push(parseLogMode(m).name);
    } catch (e) {
      throw new Error(`modes: ${JSON.stringify(m)}: ${(e as { reason?: string }).reason ?? (e as Error).message}`);
    }
  }
  if (names.length === 0) throw new Error("modes: at least one, e.g. bitmap,ring:4096");
  if (new Set(names).size !== names.length) throw new Error("modes: each mode once");
  const durationMs = Math.round(Number(input("duration").value) * 1000);
  if (!(durationMs >= 100 && durationMs <= 60_000)) throw new Error("run per mode: from 0.1 to 60 seconds");
  const intervalMs = Math.round(Number(input("interval").value));
  if (!(intervalMs >= 1 && intervalMs <= durationMs)) throw new Error("harvest interval: from 1 ms up to the run time");
  const seed = input("seed").value.trim();
  if (!/^\d+$/.test(seed) || BigInt(seed) < 1n || BigInt(seed) >= 2n ** 64n)
    throw new Error("seed: a whole number ≥ 1");
  const pattern = $<HTMLSelectElement>("workload").value as CompareScenario["pattern"];
  return {
    memoryBytes,
    backed: false,
    vcpus,
    pattern,
    dirtyRatePagesPerSec: rate,
    modes: names,
    durationMs,
    intervalMs,
    seed,
  };
}

// ---- a run --------------------------------------------------------------------------------
interface RunState {
  scenario: CompareScenario;
  series: ModeSeries[];
  charts: LiveCharts;
  bars: HTMLElement[];
  ring?: { snapshot: RingSnapshot; mode: string };
  ringHarvest?: NonNullable<SampleBatch["ringHarvest"]> & { mode: string };
  ringFullHarvests: number;
  bitmap?: NonNullable<SampleBatch["bitmap"]> & { mode: string };
  worker: Worker;
}

let run: RunState | undefined;
let frame = 0;

function schedule(): void {
  if (frame) return;
  frame = requestAnimationFrame(() => {
    frame = 0;
    draw();
  });
}

function draw(): void {
  if (!run) return;
  run.charts.update(run.series);
  const r = run.ring;
  if (r) {
    const h = run.ringHarvest?.mode === r.mode ? run.ringHarvest : undefined;
    drawRing(ringCanvas, r.snapshot, h, r.mode);
    const s = r.snapshot;
    const used = (s.dirtyIndex - s.resetIndex) >>> 0;
    $("ring-stats").textContent =
      `${r.mode}, vCPU 0: dirty_index ${s.dirtyIndex} · reset_index ${s.resetIndex} · in use ${used} of ${s.entries}` +
      ` (soft limit ${s.softLimit})` +
      (h
        ? ` · last harvest at ${(h.tMs / 1000).toFixed(2)} s: ${(h.to - h.from) >>> 0} entries of vCPU 0` +
          ` (${h.counts.ringEntries} of all vCPUs) collected, ${h.counts.ringResets} reset` +
          ` · ring-full harvests so far: ${run.ringFullHarvests}`
        : "");
  }
  const b = run.bitmap;
  if (b) {
    drawBitmap(bitmapCanvas, b, b.mode);
    let lit = 0;
    for (const p of b.pagesPerWord) if (p) lit++;
    let sum = 0;
    for (const t of b.summaryTaken) sum += t;
    $("bitmap-stats").textContent =
      `${b.mode}: last ${b.harvests === 1 ? "harvest" : `${b.harvests} harvests`}: ${b.counts.getCalls} GET` +
      (b.counts.clearCalls ? `, ${b.counts.clearCalls} CLEAR` : "") +
      ` · ${fmtNum(b.counts.bitmapWords)} words returned (${fmtBytes(b.counts.bitmapWords * 8)})` +
      ` · ${fmtNum(lit)} held a dirty page · ${fmtNum(b.counts.reported)} pages reported` +
      ` · summary words with a dirty page: ${sum} of ${b.summaryTaken.length}`;
  }
}

function progressBars(names: string[]): HTMLElement[] {
  const bars = names.map((name) => {
    const bar = document.createElement("div");
    bar.className = "bar";
    bar.dataset.mode = name;
    bar.innerHTML = `<span class="name"></span><span class="track"><span class="fill"></span></span><span class="phase">waiting</span>`;
    (bar.querySelector(".name") as HTMLElement).textContent = name;
    return bar;
  });
  $("progress").replaceChildren(...bars);
  return bars;
}

function onMessage(m: FromCollector): void {
  const r = run;
  if (!r) return;
  switch (m.type) {
    case "ready":
      if (!m.capabilities.ok) {
        showProblems(m.capabilities.problems, "in the collector worker");
        finish();
        return;
      }
      r.worker.postMessage({ type: "run", scenario: r.scenario } satisfies ToCollector);
      statusEl.textContent = "running…";
      return;
    case "progress": {
      const p = m.progress;
      const bar = r.bars[p.index];
      (bar.querySelector(".fill") as HTMLElement).style.width =
        `${Math.round((p.phase === "setup" ? 0 : p.fraction) * 100)}%`;
      (bar.querySelector(".phase") as HTMLElement).textContent = p.message ?? p.phase;
      bar.classList.toggle("done", p.phase === "done");
      statusEl.textContent = `mode ${p.index + 1} of ${p.of}: ${p.mode}`;
      return;
    }
    case "samples": {
      const s = r.series[m.index];
      for (const p of m.points) {
        s.timeline.push(p.point);
        s.vcpuStores.push(p.vcpuStores);
        if (p.point.cause === "ring-full") r.ringFullHarvests++;
      }
      if (m.ring) r.ring = { snapshot: m.ring, mode: m.mode };
      if (m.ringHarvest) r.ringHarvest = { ...m.ringHarvest, mode: m.mode };
      if (m.bitmap) r.bitmap = { ...m.bitmap, mode: m.mode };
      schedule();
      return;
    }
    case "result":
      showResult(r, m.result, m.wallMs);
      finish();
      return;
    case "error":
      fail(m.message);
      return;
  }
}

function fail(message: string): void {
  const el = $("run-error");
  el.textContent = `The comparison failed: ${message}`;
  el.hidden = false;
  console.error(`dirtlog demo: ${message}`);
  setState("error");
  finish();
}

function finish(): void {
  run?.worker.terminate();
  runButton.disabled = !caps.ok;
  for (const el of document.querySelectorAll<HTMLInputElement>("#scenario input, #scenario select"))
    el.disabled = false;
  if (document.body.dataset.state === "running") setState("ready");
}

function cell(tag: "td" | "th", text: string, cls?: string): HTMLElement {
  const c = document.createElement(tag);
  c.textContent = text;
  if (cls) c.className = cls;
  return c;
}

/** The verdict: a row per mode, a column per metric (the verdict's winner marked), then the verdict's lines. */
function showResult(r: RunState, result: CompareResult, wallMs: number): void {
  // the final charts from the result itself (the same harvests the live charts showed)
  r.series = result.modes.map((m) => ({ mode: m.mode, timeline: m.timeline, vcpuStores: m.vcpuStores }));
  r.charts.update(r.series);
  draw();
  const winners = new Map(result.verdict.map((v) => [v.metric, v.winner]));
  const table = $<HTMLTableElement>("verdict");
  const head = document.createElement("tr");
  head.append(cell("th", "Mode"), cell("th", "Correct"));
  for (const m of METRICS) {
    const th = cell("th", m.metric);
    th.append(
      document.createElement("br"),
      Object.assign(document.createElement("span"), {
        className: `basis ${m.basis}`,
        textContent: `${m.basis}, ${m.better} is better`,
      }),
    );
    head.append(th);
  }
  const thead = document.createElement("thead");
  thead.append(head);
  const tbody = document.createElement("tbody");
  for (const mode of result.modes) {
    const tr = document.createElement("tr");
    tr.dataset.mode = mode.mode;
    tr.append(cell("th", mode.mode));
    const c = mode.correctness;
    tr.append(
      cell(
        "td",
        c.ok ? "✓ ok" : `✗ lost ${c.lost}, outside ${c.outside}, reset mismatches ${c.resetMismatches}`,
        c.ok ? "ok" : "bad",
      ),
    );
    for (const m of METRICS)
      tr.append(cell("td", m.unit(m.value(mode)), winners.get(m.metric) === mode.mode ? "best" : ""));
    tbody.append(tr);
  }
  table.replaceChildren(thead, tbody);
  const lines = $("verdict-lines");
  lines.replaceChildren(
    ...(result.verdict.length
      ? result.verdict.map((v) => {
          const li = document.createElement("li");
          li.append(
            Object.assign(document.createElement("span"), { className: `basis ${v.basis}`, textContent: v.basis }),
            `${v.metric} (${v.better} is better): ${v.text}`,
          );
          return li;
        })
      : [Object.assign(document.createElement("li"), { textContent: "no difference (or a single mode)" })]),
  );
  $("summary").textContent =
    `${scenarioSummary(result.scenario)} · ${result.ok ? "every mode reported every page it should (0 lost)" : "correctness FAILED"}` +
    ` · ${(wallMs / 1000).toFixed(1)} s in all`;
  const link = $<HTMLAnchorElement>("download");
  URL.revokeObjectURL(link.href);
  link.href = URL.createObjectURL(new Blob([`${JSON.stringify(result, null, 2)}\n`], { type: "application/json" }));
  $("results").hidden = false;
  statusEl.textContent = `done in ${(wallMs / 1000).toFixed(1)} s`;
  setState("done");
}

function start(): void {
  const formError = $("form-error");
  let scenario: CompareScenario;
  try {
    scenario = readScenario();
  } catch (e) {
    formError.textContent = (e as Error).message;
    formError.hidden = false;
    return;
  }
  formError.hidden = true;
  $("run-error").hidden = true;
  $("results").hidden = true;
  run?.charts.destroy();
  drawPlaceholder(
    ringCanvas,
    scenario.modes.some((m) => m.startsWith("ring")) ? "waiting for the ring mode" : "no ring mode in this run",
  );
  drawPlaceholder(
    bitmapCanvas,
    scenario.modes.some((m) => !m.startsWith("ring")) ? "waiting for a bitmap mode" : "no bitmap mode in this run",
  );
  $("ring-stats").textContent = "";
  $("bitmap-stats").textContent = "";
  const worker = new Worker(new URL("./collector-worker.ts", import.meta.url), {
    type: "module",
    name: "dirtlog collector",
  });
  run = {
    scenario,
    series: scenario.modes.map((mode) => ({ mode, timeline: [], vcpuStores: [] })),
    charts: new LiveCharts($("charts"), scenario.modes, scenario.vcpus),
    bars: progressBars(scenario.modes),
    ringFullHarvests: 0,
    worker,
  };
  worker.addEventListener("message", (e: MessageEvent<FromCollector>) => onMessage(e.data));
  worker.addEventListener("error", (e) =>
    fail(e.message || "the collector worker failed to load (check the server's MIME types)"),
  );
  runButton.disabled = true;
  for (const el of document.querySelectorAll<HTMLInputElement>("#scenario input, #scenario select")) el.disabled = true;
  statusEl.textContent = "starting the collector…";
  setState("running");
}

$("scenario").addEventListener("submit", (e) => {
  e.preventDefault();
  if (caps.ok && document.body.dataset.state !== "running") start();
});

let resizeTimer = 0;
addEventListener("resize", () => {
  clearTimeout(resizeTimer);
  resizeTimer = window.setTimeout(() => {
    run?.charts.resize();
    draw();
  }, 100);
});
