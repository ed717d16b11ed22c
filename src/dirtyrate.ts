// The dirty rate of a running workload, measured the three ways QEMU's `calc-dirty-rate`
// does (migration/dirtyrate.c), beside the true rate:
//
//   sampling  page sampling (DIRTY_RATE_MEASURE_MODE_PAGE_SAMPLING): hash a random sample
//             of pages (`samplePagesPerGiB`, QEMU's sample_pages_per_gigabytes: n =
//             bytes × per-GiB >> 30, drawn with replacement from [0, pages - 1) as
//             g_rand_int_range does) at the window's start and end; a changed hash is a
//             dirty sample, dirty pages = changed / n × pages. Needs the guest's bytes.
//   ring      per vCPU from the dirty rings (DIRTY_RING mode, vcpu_calculate_dirtyrate):
//             each vCPU's ring entries collected in the window (QEMU's cpu->dirty_pages,
//             counted as the reaper collects them: at every ring-full exit and at the end)
//   bitmap    from the dirty bitmap (DIRTY_BITMAP mode): a harvest (GET, which re-arms) at
//             the start, discarded, and the pages the harvest at the end reports
//
// The truth: the pages first written in the window (a page written twice counts once),
// per second of the window. The guest stores the VM's `iteration` into each page it
// writes; the window gets a value no page held before, so at the end the pages holding it
// are exactly the pages written in the window — counted from the guest's memory, not from
// any tracking structure.
//
// Each window is cut consistently: the vCPUs are paused at its start (new iteration value,
// re-arm, hash the samples, resume) and at its end (harvest, hash, count), so every method
// and the truth see the same writes; the guest runs freely in between. One exception, as in
// KVM: a store whose write fault was taken (the page marked dirty) but which had not retired
// when the window closed — a full ring or the pause came first — is tracked but not yet in
// memory; `inFlight` counts them (at most one per vCPU). KVM cannot keep a
// dirty ring and a dirty bitmap for one VM, so ring and bitmap are measured on two runs
// of the same guest (same memory, vCPUs, workload, rate and seed), each against its own
// truth; sampling is measured on the first run.
//
// Platform-neutral (no node: imports), like compare.ts.
import { int, known, object, oneOf } from "./args.js";
import { KvmError } from "./errors.js";
import * as L from "./layout.js";
import { type LogMode, logMode } from "./log_mode.js";
import { hashMemory } from "./migrate.js";
import type { Vcpu } from "./vcpu.js";
import { createVm } from "./vm.js";
import { type WorkloadPattern, splitRegion } from "./workload.js";

export type DirtyRateMethod = "sampling" | "ring" | "bitmap";

export interface DirtyRateOptions {
  /** Guest memory in bytes, backed (one memslot) [1 GiB]; at most 3 GiB. */
  memoryBytes?: number;
  /** vCPU worker threads, each writing its own share of memory [4]. */
  vcpus?: number;
  /** The workload [uniform]; its parameters as in compare's scenario. */
  pattern?: WorkloadPattern;
  hotPagesFraction?: number;
  hotFraction?: number;
  zipfS?: number;
  stride?: number;
  /** Guest stores per second per vCPU (each store hits one page); 0 = as fast as it goes [125000]. */
  dirtyRatePagesPerSec?: number;
  /** The measurement window, ms [1000]. */
  windowMs?: number;
  /** Page sampling: sample pages per GiB of memory [256]; QEMU accepts 128..16384 (its default is 512). */
  samplePagesPerGiB?: number;
  /** Which methods to measure [sampling, ring, bitmap]. */
  methods?: DirtyRateMethod[];
  /** Dirty ring entries per vCPU (a power of two, 256..65536) [65536]. */
  ringEntries?: number;
  /** The guest runs this long before the window opens, ms [200]. */
  warmupMs?: number;
  /** Workload and sample RNG seed, 1..2^64-1 [1]. */
  seed?: number | bigint | string;
  onProgress?: (p: DirtyRateProgress) => void;
}

export interface DirtyRateProgress {
  /** 0-based run index, and how many runs. */
  run: number;
  of: number;
  /** The run's tracking: "ring:65536", "bitmap", or "none" (sampling only). */
  tracking: string;
  phase: "setup" | "warm-up" | "window" | "measure" | "done";
}

/** A count of pages in the window and its rate. MB/s as QEMU writes it: MiB (2^20 bytes) per second. */
export interface Rate {
  pages: number;
  pagesPerSec: number;
  mbPerSec: number;
}

