// Live migration by pre-copy, the proof users trust that no dirty page is lost: while the
// vCPUs keep writing, copy every page of the backed slots, then in rounds copy only the
// pages reported dirty since the previous round, until a round's dirty set falls under a
// threshold or a round limit; then stop the vCPUs, take a final harvest, copy it, and
// compare source and destination by hash.
//
// Ordering (QEMU's rule): a page is copied only after it was re-armed — after GET returned
// (classic), after CLEAR (manual protect), after KVM_RESET_DIRTY_RINGS (ring) — so a write
// racing with the copy is reported again in the next round.
import { KVM_MEM_LOG_DIRTY_PAGES, KVM_MEM_READONLY } from "./constants.js";
import { finite, int, known, object } from "./args.js";
import { CPU_THROTTLE, type DirtyLimit, setCpuThrottle, startDirtyLimit } from "./dirtylimit.js";
import { KvmError } from "./errors.js";
import { logModeOf } from "./log_mode.js";
import { type MemslotInfo, Vm } from "./vm.js";

export type Convergence = "none" | "auto-converge" | "dirty-limit";

export interface MigrateOptions {
  /**
   * The modelled link, bytes/s. When set, migration runs as QEMU's does: each round's
   * bytes take bytes / bandwidth on the wire, during which the guest keeps running (the
   * caller's thread sleeps that long), and pre-copy ends when the dirty set left would go
   * in `downtimeLimitMs`; `threshold` is then unused. Unset: the rounds are back to back.
   */
  bandwidthBytesPerSec?: number;
  /** With a link: the downtime allowed for the final stop-and-copy, ms (QEMU's downtime-limit) [300]. */
  downtimeLimitMs?: number;
  /**
   * With a link: what helps a migration that does not converge, started as QEMU starts it
   * (migration_trigger_throttle: after two syncs whose dirtied bytes exceed half the bytes
   * sent meanwhile). auto-converge throttles every vCPU (20 %, +10 % each trigger, at most
   * 99 %); dirty-limit caps every vCPU at `dirtyLimitMBps` (a dirty ring is needed).
   */
  convergence?: Convergence;
  /** dirty-limit: the quota per vCPU, MB/s (MiB/s) (QEMU's vcpu-dirty-limit) [1]. */
  dirtyLimitMBps?: number;
  /** dirty-limit: the controller's period, ms (QEMU's x-vcpu-dirty-limit-period) [1000]. */
  dirtyLimitPeriodMs?: number;
  /** Stop pre-copy once a round reports at most this many pages (default 64). */
  threshold?: number;
  /** Pre-copy rounds at most (default 30). */
  maxRounds?: number;
  /** Called after each round. */
  onRound?: (round: MigrationRound) => void;
}

export interface MigrationRound {
  round: number;
  /** Pages reported dirty (and sent) in this round; round 0 sends everything. */
  pages: number;
  /** The round's time: its harvest and copy, plus its wire time over a link. */
  ms: number;
  /** Over a link: pages × 4096 / bandwidth, ms (the guest ran meanwhile). */
  wireMs?: number;
  /** Over a link: the throttle in force during the round (auto-converge %, or dirty-limit µs per ring-full exit of vCPU 0). */
  throttle?: number;
}

export interface MigrationResult {
  rounds: MigrationRound[];
  /** Pages sent in all rounds, the final one included. */
  pagesSent: number;
  /** Pages sent while the vCPUs were stopped (the downtime round). */
  finalRoundPages: number;
  downtimeMs: number;
  /** Per slot, the destination's copy of the guest memory. */
  destination: Map<number, Uint8Array>;
  /** Per slot, hashes of source and destination after the final round. */
  hashes: Map<number, { source: string; destination: string }>;
  /** Source and destination equal byte for byte (by hash) for every slot. */
  equal: boolean;
  /** Over a link: the dirty set fitted the downtime limit before the round limit (else the final copy took what was left). */
  converged?: boolean;
  /** Over a link: the modelled total, rounds (harvest + wire time) and downtime, ms. */
  totalMs?: number;
  /** Over a link: bytes sent (unbacked pages count their 4096 bytes too). */
  bytesSent?: number;
  /** Over a link: the convergence helper and when it started (the round, or null if never). */
  convergence?: { kind: Convergence; startedAtRound: number | null; finalThrottle: number };
}

