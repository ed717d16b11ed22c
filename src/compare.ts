// The compare engine: ring against bitmap on the same workload, one mode after the other,
// each on a fresh VM with the same guest (same memory, vCPUs, pattern, rate and seed).
// Per mode: the vCPUs run their workload in worker threads while this thread harvests
// through the mode's LogMode every `intervalMs` (ring modes also as soon as a ring filled,
// like QEMU's reaper), timing each harvest; then the vCPUs are paused, a final harvest is
// taken and correctness is checked; with `backed` a pre-copy migration must reproduce the
// guest byte for byte. The kernel events counted (GET calls and words, CLEAR calls, ring
// entries, RESETs, write faults, ring-full exits) times a CostTable give the projection:
// what real KVM would spend on the same run.
//
// Platform-neutral (no node: imports): it runs in Node (the CLI) and in a browser's Web
// Worker (the demo page, web/), where `onSample` feeds the live charts and the ring and
// bitmap views with what each harvest saw.
import type {
  CompareResult,
  CompareScenario,
  CostTable,
  HarvestPoint,
  ModeResult,
  Spread,
  VerdictLine,
} from "./compare_types.js";
import { type HarvestCounts, type LogMode, parseLogMode } from "./log_mode.js";
import { migrate } from "./migrate.js";
import type { Vcpu } from "./vcpu.js";
import { createVm } from "./vm.js";
import { splitRegion } from "./workload.js";

export type { CompareResult, CompareScenario, CostTable, ModeResult, VerdictLine } from "./compare_types.js";

/**
 * The kernel's per-operation costs on this kind of machine (AMD EPYC, 2 vCPUs, Linux 6.18,
 * kvm_pvm: upstream KVM's tracking code on its shadow MMU), from the project's
 * anchors/real-kvm.md: classic GET ~45 ns per dirty page; manual GET 7–24 µs per call for
 * 1–8 GiB (a copy: ~6.5 µs + 0.53 ns per bitmap word); CLEAR ~40 ns per dirty page; RESET
 * 55–75 ns per entry (65 here); userspace collect 1.5–2.5 ns per entry; a bitmap scan
 * ~0.3 ns per page; a write-protect fault ~2.4 µs (PVM; hardware KVM is far cheaper).
 */
export const KERNEL_COSTS: CostTable = {
  source:
    "real KVM measured on this kind of machine (AMD EPYC, 2 vCPUs, Linux 6.18, kvm_pvm shadow MMU): shared/anchors/real-kvm.md",
  getClassicNsPerDirtyPage: 45,
  getClassicNsPerWord: 0,
  getManualNsPerCall: 6500,
  getManualNsPerWord: 0.53,
  clearNsPerCall: 0,
  clearNsPerDirtyPage: 40,
  collectNsPerEntry: 2,
  resetNsPerCall: 0,
  resetNsPerEntry: 65,
  bitmapScanNsPerPage: 0.3,
  writeFaultNs: 2400,
};

const COST_KEYS = Object.keys(KERNEL_COSTS).filter((k) => k !== "source") as Array<Exclude<keyof CostTable, "source">>;

/** Check a cost table read from a file: every field a finite number ≥ 0, a source string. */
export function validateCosts(value: unknown): CostTable {
  if (typeof value !== "object" || value === null) throw new Error("the cost table must be a JSON object");
  const o = value as Record<string, unknown>;
  for (const k of Object.keys(o)) {
    if (k !== "source" && !COST_KEYS.includes(k as never)) throw new Error(`unknown cost ${JSON.stringify(k)}`);
  }
  const out = { ...KERNEL_COSTS, source: typeof o.source === "string" ? o.source : "a cost table file" };
  for (const k of COST_KEYS) {
    if (o[k] === undefined) throw new Error(`missing cost ${k}`);
    const v = o[k];
    if (typeof v !== "number" || !Number.isFinite(v) || v < 0) throw new Error(`cost ${k} must be a number ≥ 0`);
    out[k] = v;
  }
  return out;
}

export interface CompareProgress {
  mode: string;
  index: number;
  of: number;
  phase: "setup" | "run" | "check" | "done";
  /** 0..1 within the mode's run. */
  fraction: number;
  message?: string;
}

