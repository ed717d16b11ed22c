// `dirtlog compare`'s command line: options (util.parseArgs, values with units), the help
// text, and the plain-text table and verdict. A bad option is a UsageError naming the
// option, the value and the accepted form (the CLI prints it and exits 2).
import { readFile } from "node:fs/promises";
import { type ParseArgsConfig, parseArgs } from "node:util";
import { KERNEL_COSTS, validateCosts } from "./compare.js";
import type { CompareResult, CompareScenario, CostTable } from "./compare_types.js";
import { parseLogMode } from "./log_mode.js";
import { UnitError, formatSize, parseDuration, parseRate, parseSize } from "./units.js";

export const DEFAULTS = {
  memory: "8GiB",
  vcpus: "2",
  workload: "uniform",
  "dirty-rate": "20k",
  modes: "bitmap,manual:256k,ring:4096,ring:65536",
  duration: "5s",
  interval: "1s",
  seed: "1",
};

export const RATIONALE =
  "8 GiB written at 20k pages/s per vCPU (2 vCPUs), uniformly, harvested every second: " +
  "about 2 % of the guest per harvest. A 4096-entry ring fills between harvests, so it is " +
  "reaped at each ring-full exit in small, quick harvests while its vCPUs stall; a " +
  "65536-entry ring never stalls but each harvest handles a second of entries; the bitmap " +
  "never stalls and costs the least memory per vCPU, and manual protect splits GET from " +
  "CLEAR: no mode wins every metric.";

export const HELP = `usage: dirtlog compare [options]

Ring against bitmap on the same workload, one mode after the other on a fresh VM with the
same guest: vCPU worker threads write while this thread harvests; every harvest is timed,
the run is checked for lost pages, and the kernel's cost for the same events is projected.

options (defaults in brackets):
  --memory SIZE        guest memory, e.g. 8GiB, 512MiB [${DEFAULTS.memory}]
  --backed             give the guest real bytes in the shared memory (≤ 3 GiB) and check a
                       pre-copy migration byte for byte [off: tracking only]
  --vcpus N            vCPU threads, 1..64 [${DEFAULTS.vcpus}]
  --workload W         sequential | uniform | hot-set[:HOT%[:WRITES%]] | zipf[:S] |
                       strided[:PAGES], over each vCPU's share of memory [${DEFAULTS.workload}]
                       (hot-set defaults 5%:90%, zipf 1, strided 16)
  --dirty-rate R       guest writes per second per vCPU: pages/s (20000, 20k, 1.5M), bytes/s
                       (800MB/s, 64MiB/s: / 4 KiB), or max [${DEFAULTS["dirty-rate"]}]
  --modes LIST         comma-separated: bitmap, manual[:CHUNK] (CLEAR chunk in pages, e.g.
                       manual:256k), ring[:ENTRIES] (e.g. ring:4096), each with optional +pml
                       [${DEFAULTS.modes}]
  --duration T         run time per mode, e.g. 4s, 500ms, 1m [${DEFAULTS.duration}]
  --interval T         the collector's harvest period (bitmap sync; ring reaper, which also
                       reaps at every ring-full exit, as QEMU does) [${DEFAULTS.interval}]
  --seed N             workload RNG seed, a positive integer [${DEFAULTS.seed}]
  --costs FILE         the kernel's per-operation costs as JSON (fields as in --json's
                       "costs") [measured on this kind of machine: shared/anchors/real-kvm.md]
  --json               print one JSON document with every figure instead of the table
  --out DIR            also write DIR/report.json and a self-contained DIR/report.html
  -h, --help           this text

Measured figures are this library's (WASM core, worker threads); projected ones are the
kernel's costs for the same counted events (GETs and bitmap words, CLEARs, ring entries and
RESETs, write faults, ring-full exits). Exit status: 0; 1 if a correctness check failed;
2 for bad usage.`;

export class UsageError extends Error {}

function usage(option: string, value: string, accepted: string): never {
  throw new UsageError(`--${option} ${JSON.stringify(value)}: ${accepted}`);
}

function unit<T>(option: string, value: string, parse: (s: string) => T): T {
  try {
    return parse(value);
  } catch (e) {
    if (e instanceof UnitError) usage(option, value, e.message);
    throw e;
  }
}

export interface Parsed {
  scenario: CompareScenario;
  json: boolean;
  out?: string;
  costsFile?: string;
  defaults: boolean;
}

const WORKLOADS = ["sequential", "uniform", "hot-set", "zipf", "strided"];

function percent(option: string, value: string, text: string): number {
  const m = /^(\d+(?:\.\d+)?)%$/.exec(text);
  const v = m ? Number(m[1]) / 100 : Number.NaN;
  if (!(v > 0 && v <= 1)) usage(option, value, "hot-set takes percentages above 0 and at most 100%, e.g. hot-set:5%:90%");
  return v;
}

/** util.parseArgs (strict, no positionals); its errors become a one-line UsageError (exit 2). */
export function parseOptions(
  argv: string[],
  options: NonNullable<ParseArgsConfig["options"]>,
): Record<string, string | boolean | undefined> {
  try {
    return parseArgs({ args: argv, strict: true, allowPositionals: false, options }).values as Record<
      string,
      string | boolean | undefined
    >;
  } catch (e) {
    throw new UsageError((e as Error).message.split("\n")[0]);
  }
}

