// Userspace side of the dirty ring, like QEMU's reaper (accel/kvm/kvm-all.c
// kvm_dirty_ring_reap_one) and the selftest's dirty_ring_collect_one (spec §3.9):
// a private fetch index per vCPU; for each entry acquire the flags, stop at the first one
// that is not exactly DIRTY, record (slot, offset), release flags = RESET. Then
// KVM_RESET_DIRTY_RINGS re-arms what was harvested.
//
// The acquire is done in WASM a batch at a time (dirty_ring_count: one atomic load of the
// flags per entry; JS Atomics.load costs several times a plain read). The entries it
// counted are then read here with plain loads, over a view of the ring itself: KVM does
// not write an entry again before it is marked RESET, and RESET is stored only after the
// entry was read (and handed out), with plain stores and one Atomics.store at the end of
// each batch, which releases them all to the reset ioctl.
//
// Duplicates are normal (a page re-dirtied after a ring-full exit, reads that installed a
// writable SPTE, ...): consumers must tolerate them.
import type { CoreExports } from "./core.js";
import type { Vcpu } from "./vcpu.js";
import type { Vm } from "./vm.js";

interface RingCursor {
  ring: number;
  entries: number;
  /** userspace's free-running fetch index */
  fetch: number;
  /** the ring as u32 words (4 per entry: flags, slot, offset lo, offset hi) */
  words: Uint32Array;
}

/** The core export that does the acquire (assembly/ring_reaper.ts). */
type CountExport = Pick<CoreExports, "dirty_ring_count">;

const DIRTY = 1; // KVM_DIRTY_GFN_F_DIRTY
const RESET = 2; // KVM_DIRTY_GFN_F_RESET
const BATCH = 1024; // entries per acquire: 16 KiB of ring, still in L1 when it is read
const cursors = new WeakMap<Vcpu, RingCursor>();

function cursorOf(vcpu: Vcpu): RingCursor {
  let c = cursors.get(vcpu);
  if (!c) {
    const r = vcpu.dirtyRing;
    const words = new Uint32Array(r.buffer, r.byteOffset, r.byteLength >> 2);
    c = { ring: r.byteOffset, entries: r.byteLength >> 4, fetch: 0, words };
    cursors.set(vcpu, c);
  }
  return c;
}

const counter = (vm: Vm) => vm.raw.dirty_ring_count;

/**
 * The acquire for a batch of entries from the free-running index `fetch` (at most `max`,
 * not wrapping around the ring's end): how many of them may be read. The vCPU pushes in
 * ring order with an atomic flags store each, so when the batch's last entry is published
 * (one Atomics.load sees DIRTY; it cannot be an older lap's, which this collector marked
 * RESET) every entry before it is too, with its data; otherwise WASM counts the published
 * ones, acquiring each. Callers still check each entry's flags (a plain load) and stop at
 * the first one that is not DIRTY, as a collector that trusts nothing must.
 */
function acquire(c: RingCursor, count: CountExport["dirty_ring_count"], fetch: number, max: number): number {
  if (Atomics.load(c.words, ((fetch + max - 1) & (c.entries - 1)) << 2) === DIRTY) return max;
  return count(c.ring, c.entries, fetch, max);
}

/** The size of the batch from `fetch`: BATCH entries, or fewer up to the ring's end. */
function batchAt(c: RingCursor, fetch: number): number {
  const room = c.entries - (fetch & (c.entries - 1));
  return room < BATCH ? room : BATCH;
}

/**
 * Harvest one vCPU's ring: calls onEntry(slot, offset) for each published entry in ring
 * order and marks it RESET. `offset` is the slot-relative page index. Returns the count.
 * An entry is marked RESET after its onEntry returned: if onEntry throws, the entries
 * before it stay harvested and it is handed out again by the next call.
 */
