// ring_reaper — the USERSPACE side of the dirty ring (QEMU's kvm_dirty_ring_reap_one), run
// in WASM for speed by src/dirty_ring_collector.ts. It touches only the shared ring, never
// kernel-private state: for each entry from the collector's fetch index, acquire the flags,
// stop unless they are exactly DIRTY, copy (slot, offset) out, and mark the entry RESET.
//
//   out record (16 bytes): u32 slot @0, u32 pad @4, u64 offset @8
//
// The RESET stores are plain; the batch's last one is repeated as a seq-cst store, which
// releases all of them. The reset ioctl runs after the harvest on the same thread, or on a
// thread that learned about the harvest through a synchronizing channel (postMessage,
// an atomic), so it sees every RESET. (On x86 plain stores are ordered anyway.)
import { KVM_DIRTY_GFN_F_DIRTY, KVM_DIRTY_GFN_F_RESET } from "./layout";

/**
 * Harvest up to `max` entries of the ring at `ring` (entries a power of two) starting at the
 * free-running index `fetch`. Returns how many were harvested (the caller advances fetch).
 */
export function dirty_ring_reap(ring: usize, entries: u32, fetch: u32, out: usize, max: u32): u32 {
  const mask = entries - 1;
  let n: u32 = 0;
  while (n < max) {
    const e = ring + (<usize>((fetch + n) & mask) << 4);
    if (atomic.load<u32>(e) != KVM_DIRTY_GFN_F_DIRTY) break;
    const o = out + (<usize>n << 4);
    store<u32>(o, load<u32>(e + 4));
    store<u64>(o + 8, load<u64>(e + 8));
    store<u32>(e, KVM_DIRTY_GFN_F_RESET);
    n++;
  }
  if (n != 0) atomic.store<u32>(ring + (<usize>((fetch + n - 1) & mask) << 4), KVM_DIRTY_GFN_F_RESET);
  return n;
}