export interface DirtyRateTruth extends Rate {
  /** Per vCPU: the pages of its share of memory first written in the window. */
  perVcpu: Rate[];
  /** Pages written in the window / pages of guest memory. */
  dirtyFraction: number;
}

export interface DirtyRateRun {
  /** "ring:65536", "bitmap" (KVM_GET_DIRTY_LOG), or "none" (sampling alone needs no dirty logging). */
  tracking: string;
  methods: DirtyRateMethod[];
  /** The window as it ran: from the vCPUs' resume to the pause request. */
  windowMs: number;
  truth: DirtyRateTruth;
  /** Guest stores per vCPU in the window. */
  stores: number[];
  /**
   * Per vCPU, 1 if its last store had faulted but not retired when the window closed (a
   * full ring or the pause came between the fault and the store) and its page does not
   * hold the window's value: KVM marked it dirty at the fault, so tracking may count a page
   * the truth cannot. Tracking exceeds the truth by at most these pages.
   */
  inFlight: number[];
}

export interface DirtyRateMethodResult extends Rate {
  /** Index into `runs` of the run it was measured on. */
  run: number;
  /** That run's truth. */
  truth: Rate;
  /** (measured − truth) / truth, %; null when nothing was written. */
  errorPct: number | null;
  /** The integer MB/s QEMU's arithmetic would print for the same counts (truncating MiB, whole ms). */
  qemuMBps: number;
}

export interface SamplingResult extends DirtyRateMethodResult {
  /** Sampled pages (with replacement), and how many changed hash. */
  samples: number;
  changed: number;
  samplePagesPerGiB: number;
  /** The expected relative error: one standard error, sqrt((1 − p) / (n p)) with the truth's p, %. */
  standardErrorPct: number | null;
}

export interface RingVcpuResult extends Rate {
  vcpu: number;
  /** Distinct pages among its entries. */
  distinctPages: number;
  truth: Rate;
  errorPct: number | null;
  qemuMBps: number;
}

export interface RingResult extends DirtyRateMethodResult {
  ringEntries: number;
  /** Entries collected in the window (= pages: QEMU counts entries). */
  entries: number;
  /** Distinct pages among them (entries − distinct: pages re-dirtied after a ring-full reap). */
  distinctPages: number;
  /** Ring-full reaps inside the window. */
  reaps: number;
  perVcpu: RingVcpuResult[];
}

export type BitmapResult = DirtyRateMethodResult;

export interface DirtyRateResult {
  tool: "dirtlog dirtyrate";
  settings: {
    memoryBytes: number;
    vcpus: number;
    pattern: WorkloadPattern;
    hotPagesFraction?: number;
    hotFraction?: number;
    zipfS?: number;
    stride?: number;
    dirtyRatePagesPerSec: number;
    windowMs: number;
    samplePagesPerGiB: number;
    methods: DirtyRateMethod[];
    ringEntries: number;
    warmupMs: number;
    seed: string;
  };
  /** The first run's window and truth (the one sampling measured). */
  window: { requestedMs: number; ms: number };
  truth: DirtyRateTruth;
  runs: DirtyRateRun[];
  sampling?: SamplingResult;
  ring?: RingResult;
  bitmap?: BitmapResult;
}

export const DIRTYRATE_DEFAULTS = {
  memoryBytes: 1 << 30,
  vcpus: 4,
  pattern: "uniform" as WorkloadPattern,
  dirtyRatePagesPerSec: 125_000,
  windowMs: 1000,
  samplePagesPerGiB: 256,
  methods: ["sampling", "ring", "bitmap"] as DirtyRateMethod[],
  ringEntries: 65536,
  warmupMs: 200,
  seed: "1",
};

/** QEMU's accepted sample sizes per GiB (MIN_SAMPLE_PAGE_COUNT, MAX_SAMPLE_PAGE_COUNT). */
export const SAMPLE_PAGES_RANGE = [128, 16384] as const;

const GPA = 0x1_0000_0000;
const PAGE = 4096;
const GIB = 2 ** 30;
/** Bytes of guest memory a backed slot may have in the 4 GiB shared memory. */
export const MAX_BACKED_BYTES = 3 * GIB;
const PATTERNS: Record<WorkloadPattern, true> = {
  sequential: true,
  uniform: true,
  "hot-set": true,
  zipf: true,
  strided: true,
};
const METHODS: Record<DirtyRateMethod, true> = { sampling: true, ring: true, bitmap: true };
/** The value warm-up writes store, and the window's (no page holds it before the window). */
const WARMUP_VALUE = 1n;
const WINDOW_VALUE = 2n;

