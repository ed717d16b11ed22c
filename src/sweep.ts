// The sweep engine (`dirtlog sweep`): a grid of compare() runs over guest size × dirty rate
// (× vCPUs), every cell the same modes (bitmap against each ring size) on the same workload,
// kept in short form: per mode the key figures measured and projected, per metric the winner
// and how many times better it is than the best mode of the other kind (ring against bitmap).
//
// Resumable: a CellStore (the CLI's is DIR/cells/<key>.json) keeps each finished cell under
// a key made from everything that decides its result (the cell's scenario, the shared
// options, the seed and the cost table); a rerun loads the cells it finds and runs the rest.
//
// Platform-neutral (no node: imports), like compare.ts.
import { type CompareProgress, compare as compareEngine, fitsInOneVm, METRICS } from "./compare.js";
import type { CompareResult, CompareScenario, CostTable, ModeResult } from "./compare_types.js";
import { parseLogMode } from "./log_mode.js";

/** The version of the cell files' shape: a cell of another format is run again. */
export const SWEEP_CELL_FORMAT = 1;

/** What a sweep runs: the grid's axes and what every cell shares. */
export interface SweepSpec {
  memoryBytes: number[];
  /** Guest stores per second per vCPU; 0 = as fast as it goes ("max"). */
  dirtyRatesPagesPerSec: number[];
  vcpus: number[];
  /** The modes of every cell, as parseLogMode names them. */
  modes: string[];
  /** The rest of each cell's compare scenario (workload, duration, interval, seed, backed). */
  base: Omit<CompareScenario, "memoryBytes" | "dirtyRatePagesPerSec" | "vcpus" | "modes">;
}

/** One mode of a cell, in short form (no timeline). */
export interface SweepModeFigures {
  mode: string;
  harvests: number;
  /** Harvest latency, µs. */
  latencyUs: { median: number; p99: number; max: number };
  /** Collector time per reported page, ns. */
  nsPerReportedPage: number;
  /** vCPU time stalled on a full ring (all vCPUs), ms. */
  stallMs: number;
  ringFullExits: number;
  trackingBytes: number;
  /** Guest stores per second reached (all vCPUs): the rate asked for, or what the model managed. */
  storesPerSec: number;
  reported: number;
  /** The kernel's cost for the same events (compare's projection). */
  projected: {
    harvestUsPerCall: number;
    nsPerReportedPage: number;
    stallMs: number;
    collectorMs: number;
    guestFaultMs: number;
  };
  correctness: { lost: number; outside: number; resetMismatches: number; reportsMinusFaults: number | null };
  ok: boolean;
}

export type ModeKind = "ring" | "bitmap";

/** Per metric: the best mode, and how many times better than the best mode of the other kind. */
export interface SweepWinner {
  metric: string;
  basis: "measured" | "projected";
  better: "lower" | "higher";
  /** The best mode ("" on a tie). */
  winner: string;
  /** Its kind: ring (ring:N) or bitmap (bitmap, manual); "tie" when within 5 % of the other kind's best. */
  kind: ModeKind | "tie";
  /** The best mode of the other kind (the next best when every mode is of one kind). */
  runnerUp: string;
  /** The best value overall and the runner-up's. */
  value: number;
  runnerUpValue: number;
  /** How many times better (≥ 1); null when the winner's value is 0 and the runner-up's is not ("none vs some"). */
  ratio: number | null;
}

export interface SweepCell {
  format: number;
  key: string;
  /** Position in the grid (vCPUs, memory, dirty rate order). */
  index: number;
  memoryBytes: number;
  dirtyRatePagesPerSec: number;
  vcpus: number;
  /** The compare scenario the cell ran. */
  scenario: CompareScenario;
  costsSource: string;
  modes: SweepModeFigures[];
  winners: SweepWinner[];
  ok: boolean;
  /** compare threw: the message (the cell has no figures and is not stored). */
  error?: string;
  /** Wall time of the cell (all its modes), ms. */
  wallMs: number;
  finishedAt: string;
  version: string;
  /** Loaded from the store instead of run (in the sweep's result only, never stored). */
  resumed?: boolean;
}