export function collectDirtyRing(vcpu: Vcpu, onEntry: (slot: number, offset: number) => void): number {
  const c = cursorOf(vcpu);
  if (c.entries === 0) return 0;
  const count = counter(vcpu.vm);
  const words = c.words;
  let total = 0;
  while (true) {
    const fetch = c.fetch;
    const max = batchAt(c, fetch);
    const n = acquire(c, count, fetch, max);
    const first = (fetch & (c.entries - 1)) << 2;
    const end = first + (n << 2);
    let w = first;
    try {
      for (; w < end && words[w] === DIRTY; w += 4) {
        onEntry(words[w + 1], words[w + 2] + words[w + 3] * 0x1_0000_0000);
        words[w] = RESET;
      }
    } finally {
      if (w !== first) {
        Atomics.store(words, w - 4, RESET); // releases the batch's RESETs
        const k = (w - first) >> 2;
        c.fetch = (fetch + k) >>> 0;
        total += k;
      }
    }
    if (w < first + (max << 2)) return total;
  }
}

/**
 * @internal (src/log_mode.ts) Entries of ring harvests kept by the caller as (slot, offset)
 * pairs; grows, never shrinks, so a caller that reuses one allocates nothing once it is big
 * enough.
 */
export class RingEntries {
  slots = new Uint32Array(1024);
  offsets = new Float64Array(1024);
  n = 0;
  /** Room for `more` entries after the first n. */
  reserve(more: number): void {
    if (this.n + more <= this.slots.length) return;
    const size = Math.max(this.slots.length * 2, this.n + more);
    const slots = new Uint32Array(size);
    const offsets = new Float64Array(size);
    slots.set(this.slots.subarray(0, this.n));
    offsets.set(this.offsets.subarray(0, this.n));
    this.slots = slots;
    this.offsets = offsets;
  }
}

/**
 * @internal collectDirtyRing appending to `out` instead of calling back per entry (LogMode's
 * ring harvest: it hands pages out only after the reset). Returns the count.
 */
export function collectDirtyRingInto(vcpu: Vcpu, out: RingEntries): number {
  const c = cursorOf(vcpu);
  if (c.entries === 0) return 0;
  const count = counter(vcpu.vm);
  const words = c.words;
  let total = 0;
  while (true) {
    const fetch = c.fetch;
    const max = batchAt(c, fetch);
    const n = acquire(c, count, fetch, max);
    out.reserve(n);
    const { slots, offsets } = out;
    const first = (fetch & (c.entries - 1)) << 2;
    const end = first + (n << 2);
    let w = first;
    let at = out.n;
    for (; w < end && words[w] === DIRTY; w += 4, at++) {
      slots[at] = words[w + 1];
      offsets[at] = words[w + 2] + words[w + 3] * 0x1_0000_0000;
      words[w] = RESET;
    }
    out.n = at;
    if (w !== first) {
      Atomics.store(words, w - 4, RESET); // releases the batch's RESETs
      const k = (w - first) >> 2;
      c.fetch = (fetch + k) >>> 0;
      total += k;
    }
    if (w < first + (max << 2)) return total;
  }
}

export interface RingHarvest {
  /** Entries harvested from all rings (duplicates included). */
  entries: number;
  /** What KVM_RESET_DIRTY_RINGS returned (equals `entries` for an honest collector). */
  reset: number;
  /**
   * Per slot (as_id << 16 | id), the slot-relative page offsets in harvest order (vCPUs in
   * creation order, each ring in ring order): plain arrays of exactly the harvested length.
   * They belong to the caller, unless passed back as `into` to a later harvest, which then
   * overwrites them.
   */
  offsets: Map<number, number[]>;
}

export interface HarvestOptions {
  /** Kick every vCPU first so that PML buffers reach the rings (default true). */
  kick?: boolean;
  /**
   * An earlier result to refill instead of allocating a new one: its `offsets` arrays are
   * overwritten in place (resized to the new counts; slots with no entry this time are
   * removed) and it is returned. A harvest loop that passes its last result allocates
   * nothing once the arrays have grown to their working size; the previous contents are
   * gone, so copy what must outlive the next harvest.
   */
  into?: RingHarvest;
}