const sleep = (ms: number) => new Promise((r) => setTimeout(r, ms));

/** Sample pages for `bytes` of memory at `perGiB` (QEMU: used_length × per_GB >> 30). */
export function sampleCount(bytes: number, perGiB: number): number {
  return Math.floor((bytes * perGiB) / GIB);
}

function rate(pages: number, ms: number): Rate {
  const s = ms / 1000;
  return { pages, pagesPerSec: pages / s, mbPerSec: (pages * PAGE) / 2 ** 20 / s };
}

/** QEMU's do_calculate_dirtyrate: (pages × page size >> 20) × 1000 / ms, in integers. */
function qemuRate(pages: number, ms: number): number {
  return Math.floor((Math.floor((pages * PAGE) / 2 ** 20) * 1000) / Math.max(1, Math.round(ms)));
}

const errorPct = (measured: number, truth: number) => (truth === 0 ? null : ((measured - truth) / truth) * 100);

/** mulberry32: a small seeded PRNG for the sample (QEMU seeds g_rand from /dev/urandom). */
function mulberry32(seed: number): () => number {
  let a = seed >>> 0;
  return () => {
    a = (a + 0x6d2b79f5) >>> 0;
    let t = a;
    t = Math.imul(t ^ (t >>> 15), t | 1);
    t ^= t + Math.imul(t ^ (t >>> 7), t | 61);
    return ((t ^ (t >>> 14)) >>> 0) / 4294967296;
  };
}

function parseSeed(value: unknown, call: string): bigint {
  let s: bigint | undefined;
  if (typeof value === "bigint") s = value;
  else if (typeof value === "number" && Number.isSafeInteger(value)) s = BigInt(value);
  else if (typeof value === "string" && /^\d+$/.test(value)) s = BigInt(value);
  if (s === undefined || s < 1n || s >= 2n ** 64n) {
    throw new KvmError(
      "EINVAL",
      call,
      `seed ${JSON.stringify(String(value))} is not a whole number from 1 to 2^64 - 1`,
    );
  }
  return s;
}

type Settings = DirtyRateResult["settings"];

function validate(options: DirtyRateOptions): { settings: Settings; seed: bigint } {
  const call = "measureDirtyRate";
  const o = object<DirtyRateOptions>(options, "options", call);
  known(
    o,
    [
      "memoryBytes",
      "vcpus",
      "pattern",
      "hotPagesFraction",
      "hotFraction",
      "zipfS",
      "stride",
      "dirtyRatePagesPerSec",
      "windowMs",
      "samplePagesPerGiB",
      "methods",
      "ringEntries",
      "warmupMs",
      "seed",
      "onProgress",
    ],
    call,
  );
  const d = DIRTYRATE_DEFAULTS;
  const memoryBytes = int(o.memoryBytes ?? d.memoryBytes, "memoryBytes", call, 1 << 20, MAX_BACKED_BYTES);
  if (memoryBytes % PAGE !== 0)
    throw new KvmError("EINVAL", call, `memoryBytes ${memoryBytes} is not a whole number of pages`);
  const vcpus = int(o.vcpus ?? d.vcpus, "vcpus", call, 1, 64);
  const pattern = oneOf(o.pattern ?? d.pattern, PATTERNS, "pattern", call);
  const dirtyRatePagesPerSec = o.dirtyRatePagesPerSec ?? d.dirtyRatePagesPerSec;
  if (typeof dirtyRatePagesPerSec !== "number" || !(dirtyRatePagesPerSec >= 0 && dirtyRatePagesPerSec <= 1e9)) {
    throw new KvmError("EINVAL", call, `dirtyRatePagesPerSec ${String(dirtyRatePagesPerSec)} is outside [0, 1e9]`);
  }
  const windowMs = o.windowMs ?? d.windowMs;
  if (typeof windowMs !== "number" || !(windowMs >= 50 && windowMs <= 60_000)) {
    // QEMU's MIN_CALC_TIME_MS and MAX_CALC_TIME_MS
    throw new KvmError("EINVAL", call, `windowMs ${String(windowMs)} is outside [50, 60000]`);
  }
  const samplePagesPerGiB = int(
    o.samplePagesPerGiB ?? d.samplePagesPerGiB,
    "samplePagesPerGiB",
    call,
    ...SAMPLE_PAGES_RANGE,
  );
  const methodList = o.methods ?? d.methods;
  if (!Array.isArray(methodList) || methodList.length === 0) {
    throw new KvmError("EINVAL", call, "methods must be a non-empty array of sampling, ring, bitmap");
  }
  const methods = methodList.map((m) => oneOf(m, METHODS, "method", call));
  if (new Set(methods).size !== methods.length) throw new KvmError("EINVAL", call, "methods: each method once");
  if (methods.includes("sampling") && sampleCount(memoryBytes, samplePagesPerGiB) < 1) {
    throw new KvmError(
      "EINVAL",
      call,
      `${samplePagesPerGiB} sample pages per GiB of ${memoryBytes} bytes is no sample`,
    );
  }
  const ringEntries = o.ringEntries ?? d.ringEntries;
  logMode({ kind: "dirty-ring", ringEntries }); // validates (a power of two, 256..65536)
  const warmupMs = o.warmupMs ?? d.warmupMs;
  if (typeof warmupMs !== "number" || !(warmupMs >= 0 && warmupMs <= 60_000)) {
    throw new KvmError("EINVAL", call, `warmupMs ${String(warmupMs)} is outside [0, 60000]`);
  }
  const seed = parseSeed(o.seed ?? d.seed, call);
  if (Math.floor(memoryBytes / PAGE) < vcpus)
    throw new KvmError("EINVAL", call, "memoryBytes: at least one page per vCPU");
  if (o.onProgress !== undefined && typeof o.onProgress !== "function") {
    throw new KvmError("EINVAL", call, "onProgress must be a function");
  }
  const settings: Settings = {
    memoryBytes,
    vcpus,
    pattern,
    ...(pattern === "hot-set"
      ? { hotPagesFraction: o.hotPagesFraction ?? 0.05, hotFraction: o.hotFraction ?? 0.9 }
      : {}),
    ...(pattern === "zipf" ? { zipfS: o.zipfS ?? 1 } : {}),
    ...(pattern === "strided" ? { stride: o.stride ?? 16 } : {}),
    dirtyRatePagesPerSec,
    windowMs,
    samplePagesPerGiB,
    methods,
    ringEntries,
    warmupMs,
    seed: seed.toString(),
  };
  return { settings, seed };
}