const PAGE = 4096;

/** 64-bit FNV-1a over the u32 words of a buffer, as 16 hex digits. */
export function hashMemory(bytes: Uint8Array): string {
  const words = new Uint32Array(bytes.buffer, bytes.byteOffset, bytes.byteLength >> 2);
  let lo = 0x84222325;
  let hi = 0xcbf29ce4;
  for (let i = 0; i < words.length; i++) {
    lo ^= words[i];
    // multiply (hi:lo) by the FNV prime 0x100000001b3 modulo 2^64
    const l = lo * 0x1b3;
    const h = hi * 0x1b3 + lo * 0x100 + Math.floor(l / 0x1_0000_0000);
    lo = l >>> 0;
    hi = h >>> 0;
  }
  return hi.toString(16).padStart(8, "0") + lo.toString(16).padStart(8, "0");
}

/** Hash each slot's source and destination copy: the hashes, and whether every pair is equal. */
function compareCopies(
  slots: readonly MemslotInfo[],
  source: Map<number, Uint8Array>,
  destination: Map<number, Uint8Array>,
): { hashes: Map<number, { source: string; destination: string }>; equal: boolean } {
  const hashes = new Map<number, { source: string; destination: string }>();
  let equal = true;
  for (const s of slots) {
    const h = {
      source: hashMemory(source.get(s.slot) as Uint8Array),
      destination: hashMemory(destination.get(s.slot) as Uint8Array),
    };
    hashes.set(s.slot, h);
    if (h.source !== h.destination) equal = false;
  }
  return { hashes, equal };
}

/**
 * Migrate the backed slots of `vm` to fresh destination buffers while its vCPU loops run.
 * Dirty logging is turned on for those slots if it is off. Leaves the vCPUs paused.
 */
