// ring_reaper — the USERSPACE side of the dirty ring (QEMU's kvm_dirty_ring_reap_one), in
// WASM for its atomic loads (JS Atomics.load costs several plain reads). It touches only the
// shared ring and the collector's own buffer, never kernel-private state:
//   dirty_ring_count    the acquire: how many entries from the collector's fetch index are
//                       exactly DIRTY; src/dirty_ring_collector.ts then reads them in place
//                       and marks them RESET itself (the per-entry callback collector)
//   dirty_ring_collect  the whole harvest of a batch: acquire, copy (slot, offset) out,
//                       mark RESET (the bulk collector behind LogMode and harvestDirtyRings)
// Invariants, as for any collector (spec §3.9): an entry is read only after its flags were
// seen exactly DIRTY with an atomic load; it is marked RESET only after it was read; the
// RESETs of a batch are plain stores but the last, an atomic store that releases them all
// to KVM_RESET_DIRTY_RINGS; the first entry that is not exactly DIRTY ends the batch.
import { KVM_DIRTY_GFN_F_DIRTY, KVM_DIRTY_GFN_F_RESET } from "./layout";

/**
 * The acquire half of a harvest, for a collector that reads the entries itself (src/
 * dirty_ring_collector.ts): how many consecutive entries from the free-running index
 * `fetch` (at most `max`) have flags exactly DIRTY. Each flags load is atomic, so the
 * caller's later plain reads of those entries' slot and offset see the pushed data; KVM
 * does not touch an entry again until the collector has marked it RESET.
 */
export function dirty_ring_count(ring: usize, entries: u32, fetch: u32, max: u32): u32 {
  const mask = entries - 1;
  let n: u32 = 0;
  while (n < max && atomic.load<u32>(ring + (<usize>((fetch + n) & mask) << 4)) == KVM_DIRTY_GFN_F_DIRTY) n++;
  return n;
}

/**
 * Harvest up to `max` consecutive entries from the free-running index `fetch` (the batch
 * must not wrap: fetch & (entries - 1) + max <= entries): for each entry whose flags are
 * exactly DIRTY, in ring order, write its slot to the u32 array at `slots` and its offset,
 * as a float64 (exact: offsets are below 2^31), to the 8-aligned array at `offsets`, then
 * mark the batch RESET. Returns the number harvested; the caller advances its fetch index
 * by it.
 */
export function dirty_ring_collect(ring: usize, entries: u32, fetch: u32, max: u32, slots: usize, offsets: usize): u32 {
  let e = ring + (<usize>(fetch & (entries - 1)) << 4);
  let n: u32 = 0;
  while (n < max && atomic.load<u32>(e) == KVM_DIRTY_GFN_F_DIRTY) {
    store<u32>(slots + (<usize>n << 2), load<u32>(e, 4));
    store<f64>(offsets + (<usize>n << 3), <f64><i64>load<u64>(e, 8));
    store<u32>(e, KVM_DIRTY_GFN_F_RESET);
    e += 16;
    n++;
  }
  if (n != 0) atomic.store<u32>(e - 16, KVM_DIRTY_GFN_F_RESET); // releases the batch's RESETs
  return n;
}