interface RunOutput {
  run: DirtyRateRun;
  sampling?: Omit<SamplingResult, "run">;
  ring?: Omit<RingResult, "run">;
  bitmap?: Omit<BitmapResult, "run">;
}

/**
 * Measure the dirty rate of a workload: one run per tracking method asked for (ring,
 * bitmap; sampling rides on the first, or runs alone without dirty logging), each a
 * warm-up and then one window.
 */
export async function measureDirtyRate(options: DirtyRateOptions = {}): Promise<DirtyRateResult> {
  const { settings, seed } = validate(options);
  const tracking: Array<LogMode | undefined> = [];
  if (settings.methods.includes("ring"))
    tracking.push(logMode({ kind: "dirty-ring", ringEntries: settings.ringEntries }));
  if (settings.methods.includes("bitmap")) tracking.push(logMode({ kind: "dirty-log" }));
  if (tracking.length === 0) tracking.push(undefined);
  const runs: DirtyRateRun[] = [];
  const result: Partial<DirtyRateResult> = {};
  for (const [index, mode] of tracking.entries()) {
    const progress = (phase: DirtyRateProgress["phase"]) =>
      options.onProgress?.({ run: index, of: tracking.length, tracking: mode?.name ?? "none", phase });
    const sampling = index === 0 && settings.methods.includes("sampling");
    const out = await runWindow(settings, seed, mode, sampling, progress);
    runs.push(out.run);
    if (out.sampling) result.sampling = { ...out.sampling, run: index };
    if (out.ring) result.ring = { ...out.ring, run: index };
    if (out.bitmap) result.bitmap = { ...out.bitmap, run: index };
  }
  return {
    tool: "dirtlog dirtyrate",
    settings,
    window: { requestedMs: settings.windowMs, ms: runs[0].windowMs },
    truth: runs[0].truth,
    runs,
    ...(result.sampling ? { sampling: result.sampling } : {}),
    ...(result.ring ? { ring: result.ring } : {}),
    ...(result.bitmap ? { bitmap: result.bitmap } : {}),
  };
}