/** vCPU 0's dirty ring, read from the shared memory (struct kvm_dirty_gfn flags, kernel indices). */
export interface RingSnapshot {
  entries: number;
  /** used = dirtyIndex - resetIndex reaching this is a ring-full exit (entries minus the reserve). */
  softLimit: number;
  /** Free-running u32 counters: entries pushed, entries reset. Entry i lives at i & (entries - 1). */
  dirtyIndex: number;
  resetIndex: number;
  /** Per entry, in ring order: KVM_DIRTY_GFN_F_DIRTY (1), KVM_DIRTY_GFN_F_RESET (2), or 0 (free). */
  flags: Uint8Array;
  /**
   * A harvest's sample: the entries it collected (flags DIRTY → RESET) and KVM_RESET_DIRTY_RINGS
   * re-armed (→ free), as free-running indices [from, to): resetIndex before and after.
   */
  harvested?: { from: number; to: number };
}

/** What a bitmap harvest (KVM_GET_DIRTY_LOG [+ CLEAR]) returned, word by word. */
export interface BitmapSnapshot {
  /** Pages of the slot, and u64 words of its dirty bitmap (one bit per page). */
  pages: number;
  words: number;
  /** Per bitmap word: pages the harvest reported from it (0..64). */
  pagesPerWord: Uint8Array;
  /** Per summary word (one bit per bitmap word: 64 words, 4096 pages): 1 if the harvest reported a page under it. */
  summaryTaken: Uint8Array;
}

/** A live reading while a mode runs (`onSample`): at each harvest, and between harvests of a ring mode. */
export interface CompareSample {
  mode: string;
  /** The mode's index in the scenario. */
  index: number;
  /** "harvest": a harvest just ran (`point` is its timeline entry); "tick": between harvests (ring state only). */
  kind: "harvest" | "tick";
  /** Since the mode's vCPUs started. */
  tMs: number;
  point?: HarvestPoint;
  /** What the harvest did (GETs, bitmap words, CLEARs, ring entries, RESETs). */
  counts?: HarvestCounts;
  /** Each vCPU's stores since the mode's vCPUs started (cumulative). */
  vcpuStores: number[];
  /** Ring modes: vCPU 0's ring. */
  ring?: RingSnapshot;
  /** Bitmap modes, at a harvest: the words it took. */
  bitmap?: BitmapSnapshot;
}

export interface CompareOptions {
  costs?: CostTable;
  onProgress?: (p: CompareProgress) => void;
  /**
   * Live readings for charts (the demo page): called at each harvest (after it was timed:
   * reading the snapshot is not part of the latency) and, in ring modes, every
   * `sampleIntervalMs` between harvests. The result is the same with or without it.
   */
  onSample?: (s: CompareSample) => void;
  /** Between-harvest ring samples, ms [50]. */
  sampleIntervalMs?: number;
  /** Package version and the core's identity, for the environment. */
  environment?: Record<string, string | number | boolean>;
  rationale?: string;
}

const GPA = 0x1_0000_0000;
const PAGE = 4096;
const sleep = (ms: number) => new Promise((r) => setTimeout(r, ms));

interface NodeProcess {
  version?: string;
  hrtime?: { bigint?: () => bigint };
  getBuiltinModule?: (id: string) => unknown;
}
const nodeProcess = (globalThis as { process?: NodeProcess }).process;
const hrtime = nodeProcess?.hrtime?.bigint?.bind(nodeProcess.hrtime);

/**
 * The harvest clock: process.hrtime in Node (ns, a bigint); elsewhere performance.now() (ms;
 * a browser coarsens it, to 5 µs steps on a cross-origin isolated page).
 */
const clock: () => bigint | number = hrtime ?? (() => performance.now());
/** Nanoseconds since a reading of `clock`. */
const nsSince = (t: bigint | number): number =>
  typeof t === "bigint" ? Number((clock() as bigint) - t) : ((clock() as number) - t) * 1e6;

/** The machine: CPU model and cores (Node: os.cpus(); a browser: navigator.hardwareConcurrency). */
function hostEnvironment(): Record<string, string | number | boolean> {
  const os = nodeProcess?.getBuiltinModule?.("node:os") as typeof import("node:os") | undefined;
  if (os && nodeProcess?.version) {
    const cpus = os.cpus();
    return { cpu: cpus[0]?.model ?? "unknown", cores: cpus.length, node: nodeProcess.version };
  }
  const nav = (globalThis as { navigator?: { hardwareConcurrency?: number; userAgent?: string } }).navigator;
  return {
    cpu: "unknown",
    cores: nav?.hardwareConcurrency ?? 0,
    ...(nodeProcess?.version ? { node: nodeProcess.version } : {}),
    ...(nav?.userAgent && !nodeProcess?.version ? { userAgent: nav.userAgent } : {}),
  };
}

