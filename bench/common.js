// Shared plumbing of the benchmark scripts (bench/micro.js, bench/threads.js,
// bench/scenarios.js, bench/vcpu-mutex.js): the command line (--save, --quick), the
// environment report, VM setup through the LogMode table, the one tinybench harness
// (runGroup), sample statistics, bitmap checks, table formatting and the results writers.
// Scripts print; they write bench/results/* only with --save.
import { createHash } from "node:crypto";
import { existsSync, mkdirSync, readFileSync, writeFileSync } from "node:fs";
import { cpus, loadavg, totalmem } from "node:os";
import { Bench, calibrateTimerOverhead, hrtimeNowTimestampProvider } from "tinybench";

export const MIB = 1 << 20;
export const GIB = 1 << 30;
export const PAGE = 4096;
/** Where every benchmark places its slot: 4 GiB, above the core's own memory. */
export const GPA = 0x1_0000_0000;

/** The repository root (bench/..). */
export const root = new URL("../", import.meta.url);

// ---------------------------------------------------------------- command line
/**
 * The command line every script shares: `--help` prints `usage: <usage>` and exits;
 * `save` (--save: write bench/results/*), `quick` (--quick: a ~20 s smoke run), and
 * `option(name, fallback)`, the number following `name` (or `fallback` when absent).
 */
export function commandLine(usage) {
  const args = process.argv.slice(2);
  if (args.includes("--help")) {
    console.log(
      `usage: ${usage}\n  --save   write bench/results/* (otherwise the results are only printed)\n  --quick  a short smoke run`,
    );
    process.exit(0);
  }
  return {
    save: args.includes("--save"),
    quick: args.includes("--quick"),
    option(name, fallback) {
      const i = args.indexOf(name);
      return i >= 0 ? Number(args[i + 1]) : fallback;
    },
  };
}

/** A progress logger on stderr, `[tag 12.3s] msg`, and the seconds since it was made. */
export function startClock(tag) {
  const started = performance.now();
  const seconds = () => (performance.now() - started) / 1000;
  return { log: (msg) => console.error(`[${tag} ${seconds().toFixed(1)}s] ${msg}`), seconds };
}

// ---------------------------------------------------------------- environment
/** Smallest positive difference between back-to-back process.hrtime.bigint() calls. */
export function timerResolutionNs() {
  let min = Number.POSITIVE_INFINITY;
  for (let k = 0; k < 20000; k++) {
    const a = process.hrtime.bigint();
    let b = process.hrtime.bigint();
    while (b === a) b = process.hrtime.bigint();
    min = Math.min(min, Number(b - a));
  }
  return min;
}

/** The 1, 5 and 15 minute load averages, to 2 decimals. */
export const loadAverage = () => loadavg().map((x) => Number(x.toFixed(2)));

/** The machine and runtime: the first entries of every script's environment report. */
export function hostEnvironment() {
  return {
    cpu: cpus()[0]?.model ?? "unknown",
    cores: cpus().length,
    memoryGiB: Math.round(totalmem() / GIB),
    node: process.version,
    v8: process.versions.v8,
    platform: `${process.platform} ${process.arch}`,
    crossOriginIsolated: globalThis.crossOriginIsolated ?? "n/a (Node: SharedArrayBuffer always available)",
  };
}

const packageVersion = (name) =>
  JSON.parse(readFileSync(new URL(`node_modules/${name}/package.json`, root), "utf8")).version;

/** The timer entries of a script timed by tinybench with hrtimeNowTimestampProvider. */
export function tinybenchTiming() {
  return {
    timer: "process.hrtime.bigint (tinybench hrtimeNowTimestampProvider)",
    timerResolutionNs: timerResolutionNs(),
    timerCallOverheadNs: Math.round(calibrateTimerOverhead(hrtimeNowTimestampProvider) * 1e6),
    tinybench: packageVersion("tinybench"),
  };
}

const wasmPath = new URL("build/dirtlog.wasm", root);

/** Exit with a hint unless the library has been built (dist/ and build/dirtlog.wasm). */
export function requireBuild() {
  if (!existsSync(wasmPath) || !existsSync(new URL("dist/index.js", root))) {
    console.error("run `npm run build` first");
    process.exit(1);
  }
}

