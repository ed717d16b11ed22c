// dirty_ring — per-vCPU dirty rings (virt/kvm/dirty_ring.c, include/linux/kvm_dirty_ring.h).
//
// struct kvm_dirty_gfn, 16 bytes, KVM's byte layout, shared with userspace:
//   +0  u32 flags    KVM_DIRTY_GFN_F_DIRTY = 1, KVM_DIRTY_GFN_F_RESET = 2
//   +4  u32 slot     as_id << 16 | id
//   +8  u64 offset   page index inside the slot
//
// Entry lifecycle (flags bits RESET|DIRTY):
//   00 ──push (KVM, vCPU thread)──► 01 ──harvest (userspace)──► 1X ──reset (KVM)──► 00
// KVM only makes 00→01 and 1X→00; userspace only 01→1X. "Harvested" is `flags & RESET`.
// Push: slot and offset first, then flags with an atomic store (release publication).
// Reset: load flags (acquire), then store 0 (release).
//
// Per-vCPU state in the vCPU block:
//   dirty_index  free-running count of pushes (written by the vCPU thread only)
//   dirty_published  dirty_index as the resetter may rely on it: the vCPU thread copies
//                dirty_index there with an atomic store at every VM exit and at the end of
//                every vCPU-context call that can push (dirty_ring_publish), so it lags
//                dirty_index only while the vCPU is in KVM_RUN
//   reset_index  free-running count of entries reset (written by the resetter only)
//   used = dirty_index - reset_index (u32 wrap); soft-full ⇔ used ≥ soft_limit
//   (= entries − 64, − 512 more with PML); full ⇔ used ≥ entries.
//   Entry for count c: ring[c & (entries − 1)].
// Publication order: data → flags (atomic, per push) → dirty_published (atomic, per exit).
// KVM's dirty_index is a plain counter that only its vCPU reads; here the resetter reads
// it too, and publishing it once per exit instead of once per push keeps the push at one
// atomic store (the flags), like a bitmap report's one atomic or.
//
// Private copy (VCPU_RING_PRIV), 16 bytes per entry: u32 ~index (the push number, a tag),
// u32 slot, u64 offset — written before the entry's flags are published.
//
// Untrusted userspace: the ring is writable by the collector. For an honest collector
// (flags only ever 1 → 2) dirtlog behaves exactly as KVM; against a scribbling one it is
// stricter, so that no collector write can leave a page un-armed:
//   - the core keeps its own copy of each entry's (slot, offset) at push time
//     (VCPU_RING_PRIV) and resets from it, so rewriting slot/offset cannot make the reset
//     re-arm the wrong page (KVM re-reads the shared fields);
//   - the reset walks only entries that were pushed (below dirty_published, or harvested
//     and tagged as pushed in the private copy: a push writes its tag before it publishes
//     flags, and dirty_published lags) and stops only at an entry whose flags are exactly
//     DIRTY (not yet harvested); below dirty_published any other value counts as harvested
//     (KVM stops at any value without the RESET bit, so a zeroed harvested entry would stall
//     its ring for good; here it waits at most until the vCPU's next exit publishes).
// Every (slot, offset) batch is validated again before use: the slot may have been
// deleted, moved or re-created smaller since the push.
import {
  KVM_DIRTY_GFN_F_DIRTY,
  KVM_DIRTY_GFN_F_RESET,
  KVM_EXIT_DIRTY_RING_FULL,
  KVM_NR_AS,
  KVM_REQ_DIRTY_RING_SOFT_FULL,
  KVM_USER_MEM_SLOTS,
  SLOT_ACTIVE,
  SLOT_NPAGES,
  VCPU_DIRTY_INDEX,
  VCPU_DIRTY_PUBLISHED,
  VCPU_REQUESTS,
  VCPU_RESET_INDEX,
  VCPU_RING,
  VCPU_RING_ENTRIES,
  VCPU_RING_FULL_EXITS,
  VCPU_RING_PRIV,
  VCPU_RING_PUSHES,
  VCPU_RING_SOFT_LIMIT,
  VM_RING_SIZE,
  VM_RING_WARN,
  EINVAL,
} from "./layout";
import { slot_ptr } from "./kvm_host";
import { kvm_arch_mmu_enable_log_dirty_pt_masked, kvm_mmu_reprotect_begin } from "./mmu";
import { lockdep_assert_held_write, write_lock, write_unlock } from "./mmu_lock";
import { kvm_get_vcpu, kvm_nr_vcpus, lockdep_assert_vcpu_held } from "./vcpu";
import { flush_remote_tlbs_dirty_log } from "./tlb";

const SOFT_FULL_REQ: u32 = 1 << KVM_REQ_DIRTY_RING_SOFT_FULL;

/** Entries in use, as the vCPU's thread sees them (dirty_index is its own). */
@inline function used(vcpu: usize): u32 {
  return load<u32>(vcpu + VCPU_DIRTY_INDEX) - atomic.load<u32>(vcpu + VCPU_RESET_INDEX);
}