/** The list of `slot` (one pass 1 did not see exists only if the ring changed under us). */
function listOf(offsets: Map<number, number[]>, slot: number): number[] {
  let list = offsets.get(slot);
  if (!list) {
    list = [];
    offsets.set(slot, list);
  }
  return list;
}

/**
 * Harvest every vCPU's ring, then KVM_RESET_DIRTY_RINGS. Like QEMU's kvm_dirty_ring_flush,
 * it first kicks every vCPU so that pages still in PML buffers reach the rings
 * (`kick: false` harvests only what is already published, like its background reaper).
 * Entries are counted first (the acquire), the per-slot arrays allocated at their final
 * size, then filled straight from the rings, which are marked RESET.
 */
export function harvestDirtyRings(vm: Vm, options: HarvestOptions = {}): RingHarvest {
  const vcpus = vm.vcpuList;
  if (options.kick ?? true) for (const vcpu of vcpus) vcpu.kick();
  const count = counter(vm);
  // pass 1: how many entries each ring has published (at most one lap), and per slot
  const cs: RingCursor[] = [];
  const ns: number[] = [];
  const perSlot = new Map<number, number>();
  let entries = 0;
  for (const vcpu of vcpus) {
    const c = cursorOf(vcpu);
    const words = c.words;
    let n = 0;
    let slot = -1; // slot ids are u32: -1 is none
    let run = 0; // runs of one slot are the rule: one map update per run
    while (n < c.entries) {
      const fetch = (c.fetch + n) >>> 0;
      const room = batchAt(c, fetch);
      const max = room < c.entries - n ? room : c.entries - n;
      const first = (fetch & (c.entries - 1)) << 2;
      const end = first + (acquire(c, count, fetch, max) << 2);
      let w = first;
      for (; w < end && words[w] === DIRTY; w += 4) {
        const s = words[w + 1];
        if (s !== slot) {
          if (run !== 0) perSlot.set(slot, (perSlot.get(slot) ?? 0) + run);
          slot = s;
          run = 0;
        }
        run++;
      }
      n += (w - first) >> 2;
      if (w < first + (max << 2)) break;
    }
    if (run !== 0) perSlot.set(slot, (perSlot.get(slot) ?? 0) + run);
    if (n === 0) continue;
    cs.push(c);
    ns.push(n);
    entries += n;
  }
  // the result's arrays, at their final length
  const result: RingHarvest = options.into ?? { entries: 0, reset: 0, offsets: new Map() };
  const offsets = result.offsets;
  for (const slot of [...offsets.keys()]) if (!perSlot.has(slot)) offsets.delete(slot);
  for (const [slot, n] of perSlot) {
    const list = offsets.get(slot);
    if (list) list.length = n;
    else offsets.set(slot, new Array<number>(n));
  }
  // pass 2: fill them from the rings (entries known DIRTY), mark RESET, advance fetch
  const filled = new Map<number, number>();
  for (let i = 0; i < cs.length; i++) {
    const c = cs[i];
    const n = ns[i];
    const words = c.words;
    const mask = c.entries - 1;
    let slot = -1;
    let list: number[] = [];
    let at = 0;
    for (let k = 0; k < n; k++) {
      const w = ((c.fetch + k) & mask) << 2;
      const s = words[w + 1];
      if (s !== slot) {
        if (slot !== -1) filled.set(slot, at);
        slot = s;
        list = listOf(offsets, s);
        at = filled.get(s) ?? 0;
      }
      list[at++] = words[w + 2] + words[w + 3] * 0x1_0000_0000;
      words[w] = RESET;
    }
    filled.set(slot, at);
    Atomics.store(words, ((c.fetch + n - 1) & mask) << 2, RESET); // releases the RESETs
    c.fetch = (c.fetch + n) >>> 0;
  }
  result.entries = entries;
  result.reset = vm.resetDirtyRings();
  return result;
}