/** The checked-out commit, read from .git (the working tree may differ from it). */
function gitHead() {
  try {
    const head = readFileSync(new URL(".git/HEAD", root), "utf8").trim();
    if (!head.startsWith("ref: ")) return head.slice(0, 12);
    return readFileSync(new URL(`.git/${head.slice(5)}`, root), "utf8")
      .trim()
      .slice(0, 12);
  } catch {
    return "unknown";
  }
}

/** What was measured: the commit and a hash of the core wasm actually loaded. */
export function buildIdentity() {
  return {
    gitHead: gitHead(),
    coreWasmSha256: createHash("sha256").update(readFileSync(wasmPath)).digest("hex").slice(0, 16),
  };
}

/** Print the environment report, one `key value` line per entry. */
export function printEnvironment(env, show = (v) => (Array.isArray(v) ? v.join(" ") : v)) {
  console.log("environment");
  for (const [k, v] of Object.entries(env)) console.log(`  ${k.padEnd(20)} ${show(v)}`);
}

// ---------------------------------------------------------------- statistics
/** Linear-interpolated quantile of sorted samples (tinybench's method). */
export function quantile(sorted, q) {
  const pos = (sorted.length - 1) * q;
  const lo = Math.floor(pos);
  const hi = Math.ceil(pos);
  return sorted[lo] + (sorted[hi] - sorted[lo]) * (pos - lo);
}

/** Nearest-rank quantile of sorted samples (a value that was observed); NaN if empty. */
export function nearestRank(sorted, q) {
  if (sorted.length === 0) return Number.NaN;
  return sorted[Math.min(sorted.length - 1, Math.ceil(q * sorted.length) - 1)];
}

/** Median of sorted samples (the mean of the middle two for an even count); NaN if empty. */
export function sortedMedian(sorted) {
  if (sorted.length === 0) return Number.NaN;
  const m = sorted.length >> 1;
  return sorted.length % 2 ? sorted[m] : (sorted[m - 1] + sorted[m]) / 2;
}

/** Median of samples in any order. */
export const median = (xs) => sortedMedian([...xs].sort((a, b) => a - b));

/** Median and nearest-rank p99 (p99 only with at least 50 samples), min and max. */
export function summarize(xs) {
  const s = [...xs].sort((a, b) => a - b);
  return {
    n: s.length,
    p50: sortedMedian(s),
    p99: s.length >= 50 ? nearestRank(s, 0.99) : null,
    min: s[0],
    max: s[s.length - 1],
  };
}

// ---------------------------------------------------------------- VM setup
/**
 * A VM set up for a dirty-tracking mode the way every job does it, through the LogMode
 * table (dist/log_mode.js): the mode's VM options, create_vm_done, one tracked slot of
 * `pages` pages at `gpa` with the mode's slot flags, then `vcpus` vCPUs. `mode` is a
 * LogMode or its CLI name ("bitmap", "manual", "ring:65536", …). Returns { vm, mode, vcpus }.
 */
export async function trackedVm({
  mode,
  pages,
  gpa = GPA,
  backed = false,
  vcpus = 1,
  tlb,
  maxMemoryBytes = 128 * MIB,
  mmuPoolBytes = 8 * MIB,
}) {
  const { createVm, parseLogMode } = await import("../dist/index.js");
  const m = typeof mode === "string" ? parseLogMode(mode) : mode;
  const vm = await createVm({ maxMemoryBytes, mmuPoolBytes, ...(tlb === undefined ? {} : { tlb }), ...m.vmOptions });
  m.createVmDone(vm);
  vm.setUserMemoryRegion({ slot: 0, flags: m.slotFlags, guestPhysAddr: gpa, memorySize: pages * PAGE, backed });
  return { vm, mode: m, vcpus: Array.from({ length: vcpus }, (_, i) => vm.createVcpu(i)) };
}