@inline export function dirty_ring_soft_full(vcpu: usize): bool {
  return used(vcpu) >= load<u32>(vcpu + VCPU_RING_SOFT_LIMIT);
}

/** kvm_dirty_ring_alloc: attach a zeroed ring (and its private copy) to a vCPU. */
export function dirty_ring_alloc(vcpu: usize, ring: usize, priv: usize, entries: u32, reserved: u32): void {
  store<u32>(vcpu + VCPU_RING, <u32>ring);
  store<u32>(vcpu + VCPU_RING_PRIV, <u32>priv);
  store<u32>(vcpu + VCPU_RING_ENTRIES, entries);
  store<u32>(vcpu + VCPU_RING_SOFT_LIMIT, entries - reserved);
  store<u32>(vcpu + VCPU_DIRTY_INDEX, 0);
  store<u32>(vcpu + VCPU_DIRTY_PUBLISHED, 0);
  store<u32>(vcpu + VCPU_RESET_INDEX, 0);
}

/**
 * kvm_dirty_ring_push: publish (slot, offset); raise the soft-full request at the limit.
 * One atomic store (the flags); dirty_index is a plain store, published at the next exit.
 */
export function dirty_ring_push(vm: usize, vcpu: usize, slot: u32, offset: u64): void {
  lockdep_assert_vcpu_held(vcpu); // dirty_index has one writer: the vCPU's driver
  const index = load<u32>(vcpu + VCPU_DIRTY_INDEX);
  const entries = load<u32>(vcpu + VCPU_RING_ENTRIES);
  const used = index - atomic.load<u32>(vcpu + VCPU_RESET_INDEX);
  // It should never get full; if it does, the entry is overwritten (WARN_ON_ONCE).
  if (used >= entries) atomic.add<u32>(vm + VM_RING_WARN, 1);
  const at = <usize>(index & (entries - 1)) << 4;
  const e = <usize>load<u32>(vcpu + VCPU_RING) + at;
  const p = <usize>load<u32>(vcpu + VCPU_RING_PRIV) + at;
  store<u32>(p, ~index); // tag: pushed as number `index` (see dirty_ring_reset)
  store<u32>(p + 4, slot);
  store<u64>(p + 8, offset);
  store<u32>(e + 4, slot);
  store<u64>(e + 8, offset);
  atomic.store<u32>(e, KVM_DIRTY_GFN_F_DIRTY); // publish after the data (and the tag)
  store<u32>(vcpu + VCPU_DIRTY_INDEX, index + 1); // the resetter sees it at the next exit
  store<u64>(vcpu + VCPU_RING_PUSHES, load<u64>(vcpu + VCPU_RING_PUSHES) + 1);
  // soft-full after this push (reset_index as loaded above: a reset since only lowers it,
  // and dirty_ring_check_request re-checks before the vCPU exits)
  if (used + 1 >= load<u32>(vcpu + VCPU_RING_SOFT_LIMIT)) atomic.or<u32>(vcpu + VCPU_REQUESTS, SOFT_FULL_REQ);
}

/**
 * Publish dirty_index to the resetter (dirty_published, an atomic store after every flags
 * store it covers). On the vCPU's thread at every VM exit (vcpu_exit_guest) and before a
 * vCPU-context call that pushed returns (kvm_write_guest); nothing to do without pushes.
 */
@inline export function dirty_ring_publish(vcpu: usize): void {
  const index = load<u32>(vcpu + VCPU_DIRTY_INDEX);
  if (load<u32>(vcpu + VCPU_DIRTY_PUBLISHED) == index) return;
  lockdep_assert_vcpu_held(vcpu); // one writer, like dirty_index
  atomic.store<u32>(vcpu + VCPU_DIRTY_PUBLISHED, index);
}

/**
 * kvm_dirty_ring_check_request, at every guest entry: while the request is pending and the
 * ring is still soft-full the vCPU exits with KVM_EXIT_DIRTY_RING_FULL (request kept);
 * once a reset brought usage under the limit the request is consumed. Returns the exit
 * reason or 0.
 */
export function dirty_ring_check_request(vcpu: usize): u32 {
  if ((atomic.load<u32>(vcpu + VCPU_REQUESTS) & SOFT_FULL_REQ) == 0) return 0;
  if (dirty_ring_soft_full(vcpu)) {
    store<u64>(vcpu + VCPU_RING_FULL_EXITS, load<u64>(vcpu + VCPU_RING_FULL_EXITS) + 1);
    return KVM_EXIT_DIRTY_RING_FULL;
  }
  atomic.and<u32>(vcpu + VCPU_REQUESTS, ~SOFT_FULL_REQ);
  return 0;
}

/**
 * kvm_reset_dirty_gfn: re-arm a (slot, offset, mask) batch unless it no longer fits.
 * The caller holds mmu_lock for write.
 */