/** Where finished cells are kept between runs (the CLI's: DIR/cells/<key>.json). */
export interface CellStore {
  /** The stored cell's JSON, parsed, or undefined when there is none. Throws if unreadable. */
  load(key: string): Promise<unknown>;
  save(key: string, cell: SweepCell): Promise<void>;
  /** Where a key lives, for messages. */
  where(key: string): string;
}

export type SweepEvent =
  | { kind: "plan"; total: number; toRun: number; resumed: number; stale: string[]; estimateMs: number }
  | { kind: "start"; index: number; position: number; toRun: number; label: string; etaMs: number }
  | { kind: "mode"; index: number; position: number; toRun: number; label: string; progress: CompareProgress }
  | {
      kind: "done";
      index: number;
      position: number;
      toRun: number;
      label: string;
      cell: SweepCell;
      etaMs: number;
    };

export interface SweepOptions {
  costs: CostTable;
  store?: CellStore;
  /** The package version and the core's identity (as compare's environment). */
  environment?: Record<string, string | number | boolean>;
  onEvent?: (e: SweepEvent) => void;
  /** The engine a cell runs (tests substitute it). */
  compare?: typeof compareEngine;
  /** Wall clock, ms (tests substitute it). */
  now?: () => number;
}

export interface SweepResult {
  tool: "dirtlog sweep";
  version: string;
  /** The grid and what its cells share. */
  scenario: SweepSpec;
  /** The metrics the markdown tables and the map lead with. */
  headline: { measured: string; projected: string };
  costs: CostTable;
  environment: Record<string, string | number | boolean>;
  cells: SweepCell[];
  /** Cells loaded from the store / run now. */
  resumed: number;
  ran: number;
  /** This run's wall time, ms. */
  wallMs: number;
  /** Every cell ran and every mode of every cell passed its correctness checks. */
  ok: boolean;
  /** Cells that failed: a correctness check (which modes) or an error. */
  failed: Array<{ key: string; label: string; modes: string[]; error?: string }>;
}

export const HEADLINE = { measured: "harvest latency (median)", projected: "kernel harvest time per call" };

/** A time for people from seconds: "469 µs", "2.34 ms", "1.20 s", "35.0 ns". */
export function fmtTime(seconds: number): string {
  const a = Math.abs(seconds);
  const p = (v: number) => (v >= 100 ? v.toFixed(0) : v.toPrecision(3));
  if (a === 0) return "0";
  if (a < 1e-6) return `${p(seconds * 1e9)} ns`;
  if (a < 1e-3) return `${p(seconds * 1e6)} µs`;
  if (a < 1) return `${p(seconds * 1e3)} ms`;
  return `${p(seconds)} s`;
}

const fmtBytesShort = (b: number): string => {
  const units = ["B", "KiB", "MiB", "GiB", "TiB"];
  let i = 0;
  let v = b;
  while (v >= 1024 && i < units.length - 1) {
    v /= 1024;
    i++;
  }
  return `${Number.isInteger(v) ? v : v.toPrecision(3)} ${units[i]}`;
};

const fmtRate = (v: number): string =>
  v >= 1e6 ? `${(v / 1e6).toPrecision(3)} M/s` : v >= 1e3 ? `${(v / 1e3).toPrecision(3)} k/s` : `${v.toFixed(0)} /s`;