// ---------------------------------------------------------------- the tinybench harness
/**
 * The one harness of the microbenchmarks: a group of tasks run as `rounds` tinybench runs
 * (each task's time budget split over them, explicit warm-up in each, hrtime timer), so
 * that the tasks of a group interleave in time and a burst of load on the shared machine
 * hits all of them, keeping same-run ratios fair. tinybench does not time the hooks:
 * setup and checks go in beforeEach/afterEach. Returns one row per task: p50/p99/min over
 * the samples tinybench retained (merged over the rounds, tinybench's quantile method),
 * each round's tinybench p50, and per-op figures when the task says how many ops (`ops`)
 * one sample does. Task: { id, label, fn, ops?, beforeEach?, afterEach?, beforeAll?,
 * afterAll?, ...extra fields copied to the row }.
 */
export async function runGroup(title, { time, iterations = 32, rounds = 5, scale = 1, log = () => {} }, tasks) {
  const t0 = performance.now();
  const samples = new Map(tasks.map((t) => [t.id, []]));
  const roundP50 = new Map(tasks.map((t) => [t.id, []]));
  for (let r = 0; r < rounds; r++) {
    const bench = new Bench({
      name: title,
      time: (time * scale) / rounds,
      iterations: Math.max(2, Math.ceil(iterations / rounds)),
      warmupTime: 10,
      warmupIterations: 4,
      timestampProvider: hrtimeNowTimestampProvider,
      retainSamples: true,
      throws: true,
    });
    for (const t of tasks) {
      // async: false, or tinybench calls fn once (outside the hooks) to find out
      bench.add(t.label, t.fn, {
        async: t.async ?? false,
        beforeEach: t.beforeEach,
        afterEach: t.afterEach,
        beforeAll: t.beforeAll,
        afterAll: t.afterAll,
      });
    }
    await bench.run();
    for (const t of tasks) {
      const res = bench.getTask(t.label).result;
      if (!res.latency?.samples) throw new Error(`${t.label}: ${res.state} ${res.error ?? ""}`);
      const into = samples.get(t.id);
      for (const x of res.latency.samples) into.push(x);
      roundP50.get(t.id).push(res.latency.p50 * 1000);
    }
  }
  const rows = tasks.map((t) => {
    const all = samples.get(t.id).sort((x, y) => x - y);
    const us = (ms) => ms * 1000;
    const { id, label, fn, beforeEach, afterEach, beforeAll, afterAll, async: _a, ...extra } = t;
    const row = {
      ...extra,
      id,
      group: title,
      task: label,
      samples: all.length,
      p50Us: us(quantile(all, 0.5)),
      p99Us: us(quantile(all, 0.99)),
      minUs: us(all[0]),
      roundP50Us: roundP50.get(id).map((x) => Number(x.toFixed(x < 10 ? 3 : 1))),
    };
    if (t.ops) {
      row.nsPerOpP50 = (row.p50Us * 1000) / t.ops;
      row.nsPerOpP99 = (row.p99Us * 1000) / t.ops;
    }
    log(`${label}: p50 ${fmt(row.p50Us, 2)} µs, p99 ${fmt(row.p99Us, 2)} µs, ${row.samples} samples`);
    return row;
  });
  log(`group "${title}" took ${((performance.now() - t0) / 1000).toFixed(1)} s`);
  return rows;
}

// ---------------------------------------------------------------- dirty bitmaps
const ONES = new Uint8Array(256);
for (let b = 1; b < 256; b++) ONES[b] = ONES[b >> 1] + (b & 1);

/** Number of set bits in a byte array. */
export function popcount(bm) {
  let c = 0;
  for (let b = 0; b < bm.length; b++) c += ONES[bm[b]];
  return c;
}

/** Throws unless the bitmap has exactly the bits 0, k, 2k, … (n of them). */
export function checkStridedBits(bm, k, n, what) {
  for (let p = 0; p < n * k; p += k) {
    if ((bm[p >>> 3] & (1 << (p & 7))) === 0) throw new Error(`${what}: page ${p} not reported`);
  }
  const c = popcount(bm);
  if (c !== n) throw new Error(`${what}: ${c} pages reported, ${n} expected`);
}

// ---------------------------------------------------------------- report
/** A number with d decimals, or "—" for a missing one (undefined, null, NaN). */
export const fmt = (x, d = 1) => (x === null || x === undefined || Number.isNaN(x) ? "—" : x.toFixed(d));

