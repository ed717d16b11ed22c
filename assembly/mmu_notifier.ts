// mmu_notifier — the host changed the pages behind guest memory (virt/kvm/kvm_main.c
// kvm_mmu_notifier_invalidate_range_start/_end, kvm_mmu_invalidate_begin/_end; spec §6.2).
//
// Two host events reach KVM this way in dirtlog:
//   - the host pages of a slot range go away and come back (swap-out and -in, page
//     migration): kvm_mmu_notifier_invalidate_range, from vm.invalidateHostRange;
//   - copy-on-write: a host-side writer (the VMM, or KVM's own copy_to_user) touches a page
//     that has no host page yet, whose guest mapping — if any — is the shared zero page,
//     read-only: host_fault_in gives it a page inside an invalidation, so that the stale
//     mapping is zapped and the guest's next access faults and finds the new page writable
//     (and, in a logged slot, reports it: anchors/real-kvm.md "Reads").
//
// Ordering, as the kernel's (the fields are in the VM block):
//   start: mn_active_invalidate_count++ (pfn-cache refreshes that see it retry), every pfn
//          cache whose uhva lies in the range loses `valid`, then under mmu_lock for write:
//          mmu_invalidate_in_progress++ with the gfn range, zap, flush;
//   (the host PTE changes here: host_fault_in sets the host-present bits)
//   end:   under mmu_lock for write: mmu_invalidate_seq++, in_progress--; then
//          mn_active_invalidate_count--.
// Invariants: a slow fault never installs a mapping of a gfn inside a range being
// invalidated (it walks again until the end: mmu_invalidate_retry_gfn); a pfn-cache refresh
// never becomes valid while an invalidation is active or after one ended since it read the
// sequence number (pfncache.ts hva_to_pfn_retry).
import {
  SLOT_ACTIVE,
  SLOT_BASE_GFN,
  SLOT_HVA,
  SLOT_NPAGES,
  VM_HOST_INVALIDATIONS,
  VM_MMU_INVALIDATE_END,
  VM_MMU_INVALIDATE_IN_PROGRESS,
  VM_MMU_INVALIDATE_SEQ,
  VM_MMU_INVALIDATE_START,
  VM_MN_ACTIVE_INVALIDATE,
} from "./layout";
import { slot_host_present, slot_id_of, slot_ptr } from "./kvm_host";
import { write_lock, write_unlock } from "./mmu_lock";
import { gfn_to_pfn_cache_invalidate_start } from "./pfncache";
import { kvm_mmu_unmap_gfn_range } from "./mmu";
import { flush_remote_tlbs } from "./tlb";

/** kvm_mmu_invalidate_begin (mmu_lock held for write): widen the range in progress. */
function invalidate_begin(vm: usize, start: u64, end: u64): void {
  const n = load<u32>(vm + VM_MMU_INVALIDATE_IN_PROGRESS);
  if (n == 0) {
    store<u64>(vm + VM_MMU_INVALIDATE_START, start);
    store<u64>(vm + VM_MMU_INVALIDATE_END, end);
  } else {
    if (start < load<u64>(vm + VM_MMU_INVALIDATE_START)) store<u64>(vm + VM_MMU_INVALIDATE_START, start);
    if (end > load<u64>(vm + VM_MMU_INVALIDATE_END)) store<u64>(vm + VM_MMU_INVALIDATE_END, end);
  }
  atomic.store<u32>(vm + VM_MMU_INVALIDATE_IN_PROGRESS, n + 1);
}

/** kvm_mmu_invalidate_end (mmu_lock held for write). */
function invalidate_end(vm: usize): void {
  atomic.add<u64>(vm + VM_MMU_INVALIDATE_SEQ, 1);
  atomic.sub<u32>(vm + VM_MMU_INVALIDATE_IN_PROGRESS, 1);
}

/**
 * mmu_invalidate_retry_gfn, for a fault holding mmu_lock (read): is gfn inside a range
 * whose invalidation has begun and not ended? The fault must then walk again.
 */
@inline export function mmu_invalidate_retry_gfn(vm: usize, gfn: u64): bool {
  if (atomic.load<u32>(vm + VM_MMU_INVALIDATE_IN_PROGRESS) == 0) return false;
  return gfn >= load<u64>(vm + VM_MMU_INVALIDATE_START) && gfn < load<u64>(vm + VM_MMU_INVALIDATE_END);
}