/** compare's METRICS read from a cell's short form (same names, same basis, same "better"). */
export const SWEEP_METRICS: Array<{
  metric: string;
  basis: "measured" | "projected";
  better: "lower" | "higher";
  value: (f: SweepModeFigures) => number;
  format: (v: number) => string;
}> = [
  {
    metric: "harvest latency (median)",
    basis: "measured",
    better: "lower",
    value: (f) => f.latencyUs.median,
    format: (v) => fmtTime(v / 1e6),
  },
  {
    metric: "collector time per reported page",
    basis: "measured",
    better: "lower",
    value: (f) => f.nsPerReportedPage,
    format: (v) => fmtTime(v / 1e9),
  },
  {
    metric: "vCPU time stalled on a full ring",
    basis: "measured",
    better: "lower",
    value: (f) => f.stallMs,
    format: (v) => fmtTime(v / 1e3),
  },
  {
    metric: "guest stores per second (all vCPUs)",
    basis: "measured",
    better: "higher",
    value: (f) => f.storesPerSec,
    format: fmtRate,
  },
  {
    metric: "tracking memory",
    basis: "measured",
    better: "lower",
    value: (f) => f.trackingBytes,
    format: fmtBytesShort,
  },
  {
    metric: "kernel harvest time per call",
    basis: "projected",
    better: "lower",
    value: (f) => f.projected.harvestUsPerCall,
    format: (v) => fmtTime(v / 1e6),
  },
  {
    metric: "kernel time per reported page",
    basis: "projected",
    better: "lower",
    value: (f) => f.projected.nsPerReportedPage,
    format: (v) => fmtTime(v / 1e9),
  },
  {
    metric: "kernel vCPU stall on a full ring",
    basis: "projected",
    better: "lower",
    value: (f) => f.projected.stallMs,
    format: (v) => fmtTime(v / 1e3),
  },
];

/** Compare's own rule: ring against bitmap. */
export const kindOf = (mode: string): ModeKind => (mode.startsWith("ring") ? "ring" : "bitmap");

/** 1073741824 → "1GiB", 65536 → "64KiB" (whole units only; else bytes). */
export function compactSize(bytes: number): string {
  for (const [unit, scale] of [
    ["TiB", 2 ** 40],
    ["GiB", 2 ** 30],
    ["MiB", 2 ** 20],
    ["KiB", 2 ** 10],
  ] as const) {
    if (bytes >= scale && bytes % scale === 0) return `${bytes / scale}${unit}`;
  }
  return `${bytes}B`;
}

/** 1000 → "1k", 1500000 → "1.5M", 0 → "max" (pages per second). */
export function compactRate(pagesPerSec: number): string {
  if (pagesPerSec === 0) return "max";
  const fmt = (v: number) => String(Number(v.toPrecision(6)));
  if (pagesPerSec >= 1e6) return `${fmt(pagesPerSec / 1e6)}M`;
  if (pagesPerSec >= 1e3) return `${fmt(pagesPerSec / 1e3)}k`;
  return fmt(pagesPerSec);
}

/** "4 GiB × 10k/s × 2 vCPUs". */
export function cellLabel(c: { memoryBytes: number; dirtyRatePagesPerSec: number; vcpus: number }): string {
  const size = compactSize(c.memoryBytes).replace(/([0-9])([A-Z])/, "$1 $2");
  const rate = c.dirtyRatePagesPerSec === 0 ? "max rate" : `${compactRate(c.dirtyRatePagesPerSec)}/s`;
  return `${size} × ${rate} × ${c.vcpus} vCPU${c.vcpus === 1 ? "" : "s"}`;
}

/** JSON with object keys sorted (a stable text to hash). */
function canonical(v: unknown): string {
  if (Array.isArray(v)) return `[${v.map(canonical).join(",")}]`;
  if (v && typeof v === "object") {
    const o = v as Record<string, unknown>;
    return `{${Object.keys(o)
      .filter((k) => o[k] !== undefined)
      .sort()
      .map((k) => `${JSON.stringify(k)}:${canonical(o[k])}`)
      .join(",")}}`;
  }
  return JSON.stringify(v);
}

/** FNV-1a, 64 bits, as 16 hex digits. */
function fnv1a64(text: string): string {
  let h = 0xcbf29ce484222325n;
  for (const b of new TextEncoder().encode(text)) {
    h ^= BigInt(b);
    h = (h * 0x100000001b3n) & 0xffffffffffffffffn;
  }
  return h.toString(16).padStart(16, "0");
}

/**
 * A cell's key: readable (size, rate, vCPUs) and a hash of everything that decides its
 * result: the whole scenario (modes, workload, duration, interval, seed, backed) and the
 * cost table. Same options, same key; any change, another key.
 */