async function runWindow(
  s: Settings,
  seed: bigint,
  mode: LogMode | undefined,
  sampling: boolean,
  progress: (phase: DirtyRateProgress["phase"]) => void,
): Promise<RunOutput> {
  progress("setup");
  const pages = Math.floor(s.memoryBytes / PAGE);
  const ring = mode?.spec.kind === "dirty-ring";
  // page tables for every page at 4K (a dirty-logged slot never maps huge), the upper levels,
  // and each vCPU's ring with the collector's copy of it
  const poolBytes = Math.ceil(pages / 512) * PAGE + (4 << 20);
  // (the same size for every run, so a run reuses the previous run's memory)
  const ringBytes = s.methods.includes("ring") ? s.vcpus * s.ringEntries * 32 : 0;
  const vm = await createVm({
    maxMemoryBytes: Math.min(4 * GIB, s.memoryBytes + poolBytes + ringBytes + (64 << 20)),
    mmuPoolBytes: poolBytes,
    ...(mode?.vmOptions ?? {}),
  });
  try {
    mode?.createVmDone(vm);
    vm.setUserMemoryRegion({
      slot: 0,
      flags: mode?.slotFlags ?? 0,
      guestPhysAddr: GPA,
      memorySize: pages * PAGE,
      backed: true,
    });
    const guest = vm.guestMemory(0) as Uint8Array;
    const regions = splitRegion(GPA, pages, s.vcpus);
    const share = regions[0].pages;
    const target = s.dirtyRatePagesPerSec;
    const batch = target > 0 ? Math.max(16, Math.min(4096, Math.round(target / 1000))) : 4096;
    const vcpus: Vcpu[] = regions.map((r, i) => {
      const v = vm.createVcpu(i);
      v.setWorkload({
        pattern: s.pattern,
        gpa: r.gpa,
        pages: r.pages,
        batch,
        seed: BigInt.asUintN(64, seed * 0x9e3779b97f4a7c15n + BigInt(i + 1)) || 1n,
        ...(s.pattern === "hot-set"
          ? {
              hotPages: Math.max(1, Math.floor(r.pages * (s.hotPagesFraction ?? 0.05))),
              hotFraction: s.hotFraction ?? 0.9,
            }
          : {}),
        ...(s.pattern === "zipf" ? { zipfS: s.zipfS ?? 1 } : {}),
        ...(s.pattern === "strided" ? { stride: s.stride ?? 16 } : {}),
      });
      return v;
    });

    // the ring reaper: at every ring-full exit (QEMU's vCPU thread reaps its own ring then)
    let counting = false;
    const entries = vcpus.map(() => 0);
    const seen = new Uint8Array(ring ? pages : 0);
    const distinct = vcpus.map(() => 0);
    let reaps = 0;
    const onPage = (slot: number, offset: number, vcpu: number) => {
      if (!counting || vcpu < 0) return;
      entries[vcpu]++;
      if (slot === 0 && offset < pages && seen[offset] === 0) {
        seen[offset] = 1;
        distinct[vcpu]++;
      }
    };
    const fullExits = () => vcpus.reduce((a, v) => a + Number(v.stats.ringFullExits), 0);
    let fullSeen = 0;
    /** Let the guest run `ms`, reaping full rings meanwhile. */
    const runFor = async (ms: number) => {
      const end = performance.now() + ms;
      while (true) {
        const left = end - performance.now();
        if (left <= 0) return;
        if (ring && mode) {
          const full = fullExits();
          if (full !== fullSeen) {
            fullSeen = full;
            mode.collectDirtyPages(vm, [0], onPage);
            if (counting) reaps++;
            continue;
          }
        }
        await sleep(ring ? Math.min(1, left) : left);
      }
    };
    const pauseAll = () => Promise.all(vcpus.map((v) => v.pause()));

    vm.iteration = WARMUP_VALUE;
    await Promise.all(vcpus.map((v) => v.startLoop({ rate: target })));
    progress("warm-up");
    await runFor(s.warmupMs);

    // the window opens: a consistent cut with the vCPUs paused
    await pauseAll();
    vm.iteration = WINDOW_VALUE;
    mode?.collectDirtyPages(vm, [0], onPage); // re-arm; what it reports predates the window
    const n = sampling ? sampleCount(s.memoryBytes, s.samplePagesPerGiB) : 0;
    const vfns = new Uint32Array(n);
    const hashes: string[] = [];
    if (sampling) {
      const random = mulberry32(Number(BigInt.asUintN(32, seed ^ (seed >> 32n) ^ 0x5eed5eedn)));
      for (let i = 0; i < n; i++) {
        vfns[i] = Math.floor(random() * (pages - 1)); // g_rand_int_range(rand, 0, pages - 1)
        hashes.push(hashMemory(guest.subarray(vfns[i] * PAGE, (vfns[i] + 1) * PAGE)));
      }
    }
    const stores0 = vcpus.map((v) => Number(v.workloadStores));
    counting = true;
    fullSeen = fullExits();
    progress("window");
    for (const v of vcpus) v.resume();
    const t0 = performance.now();
    await runFor(s.windowMs);
    const t1 = performance.now();
    await pauseAll();

    // the window closes
    progress("measure");
    const windowMs = t1 - t0;
    const stores = vcpus.map((v, i) => Number(v.workloadStores) - stores0[i]);
    let bitmapPages = 0;
    if (mode) {
      const c = mode.collectDirtyPages(vm, [0], ring ? onPage : () => {});
      bitmapPages = c.reported;
    }
    counting = false;
    let changed = 0;
    for (let i = 0; i < n; i++) {
      if (hashMemory(guest.subarray(vfns[i] * PAGE, (vfns[i] + 1) * PAGE)) !== hashes[i]) changed++;
    }
    // the truth: pages holding the window's value (the first 8 bytes of each page)
    const words = new Uint32Array(guest.buffer, guest.byteOffset, pages * (PAGE / 4));
    const truthPerVcpu = vcpus.map(() => 0);
    let truthPages = 0;
    const lo = Number(WINDOW_VALUE);
    for (let p = 0; p < pages; p++) {
      if (words[p * 1024] === lo && words[p * 1024 + 1] === 0) {
        truthPages++;
        const r = Math.floor(p / share);
        if (r < truthPerVcpu.length) truthPerVcpu[r]++;
      }
    }
    const truth: DirtyRateTruth = {
      ...rate(truthPages, windowMs),
      perVcpu: truthPerVcpu.map((t) => rate(t, windowMs)),
      dirtyFraction: truthPages / pages,
    };
    const truthRate = rate(truthPages, windowMs);
    const block = new DataView(vm.memory.buffer);
    const inFlight = vcpus.map((v) => {
      const pending = block.getBigUint64(v.addr + L.VCPU_WL_PENDING, true);
      if (pending === 0n) return 0;
      const p = Number((pending - 1n - BigInt(GPA)) >> 12n);
      return p >= 0 && p < pages && !(words[p * 1024] === lo && words[p * 1024 + 1] === 0) ? 1 : 0;
    });
    const methods: DirtyRateMethod[] = [];
    const out: RunOutput = {
      run: { tracking: mode?.name ?? "none", methods, windowMs, truth, stores, inFlight },
    };
    if (sampling) {
      methods.push("sampling");
      const estimate = (changed / n) * pages;
      const p = truth.dirtyFraction;
      const totalMB = Math.floor((pages * PAGE) / 2 ** 20);
      out.sampling = {
        ...rate(estimate, windowMs),
        truth: truthRate,
        errorPct: errorPct(estimate, truthPages),
        // update_dirtyrate: dirty samples × total MB × 1000 / (samples × ms)
        qemuMBps: Math.floor((changed * totalMB * 1000) / (n * Math.max(1, Math.round(windowMs)))),
        samples: n,
        changed,
        samplePagesPerGiB: s.samplePagesPerGiB,
        standardErrorPct: p > 0 ? Math.sqrt((1 - p) / (n * p)) * 100 : null,
      };
    }
    if (mode && ring) {
      methods.push("ring");
      const total = entries.reduce((a, b) => a + b, 0);
      out.ring = {
        ...rate(total, windowMs),
        truth: truthRate,
        errorPct: errorPct(total, truthPages),
        // QEMU sums the vCPUs' integer rates
        qemuMBps: entries.reduce((a, e) => a + qemuRate(e, windowMs), 0),
        ringEntries: s.ringEntries,
        entries: total,
        distinctPages: distinct.reduce((a, b) => a + b, 0),
        reaps,
        perVcpu: entries.map((e, i) => ({
          vcpu: i,
          ...rate(e, windowMs),
          distinctPages: distinct[i],
          truth: truth.perVcpu[i],
          errorPct: errorPct(e, truthPerVcpu[i]),
          qemuMBps: qemuRate(e, windowMs),
        })),
      };
    } else if (mode) {
      methods.push("bitmap");
      out.bitmap = {
        ...rate(bitmapPages, windowMs),
        truth: truthRate,
        errorPct: errorPct(bitmapPages, truthPages),
        qemuMBps: qemuRate(bitmapPages, windowMs),
      };
    }
    progress("done");
    return out;
  } finally {
    await vm.close();
  }
}