/** vCPU 0's ring as userspace sees it (a plain read of the mmap'ed entries' flags). */
function ringSnapshot(vcpu: Vcpu): RingSnapshot {
  const st = vcpu.dirtyRingState;
  const r = vcpu.dirtyRing;
  const words = new Uint32Array(r.buffer, r.byteOffset, r.byteLength >> 2);
  const flags = new Uint8Array(st.entries);
  for (let i = 0; i < st.entries; i++) flags[i] = words[i << 2] & 3;
  return { entries: st.entries, softLimit: st.softLimit, dirtyIndex: st.dirtyIndex, resetIndex: st.resetIndex, flags };
}

/** Which bitmap words (and summary words) a harvest's reported pages came from. */
function bitmapSnapshot(pages: number, offsets: readonly number[]): BitmapSnapshot {
  const words = Math.ceil(pages / 64);
  const pagesPerWord = new Uint8Array(words);
  const summaryTaken = new Uint8Array(Math.ceil(words / 64));
  for (const offset of offsets) {
    if (offset < 0 || offset >= pages) continue;
    pagesPerWord[offset >> 6]++;
    summaryTaken[offset >> 12] = 1;
  }
  return { pages, words, pagesPerWord, summaryTaken };
}

function spread(xs: number[]): Spread {
  if (xs.length === 0) return { median: 0, p99: 0, max: 0, count: 0 };
  const s = [...xs].sort((a, b) => a - b);
  const at = (q: number) => s[Math.min(s.length - 1, Math.ceil(q * s.length) - 1)];
  return { median: at(0.5), p99: at(0.99), max: s[s.length - 1], count: s.length };
}

function addCounts(into: HarvestCounts, c: HarvestCounts): void {
  for (const k of Object.keys(c) as Array<keyof HarvestCounts>) into[k] += c[k];
}

/** Run every mode of the scenario and compare them. */
/**
 * The VM a mode of `sc` needs: page tables for every page mapped at 4K (a dirty-logged slot
 * never maps huge: one 4 KiB table per 512 pages, plus the upper levels), the slot's
 * backing when backed, and room for the tracking structures (the slot's bitmaps; per vCPU
 * its ring, the ring's private copy and the collector's buffer, TLB, PML buffer) and a Zipf
 * workload's table. The shared memory holds at most 4 GiB: a guest that needs more does not
 * fit (fitsInOneVm says so before anything runs).
 */
export function vmSizing(
  sc: Pick<CompareScenario, "memoryBytes" | "backed" | "vcpus" | "pattern">,
  mode: LogMode,
): { maxMemoryBytes: number; mmuPoolBytes: number } {
  const pages = Math.floor(sc.memoryBytes / PAGE);
  const poolBytes = Math.ceil(pages / 512) * PAGE + (4 << 20);
  const tracking = mode.trackingBytes(pages, sc.vcpus);
  // the slot's metadata (memslot.ts: live and second bitmaps, host-present bitmap, summary)
  const words = Math.ceil(pages / 64);
  const meta = words * 8 * 3 + Math.ceil(words / 64) * 12 + PAGE;
  const zipf = sc.pattern === "zipf" ? pages * 4 : 0;
  const need = (sc.backed ? sc.memoryBytes : 0) + poolBytes + meta + 2 * tracking + sc.vcpus * (64 << 10) + zipf + (64 << 20);
  return { maxMemoryBytes: Math.min(4096 * 2 ** 20, need), mmuPoolBytes: poolBytes };
}

/**
 * Whether every mode of `sc` fits one VM of this model (the shared memory holds 4 GiB of
 * page tables, metadata and rings; unbacked guests of a few hundred GiB fit): undefined, or
 * why not (the ENOMEM of the step that failed). Creates and closes each VM.
 */