export function cellKey(scenario: CompareScenario, costs: CostTable): string {
  const hash = fnv1a64(canonical({ format: SWEEP_CELL_FORMAT, scenario, costs }));
  return `${compactSize(scenario.memoryBytes)}_${compactRate(scenario.dirtyRatePagesPerSec)}_${scenario.vcpus}vcpu_${hash.slice(0, 12)}`;
}

/** The grid's cells in order: per vCPU count, per guest size (rows), per dirty rate (columns). */
export function sweepScenarios(spec: SweepSpec): CompareScenario[] {
  const out: CompareScenario[] = [];
  for (const vcpus of spec.vcpus) {
    for (const memoryBytes of spec.memoryBytes) {
      for (const dirtyRatePagesPerSec of spec.dirtyRatesPagesPerSec) {
        out.push({ ...spec.base, memoryBytes, vcpus, dirtyRatePagesPerSec, modes: [...spec.modes] });
      }
    }
  }
  return out;
}

const sum = (xs: number[]) => xs.reduce((a, b) => a + b, 0);

function figures(m: ModeResult): SweepModeFigures {
  const { lost, outside, resetMismatches, reportsMinusFaults } = m.correctness;
  return {
    mode: m.mode,
    harvests: m.collector.harvests,
    latencyUs: { median: m.collector.latencyUs.median, p99: m.collector.latencyUs.p99, max: m.collector.latencyUs.max },
    nsPerReportedPage: m.collector.nsPerReportedPage,
    stallMs: m.guest.ringFullStallMs,
    ringFullExits: m.guest.ringFullExits,
    trackingBytes: m.trackingBytes,
    storesPerSec: sum(m.guest.storesPerSec),
    reported: m.collector.reported,
    projected: {
      harvestUsPerCall: m.projection.harvestUsPerCall,
      nsPerReportedPage: m.projection.nsPerReportedPage,
      stallMs: m.projection.ringFullStallMs || 0, // bitmap modes: -0 (no ring)
      collectorMs: m.projection.collectorMs,
      guestFaultMs: m.projection.guestFaultMs,
    },
    correctness: { lost, outside, resetMismatches, reportsMinusFaults },
    ok: m.correctness.ok,
  };
}

/**
 * Per compare metric (compare's METRICS: the same values, the same "better"), the winner
 * and its ratio to the best mode of the other kind; within 5 % of each other (compare's
 * noise threshold) it is a tie. Unlike compare's verdict every metric gets a line, so the
 * map has a value in every cell.
 */
export function winnersOf(modes: ModeResult[]): SweepWinner[] {
  if (modes.length < 2) return [];
  return METRICS.map((m) => {
    const ranked = [...modes].sort((a, b) =>
      m.better === "lower" ? m.value(a) - m.value(b) : m.value(b) - m.value(a),
    );
    const w = ranked[0];
    const r = ranked.find((x) => kindOf(x.mode) !== kindOf(w.mode)) ?? ranked[1];
    const wv = m.value(w);
    const rv = m.value(r);
    const lo = Math.min(wv, rv);
    const hi = Math.max(wv, rv);
    const ratio = lo === 0 ? (hi === 0 ? 1 : null) : hi / lo;
    const tie = ratio !== null && ratio < 1.05;
    return {
      metric: m.metric,
      basis: m.basis,
      better: m.better,
      winner: tie ? "" : w.mode,
      kind: tie ? "tie" : kindOf(w.mode),
      runnerUp: r.mode,
      value: wv,
      runnerUpValue: rv,
      ratio,
    };
  });
}

/** The short form of a compare result. */
export function summarizeCell(
  index: number,
  key: string,
  result: CompareResult,
  wallMs: number,
  finishedAt: string,
): SweepCell {
  const s = result.scenario;
  return {
    format: SWEEP_CELL_FORMAT,
    key,
    index,
    memoryBytes: s.memoryBytes,
    dirtyRatePagesPerSec: s.dirtyRatePagesPerSec,
    vcpus: s.vcpus,
    scenario: s,
    costsSource: result.costs.source,
    modes: result.modes.map(figures),
    winners: winnersOf(result.modes),
    ok: result.ok && result.modes.every((m) => m.correctness.ok),
    wallMs,
    finishedAt,
    version: result.version,
  };
}

