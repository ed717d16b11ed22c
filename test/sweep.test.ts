// `dirtlog sweep`: the engine on a stand-in compare (keys, winners, resume, failures, ETA,
// the markdown), then the built CLI end to end on a 2×2 grid of tiny cells (exit codes,
// JSON fields, the markdown tables, the cell files), its resume (one cell file deleted:
// only that cell runs again), bad options one per option, and the map (sweep.html) opened
// in headless Chromium with the network blocked.
import { spawnSync } from "node:child_process";
import { cpSync, mkdirSync, mkdtempSync, readdirSync, readFileSync, rmSync, statSync, unlinkSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { fileURLToPath, pathToFileURL } from "node:url";
import { type Browser, chromium } from "playwright";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { KERNEL_COSTS, METRICS } from "../src/compare.js";
import type { CompareResult, CompareScenario, ModeResult } from "../src/compare_types.js";
import {
  type CellStore,
  cellKey,
  etaMs,
  renderMarkdown,
  runSweep,
  SWEEP_METRICS,
  type SweepEvent,
  type SweepResult,
  type SweepSpec,
  summarizeCell,
  winnersOf,
} from "../src/sweep.js";
import { renderSweepHtml, SWEEP_MAPS, sweepMapCount } from "../src/sweep_report.js";

const cli = fileURLToPath(new URL("../dist/cli.js", import.meta.url));
const artifacts = fileURLToPath(new URL("./artifacts/", import.meta.url));
const fixture: CompareResult = JSON.parse(
  readFileSync(new URL("./fixtures/compare-result.json", import.meta.url), "utf8"),
);

function run(args: string[], timeout = 60_000) {
  const t = performance.now();
  const r = spawnSync(process.execPath, [cli, ...args], { encoding: "utf8", timeout });
  return { status: r.status, stdout: r.stdout, stderr: r.stderr, ms: performance.now() - t };
}

// ---- the engine, on a stand-in compare ----

const base: SweepSpec["base"] = { backed: false, pattern: "uniform", durationMs: 300, intervalMs: 100, seed: "1" };
const spec: SweepSpec = {
  memoryBytes: [64 << 20, 256 << 20],
  dirtyRatesPagesPerSec: [2000, 20000],
  vcpus: [1],
  modes: ["bitmap", "ring:4096", "ring:65536"],
  base,
};

/** The fixture's modes under the scenario's names; `bad` makes one mode fail its correctness check. */
function fakeCompare(calls: CompareScenario[], bad?: (s: CompareScenario) => boolean) {
  return async (scenario: CompareScenario): Promise<CompareResult> => {
    calls.push(scenario);
    const modes = fixture.modes.map((m, i) => ({ ...structuredClone(m), mode: scenario.modes[i] }));
    if (bad?.(scenario)) modes[1].correctness = { ...modes[1].correctness, lost: 3, ok: false };
    return { ...fixture, version: "test", scenario, modes, ok: modes.every((m) => m.correctness.ok) };
  };
}

function memoryStore(): CellStore & { files: Map<string, string> } {
  const files = new Map<string, string>();
  return {
    files,
    async load(key) {
      const text = files.get(key);
      return text === undefined ? undefined : JSON.parse(text);
    },
    async save(key, cell) {
      files.set(key, JSON.stringify(cell));
    },
    where: (key) => `mem:${key}`,
  };
}

describe("the sweep engine", () => {
  it("reads compare's metrics from a cell's short form: same names, basis, direction and values", () => {
    expect(SWEEP_METRICS.map((m) => [m.metric, m.basis, m.better])).toEqual(
      METRICS.map((m) => [m.metric, m.basis, m.better]),
    );
    const cell = summarizeCell(0, "k", fixture, 1, "now");
    for (const [k, m] of METRICS.entries()) {
      for (const [i, mode] of fixture.modes.entries()) {
        expect(SWEEP_METRICS[k].value(cell.modes[i]), `${m.metric} ${mode.mode}`).toBeCloseTo(m.value(mode), 9);
      }
    }
    // short form: no timeline, a few KiB
    expect(JSON.stringify(cell).length).toBeLessThan(6000);
    expect(JSON.stringify(cell)).not.toContain("timeline");
  });

  it("names per metric the winner and its ratio to the best mode of the other kind (ties within 5 %)", () => {
    const mode = (name: string, latency: number, stall: number): ModeResult => {
      const m = structuredClone(fixture.modes[0]);
      m.mode = name;
      m.collector.latencyUs.median = latency;
      m.guest.ringFullStallMs = stall;
      return m;
    };
    const w = (modes: ModeResult[], metric: string) => winnersOf(modes).find((x) => x.metric === metric);
    // ring:4096 is best; the ratio is against bitmap (the other kind), not ring:65536 (next best)
    const a = w(
      [mode("bitmap", 300, 0), mode("ring:4096", 100, 5), mode("ring:65536", 150, 0)],
      "harvest latency (median)",
    );
    expect(a).toMatchObject({
      winner: "ring:4096",
      kind: "ring",
      runnerUp: "bitmap",
      value: 100,
      runnerUpValue: 300,
      ratio: 3,
    });
    // the best ring and the bitmap within 5 %: a tie
    const b = w([mode("bitmap", 100, 0), mode("ring:4096", 103, 5)], "harvest latency (median)");
    expect(b).toMatchObject({ winner: "", kind: "tie" });
    // none against some: no ratio
    const c = w([mode("bitmap", 100, 0), mode("ring:4096", 100, 5)], "vCPU time stalled on a full ring");
    expect(c).toMatchObject({ winner: "bitmap", kind: "bitmap", ratio: null });
    // manual is of the bitmap kind
    const d = w([mode("manual:262144", 50, 0), mode("ring:4096", 100, 0)], "harvest latency (median)");
    expect(d).toMatchObject({ winner: "manual:262144", kind: "bitmap", ratio: 2 });
  });

  it("a cell's key: the same options give the same key; any option that decides the result changes it", () => {
    const s: CompareScenario = {
      ...base,
      memoryBytes: 1 << 30,
      dirtyRatePagesPerSec: 10_000,
      vcpus: 2,
      modes: spec.modes,
    };
    const k = cellKey(s, KERNEL_COSTS);
    expect(k).toMatch(/^1GiB_10k_2vcpu_[0-9a-f]{12}$/);
    expect(cellKey({ ...s, modes: [...s.modes] }, { ...KERNEL_COSTS })).toBe(k);
    const changed = [
      { ...s, seed: "2" },
      { ...s, durationMs: 301 },
      { ...s, intervalMs: 50 },
      { ...s, pattern: "sequential" as const },
      { ...s, backed: true },
      { ...s, modes: ["bitmap", "ring:4096"] },
    ].map((x) => cellKey(x, KERNEL_COSTS));
    changed.push(cellKey(s, { ...KERNEL_COSTS, resetNsPerEntry: 66 }));
    expect(new Set([k, ...changed]).size).toBe(changed.length + 1);
  });

  it("runs the grid in order, keeps each cell; a rerun runs only the missing ones and ignores a stale file", async () => {
    const store = memoryStore();
    const calls: CompareScenario[] = [];
    const first = await runSweep(spec, { costs: KERNEL_COSTS, store, compare: fakeCompare(calls) });
    expect(first.ok).toBe(true);
    expect(calls.map((c) => [c.memoryBytes >> 20, c.dirtyRatePagesPerSec])).toEqual([
      [64, 2000],
      [64, 20000],
      [256, 2000],
      [256, 20000],
    ]);
    expect(store.files.size).toBe(4);
    expect([first.ran, first.resumed]).toEqual([4, 0]);

    const [k0, k1, k2] = first.cells.map((c) => c.key);
    store.files.delete(k1);
    store.files.set(k2, JSON.stringify({ ...JSON.parse(store.files.get(k2) ?? "{}"), scenario: { ...base } })); // not this cell
    const events: SweepEvent[] = [];
    const again: CompareScenario[] = [];
    const second = await runSweep(spec, {
      costs: KERNEL_COSTS,
      store,
      compare: fakeCompare(again),
      onEvent: (e) => events.push(e),
    });
    expect(again.map((c) => [c.memoryBytes >> 20, c.dirtyRatePagesPerSec])).toEqual([
      [64, 20000],
      [256, 2000],
    ]);
    expect(events[0]).toMatchObject({ kind: "plan", total: 4, toRun: 2, resumed: 2, stale: [`mem:${k2}`] });
    expect([second.ran, second.resumed]).toEqual([2, 2]);
    expect(second.cells.map((c) => c.resumed === true)).toEqual([true, false, false, true]);
    expect(second.cells[0]).toEqual({ ...first.cells[0], resumed: true });
    expect(second.cells.map((c) => c.key)).toEqual(first.cells.map((c) => c.key));
    expect(JSON.parse(store.files.get(k0) ?? "")).not.toHaveProperty("resumed");
  });

  it("a failed correctness check or a cell that throws: ok false, named; a thrown cell is not kept", async () => {
    const store = memoryStore();
    let n = 0;
    const fake = fakeCompare([], (s) => s.memoryBytes === 256 << 20 && s.dirtyRatePagesPerSec === 2000);
    const r = await runSweep(spec, {
      costs: KERNEL_COSTS,
      store,
      compare: async (s) => {
        if (n++ === 1) throw new Error("KVM_CREATE_VM: ENOMEM: boom");
        return fake(s);
      },
    });
    expect(r.ok).toBe(false);
    expect(r.failed).toEqual([
      { key: r.cells[1].key, label: "64 MiB × 20k/s × 1 vCPU", modes: [], error: "KVM_CREATE_VM: ENOMEM: boom" },
      { key: r.cells[2].key, label: "256 MiB × 2k/s × 1 vCPU", modes: ["ring:4096"] },
    ]);
    expect(store.files.has(r.cells[1].key)).toBe(false);
    expect(store.files.has(r.cells[2].key)).toBe(true); // a finished cell, kept even though it failed
    const md = renderMarkdown(r);
    expect(md).toContain("| 64 MiB | ");
    expect(md).toMatch(/\| error \|/);
    expect(md).toMatch(/ ✗ \|/);
    expect(md).toContain("256 MiB × 2k/s × 1 vCPU: correctness check failed in ring:4096");
    expect(renderSweepHtml(r)).toContain('data-kind="error"');
  });

  it("the map says which mode stalled when the best of each kind did not (a tie at 0)", async () => {
    const one: SweepSpec = { ...spec, memoryBytes: [64 << 20], dirtyRatesPagesPerSec: [2000] };
    const fake = fakeCompare([]);
    const r = await runSweep(one, {
      costs: KERNEL_COSTS,
      compare: async (s) => {
        const res = await fake(s);
        res.modes.forEach((m, i) => {
          m.guest.ringFullStallMs = [0, 137, 0][i];
        });
        return res;
      },
    });
    const stall = r.cells[0].winners.find((w) => w.metric === "vCPU time stalled on a full ring");
    expect(stall).toMatchObject({ kind: "tie", value: 0, runnerUpValue: 0 });
    const html = renderSweepHtml(r);
    const map =
      /<figure class="map" data-map="vCPU time stalled on a full ring"[\s\S]*?<\/figure>/.exec(html)?.[0] ?? "";
    expect(map).toContain("0; ring:4096 137 ms");
    expect(map).not.toContain("0 in every mode");
  });

  it("the ETA is the mean of the finished cells' durations times the cells left", async () => {
    expect(etaMs([], 4, 1000)).toBe(4000);
    expect(etaMs([1000, 3000], 3, 1)).toBe(6000);
    let clock = 0;
    const events: SweepEvent[] = [];
    const fake = fakeCompare([]);
    await runSweep(spec, {
      costs: KERNEL_COSTS,
      now: () => clock,
      compare: async (s) => {
        clock += s.memoryBytes === 64 << 20 ? 1000 : 3000;
        return fake(s);
      },
      onEvent: (e) => events.push(e),
    });
    const done = events.filter((e) => e.kind === "done").map((e) => (e.kind === "done" ? [e.position, e.etaMs] : []));
    expect(done).toEqual([
      [1, 3000], // 1 s per cell so far, 3 left
      [2, 2000],
      [3, 5000 / 3], // (1 + 1 + 3) / 3 s per cell, 1 left
      [4, 0],
    ]);
  });
});

// ---- the CLI, end to end ----

const GRID = ["--memory", "64MiB,256MiB", "--dirty-rate", "2k,20k", "--vcpus", "1", "--ring", "4096"];
const SHORT = ["--duration", "300ms", "--interval", "100ms"];

describe("dirtlog sweep, end to end", () => {
  let out: string;
  let first: ReturnType<typeof run>;
  let result: SweepResult;
  beforeAll(() => {
    out = mkdtempSync(join(tmpdir(), "dirtlog-sweep-"));
    first = run(["sweep", ...GRID, ...SHORT, "--out", out, "--json"]);
    result = JSON.parse(first.stdout);
  });
  afterAll(() => rmSync(out, { recursive: true, force: true }));

  it("a 2×2 grid: exit 0, one JSON document with every cell's figures and winners, progress with an ETA", () => {
    expect(first.stderr).not.toMatch(/\n\s+at /);
    expect(first.status).toBe(0);
    expect(result).toMatchObject({
      tool: "dirtlog sweep",
      ok: true,
      ran: 4,
      resumed: 0,
      failed: [],
      headline: { measured: "harvest latency (median)", projected: "kernel harvest time per call" },
      scenario: {
        memoryBytes: [64 << 20, 256 << 20],
        dirtyRatesPagesPerSec: [2000, 20000],
        vcpus: [1],
        modes: ["bitmap", "ring:4096"],
        base: { durationMs: 300, intervalMs: 100, seed: "1", pattern: "uniform", backed: false },
      },
    });
    expect(result.environment).toMatchObject({
      cpu: expect.any(String),
      cores: expect.any(Number),
      node: process.version,
      coreWasmSha256: expect.stringMatching(/^[0-9a-f]{64}$/),
    });
    expect(Object.keys(result.costs).length).toBeGreaterThan(10);
    expect(result.cells.map((c) => [c.memoryBytes >> 20, c.dirtyRatePagesPerSec, c.vcpus])).toEqual([
      [64, 2000, 1],
      [64, 20000, 1],
      [256, 2000, 1],
      [256, 20000, 1],
    ]);
    for (const c of result.cells) {
      expect(c.ok).toBe(true);
      expect(c.modes.map((m) => m.mode)).toEqual(["bitmap", "ring:4096"]);
      expect(c.scenario).toMatchObject({
        memoryBytes: c.memoryBytes,
        dirtyRatePagesPerSec: c.dirtyRatePagesPerSec,
        durationMs: 300,
      });
      for (const m of c.modes) {
        for (const v of [
          m.latencyUs.median,
          m.nsPerReportedPage,
          m.stallMs,
          m.trackingBytes,
          m.storesPerSec,
          m.projected.harvestUsPerCall,
          m.projected.nsPerReportedPage,
          m.projected.stallMs,
        ]) {
          expect(Number.isFinite(v), m.mode).toBe(true);
        }
        expect(m.harvests).toBeGreaterThan(1);
        expect(m.correctness).toMatchObject({ lost: 0, outside: 0 });
      }
      expect(c.winners.map((w) => w.metric)).toEqual(METRICS.map((m) => m.metric));
      for (const w of c.winners) {
        expect(["bitmap", "ring", "tie"]).toContain(w.kind);
        if (w.kind !== "tie") expect(c.modes.map((m) => m.mode)).toContain(w.winner);
        if (w.ratio !== null) expect(w.ratio).toBeGreaterThanOrEqual(1);
      }
      // the tracking memory is exact: bitmap 2 bits per page, ring 2 × 4096 × 16 bytes
      const tracking = c.winners.find((w) => w.metric === "tracking memory");
      expect(tracking).toMatchObject({
        winner: "bitmap",
        value: c.memoryBytes / 4096 / 4,
        runnerUpValue: 2 * 4096 * 16,
      });
    }
    // progress: one line per cell with an ETA until the last, on stderr only
    const lines = first.stderr.trim().split("\n");
    expect(lines[0]).toMatch(/^dirtlog sweep: 4 cells to run, about [\d.]+ s/);
    const cells = lines.filter((l) => /^dirtlog sweep: \[\d\/4\]/.test(l));
    expect(cells).toHaveLength(4);
    expect(cells[0]).toMatch(/\[1\/4\] 64 MiB × 2k\/s × 1 vCPU: [\d.]+ s, harvest latency .*; ETA [\d.]+ s$/);
    expect(cells[3]).not.toContain("ETA");
  });

  it("writes sweep.json, sweep.md (tables: rows memory, columns dirty rate) and one file per cell", () => {
    expect(JSON.parse(readFileSync(join(out, "sweep.json"), "utf8"))).toEqual(result);
    const files = readdirSync(join(out, "cells")).sort();
    expect(files).toEqual(result.cells.map((c) => `${c.key}.json`).sort());
    const md = readFileSync(join(out, "sweep.md"), "utf8");
    const tables = md.split("\n## ").slice(1);
    expect(tables.map((t) => t.split("\n")[0])).toEqual([
      "Measured: harvest latency (median), 1 vCPU — lower is better",
      "Projected: kernel harvest time per call, 1 vCPU — lower is better",
    ]);
    for (const t of tables) {
      const rows = t.split("\n").filter((l) => l.startsWith("|"));
      expect(rows[0]).toBe("| memory \\ dirty rate | 2k/s | 20k/s |");
      expect(rows[1]).toBe("|---|---:|---:|");
      expect(rows.slice(2).map((r) => r.split("|")[1].trim())).toEqual(["64 MiB", "256 MiB"]);
      for (const r of rows.slice(2)) {
        for (const cell of r.split("|").slice(2, -1))
          expect(cell.trim()).toMatch(/^(bitmap|ring:4096) ×[\d.]+$|^tie( ×[\d.]+| \(none\))$/);
      }
    }
  });

  it("resume: a rerun with one cell file deleted runs only that cell and says the others were skipped", () => {
    const victim = result.cells[2];
    const keep = result.cells.filter((c) => c !== victim).map((c) => join(out, "cells", `${c.key}.json`));
    const before = keep.map((f) => [readFileSync(f, "utf8"), statSync(f).mtimeMs]);
    unlinkSync(join(out, "cells", `${victim.key}.json`));
    const again = run(["sweep", ...GRID, ...SHORT, "--out", out]);
    expect(again.status).toBe(0);
    expect(again.stderr).toContain(
      `resuming from ${join(out, "cells")}: 3 of 4 cells already there (skipped), 1 to run`,
    );
    const ran = again.stderr.split("\n").filter((l) => /^dirtlog sweep: \[\d+\/\d+\]/.test(l));
    expect(ran).toEqual([expect.stringMatching(/^dirtlog sweep: \[1\/1\] 256 MiB × 2k\/s × 1 vCPU: /)]);
    // the others untouched; the deleted one back; about a quarter of the work
    expect(keep.map((f) => [readFileSync(f, "utf8"), statSync(f).mtimeMs])).toEqual(before);
    const res: SweepResult = JSON.parse(readFileSync(join(out, "sweep.json"), "utf8"));
    expect([res.ran, res.resumed, res.ok]).toEqual([1, 3, true]);
    expect(res.cells.map((c) => c.resumed === true)).toEqual([true, true, false, true]);
    expect(res.cells[2].key).toBe(victim.key);
    expect(res.cells[2].finishedAt > victim.finishedAt).toBe(true);
    for (const i of [0, 1, 3]) expect(res.cells[i].modes).toEqual(result.cells[i].modes);
    expect(res.wallMs).toBeLessThan(result.wallMs * 0.6);
    // stdout: the markdown (no --json)
    expect(again.stdout).toContain("This run: 1 cell run, 3 resumed");
    expect(again.stdout).toContain("| 256 MiB |");
  });

  it("resume: other options (a new seed) reuse nothing and leave the other cells alone", () => {
    const dir = mkdtempSync(join(tmpdir(), "dirtlog-sweep-seed-"));
    try {
      cpSync(join(out, "cells"), join(dir, "cells"), { recursive: true });
      const one = ["--memory", "64MiB", "--dirty-rate", "2k", "--vcpus", "1", "--ring", "4096"];
      const other = run(["sweep", ...one, ...SHORT, "--seed", "7", "--out", dir]);
      expect(other.status).toBe(0);
      expect(other.stderr).toMatch(/^dirtlog sweep: 1 cell to run/);
      expect(other.stderr).not.toContain("resuming");
      expect(readdirSync(join(dir, "cells"))).toHaveLength(5);
    } finally {
      rmSync(dir, { recursive: true, force: true });
    }
  });

  const bad: Array<[string[], RegExp]> = [
    [["--memory", "64MiB,4XB"], /--memory "4XB": expected a size like 8GiB/],
    [["--memory", "64MiB,,1GiB"], /--memory "64MiB,,1GiB": a comma-separated list/],
    [["--memory", "1GiB,1024MiB"], /--memory "1GiB,1024MiB": each value once/],
    [["--memory", "4GiB", "--backed"], /--memory "4GiB": --backed keeps guest bytes .* at most 3GiB/],
    [["--dirty-rate", "1k,fast"], /--dirty-rate "fast": expected pages\/s like 20000 or 20k/],
    [["--vcpus", "1,65"], /--vcpus "65": a whole number from 1 to 64/],
    [["--ring", "4096,100"], /--ring "4096,100": "100": ringEntries 100 is outside \[256, 65536\]/],
    [["--ring", "4096,4096"], /--ring "4096,4096": each value once/],
    [["--ring", "4096", "--modes", "bitmap,ring:256"], /--ring "4096": give --ring or --modes, not both/],
    [["--modes", "bitmap"], /--modes "bitmap": at least two modes/],
    [["--modes", "bitmap,btimap"], /--modes "bitmap,btimap": "btimap"/],
    [["--workload", "hot-set:150%"], /--workload "hot-set:150%"/],
    [["--duration", "10ms"], /--duration "10ms": from 100ms to 1h/],
    [["--interval", "5s"], /--interval "5s": from 1ms up to the --duration/],
    [["--seed", "0"], /--seed "0": a whole number from 1/],
    [["--costs", "/no/such/costs.json"], /--costs "\/no\/such\/costs.json": cannot be read \(ENOENT\)/],
    [["--out", ""], /--out "": a directory/],
    [
      ["--memory", "16MiB", "--dirty-rate", "1k", "--out", cli],
      /--out ".*cli\.js": cannot be used as a directory \(ENOTDIR\)/,
    ],
    [["--frobnicate"], /Unknown option '--frobnicate'/],
    [["--memory"], /--memory/],
  ];
  for (const [args, message] of bad) {
    it(`bad usage: ${args.join(" ")}`, () => {
      const r = run(["sweep", ...args]);
      expect(r.status).toBe(2);
      const lines = r.stderr.trim().split("\n");
      expect(lines[0]).toMatch(/^dirtlog sweep: /);
      expect(lines[0]).toMatch(message);
      expect(lines.slice(1)).toEqual(["see: dirtlog sweep --help"]);
      expect(r.stdout).toBe("");
    });
  }

  it("--help lists every option with its default", () => {
    const r = run(["sweep", "--help"]);
    expect(r.status).toBe(0);
    for (const o of [
      "--memory",
      "--dirty-rate",
      "--vcpus",
      "--ring",
      "--modes",
      "--workload",
      "--duration",
      "--interval",
      "--seed",
      "--costs",
      "--backed",
      "--json",
      "--out",
      "--help",
    ]) {
      expect(r.stdout).toContain(o);
    }
    for (const d of [
      "[1GiB,4GiB,16GiB,64GiB,256GiB]",
      "[1k,10k,100k,1M]",
      "[2]",
      "[4096,65536]",
      "[uniform]",
      "[1s]",
      "[250ms]",
      "[1]",
    ]) {
      expect(r.stdout).toContain(d);
    }
  });

  describe("the map (sweep.html) in headless Chromium", () => {
    let browser: Browser;
    beforeAll(async () => {
      browser = await chromium.launch({
        executablePath: process.env.CHROMIUM_PATH ?? "/usr/bin/chromium",
        args: ["--no-sandbox", "--disable-gpu"],
      });
    });
    afterAll(async () => {
      await browser?.close();
    });

    it("opens offline without errors and draws every grid cell coloured by the winner's kind", async () => {
      const page = await browser.newPage({ viewport: { width: 1300, height: 900 } });
      const errors: string[] = [];
      const offline: string[] = [];
      page.on("console", (m) => {
        if (m.type() === "error") errors.push(m.text());
      });
      page.on("pageerror", (e) => errors.push(String(e)));
      await page.route("**/*", (route) => {
        if (route.request().url().startsWith("file:")) return route.continue();
        offline.push(route.request().url());
        return route.abort("blockedbyclient");
      });
      try {
        const html = readFileSync(join(out, "sweep.html"), "utf8");
        expect(html).not.toMatch(/<(script|link|img)[^>]+(src|href)=["']?(https?:)?\/\//i);
        await page.goto(pathToFileURL(join(out, "sweep.html")).href);
        const res: SweepResult = JSON.parse(readFileSync(join(out, "sweep.json"), "utf8"));
        const maps = sweepMapCount(res);
        expect(maps).toBe(SWEEP_MAPS.length * 2 - 1);
        expect(await page.getAttribute("body", "data-maps")).toBe(String(maps));
        expect(await page.locator("figure.map").count()).toBe(maps);
        const cells = await page.evaluate(() =>
          [...document.querySelectorAll<HTMLElement>("td.cell")].map((td) => {
            const r = td.getBoundingClientRect();
            return {
              map: td.closest("figure")?.dataset.map,
              kind: td.dataset.kind,
              winner: td.dataset.winner,
              background: getComputedStyle(td).backgroundColor,
              text: td.innerText,
              w: r.width,
              h: r.height,
            };
          }),
        );
        expect(cells).toHaveLength(maps * 4);
        for (const c of cells) {
          expect(c.w).toBeGreaterThan(50);
          expect(c.h).toBeGreaterThan(30);
          expect(["bitmap", "ring", "tie"]).toContain(c.kind);
          // coloured: never the page's white
          expect(c.background).not.toMatch(/^rgba?\(255, 255, 255/);
          expect(c.text).toMatch(c.kind === "tie" ? /tie/ : new RegExp(`${c.winner}\\s+(×[\\d.]+|none vs some)`));
        }
        // bitmap cells blue, ring cells orange
        const hue = (rgb: string) => {
          const [r, , b] = (rgb.match(/\d+/g) ?? []).map(Number);
          return b > r ? "blue" : "orange";
        };
        for (const c of cells.filter((x) => x.kind !== "tie"))
          expect(hue(c.background)).toBe(c.kind === "bitmap" ? "blue" : "orange");
        // the measured headline grid matches the JSON
        const head = cells.filter((c) => c.map === "harvest latency (median)");
        expect(head.map((c) => c.kind)).toEqual(
          res.cells.map((c) => c.winners.find((w) => w.metric === "harvest latency (median)")?.kind),
        );
        // tracking memory: bitmap wins every cell
        expect(cells.filter((c) => c.map === "tracking memory").map((c) => c.winner)).toEqual([
          "bitmap",
          "bitmap",
          "bitmap",
          "bitmap",
        ]);
        expect(await page.locator("table[data-table=cells] tbody tr").count()).toBe(4 * 2);
        mkdirSync(artifacts, { recursive: true });
        await page.screenshot({ path: `${artifacts}sweep.png`, fullPage: true });
        expect(errors).toEqual([]);
        expect(offline).toEqual([]);
      } finally {
        await page.close();
      }
    });
  });
});
