// ring_reaper — the USERSPACE side of the dirty ring (QEMU's kvm_dirty_ring_reap_one), in
// WASM for its atomic loads (JS Atomics.load costs several plain reads). It touches only the
// shared ring, never kernel-private state:
//   dirty_ring_count  the acquire: how many entries from the collector's fetch index are
//                     exactly DIRTY; src/dirty_ring_collector.ts then reads them in place
//                     and marks them RESET itself (plain stores, the batch's last one an
//                     atomic store that releases them all)
import { KVM_DIRTY_GFN_F_DIRTY } from "./layout";

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