export async function migrate(vm: Vm, options: MigrateOptions = {}): Promise<MigrationResult> {
  const call = "migrate";
  if (!(vm instanceof Vm)) throw new KvmError("EINVAL", call, "vm must be a Vm from createVm()");
  const o = object<MigrateOptions>(options, "options", call);
  known(
    o,
    [
      "threshold",
      "maxRounds",
      "onRound",
      "bandwidthBytesPerSec",
      "downtimeLimitMs",
      "convergence",
      "dirtyLimitMBps",
      "dirtyLimitPeriodMs",
    ],
    call,
  );
  if (o.bandwidthBytesPerSec !== undefined) return migrateOverLink(vm, o);
  for (const k of ["downtimeLimitMs", "convergence", "dirtyLimitMBps", "dirtyLimitPeriodMs"] as const) {
    if (o[k] !== undefined) throw new KvmError("EINVAL", call, `${k} needs bandwidthBytesPerSec`);
  }
  const threshold = o.threshold === undefined ? 64 : int(o.threshold, "threshold", call, 0, Number.MAX_SAFE_INTEGER);
  const maxRounds = o.maxRounds === undefined ? 30 : int(o.maxRounds, "maxRounds", call, 0, 1_000_000);
  if (o.onRound !== undefined && typeof o.onRound !== "function") {
    throw new KvmError("EINVAL", call, "onRound must be a function");
  }
  vm.checkAlive(call);
  const slots = vm.memslots().filter((s) => s.backed && (s.slot & 0xffff) < 32764 && !(s.flags & KVM_MEM_READONLY));
  for (const s of slots) {
    if (!(s.flags & KVM_MEM_LOG_DIRTY_PAGES)) {
      vm.setUserMemoryRegion({
        slot: s.slot,
        flags: s.flags | KVM_MEM_LOG_DIRTY_PAGES,
        guestPhysAddr: s.guestPhysAddr,
        memorySize: s.npages * PAGE,
        backed: true,
      });
    }
  }
  const source = new Map(slots.map((s) => [s.slot, vm.guestMemory(s.slot) as Uint8Array]));
  const destination = new Map(slots.map((s) => [s.slot, new Uint8Array(s.npages * PAGE)]));
  const bySlot = new Map<number, MemslotInfo>(slots.map((s) => [s.slot, s]));

  const copy = (slot: number, page: number) => {
    const src = source.get(slot);
    const dst = destination.get(slot);
    if (!src || !dst || page >= (bySlot.get(slot)?.npages ?? 0)) return false;
    dst.set(src.subarray(page * PAGE, page * PAGE + PAGE), page * PAGE);
    return true;
  };

  /** Take the dirty pages since the last harvest (re-arming them), then copy them. */
  const mode = logModeOf(vm);
  const slotIds = slots.map((s) => s.slot);
  const harvestAndCopy = (): number => {
    const seen = new Set<number>();
    let sent = 0;
    mode.collectDirtyPages(vm, slotIds, (slot, offset) => {
      const key = (slot >>> 0) * 2 ** 31 + offset;
      if (seen.has(key)) return; // ring duplicates are normal
      seen.add(key);
      if (copy(slot, offset)) sent++;
    });
    return sent;
  };

  const rounds: MigrationRound[] = [];
  let pagesSent = 0;
  // round 0: forget what was reported before, then send everything
  let t = performance.now();
  harvestAndCopy();
  for (const s of slots) (destination.get(s.slot) as Uint8Array).set(source.get(s.slot) as Uint8Array);
  const all = slots.reduce((a, s) => a + s.npages, 0);
  pagesSent += all;
  rounds.push({ round: 0, pages: all, ms: performance.now() - t });
  options.onRound?.(rounds[0]);
  // pre-copy rounds
  for (let round = 1; round <= maxRounds; round++) {
    t = performance.now();
    const pages = harvestAndCopy();
    pagesSent += pages;
    rounds.push({ round, pages, ms: performance.now() - t });
    options.onRound?.(rounds[rounds.length - 1]);
    if (pages <= threshold) break;
  }
  // stop and copy
  const t0 = performance.now();
  for (const v of vm.vcpuList) await v.pause();
  const finalRoundPages = harvestAndCopy();
  pagesSent += finalRoundPages;
  const downtimeMs = performance.now() - t0;

  const { hashes, equal } = compareCopies(slots, source, destination);
  return { rounds, pagesSent, finalRoundPages, downtimeMs, destination, hashes, equal };
}

const sleep = (ms: number) => new Promise((r) => setTimeout(r, ms));

/** QEMU's throttle-trigger-threshold: a sync whose dirtied bytes exceed this % of the bytes sent meanwhile is "high". */
const THROTTLE_TRIGGER_PCT = 50;

/**
 * Pre-copy over a modelled link (QEMU's migration thread: ram_save_iterate,
 * migration_iteration_run, migration_completion), on backed and unbacked slots alike: an
 * unbacked slot's pages are tracked and accounted on the wire, not copied.
 */