export async function fitsInOneVm(
  sc: Pick<CompareScenario, "memoryBytes" | "backed" | "vcpus" | "pattern" | "modes">,
): Promise<string | undefined> {
  for (const name of sc.modes) {
    const mode = parseLogMode(name);
    let vm: Awaited<ReturnType<typeof createVm>> | undefined;
    try {
      vm = await createVm({ ...vmSizing(sc, mode), ...mode.vmOptions });
      mode.createVmDone(vm);
      vm.setUserMemoryRegion({
        slot: 0,
        flags: mode.slotFlags,
        guestPhysAddr: GPA,
        memorySize: Math.floor(sc.memoryBytes / PAGE) * PAGE,
        backed: sc.backed,
      });
      for (let i = 0; i < sc.vcpus; i++) vm.createVcpu(i);
    } catch (e) {
      return `${mode.name}: ${(e as Error).message}`;
    } finally {
      await vm?.close();
    }
  }
  return undefined;
}

export async function compare(scenario: CompareScenario, options: CompareOptions = {}): Promise<CompareResult> {
  const costs = options.costs ?? KERNEL_COSTS;
  const modes = scenario.modes.map((m) => parseLogMode(m));
  const results: ModeResult[] = [];
  for (const [index, mode] of modes.entries()) {
    const progress = (phase: CompareProgress["phase"], fraction: number, message?: string) =>
      options.onProgress?.({ mode: mode.name, index, of: modes.length, phase, fraction, message });
    const onSample = options.onSample;
    const sample = onSample
      ? (s: Omit<CompareSample, "mode" | "index">) => onSample({ mode: mode.name, index, ...s })
      : undefined;
    results.push(await runMode(scenario, mode, costs, progress, sample, options.sampleIntervalMs ?? 50));
  }
  const verdict = verdictOf(results);
  return {
    tool: "dirtlog compare",
    version: String(options.environment?.version ?? ""),
    scenario,
    ...(options.rationale ? { rationale: options.rationale } : {}),
    costs,
    environment: {
      ...hostEnvironment(),
      ...options.environment,
    },
    modes: results,
    verdict,
    ok: results.every((r) => r.correctness.ok),
  };
}