function reset_gfn(vm: usize, slot: u32, offset: u64, mask: u64): void {
  lockdep_assert_held_write(vm);
  if (mask == 0) return;
  const as_id = slot >> 16;
  const id = slot & 0xffff;
  if (as_id >= KVM_NR_AS || id >= KVM_USER_MEM_SLOTS) return;
  const s = slot_ptr(vm, as_id, id);
  if (load<u32>(s + SLOT_ACTIVE) == 0) return;
  // KVM tests offset + __fls(mask) >= npages, which can wrap for a u64 offset near 2^64;
  // this form cannot, so a batch never reaches outside its slot.
  const npages = load<u64>(s + SLOT_NPAGES);
  const fls = <u64>(63 - clz<u64>(mask));
  if (offset >= npages || fls >= npages - offset) return;
  kvm_arch_mmu_enable_log_dirty_pt_masked(vm, s, as_id, offset, mask);
}

/**
 * kvm_dirty_ring_reset for one vCPU: walk from reset_index while entries are harvested,
 * coalescing consecutive entries of one slot into (slot, base, 64-bit mask) batches —
 * forward within 64 pages, or backward when no bit is lost — and re-arm each batch.
 * Returns the number of entries reset.
 */
export function dirty_ring_reset(vm: usize, vcpu: usize): u32 {
  const ring = <usize>load<u32>(vcpu + VCPU_RING);
  if (ring == 0) return 0;
  const priv = <usize>load<u32>(vcpu + VCPU_RING_PRIV);
  const size_mask = load<u32>(vcpu + VCPU_RING_ENTRIES) - 1;
  const dirty = atomic.load<u32>(vcpu + VCPU_DIRTY_PUBLISHED);
  let index = load<u32>(vcpu + VCPU_RESET_INDEX);
  let count: u32 = 0;
  let cur_slot: u32 = 0;
  let cur_offset: u64 = 0;
  let mask: u64 = 0;
  // One write-side hold of mmu_lock for the whole ring (KVM takes it per batch): entries
  // written in random order hardly coalesce, and a lock round trip per entry would cost
  // more than the re-arming itself. The walk cache is valid while the lock is held.
  write_lock(vm);
  kvm_mmu_reprotect_begin(vm);
  // at most one lap per call: after a hard-full overwrite dirty_index may be more than a
  // ring ahead, and an entry zeroed earlier in this call must not count a second time
  const entries = size_mask + 1;
  while (count < entries) {
    const at = <usize>(index & size_mask) << 4;
    const e = ring + at;
    const flags = atomic.load<u32>(e);
    if (flags == KVM_DIRTY_GFN_F_DIRTY) break; // not harvested yet
    if (<i32>(index - dirty) >= 0) {
      // Past the last published push. The vCPU may be in KVM_RUN with pushes not yet
      // published (or one still finishing): a harvested entry here was pushed iff its
      // private tag, written before its flags, says so. An entry never pushed is not walked.
      if ((flags & KVM_DIRTY_GFN_F_RESET) == 0 || load<u32>(priv + at) != ~index) break;
    }
    const next_slot = load<u32>(priv + at + 4);
    const next_offset = load<u64>(priv + at + 8);
    atomic.store<u32>(e, 0);
    index++;
    atomic.store<u32>(vcpu + VCPU_RESET_INDEX, index);
    count++;
    if (mask != 0 && next_slot == cur_slot) {
      const delta = <i64>(next_offset - cur_offset);
      if (delta >= 0 && delta < 64) {
        mask |= (<u64>1) << delta;
        continue;
      }
      // Backwards visit: shift the window down only if no set bit falls off the top.
      if (delta > -64 && delta < 0 && (mask << -delta) >> -delta == mask) {
        cur_offset = next_offset;
        mask = (mask << -delta) | 1;
        continue;
      }
    }
    reset_gfn(vm, cur_slot, cur_offset, mask);
    cur_slot = next_slot;
    cur_offset = next_offset;
    mask = 1;
  }
  reset_gfn(vm, cur_slot, cur_offset, mask);
  write_unlock(vm);
  return count;
}

/**
 * KVM_RESET_DIRTY_RINGS: reset every vCPU's ring (in creation order), then one remote
 * TLB flush if anything was reset. Returns the number of entries reset, or -EINVAL when
 * the VM has no rings.
 */
export function kvm_reset_dirty_rings(vm: usize, can_block: u32): i32 {
  if (load<u32>(vm + VM_RING_SIZE) == 0) return -EINVAL;
  const n = kvm_nr_vcpus(vm);
  let total: u32 = 0;
  for (let i: u32 = 0; i < n; i++) total += dirty_ring_reset(vm, kvm_get_vcpu(vm, i));
  if (total != 0) flush_remote_tlbs_dirty_log(vm, can_block != 0);
  return <i32>total;
}