/** A stored cell is reused only if it is a cell of this format, for exactly this scenario. */
export function storedCellMatches(value: unknown, key: string, scenario: CompareScenario): value is SweepCell {
  if (typeof value !== "object" || value === null) return false;
  const c = value as Partial<SweepCell>;
  return (
    c.format === SWEEP_CELL_FORMAT &&
    c.key === key &&
    canonical(c.scenario) === canonical(scenario) &&
    Array.isArray(c.modes) &&
    c.modes.length === scenario.modes.length &&
    Array.isArray(c.winners) &&
    typeof c.ok === "boolean"
  );
}

/** Time left: the mean of the finished cells' durations (or a guess before the first) per cell to go. */
export function etaMs(finished: readonly number[], remaining: number, guessPerCellMs: number): number {
  const per = finished.length ? sum([...finished]) / finished.length : guessPerCellMs;
  return Math.max(0, per * remaining);
}

/** Before any cell ran: each mode's run plus about 150 ms of VM setup and checks. */
export function guessCellMs(spec: SweepSpec): number {
  return spec.modes.length * (spec.base.durationMs + 150);
}


/**
 * Does every (guest size, vCPUs, mode) of the grid fit the model? Creates each VM the way
 * compare's runMode sizes it (the VM's memory holds the page-table pool, the memslot's
 * metadata and bitmaps, each vCPU's rings and buffers; guest bytes only when backed) and
 * closes it. Returns the combinations that do not fit, with the kernel-style error.
 */
export async function checkGridFits(
  spec: SweepSpec,
): Promise<Array<{ memoryBytes: number; vcpus: number; mode: string; message: string }>> {
  const problems: Array<{ memoryBytes: number; vcpus: number; mode: string; message: string }> = [];
  for (const memoryBytes of spec.memoryBytes) {
    for (const vcpus of spec.vcpus) {
      for (const name of spec.modes) {
        // the VM exactly as compare sizes and fills it (compare.ts vmSizing)
        const message = await fitsInOneVm({ ...spec.base, memoryBytes, vcpus, modes: [name] });
        if (message !== undefined) problems.push({ memoryBytes, vcpus, mode: parseLogMode(name).name, message: message.replace(/^[^:]+: /, "") });
      }
    }
  }
  return problems;
}

/**
 * For a combination checkGridFits refused: the largest guest size (whole GiB) or vCPU count
 * that fits with every mode of the grid, the other axis unchanged; 0 when none does.
 */
export async function largestThatFits(
  spec: SweepSpec,
  p: { memoryBytes: number; vcpus: number },
  axis: "memory" | "vcpus",
): Promise<number> {
  const fits = async (n: number) =>
    (
      await checkGridFits({
        ...spec,
        memoryBytes: [axis === "memory" ? n * 2 ** 30 : p.memoryBytes],
        vcpus: [axis === "vcpus" ? n : p.vcpus],
      })
    ).length === 0;
  let lo = 0;
  let hi = axis === "memory" ? Math.floor(p.memoryBytes / 2 ** 30) : p.vcpus;
  if (hi > 0 && (await fits(hi))) return hi; // (a fraction of a GiB above a whole one)
  while (hi - lo > 1) {
    const mid = Math.floor((lo + hi) / 2);
    if (await fits(mid)) lo = mid;
    else hi = mid;
  }
  return lo;
}