async function runMode(
  sc: CompareScenario,
  mode: LogMode,
  costs: CostTable,
  progress: (phase: CompareProgress["phase"], fraction: number, message?: string) => void,
  sample?: (s: Omit<CompareSample, "mode" | "index">) => void,
  sampleIntervalMs = 50,
): Promise<ModeResult> {
  progress("setup", 0, "creating the VM");
  const pages = Math.floor(sc.memoryBytes / PAGE);
  const vm = await createVm({ ...vmSizing(sc, mode), ...mode.vmOptions });
  try {
    mode.createVmDone(vm);
    vm.setUserMemoryRegion({ slot: 0, flags: mode.slotFlags, guestPhysAddr: GPA, memorySize: pages * PAGE, backed: sc.backed });
    const regions = splitRegion(GPA, pages, sc.vcpus);
    const rate = sc.dirtyRatePagesPerSec;
    // a batch is about 1 ms of stores at the target rate, so pacing is smooth
    const batch = rate > 0 ? Math.max(16, Math.min(4096, Math.round(rate / 1000))) : 4096;
    const seed = BigInt(sc.seed);
    const vcpus = regions.map((r, i) => {
      const v = vm.createVcpu(i);
      v.setWorkload({
        pattern: sc.pattern,
        gpa: r.gpa,
        pages: r.pages,
        batch,
        seed: BigInt.asUintN(64, seed * 0x9e3779b97f4a7c15n + BigInt(i + 1)) || 1n,
        ...(sc.pattern === "hot-set"
          ? { hotPages: Math.max(1, Math.floor(r.pages * (sc.hotPagesFraction ?? 0.05))), hotFraction: sc.hotFraction ?? 0.9 }
          : {}),
        ...(sc.pattern === "zipf" ? { zipfS: sc.zipfS ?? 1 } : {}),
        ...(sc.pattern === "strided" ? { stride: sc.stride ?? 16 } : {}),
      });
      return v;
    });
    const regionOf = (offset: number) => Math.floor(offset / regions[0].pages);

    const totals: HarvestCounts = {
      reported: 0,
      getCalls: 0,
      bitmapWords: 0,
      clearCalls: 0,
      ringEntries: 0,
      ringResets: 0,
      resetCalls: 0,
    };
    const timeline: HarvestPoint[] = [];
    const vcpuStores: number[][] = [];
    let startStores: number[] = vcpus.map(() => 0);
    const latencies: number[] = [];
    let harvestNs = 0;
    let duplicates = 0;
    let outside = 0;
    let resetMismatches = 0;
    let lastStores = 0;
    const stores = () => vcpus.reduce((a, v) => a + Number(v.workloadStores), 0);
    // the pages of one harvest, checked after it is timed (the timed consumer only records)
    let got: number[] = [];
    const onPage = (_slot: number, offset: number) => {
      got.push(offset);
    };
    const seen = new Uint8Array(pages);
    const check = () => {
      for (const offset of got) {
        if (offset >= regions.length * regions[0].pages || regionOf(offset) >= regions.length) outside++;
        else if (seen[offset]) duplicates++;
        else seen[offset] = 1;
      }
      for (const offset of got) if (offset < pages) seen[offset] = 0;
      got = [];
    };
    let t0 = 0;
    const ring = mode.spec.kind === "dirty-ring";
    const harvest = (cause: HarvestPoint["cause"]) => {
      // sampled: vCPU 0's reset_index before the harvest (read before the timing starts)
      const resetBefore = sample && ring ? vcpus[0].dirtyRingState.resetIndex : 0;
      const t = clock();
      const c = mode.collectDirtyPages(vm, [0], onPage);
      const ns = nsSince(t);
      const bitmap = sample && !ring ? bitmapSnapshot(pages, got) : undefined;
      check();
      harvestNs += ns;
      latencies.push(ns / 1000);
      addCounts(totals, c);
      if (c.ringResets !== c.ringEntries) resetMismatches++;
      const now = stores();
      const point: HarvestPoint = {
        tMs: performance.now() - t0,
        latencyUs: ns / 1000,
        reported: c.reported,
        stores: now - lastStores,
        cause,
      };
      timeline.push(point);
      lastStores = now;
      const perVcpu = vcpus.map((v, i) => Number(v.workloadStores) - startStores[i]);
      vcpuStores.push(perVcpu);
      if (sample) {
        let ringState: RingSnapshot | undefined;
        if (ring) {
          ringState = ringSnapshot(vcpus[0]);
          ringState.harvested = { from: resetBefore, to: ringState.resetIndex };
        }
        sample({
          kind: "harvest",
          tMs: point.tMs,
          point: { ...point },
          counts: c,
          vcpuStores: [...perVcpu],
          ring: ringState,
          bitmap,
        });
      }
    };

    progress("run", 0, "starting the vCPUs");
    const before = vcpus.map((v) => v.stats);
    await Promise.all(vcpus.map((v) => v.startLoop({ rate })));
    t0 = performance.now();
    startStores = vcpus.map((v) => Number(v.workloadStores));
    lastStores = startStores.reduce((a, b) => a + b, 0);
    let nextHarvest = t0 + sc.intervalMs;
    let nextSample = t0;
    let fullSeen = 0;
    const ringFull = () => vcpus.reduce((a, v) => a + Number(v.stats.ringFullExits), 0);
    const end = t0 + sc.durationMs;
    while (true) {
      const now = performance.now();
      if (now >= end) break;
      const full = ring ? ringFull() : 0;
      if (ring && full !== fullSeen) {
        fullSeen = full;
        harvest("ring-full");
      } else if (now >= nextHarvest) {
        harvest("interval");
        nextHarvest = Math.max(nextHarvest + sc.intervalMs, performance.now());
      } else if (sample && ring && now >= nextSample) {
        nextSample = now + sampleIntervalMs;
        sample({
          kind: "tick",
          tMs: now - t0,
          vcpuStores: vcpus.map((v, i) => Number(v.workloadStores) - startStores[i]),
          ring: ringSnapshot(vcpus[0]),
        });
      }
      progress("run", Math.min(1, (performance.now() - t0) / sc.durationMs));
      await sleep(ring ? 1 : Math.max(1, Math.min(nextHarvest, end) - performance.now()));
    }
    const elapsedS = (performance.now() - t0) / 1000;
    const runStores = vcpus.map((v, i) => Number(v.workloadStores) - startStores[i]);
    for (const v of vcpus) await v.pause();
    progress("check", 1, "final harvest and checks");
    harvest("final");
    const after = vcpus.map((v) => v.stats);

    // Correctness: every harvested page was re-armed, so a page that is still writable
    // (D set under PML) was dirtied without a report reaching the collector
    const lost = vm.countSptes(0, GPA, pages, mode.spec.pml ? 1n << 9n : 1n << 1n);
    let migrationEqual: boolean | undefined;
    if (sc.backed) {
      for (const v of vcpus) v.resume();
      const m = await migrate(vm, { threshold: 64, maxRounds: 30 });
      migrationEqual = m.equal;
    }

    const faults = after.map((a, i) => Number(a.fastFaults + a.slowFaults - before[i].fastFaults - before[i].slowFaults));
    const ringFullExits = after.reduce((a, s, i) => a + Number(s.ringFullExits - before[i].ringFullExits), 0);
    const stallMs = after.reduce((a, s, i) => a + Number(s.ringFullStallNs - before[i].ringFullStallNs), 0) / 1e6;
    const projection = project(mode, totals, faults, ringFullExits, costs);
    const reported = totals.reported;
    const reportsMinusFaults = mode.spec.pml ? null : reported - faults.reduce((a, b) => a + b, 0);
    progress("done", 1);
    return {
      mode: mode.name,
      guest: {
        storesPerSec: runStores.map((s) => s / elapsedS),
        faultsPerSec: faults.map((f) => f / elapsedS),
        faults,
        ringFullExits,
        ringFullStallMs: stallMs,
      },
      collector: {
        harvests: latencies.length,
        latencyUs: spread(latencies),
        nsPerReportedPage: reported ? harvestNs / reported : 0,
        reportedPerSec: reported / elapsedS,
        reported,
        duplicates,
        ringFullRetries: ringFullExits,
        bitmapWords: totals.bitmapWords,
        getCalls: totals.getCalls,
        clearCalls: totals.clearCalls,
        ringEntries: totals.ringEntries,
        resetCalls: totals.resetCalls,
      },
      trackingBytes: mode.trackingBytes(pages, sc.vcpus),
      projection,
      correctness: {
        lost,
        outside,
        resetMismatches,
        reportsMinusFaults,
        ...(migrationEqual === undefined ? {} : { migrationEqual }),
        ok:
          lost === 0 &&
          outside === 0 &&
          resetMismatches === 0 &&
          (reportsMinusFaults ?? 0) === 0 &&
          migrationEqual !== false,
      },
      timeline,
      vcpuStores,
    };
  } finally {
    await vm.close();
  }
}