/** A plain-text table: the first column left-aligned, the others right-aligned. */
export function textTable(header, rows) {
  const widths = header.map((h, k) => Math.max(h.length, ...rows.map((row) => row[k].length)));
  const line = (cells) => cells.map((c, k) => (k === 0 ? c.padEnd(widths[k]) : c.padStart(widths[k]))).join("  ");
  return [line(header), ...rows.map(line)].join("\n");
}

/** A markdown table: the first column left-aligned, the others right-aligned. */
export const mdTable = (header, rows) =>
  [
    `| ${header.join(" | ")} |`,
    `|${header.map((_, k) => (k === 0 ? "---" : "---:")).join("|")}|`,
    ...rows.map((row) => `| ${row.join(" | ")} |`),
  ].join("\n");

/**
 * Targets ({ target, value, met, kernel? }) as console lines and as a markdown table; the
 * kernel figure is shown when the targets have one.
 */
export function targetLines(targets) {
  return targets.map(
    (t) =>
      `  ${t.met ? "MET   " : "MISSED"}  ${t.target}: ${t.value}${t.kernel === undefined ? "" : ` (kernel: ${t.kernel})`}`,
  );
}
export function targetsMd(targets) {
  const kernel = targets.some((t) => t.kernel !== undefined);
  return [
    kernel ? "| target | value | kernel | |" : "| target | value | |",
    kernel ? "|---|---|---|---|" : "|---|---|---|",
    ...targets.map(
      (t) => `| ${t.target} | ${t.value} |${kernel ? ` ${t.kernel} |` : ""} ${t.met ? "MET" : "**MISSED**"} |`,
    ),
  ];
}

/** Print each group's rows as a table (the scripts' per-group console output). */
export function printGroups(rows, header, cells) {
  for (const g of [...new Set(rows.map((r) => r.group))]) {
    console.log(`\n${g} (lower is better; p50 = median)`);
    console.log(textTable(header, rows.filter((r) => r.group === g).map(cells)));
  }
}

/** Print the closing line: targets met, the load average over the run, the run time. */
export function printRunEnd(targets, env, seconds) {
  const missed = targets.filter((t) => !t.met).length;
  console.log(
    `\n${targets.length - missed} of ${targets.length} targets met; load average ${env.loadAverageAtStart.join(" ")} → ${env.loadAverageAtEnd.join(" ")} (${env.cores} cores); run time ${seconds.toFixed(1)} s`,
  );
}

/** The first lines of a results .md: the title, then the environment and how it was made. */
export function resultsPreamble(title, script, env, kernelNote) {
  return [
    `# ${title}`,
    "",
    `${new Date().toISOString()} · ${env.cpu}, ${env.cores} cores · Node ${env.node} (V8 ${env.v8}) · tinybench ${env.tinybench}, timer ${env.timer}` +
      ` (resolution ~${env.timerResolutionNs} ns) · commit ${env.gitHead}, core wasm ${env.coreWasmSha256} · load average` +
      ` ${env.loadAverageAtStart.join(" ")} → ${env.loadAverageAtEnd.join(" ")} (shared machine) · ${env.run}.` +
      ` Generated by \`${script} --save\`; one process, so every ratio is a same-run ratio. ${kernelNote}`,
  ];
}

/** The per-group markdown tables of a results .md. */
export function groupsMd(rows, header, cells) {
  return [...new Set(rows.map((r) => r.group))].flatMap((g) => [
    `## ${g}`,
    "",
    mdTable(header, rows.filter((r) => r.group === g).map(cells)),
    "",
  ]);
}

/**
 * With `save` (--save), write bench/results/<name>.json (`data`, pretty-printed) and
 * bench/results/<name>.md (the markdown lines, joined) and return the paths written;
 * without it write nothing and return [] (the scripts print their results either way).
 */
export function writeResults(save, name, data, mdLines) {
  if (!save) {
    console.log(`(not saved: pass --save to write bench/results/${name}.{json,md})`);
    return [];
  }
  const out = new URL("bench/results/", root);
  mkdirSync(out, { recursive: true });
  writeFileSync(new URL(`${name}.json`, out), `${JSON.stringify(data, null, 2)}\n`);
  writeFileSync(new URL(`${name}.md`, out), mdLines.join("\n"));
  return [`bench/results/${name}.json`, `bench/results/${name}.md`];
}
