// The shape of a `dirtlog compare` result (the JSON document, and what the table, the
// verdict and the HTML report are made from). Times are in the unit their name says.

/** Per-operation costs of real KVM on some host, in nanoseconds (the kernel projection). */
export interface CostTable {
  /** Where the figures come from (host, kernel, how measured). */
  source: string;
  /** Classic KVM_GET_DIRTY_LOG: per dirty page (xchg + write-protect). */
  getClassicNsPerDirtyPage: number;
  /** Classic KVM_GET_DIRTY_LOG: per bitmap word scanned. */
  getClassicNsPerWord: number;
  /** Manual-protect KVM_GET_DIRTY_LOG (a copy): per call and per bitmap word. */
  getManualNsPerCall: number;
  getManualNsPerWord: number;
  /** KVM_CLEAR_DIRTY_LOG: per call and per page re-armed. */
  clearNsPerCall: number;
  clearNsPerDirtyPage: number;
  /** Userspace ring collect, per entry. */
  collectNsPerEntry: number;
  /** KVM_RESET_DIRTY_RINGS: per call and per entry re-armed. */
  resetNsPerCall: number;
  resetNsPerEntry: number;
  /** Userspace scan of a returned bitmap, per page. */
  bitmapScanNsPerPage: number;
  /** A write-protect fault taken by the guest (first write after re-arming). */
  writeFaultNs: number;
}

export interface CompareScenario {
  /** Guest memory in bytes (one memslot). */
  memoryBytes: number;
  /** Guest bytes live in the shared memory (else tracking only). */
  backed: boolean;
  vcpus: number;
  pattern: "sequential" | "uniform" | "hot-set" | "zipf" | "strided";
  hotFraction?: number;
  hotPagesFraction?: number;
  zipfS?: number;
  stride?: number;
  /** Guest stores per second per vCPU (each store hits one page); 0 = as fast as it goes. */
  dirtyRatePagesPerSec: number;
  /** Modes in the order run, as `parseLogMode` names them. */
  modes: string[];
  durationMs: number;
  intervalMs: number;
  seed: string;
}

/** Median, 99th percentile and maximum of a sample. */
export interface Spread {
  median: number;
  p99: number;
  max: number;
  count: number;
}

/** One harvest, for the charts. */
export interface HarvestPoint {
  /** Since the mode's vCPUs started. */
  tMs: number;
  latencyUs: number;
  /** Pages handed out (ring: entries, duplicates included). */
  reported: number;
  /** Guest stores since the previous harvest (all vCPUs). */
  stores: number;
  /** Why: the interval, a full ring, or the final harvest. */
  cause: "interval" | "ring-full" | "final";
}

export interface ModeResult {
  mode: string;
  guest: {
    /** Stores per second, per vCPU. */
    storesPerSec: number[];
    /** Write-protect faults (first writes after re-arming) per second, per vCPU. */
    faultsPerSec: number[];
    /** The same faults, counted, per vCPU. */
    faults: number[];
    ringFullExits: number;
    /** Time vCPUs spent waiting on a full ring (all vCPUs), ms. */
    ringFullStallMs: number;
  };
  collector: {
    harvests: number;
    latencyUs: Spread;
    /** Collector time per reported page, ns (all harvests' time / pages reported). */
    nsPerReportedPage: number;
    reportedPerSec: number;
    /** Reported pages (ring entries, duplicates included). */
    reported: number;
    /** Reports of a page already reported in the same harvest (ring). */
    duplicates: number;
    /**
     * Ring-full retries: the store pending at each ring-full exit faults again after the
     * reset and its page is reported a second time (the kernel shows exactly one per exit).
     */
    ringFullRetries: number;
    bitmapWords: number;
    getCalls: number;
    clearCalls: number;
    ringEntries: number;
    resetCalls: number;
  };
  /** Bytes the mode keeps to track the guest. */
  trackingBytes: number;
  /** The kernel's cost for the same events (CostTable × counts). */
  projection: {
    collectorMs: number;
    nsPerReportedPage: number;
    harvestUsPerCall: number;
    guestFaultMs: number;
    ringFullStallMs: number;
  };
  correctness: {
    /** Pages dirtied but never reported: still writable after the final harvest. Must be 0. */
    lost: number;
    /** Reports of pages no vCPU writes. Must be 0. */
    outside: number;
    /** Harvests where KVM_RESET_DIRTY_RINGS did not re-arm what was collected. Must be 0. */
    resetMismatches: number;
    /**
     * Reports minus write faults (without PML each first write after re-arming faults and is
     * reported exactly once, a ring-full retry included). Must be 0; null under PML, where
     * the CPU logs D transitions instead of faulting.
     */
    reportsMinusFaults: number | null;
    /** --backed: a pre-copy migration's destination equals the source. */
    migrationEqual?: boolean;
    ok: boolean;
  };
  timeline: HarvestPoint[];
  /** vcpuStores[k][v]: vCPU v's stores since the mode's vCPUs started, at harvest k (cumulative). */
  vcpuStores: number[][];
}

export interface VerdictLine {
  metric: string;
  better: "lower" | "higher";
  basis: "measured" | "projected";
  winner: string;
  runnerUp: string;
  /** winner vs runner-up, ≥ 1 (how many times better); null when the runner-up's value is 0 or the winner's is. */
  ratio: number | null;
  text: string;
}

export interface CompareResult {
  tool: "dirtlog compare";
  version: string;
  scenario: CompareScenario;
  /** Why the default scenario is what it is (only when the defaults were used). */
  rationale?: string;
  costs: CostTable;
  environment: Record<string, string | number | boolean>;
  modes: ModeResult[];
  verdict: VerdictLine[];
  ok: boolean;
}
