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
import { int, known, object } from "./args.js";
import { KvmError } from "./errors.js";
import { logModeOf } from "./log_mode.js";
import { type MemslotInfo, Vm } from "./vm.js";

export interface MigrateOptions {
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
  ms: number;
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

/**
 * Migrate the backed slots of `vm` to fresh destination buffers while its vCPU loops run.
 * Dirty logging is turned on for those slots if it is off. Leaves the vCPUs paused.
 */
export async function migrate(vm: Vm, options: MigrateOptions = {}): Promise<MigrationResult> {
  const call = "migrate";
  if (!(vm instanceof Vm)) throw new KvmError("EINVAL", call, "vm must be a Vm from createVm()");
  const o = object<MigrateOptions>(options, "options", call);
  known(o, ["threshold", "maxRounds", "onRound"], call);
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
  return { rounds, pagesSent, finalRoundPages, downtimeMs, destination, hashes, equal };
}