/** What the kernel would spend on the same events. */
function project(
  mode: LogMode,
  t: HarvestCounts,
  faults: number[],
  ringFullExits: number,
  c: CostTable,
): ModeResult["projection"] {
  let ns: number;
  if (mode.spec.kind === "dirty-ring") {
    ns = t.ringEntries * c.collectNsPerEntry + t.resetCalls * c.resetNsPerCall + t.ringResets * c.resetNsPerEntry;
  } else if (mode.spec.kind === "clear-log") {
    ns =
      t.getCalls * c.getManualNsPerCall +
      t.bitmapWords * c.getManualNsPerWord +
      t.clearCalls * c.clearNsPerCall +
      t.reported * c.clearNsPerDirtyPage +
      t.bitmapWords * 64 * c.bitmapScanNsPerPage;
  } else {
    ns =
      t.reported * c.getClassicNsPerDirtyPage +
      t.bitmapWords * c.getClassicNsPerWord +
      t.bitmapWords * 64 * c.bitmapScanNsPerPage;
  }
  const harvests = Math.max(1, mode.spec.kind === "dirty-ring" ? t.resetCalls : t.getCalls);
  // a vCPU at ring-full waits while the collector reaps and resets a full ring
  const soft = mode.spec.ringEntries - 64 - (mode.spec.pml ? 512 : 0);
  const stallNs = ringFullExits * soft * (c.collectNsPerEntry + c.resetNsPerEntry);
  return {
    collectorMs: ns / 1e6,
    nsPerReportedPage: t.reported ? ns / t.reported : 0,
    harvestUsPerCall: ns / 1000 / harvests,
    guestFaultMs: (faults.reduce((a, b) => a + b, 0) * c.writeFaultNs) / 1e6,
    ringFullStallMs: stallNs / 1e6,
  };
}

interface Metric {
  metric: string;
  better: "lower" | "higher";
  basis: "measured" | "projected";
  value: (m: ModeResult) => number;
  unit: (v: number) => string;
}