/** Run the grid: load what the store has, run the rest, one cell after the other. */
export async function runSweep(spec: SweepSpec, options: SweepOptions): Promise<SweepResult> {
  const now = options.now ?? (() => performance.now());
  const run = options.compare ?? compareEngine;
  const emit = options.onEvent ?? (() => {});
  const started = now();
  const scenarios = sweepScenarios(spec);
  const keys = scenarios.map((s) => cellKey(s, options.costs));
  const cells: Array<SweepCell | undefined> = scenarios.map(() => undefined);
  const stale: string[] = [];
  if (options.store) {
    for (const [i, key] of keys.entries()) {
      let stored: unknown;
      try {
        stored = await options.store.load(key);
      } catch {
        stored = null; // unreadable or not JSON: run the cell again
      }
      if (stored === undefined) continue;
      if (storedCellMatches(stored, key, scenarios[i])) cells[i] = { ...stored, index: i, resumed: true };
      else stale.push(options.store.where(key));
    }
  }
  const todo = scenarios.map((_, i) => i).filter((i) => cells[i] === undefined);
  const guess = guessCellMs(spec);
  emit({
    kind: "plan",
    total: scenarios.length,
    toRun: todo.length,
    resumed: scenarios.length - todo.length,
    stale,
    estimateMs: etaMs([], todo.length, guess),
  });
  const durations: number[] = [];
  let version = String(options.environment?.version ?? "");
  let environment: Record<string, string | number | boolean> = { ...options.environment };
  for (const [k, i] of todo.entries()) {
    const scenario = scenarios[i];
    const label = cellLabel(scenario);
    const position = k + 1;
    emit({
      kind: "start",
      index: i,
      position,
      toRun: todo.length,
      label,
      etaMs: etaMs(durations, todo.length - k, guess),
    });
    const t0 = now();
    let cell: SweepCell;
    try {
      const result = await run(scenario, {
        costs: options.costs,
        environment: options.environment,
        onProgress: (progress) => emit({ kind: "mode", index: i, position, toRun: todo.length, label, progress }),
      });
      environment = result.environment;
      version = result.version;
      cell = summarizeCell(i, keys[i], result, now() - t0, new Date().toISOString());
    } catch (e) {
      cell = {
        format: SWEEP_CELL_FORMAT,
        key: keys[i],
        index: i,
        memoryBytes: scenario.memoryBytes,
        dirtyRatePagesPerSec: scenario.dirtyRatePagesPerSec,
        vcpus: scenario.vcpus,
        scenario,
        costsSource: options.costs.source,
        modes: [],
        winners: [],
        ok: false,
        error: e instanceof Error ? e.message : String(e),
        wallMs: now() - t0,
        finishedAt: new Date().toISOString(),
        version,
      };
    }
    // a finished cell is kept (a failed correctness check included: it is the result); a
    // cell that threw is not, so a rerun tries it again
    if (cell.error === undefined) await options.store?.save(keys[i], cell);
    cells[i] = cell;
    durations.push(cell.wallMs);
    emit({
      kind: "done",
      index: i,
      position,
      toRun: todo.length,
      label,
      cell,
      etaMs: etaMs(durations, todo.length - position, guess),
    });
  }
  const all = cells as SweepCell[];
  const failed = all
    .filter((c) => !c.ok)
    .map((c) => ({
      key: c.key,
      label: cellLabel(c),
      modes: c.modes.filter((m) => !m.ok).map((m) => m.mode),
      ...(c.error !== undefined ? { error: c.error } : {}),
    }));
  return {
    tool: "dirtlog sweep",
    version,
    scenario: spec,
    headline: HEADLINE,
    costs: options.costs,
    environment,
    cells: all,
    resumed: scenarios.length - todo.length,
    ran: todo.length,
    wallMs: now() - started,
    ok: failed.length === 0,
    failed,
  };
}

// ---- the markdown tables ----

const times = (r: number) => `×${r.toFixed(r < 10 ? 2 : r < 100 ? 1 : 0)}`;

/** A map cell in words: "ring:4096 ×3.20", "tie ×1.02", "bitmap (none vs some)", "error". */
export function winnerText(c: SweepCell, metric: string): string {
  if (c.error !== undefined) return "error";
  const w = c.winners.find((x) => x.metric === metric);
  let text: string;
  if (!w) text = "—";
  else if (w.kind === "tie")
    text = w.value === 0 && w.runnerUpValue === 0 ? "tie (none)" : `tie ${times(w.ratio ?? 1)}`;
  else if (w.ratio === null) text = `${w.winner} (none vs ${w.runnerUp})`;
  else text = `${w.winner} ${times(w.ratio)}`;
  return c.ok ? text : `${text} ✗`;
}