export function parseCompareArgs(argv: string[]): Parsed | "help" {
  const values = parseOptions(argv, {
    memory: { type: "string" },
    backed: { type: "boolean" },
    vcpus: { type: "string" },
    workload: { type: "string" },
    "dirty-rate": { type: "string" },
    modes: { type: "string" },
    duration: { type: "string" },
    interval: { type: "string" },
    seed: { type: "string" },
    costs: { type: "string" },
    json: { type: "boolean" },
    out: { type: "string" },
    help: { type: "boolean", short: "h" },
  });
  if (values.help) return "help";
  const get = (k: keyof typeof DEFAULTS) => (values[k] as string | undefined) ?? DEFAULTS[k];
  const defaults = ["memory", "vcpus", "workload", "dirty-rate", "modes", "duration", "interval", "seed"].every(
    (k) => values[k] === undefined,
  );

  const memory = get("memory");
  const memoryBytes = unit("memory", memory, parseSize);
  if (memoryBytes < 1 << 20 || memoryBytes % 4096 !== 0) usage("memory", memory, "at least 1MiB, a whole number of 4 KiB pages");
  if (memoryBytes > 2 ** 40) usage("memory", memory, "at most 1TiB");
  const backed = values.backed === true;
  if (backed && memoryBytes > 3 * 2 ** 30) {
    usage("memory", memory, "--backed keeps guest bytes in the 4 GiB shared memory: at most 3GiB (or drop --backed)");
  }
  const vcpusText = get("vcpus");
  const vcpus = Number(vcpusText);
  if (!/^\d+$/.test(vcpusText) || vcpus < 1 || vcpus > 64) usage("vcpus", vcpusText, "a whole number from 1 to 64");
  if (memoryBytes / 4096 < vcpus) usage("memory", memory, "at least one page per vCPU");

  const workload = get("workload");
  const [pattern, a, b, ...rest] = workload.split(":");
  if (!WORKLOADS.includes(pattern) || rest.length > 0) {
    usage("workload", workload, "sequential, uniform, hot-set[:HOT%[:WRITES%]], zipf[:S] or strided[:PAGES]");
  }
  const scenarioWorkload: Partial<CompareScenario> = { pattern: pattern as CompareScenario["pattern"] };
  if (pattern === "hot-set") {
    if (a !== undefined) scenarioWorkload.hotPagesFraction = percent("workload", workload, a);
    if (b !== undefined) scenarioWorkload.hotFraction = percent("workload", workload, b);
  } else if (pattern === "zipf") {
    if (b !== undefined) usage("workload", workload, "zipf takes one exponent, e.g. zipf:1.2");
    if (a !== undefined) {
      const s = Number(a);
      if (!(s > 0 && s <= 8)) usage("workload", workload, "zipf's exponent is a number above 0 and at most 8, e.g. zipf:1.2");
      scenarioWorkload.zipfS = s;
    }
  } else if (pattern === "strided") {
    if (b !== undefined) usage("workload", workload, "strided takes one stride in pages, e.g. strided:16");
    if (a !== undefined) {
      if (!/^\d+$/.test(a) || Number(a) < 1) usage("workload", workload, "strided's stride is a whole number of pages ≥ 1");
      scenarioWorkload.stride = Number(a);
    }
  } else if (a !== undefined) {
    usage("workload", workload, `${pattern} takes no parameters`);
  }

  const rateText = get("dirty-rate");
  const dirtyRatePagesPerSec = unit("dirty-rate", rateText, parseRate);
  if (dirtyRatePagesPerSec > 1e9) usage("dirty-rate", rateText, "at most 1G pages/s (or max)");

  const modesText = get("modes");
  const modes = modesText.split(",").map((m) => m.trim());
  const names: string[] = [];
  for (const m of modes) {
    try {
      names.push(parseLogMode(m).name);
    } catch (e) {
      usage("modes", modesText, `${JSON.stringify(m)}: ${(e as { reason?: string }).reason ?? (e as Error).message}`);
    }
  }
  if (new Set(names).size !== names.length) usage("modes", modesText, "each mode once");

  const durationText = get("duration");
  const durationMs = unit("duration", durationText, parseDuration);
  if (durationMs < 100 || durationMs > 3_600_000) usage("duration", durationText, "from 100ms to 1h");
  const intervalText = get("interval");
  const intervalMs = unit("interval", intervalText, parseDuration);
  if (intervalMs < 1 || intervalMs > durationMs) usage("interval", intervalText, "from 1ms up to the --duration");

  const seedText = get("seed");
  if (!/^\d+$/.test(seedText) || BigInt(seedText) < 1n || BigInt(seedText) >= 2n ** 64n) {
    usage("seed", seedText, "a whole number from 1 to 2^64 - 1");
  }
  if (values.out !== undefined && (values.out as string).trim() === "") usage("out", "", "a directory");
  if (values.costs !== undefined && (values.costs as string).trim() === "") usage("costs", "", "a JSON file");

  return {
    scenario: {
      memoryBytes,
      backed,
      vcpus,
      pattern: scenarioWorkload.pattern as CompareScenario["pattern"],
      ...scenarioWorkload,
      dirtyRatePagesPerSec,
      modes: names,
      durationMs,
      intervalMs,
      seed: seedText,
    },
    json: values.json === true,
    out: values.out as string | undefined,
    costsFile: values.costs as string | undefined,
    defaults,
  };
}