const us = (v: number) => `${v.toFixed(v < 10 ? 1 : 0)} µs`;
const ns = (v: number) => `${v.toFixed(v < 10 ? 1 : 0)} ns`;
const ms = (v: number) => `${v.toFixed(v < 10 ? 2 : 0)} ms`;
const bytes = (v: number) => (v >= 2 ** 20 ? `${(v / 2 ** 20).toFixed(1)} MiB` : `${(v / 1024).toFixed(0)} KiB`);
const rate = (v: number) => (v >= 1e6 ? `${(v / 1e6).toFixed(2)} M/s` : `${(v / 1e3).toFixed(1)} k/s`);

export const METRICS: Metric[] = [
  { metric: "harvest latency (median)", better: "lower", basis: "measured", value: (m) => m.collector.latencyUs.median, unit: us },
  { metric: "collector time per reported page", better: "lower", basis: "measured", value: (m) => m.collector.nsPerReportedPage, unit: ns },
  { metric: "vCPU time stalled on a full ring", better: "lower", basis: "measured", value: (m) => m.guest.ringFullStallMs, unit: ms },
  {
    metric: "guest stores per second (all vCPUs)",
    better: "higher",
    basis: "measured",
    value: (m) => m.guest.storesPerSec.reduce((a, b) => a + b, 0),
    unit: rate,
  },
  { metric: "tracking memory", better: "lower", basis: "measured", value: (m) => m.trackingBytes, unit: bytes },
  { metric: "kernel harvest time per call", better: "lower", basis: "projected", value: (m) => m.projection.harvestUsPerCall, unit: us },
  { metric: "kernel time per reported page", better: "lower", basis: "projected", value: (m) => m.projection.nsPerReportedPage, unit: ns },
  {
    metric: "kernel vCPU stall on a full ring",
    better: "lower",
    basis: "projected",
    value: (m) => m.projection.ringFullStallMs,
    unit: ms,
  },
];

const isRing = (m: ModeResult) => m.mode.startsWith("ring");

/**
 * Per metric, the best mode and how many times better it is than the best mode of the
 * other kind (ring against bitmap: the question compare answers); when every mode is of
 * one kind, than the next best.
 */
export function verdictOf(modes: ModeResult[]): VerdictLine[] {
  if (modes.length < 2) return [];
  const out: VerdictLine[] = [];
  for (const m of METRICS) {
    const ranked = [...modes].sort((a, b) => (m.better === "lower" ? m.value(a) - m.value(b) : m.value(b) - m.value(a)));
    const w = ranked[0];
    const r = ranked.find((x) => isRing(x) !== isRing(w)) ?? ranked[1];
    const wv = m.value(w);
    const rv = m.value(r);
    const worst = ranked[ranked.length - 1];
    const xv = m.value(worst);
    if (wv === rv) {
      // the best of each kind tie (e.g. neither stalled): name the mode that differs, if any
      if (xv === wv) continue;
      const tied = ranked.filter((x) => m.value(x) === wv).map((x) => x.mode);
      out.push({
        metric: m.metric,
        better: m.better,
        basis: m.basis,
        winner: w.mode,
        runnerUp: worst.mode,
        ratio: wv === 0 || xv === 0 ? null : m.better === "lower" ? xv / wv : wv / xv,
        text: `${tied.join(", ")}: ${wv === 0 ? "none" : m.unit(wv)}; ${worst.mode}: ${m.unit(xv)}`,
      });
      continue;
    }
    // within 5 % (noise on these machines): no winner to name
    if (wv !== 0 && rv !== 0 && Math.max(wv, rv) / Math.min(wv, rv) < 1.05) continue;
    const ratio = m.better === "lower" ? (wv === 0 ? null : rv / wv) : rv === 0 ? null : wv / rv;
    const times = ratio === null ? "no" : `${ratio.toFixed(ratio < 10 ? 2 : 0)}×`;
    const text =
      ratio === null
        ? m.better === "lower"
          ? `${w.mode} has none; ${r.mode} ${m.unit(rv)}`
          : `${w.mode} ${m.unit(wv)}; ${r.mode} none`
        : m.better === "lower"
          ? `${w.mode}: ${times} less ${m.metric} than ${r.mode} (${m.unit(wv)} vs ${m.unit(rv)})`
          : `${w.mode}: ${times} more ${m.metric} than ${r.mode} (${m.unit(wv)} vs ${m.unit(rv)})`;
    out.push({ metric: m.metric, better: m.better, basis: m.basis, winner: w.mode, runnerUp: r.mode, ratio, text });
  }
  return out;
}
