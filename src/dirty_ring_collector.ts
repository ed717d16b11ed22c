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

/** @internal One vCPU's harvest: `n` entries as (slots[k], offsets[k]), k < n. */
export interface RingBatch {
  n: number;
  slots: Uint32Array;
  offsets: Float64Array;
}

/** VMs whose vCPU collect buffers are being read (a harvest handing pages out). */
const buffersHeld = new WeakSet<Vm>();

/**
 * @internal Keep `vm`'s collect buffers from being overwritten while `fn` reads batches
 * returned by collectDirtyRingInPlace: a harvest started meanwhile (from a callback) takes
 * the JavaScript path into fresh arrays instead.
 */
export function holdingRingBuffers<T>(vm: Vm, fn: () => T): T {
  if (buffersHeld.has(vm)) return fn();
  buffersHeld.add(vm);
  try {
    return fn();
  } finally {
    buffersHeld.delete(vm);
  }
}

/**
 * @internal Harvest one vCPU's ring into its collect buffer (a slots array and an offsets
 * array of one entry per ring entry, in the shared memory): WASM reads each published
 * entry, writes (slot, offset) straight into the buffer and marks it RESET
 * (dirty_ring_collect: at most two calls, the ring's tail then its head). Returns views of
 * the n entries harvested, valid until the next harvest of this vCPU. While the VM's
 * buffers are held (holdingRingBuffers), the entries go to fresh arrays through the
 * JavaScript collector instead.
 */
export function collectDirtyRingInPlace(vcpu: Vcpu): RingBatch {
  const c = cursorOf(vcpu);
  const entries = c.entries;
  if (entries === 0) return { n: 0, slots: new Uint32Array(0), offsets: new Float64Array(0) };
  if (buffersHeld.has(vcpu.vm)) {
    const out = new RingEntries();
    collectDirtyRingInto(vcpu, out);
    return { n: out.n, slots: out.slots.subarray(0, out.n), offsets: out.offsets.subarray(0, out.n) };
  }
  const collect = vcpu.vm.raw.dirty_ring_collect;
  const slotsAt = vcpu.collectBuffer;
  const offsetsAt = slotsAt + entries * 4;
  let n = 0;
  while (n < entries) {
    const fetch = (c.fetch + n) >>> 0;
    const room = entries - (fetch & (entries - 1));
    const max = room < entries - n ? room : entries - n;
    const k = collect(c.ring, entries, fetch, max, slotsAt + n * 4, offsetsAt + n * 8);
    n += k;
    if (k < max) break;
  }
  c.fetch = (c.fetch + n) >>> 0;
  const buffer = c.words.buffer;
  return { n, slots: new Uint32Array(buffer, slotsAt, n), offsets: new Float64Array(buffer, offsetsAt, n) };
}

/**
 * @internal collectDirtyRing appending to `out` instead of calling back per entry (a
 * harvest started while the collect buffers are held). Returns the count.
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
   * creation order, each ring in ring order), each a Float64Array of exactly the harvested
   * length. They belong to the caller, unless passed back as `into` to a later harvest,
   * which then overwrites them.
   */
  offsets: Map<number, Float64Array>;
}

export interface HarvestOptions {
  /** Kick every vCPU first so that PML buffers reach the rings (default true). */
  kick?: boolean;
  /**
   * An earlier result to refill instead of allocating a new one: each slot's array is
   * rewritten in place over its own buffer when that buffer is big enough (a new view of it,
   * of the new length; otherwise a new array), slots with no entry this time are removed,
   * and the result is returned. A harvest loop that passes its last result allocates
   * nothing but the views once the buffers have grown to their working size; the previous
   * contents are gone, so copy what must outlive the next harvest.
   */
  into?: RingHarvest;
}

/** An array of `count` offsets: over `old`'s buffer when it is big enough. */
function offsetArray(old: Float64Array | undefined, count: number): Float64Array {
  if (old instanceof Float64Array && old.byteOffset === 0 && old.buffer.byteLength >= count * 8) {
    return old.length === count ? old : new Float64Array(old.buffer, 0, count);
  }
  return new Float64Array(count);
}

/**
 * Harvest every vCPU's ring, then KVM_RESET_DIRTY_RINGS. Like QEMU's kvm_dirty_ring_flush,
 * it first kicks every vCPU so that pages still in PML buffers reach the rings
 * (`kick: false` harvests only what is already published, like its background reaper).
 * Each ring is harvested in WASM into its vCPU's collect buffer (collectDirtyRingInPlace);
 * the per-slot arrays are then sized and filled from those, and the rings reset.
 */
export function harvestDirtyRings(vm: Vm, options: HarvestOptions = {}): RingHarvest {
  const vcpus = vm.vcpuList;
  if (options.kick ?? true) for (const vcpu of vcpus) vcpu.kick();
  const batches = vcpus.map(collectDirtyRingInPlace);
  const result: RingHarvest = options.into ?? { entries: 0, reset: 0, offsets: new Map() };
  const offsets = result.offsets;
  // count per slot: runs of one slot are the rule, so one map update per run
  const perSlot = new Map<number, number>();
  let n = 0;
  for (const { n: m, slots } of batches) {
    n += m;
    for (let k = 0; k < m; ) {
      const s = slots[k];
      const start = k;
      while (k < m && slots[k] === s) k++;
      perSlot.set(s, (perSlot.get(s) ?? 0) + (k - start));
    }
  }
  for (const slot of [...offsets.keys()]) if (!perSlot.has(slot)) offsets.delete(slot);
  for (const [slot, count] of perSlot) offsets.set(slot, offsetArray(offsets.get(slot), count));
  const filled = new Map<number, number>();
  for (const { n: m, slots, offsets: offs } of batches) {
    for (let k = 0; k < m; ) {
      const s = slots[k];
      const start = k;
      while (k < m && slots[k] === s) k++;
      const at = filled.get(s) ?? 0;
      (offsets.get(s) as Float64Array).set(offs.subarray(start, k), at);
      filled.set(s, at + (k - start));
    }
  }
  result.entries = n;
  result.reset = vm.resetDirtyRings();
  return result;
}