async function migrateOverLink(vm: Vm, o: MigrateOptions): Promise<MigrationResult> {
  const call = "migrate";
  const bw = finite(o.bandwidthBytesPerSec, "bandwidthBytesPerSec", call, 1, 1e13);
  const downtimeLimitMs = o.downtimeLimitMs === undefined ? 300 : finite(o.downtimeLimitMs, "downtimeLimitMs", call, 0, 3_600_000);
  const maxRounds = o.maxRounds === undefined ? 30 : int(o.maxRounds, "maxRounds", call, 0, 1_000_000);
  if (o.threshold !== undefined) throw new KvmError("EINVAL", call, "threshold is not used over a link (downtimeLimitMs is)");
  const kind = o.convergence ?? "none";
  if (kind !== "none" && kind !== "auto-converge" && kind !== "dirty-limit")
    throw new KvmError("EINVAL", call, `convergence ${String(kind)} is not none, auto-converge or dirty-limit`);
  const quotaMBps = o.dirtyLimitMBps === undefined ? 1 : finite(o.dirtyLimitMBps, "dirtyLimitMBps", call, 1e-6, 1e9);
  const periodMs = o.dirtyLimitPeriodMs === undefined ? 1000 : finite(o.dirtyLimitPeriodMs, "dirtyLimitPeriodMs", call, 10, 60_000);
  if (kind !== "dirty-limit" && (o.dirtyLimitMBps !== undefined || o.dirtyLimitPeriodMs !== undefined))
    throw new KvmError("EINVAL", call, "dirtyLimitMBps and dirtyLimitPeriodMs need convergence dirty-limit");
  if (o.onRound !== undefined && typeof o.onRound !== "function") throw new KvmError("EINVAL", call, "onRound must be a function");
  vm.checkAlive(call);
  const mode = logModeOf(vm);
  const ring = mode.spec.kind === "dirty-ring";
  if (kind === "dirty-limit" && !ring) throw new KvmError("EINVAL", call, "dirty-limit needs a VM with a dirty ring");

  const slots = vm.memslots().filter((s) => (s.slot & 0xffff) < 32764 && !(s.flags & KVM_MEM_READONLY));
  for (const s of slots) {
    if (!(s.flags & KVM_MEM_LOG_DIRTY_PAGES)) {
      vm.setUserMemoryRegion({
        slot: s.slot,
        flags: s.flags | KVM_MEM_LOG_DIRTY_PAGES,
        guestPhysAddr: s.guestPhysAddr,
        memorySize: s.npages * PAGE,
        backed: s.backed,
      });
    }
  }
  const backed = slots.filter((s) => s.backed);
  const source = new Map(backed.map((s) => [s.slot, vm.guestMemory(s.slot) as Uint8Array]));
  const destination = new Map(backed.map((s) => [s.slot, new Uint8Array(s.npages * PAGE)]));
  const slotIds = slots.map((s) => s.slot);
  // the dirty set not yet sent, per slot: QEMU's migration bitmap
  const pending = new Map(slots.map((s) => [s.slot, new Uint8Array(s.npages)]));
  let pendingPages = 0;
  const mark = (slot: number, offset: number) => {
    const p = pending.get(slot);
    if (!p || offset >= p.length || p[offset]) return;
    p[offset] = 1;
    pendingPages++;
  };
  const sync = () => mode.collectDirtyPages(vm, slotIds, mark);
  /** Send the pending set: copy backed pages (they were re-armed when harvested), clear it. */
  const send = (): number => {
    const n = pendingPages;
    for (const [slot, p] of pending) {
      const src = source.get(slot);
      const dst = destination.get(slot);
      for (let i = 0; i < p.length; i++) {
        if (!p[i]) continue;
        p[i] = 0;
        if (src && dst) dst.set(src.subarray(i * PAGE, i * PAGE + PAGE), i * PAGE);
      }
    }
    pendingPages = 0;
    return n;
  };
  const wireMs = (pages: number) => ((pages * PAGE) / bw) * 1000;

  // while the link is busy the rings are reaped into the pending set at each ring-full exit
  // and every second, as QEMU's vCPU threads and reaper thread do (a bitmap needs no reaper)
  const fullExits = () => vm.vcpuList.reduce((a, v) => a + Number(v.stats.ringFullExits), 0);
  let exitsSeen = fullExits();
  let lastReap = performance.now();
  const reaper = ring
    ? setInterval(() => {
        const f = fullExits();
        const now = performance.now();
        if (f !== exitsSeen || now - lastReap >= 1000) {
          exitsSeen = f;
          lastReap = now;
          sync();
        }
      }, 1)
    : undefined;

  let dl: DirtyLimit | undefined;
  let throttlePct = 0;
  let startedAtRound: number | null = null;
  let highCount = 0;
  const throttleNow = () => (kind === "auto-converge" ? throttlePct : (dl?.state().vcpus[0]?.throttleUsPerFull ?? 0));
  const rounds: MigrationRound[] = [];
  let pagesSent = 0;
  let totalMs = 0;
  let converged = false;
  try {
    // round 0: forget what was reported before, then send everything
    let t = performance.now();
    sync();
    for (const p of pending.values()) p.fill(1);
    pendingPages = slots.reduce((a, s) => a + s.npages, 0);
    let prevSent = send();
    let w = wireMs(prevSent);
    await sleep(w);
    pagesSent += prevSent;
    rounds.push({ round: 0, pages: prevSent, ms: performance.now() - t, wireMs: w, throttle: throttleNow() });
    totalMs += rounds[0].ms;
    o.onRound?.(rounds[0]);
    for (let round = 1; ; round++) {
      t = performance.now();
      sync(); // migration_bitmap_sync
      const dirty = pendingPages;
      if (wireMs(dirty) <= downtimeLimitMs) {
        converged = true;
        break;
      }
      if (round > maxRounds) break; // give up: the final copy takes what is left
      // migration_trigger_throttle: dirtied more than half of what was sent, twice
      if (kind !== "none" && dirty * 100 > prevSent * THROTTLE_TRIGGER_PCT && ++highCount >= 2) {
        highCount = 0;
        if (kind === "auto-converge") {
          throttlePct = throttlePct === 0 ? CPU_THROTTLE.initialPct : Math.min(CPU_THROTTLE.maxPct, throttlePct + CPU_THROTTLE.incrementPct);
          for (const v of vm.vcpuList) setCpuThrottle(v, throttlePct);
        } else if (!dl) {
          const quota: Record<number, number> = {};
          for (const v of vm.vcpuList) quota[v.id] = quotaMBps;
          dl = startDirtyLimit(vm, { quotaMBps: quota, periodMs });
        }
        startedAtRound ??= round;
      }
      prevSent = send();
      w = wireMs(prevSent);
      const harvestMs = performance.now() - t;
      await sleep(w);
      pagesSent += prevSent;
      rounds.push({ round, pages: prevSent, ms: harvestMs + w, wireMs: w, throttle: throttleNow() });
      totalMs += harvestMs + w;
      o.onRound?.(rounds[rounds.length - 1]);
    }
  } catch (e) {
    dl?.stop();
    if (kind === "auto-converge") for (const v of vm.vcpuList) setCpuThrottle(v, 0);
    throw e;
  } finally {
    if (reaper) clearInterval(reaper);
  }
  // stop and copy: the vCPUs stop, a final harvest, and the rest goes on the wire
  const t0 = performance.now();
  for (const v of vm.vcpuList) await v.pause();
  sync();
  const finalThrottle = throttleNow();
  dl?.stop();
  if (kind === "auto-converge") for (const v of vm.vcpuList) setCpuThrottle(v, 0);
  const finalRoundPages = send();
  pagesSent += finalRoundPages;
  const downtimeMs = performance.now() - t0 + wireMs(finalRoundPages);
  totalMs += downtimeMs;

  const { hashes, equal } = compareCopies(backed, source, destination);
  return {
    rounds,
    pagesSent,
    finalRoundPages,
    downtimeMs,
    destination,
    hashes,
    equal,
    converged,
    totalMs,
    bytesSent: pagesSent * PAGE,
    convergence: { kind, startedAtRound, finalThrottle },
  };
}
