// Userspace side of the dirty ring, like QEMU's reaper (accel/kvm/kvm-all.c
// kvm_dirty_ring_reap_one) and the selftest's dirty_ring_collect_one (spec §3.9):
// a private fetch index per vCPU; for each entry acquire the flags, stop at the first one
// that is not exactly DIRTY, record (slot, offset), release flags = RESET. Then
// KVM_RESET_DIRTY_RINGS re-arms what was harvested.
//
// Duplicates are normal (a page re-dirtied after a ring-full exit, reads that installed a
// writable SPTE, ...): consumers must tolerate them.
import type { Vcpu } from "./vcpu.js";
import type { Vm } from "./vm.js";

interface RingCursor {
  ring: number;
  entries: number;
  /** userspace's free-running fetch index */
  fetch: number;
  /** scratch records (16 bytes: u32 slot, u32 pad, u64 offset) the WASM reaper fills */
  out: number;
  words: Uint32Array;
}

const BATCH = 4096;
const cursors = new WeakMap<Vcpu, RingCursor>();

function cursorOf(vcpu: Vcpu): RingCursor {
  let c = cursors.get(vcpu);
  if (!c) {
    const r = vcpu.dirtyRing;
    const out = r.byteLength ? vcpu.vm.allocRegion(BATCH * 16, 64) : 0;
    const words = new Uint32Array(vcpu.vm.memory.buffer, out, out ? BATCH * 4 : 0); // the memory may have grown
    c = { ring: r.byteOffset, entries: r.byteLength >> 4, fetch: 0, out, words };
    cursors.set(vcpu, c);
  }
  return c;
}

/**
 * Harvest one vCPU's ring: calls onEntry(slot, offset) for each published entry in ring
 * order and marks it RESET. `offset` is the slot-relative page index. Returns the count.
 * (The acquire / copy / RESET loop runs in WASM, a batch at a time.)
 */
export function collectDirtyRing(vcpu: Vcpu, onEntry: (slot: number, offset: number) => void): number {
  const c = cursorOf(vcpu);
  if (c.entries === 0) return 0;
  const words = c.words;
  let total = 0;
  while (true) {
    const n = vcpu.vm.raw.dirty_ring_reap(c.ring, c.entries, c.fetch, c.out, BATCH);
    for (let k = 0, w = 0; k < n; k++, w += 4) onEntry(words[w], words[w + 2] + words[w + 3] * 0x1_0000_0000);
    c.fetch = (c.fetch + n) >>> 0;
    total += n;
    if (n < BATCH) return total;
  }
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
      const list = offsets.get(slot);
      if (list) list.push(offset);
      else offsets.set(slot, [offset]);
    });
  }
  const reset = vm.resetDirtyRings();
  return { entries, reset, offsets };
}
