// Userspace side of the dirty ring, like QEMU's reaper (accel/kvm/kvm-all.c
// kvm_dirty_ring_reap_one) and the selftest's dirty_ring_collect_one (spec §3.9):
// a private fetch index per vCPU; for each entry acquire the flags, stop at the first one
// that is not exactly DIRTY, record (slot, offset), release flags = RESET. Then
// KVM_RESET_DIRTY_RINGS re-arms what was harvested.
//
// Duplicates are normal (a page re-dirtied after a ring-full exit, reads that installed a
// writable SPTE, ...): consumers must tolerate them.
import { KVM_DIRTY_GFN_F_DIRTY, KVM_DIRTY_GFN_F_RESET } from "./constants.js";
import type { Vcpu } from "./vcpu.js";
import type { Vm } from "./vm.js";

interface RingCursor {
  flags: Int32Array;
  words: Uint32Array;
  mask: number;
  /** userspace's free-running fetch index */
  fetch: number;
}

const cursors = new WeakMap<Vcpu, RingCursor>();

function cursorOf(vcpu: Vcpu): RingCursor {
  let c = cursors.get(vcpu);
  if (!c) {
    const r = vcpu.dirtyRing;
    const flags = new Int32Array(r.buffer, r.byteOffset, r.byteLength >> 2);
    const words = new Uint32Array(r.buffer, r.byteOffset, r.byteLength >> 2);
    c = { flags, words, mask: (r.byteLength >> 4) - 1, fetch: 0 };
    cursors.set(vcpu, c);
  }
  return c;
}

/**
 * Harvest one vCPU's ring: calls onEntry(slot, offset) for each published entry in ring
 * order and marks it RESET. `offset` is the slot-relative page index. Returns the count.
 */
export function collectDirtyRing(vcpu: Vcpu, onEntry: (slot: number, offset: number) => void): number {
  const c = cursorOf(vcpu);
  if (c.mask < 0) return 0;
  const { flags, words, mask } = c;
  let fetch = c.fetch;
  let n = 0;
  while (true) {
    const e = (fetch & mask) << 2; // 16-byte entries = 4 words
    if (Atomics.load(flags, e) !== KVM_DIRTY_GFN_F_DIRTY) break; // acquire
    onEntry(words[e + 1], words[e + 2] + words[e + 3] * 0x1_0000_0000);
    Atomics.store(flags, e, KVM_DIRTY_GFN_F_RESET); // release
    fetch = (fetch + 1) >>> 0;
    n++;
  }
  c.fetch = fetch;
  return n;
}

export interface RingHarvest {
  /** Entries harvested from all rings (duplicates included). */
  entries: number;
  /** What KVM_RESET_DIRTY_RINGS returned (equals `entries` for an honest collector). */
  reset: number;
  /** Per slot (as_id << 16 | id), the slot-relative page offsets in harvest order. */
  offsets: Map<number, number[]>;
}

/**
 * Harvest every vCPU's ring, then KVM_RESET_DIRTY_RINGS. Like QEMU's kvm_dirty_ring_flush,
 * it first kicks every vCPU so that pages still in PML buffers reach the rings
 * (`kick: false` harvests only what is already published, like its background reaper).
 */
export function harvestDirtyRings(vm: Vm, options: { kick?: boolean } = {}): RingHarvest {
  const offsets = new Map<number, number[]>();
  let entries = 0;
  if (options.kick ?? true) for (const vcpu of vm.vcpuList) vcpu.kick();
  for (const vcpu of vm.vcpuList) {
    entries += collectDirtyRing(vcpu, (slot, offset) => {
      let list = offsets.get(slot);
      if (!list) offsets.set(slot, (list = []));
      list.push(offset);
    });
  }
  const reset = vm.resetDirtyRings();
  return { entries, reset, offsets };
}