/** The vCPU counts of the result, each with its cells by [memory][rate]. */
export function gridsOf(r: SweepResult): Array<{ vcpus: number; rows: SweepCell[][] }> {
  const { memoryBytes, dirtyRatesPagesPerSec, vcpus } = r.scenario;
  const at = new Map(r.cells.map((c) => [`${c.vcpus}/${c.memoryBytes}/${c.dirtyRatePagesPerSec}`, c]));
  return vcpus.map((v) => ({
    vcpus: v,
    rows: memoryBytes.map((m) =>
      dirtyRatesPagesPerSec.map((d) => at.get(`${v}/${m}/${d}`)).filter((c): c is SweepCell => c !== undefined),
    ),
  }));
}

/** One table: rows = guest size, columns = dirty rate, each cell "winner ×ratio". */
export function markdownGrid(r: SweepResult, metric: string, vcpus: number): string {
  const grid = gridsOf(r).find((g) => g.vcpus === vcpus);
  const head = [
    "memory \\ dirty rate",
    ...r.scenario.dirtyRatesPagesPerSec.map((d) => (d === 0 ? "max" : `${compactRate(d)}/s`)),
  ];
  const lines = [`| ${head.join(" | ")} |`, `|${head.map((_, k) => (k === 0 ? "---" : "---:")).join("|")}|`];
  for (const [k, row] of (grid?.rows ?? []).entries()) {
    const size = compactSize(r.scenario.memoryBytes[k]).replace(/([0-9])([A-Z])/, "$1 $2");
    lines.push(`| ${size} | ${row.map((c) => winnerText(c, metric)).join(" | ")} |`);
  }
  return lines.join("\n");
}

const fmtMs = (ms: number) =>
  ms >= 60_000 ? `${(ms / 60_000).toFixed(1)} min` : `${(ms / 1000).toFixed(ms < 10_000 ? 1 : 0)} s`;

/** sweep.md: what ran, then per vCPU count the headline tables (measured, projected). */
export function renderMarkdown(r: SweepResult): string {
  const s = r.scenario;
  const b = s.base;
  const env = r.environment;
  const out = [
    "# dirtlog sweep",
    "",
    `${r.cells.length} cells: guest size ${s.memoryBytes.map(compactSize).join(", ")} × dirty rate ` +
      `${s.dirtyRatesPagesPerSec.map(compactRate).join(", ")} pages/s per vCPU × ${s.vcpus.join(", ")} vCPU${s.vcpus.length === 1 && s.vcpus[0] === 1 ? "" : "s"}; ` +
      `modes ${s.modes.join(", ")}; ${b.pattern} writes, ${b.backed ? "backed" : "unbacked (tracking only)"}, ` +
      `${b.durationMs} ms per mode, harvest every ${b.intervalMs} ms, seed ${b.seed}.`,
    `Machine: ${env.cpu ?? "?"}, ${env.cores ?? "?"} cores, Node ${env.node ?? "?"}; dirtlog ${r.version}. ` +
      `This run: ${r.ran} cell${r.ran === 1 ? "" : "s"} run, ${r.resumed} resumed, ${fmtMs(r.wallMs)}.`,
    "",
    "Each cell: the mode that wins and how many times better it is than the best mode of the other kind " +
      "(ring against bitmap); `tie` within 5 %; ✗ a correctness check failed.",
  ];
  for (const g of gridsOf(r)) {
    const v = `${g.vcpus} vCPU${g.vcpus === 1 ? "" : "s"}`;
    out.push(
      "",
      `## Measured: ${r.headline.measured}, ${v} — lower is better`,
      "",
      markdownGrid(r, r.headline.measured, g.vcpus),
      "",
      `## Projected: ${r.headline.projected}, ${v} — lower is better`,
      "",
      markdownGrid(r, r.headline.projected, g.vcpus),
    );
  }
  out.push(
    "",
    `Projected: the kernel's per-operation costs (${r.costs.source}) applied to the events each mode counted.`,
  );
  if (!r.ok) {
    out.push("", "**Failed cells:**", "");
    for (const f of r.failed)
      out.push(`- ${f.label}: ${f.error ?? `correctness check failed in ${f.modes.join(", ")}`}`);
  }
  return `${out.join("\n")}\n`;
}