export async function loadCosts(file: string | undefined): Promise<CostTable> {
  if (!file) return KERNEL_COSTS;
  let text: string;
  try {
    text = await readFile(file, "utf8");
  } catch (e) {
    usage("costs", file, `cannot be read (${(e as NodeJS.ErrnoException).code ?? (e as Error).message})`);
  }
  try {
    return validateCosts(JSON.parse(text));
  } catch (e) {
    usage("costs", file, `${(e as Error).message}; see --json's "costs" for the fields`);
  }
}

const fixed = (v: number, d = 1) => (Number.isFinite(v) ? v.toFixed(d) : "—");

/** The table: one column per mode, one row per figure, "lower/higher is better" per row. */
export function renderTable(r: CompareResult): string {
  const rows: Array<[string, string, (m: CompareResult["modes"][number]) => string]> = [
    ["harvest latency median, µs", "lower", (m) => fixed(m.collector.latencyUs.median)],
    ["harvest latency p99, µs", "lower", (m) => fixed(m.collector.latencyUs.p99)],
    ["harvest latency max, µs", "lower", (m) => fixed(m.collector.latencyUs.max)],
    ["harvests", "", (m) => String(m.collector.harvests)],
    ["collector ns per reported page", "lower", (m) => fixed(m.collector.nsPerReportedPage)],
    ["  projected (kernel)", "lower", (m) => fixed(m.projection.nsPerReportedPage)],
    ["kernel harvest per call, µs (proj.)", "lower", (m) => fixed(m.projection.harvestUsPerCall)],
    ["pages reported per second", "", (m) => fixed(m.collector.reportedPerSec, 0)],
    ["ring: reported twice (ring-full retries)", "", (m) => String(m.collector.ringFullRetries + m.collector.duplicates)],
    ["bitmap words scanned", "", (m) => String(m.collector.bitmapWords)],
    ["guest stores/s per vCPU", "higher", (m) => m.guest.storesPerSec.map((s) => fixed(s, 0)).join(" / ")],
    ["write faults/s per vCPU", "", (m) => m.guest.faultsPerSec.map((s) => fixed(s, 0)).join(" / ")],
    ["ring-full exits", "lower", (m) => String(m.guest.ringFullExits)],
    ["vCPU stall on full ring, ms", "lower", (m) => fixed(m.guest.ringFullStallMs)],
    ["  projected (kernel), ms", "lower", (m) => fixed(m.projection.ringFullStallMs)],
    ["tracking memory", "lower", (m) => formatSize(m.trackingBytes)],
    ["lost pages", "must be 0", (m) => String(m.correctness.lost)],
    ["correct", "", (m) => (m.correctness.ok ? "yes" : "NO")],
  ];
  const header = ["", "better", ...r.modes.map((m) => m.mode)];
  const body = rows.map(([label, better, f]) => [label, better, ...r.modes.map(f)]);
  const widths = header.map((h, k) => Math.max(h.length, ...body.map((row) => row[k].length)));
  const line = (cells: string[]) => cells.map((c, k) => (k < 2 ? c.padEnd(widths[k]) : c.padStart(widths[k]))).join("  ");
  return [line(header), ...body.map(line)].join("\n");
}

export function renderText(r: CompareResult): string {
  const s = r.scenario;
  const rate = s.dirtyRatePagesPerSec ? `${fixed(s.dirtyRatePagesPerSec, 0)} pages/s per vCPU` : "as fast as it goes";
  const out = [
    `dirtlog compare: ${formatSize(s.memoryBytes)} ${s.backed ? "backed" : "unbacked (tracking only)"}, ${s.vcpus} vCPUs, ${s.pattern}, ${rate}, ` +
      `${fixed(s.durationMs / 1000)} s per mode, harvest every ${s.intervalMs} ms`,
    `machine: ${r.environment.cpu}, ${r.environment.cores} cores, Node ${r.environment.node}`,
  ];
  if (r.rationale) out.push(`why these settings: ${r.rationale}`);
  out.push("", renderTable(r), "");
  for (const basis of ["measured", "projected"] as const) {
    const lines = r.verdict.filter((v) => v.basis === basis);
    out.push(basis === "measured" ? "verdict, measured (this library):" : `verdict, projected (the kernel's costs: ${r.costs.source}):`);
    if (lines.length === 0) out.push("  no difference");
    for (const v of lines) out.push(`  ${v.metric} (${v.better} is better): ${v.text}`);
  }
  out.push(
    "",
    r.ok ? "correctness: every mode reported every page it should (0 lost)" : "correctness: FAILED, see the table",
  );
  return out.join("\n");
}