/**
 * One invalidation of pages [rel, rel + count) of `slot`: start (pfn caches, zap, flush),
 * then, when `fault_in`, the host pages come into existence (copy-on-write), then end.
 * Returns 1 if mappings were zapped. Not under mmu_lock; `can_block` as for flushes.
 */
function invalidate_range(vm: usize, slot: usize, rel: u64, count: u64, fault_in: bool, can_block: bool): u32 {
  atomic.add<u32>(vm + VM_MN_ACTIVE_INVALIDATE, 1);
  atomic.add<u32>(vm + VM_HOST_INVALIDATIONS, 1);
  const hva = load<u64>(slot + SLOT_HVA) + (rel << 12);
  gfn_to_pfn_cache_invalidate_start(vm, hva, hva + (count << 12));
  const gfn = load<u64>(slot + SLOT_BASE_GFN) + rel;
  write_lock(vm);
  invalidate_begin(vm, gfn, gfn + count);
  const zapped = kvm_mmu_unmap_gfn_range(vm, slot, slot_id_of(vm, slot) >> 16, gfn, gfn + count);
  if (zapped) flush_remote_tlbs(vm, can_block);
  write_unlock(vm);
  if (fault_in) set_present(slot_host_present(slot), rel, count);
  write_lock(vm);
  invalidate_end(vm);
  write_unlock(vm);
  atomic.sub<u32>(vm + VM_MN_ACTIVE_INVALIDATE, 1);
  return zapped ? 1 : 0;
}

function set_present(bitmap: usize, from: u64, count: u64): void {
  for (let n = from; n < from + count; n++) {
    atomic.or<u64>(bitmap + <usize>((n >> 6) << 3), (<u64>1) << (n & 63));
  }
}

/**
 * The host pages of slot pages [rel, rel + count) go away and come back (their content
 * kept): every mapping is zapped with a flush, every pfn cache on them invalidated. The
 * guest's next access faults and maps them again (a write in a logged slot is reported
 * again). Returns 1 if mappings were zapped, or -EINVAL for a range outside the slot.
 */
export function kvm_mmu_notifier_invalidate_range(vm: usize, slot: usize, rel: u64, count: u64, can_block: u32): i32 {
  const npages = load<u64>(slot + SLOT_NPAGES);
  if (rel > npages || count > npages - rel) return -22;
  if (count == 0) return 0;
  return <i32>invalidate_range(vm, slot, rel, count, false, can_block != 0);
}

/** kvm_mmu_notifier_invalidate_range for the host: the slot by id; -EINVAL if it does not exist. */
export function kvm_mmu_notifier_invalidate_slot(vm: usize, slot_id: u32, rel: u64, count: u64, can_block: u32): i32 {
  const s = slot_ptr(vm, slot_id >> 16, slot_id & 0xffff);
  if (load<u32>(s + SLOT_ACTIVE) == 0) return -22;
  return kvm_mmu_notifier_invalidate_range(vm, s, rel, count, can_block);
}

/**
 * A host-side write is about to touch slot pages [rel, rel + count): each page without a
 * host page gets one by copy-on-write from the zero page, inside an invalidation (one per
 * run of such pages), which zaps the guest's read-only zero-page mapping. Pages that exist
 * already are written in place: no notifier event. Returns the pages faulted in.
 */
export function host_fault_in(vm: usize, slot: usize, rel: u64, count: u64, can_block: bool): u64 {
  const present = slot_host_present(slot);
  let n: u64 = 0;
  let p = rel;
  const end = rel + count;
  while (p < end) {
    if ((atomic.load<u64>(present + <usize>((p >> 6) << 3)) & ((<u64>1) << (p & 63))) != 0) {
      p++;
      continue;
    }
    let q = p + 1;
    while (q < end && (atomic.load<u64>(present + <usize>((q >> 6) << 3)) & ((<u64>1) << (q & 63))) == 0) q++;
    invalidate_range(vm, slot, p, q - p, true, can_block);
    n += q - p;
    p = q;
  }
  return n;
}
