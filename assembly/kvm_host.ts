// kvm_host — memslot accessors and lookup (include/linux/kvm_host.h: __gfn_to_memslot,
// gfn_to_index and friends): the read-only side of memslot.ts, which changes slots.
// Everything here reads a slot record or its metadata region (layout: memslot.ts) and is
// safe from any thread without a lock (lookups race with updates exactly as in KVM, where
// memslot updates zap every mapping before a slot goes away).
import {
  KVM_DIRTY_LOG_INITIALLY_SET,
  KVM_DIRTY_LOG_MANUAL_PROTECT_ENABLE,
  KVM_MEM_LOG_DIRTY_PAGES,
  KVM_NR_AS,
  SLOT_BASE_GFN,
  SLOT_FLAGS,
  SLOT_HVA,
  SLOT_MAX_LEVEL,
  SLOT_META,
  SLOT_NPAGES,
  SLOT_SIZE,
  VM_MANUAL_PROTECT,
  VM_NSORTED,
  VM_RING_SIZE,
  VM_RING_WITH_BITMAP,
  VM_SLOTS,
  VM_SORTED,
  KVM_MEMSLOT_INVALID,
} from "./layout";

// ---- metadata region geometry ----
@inline export function bitmap_words(npages: u64): u64 {
  return (npages + 63) >> 6;
}
@inline export function summary_words(words: u64): u64 {
  return (words + 63) >> 6;
}
@inline export function slot_words(slot: usize): u64 {
  return bitmap_words(load<u64>(slot + SLOT_NPAGES));
}
@inline export function slot_second(slot: usize): usize {
  return <usize>load<u32>(slot + SLOT_META) + <usize>(slot_words(slot) << 3);
}
@inline export function slot_summary(slot: usize): usize {
  return <usize>load<u32>(slot + SLOT_META) + <usize>(slot_words(slot) << 4);
}
@inline export function slot_summary_words(slot: usize): u64 {
  return summary_words(slot_words(slot));
}
@inline export function slot_host_present(slot: usize): usize {
  return slot_summary(slot) + <usize>(slot_summary_words(slot) << 3);
}
@inline export function slot_scratch(slot: usize): usize {
  return slot_host_present(slot) + <usize>(slot_words(slot) << 3);
}


// ---- lookup ----
@inline export function slot_ptr(vm: usize, as_id: u32, id: u32): usize {
  return <usize>load<u32>(vm + VM_SLOTS) + <usize>((as_id << 15) | id) * SLOT_SIZE;
}
/** The `as_id << 16 | id` of a slot record. */
@inline export function slot_id_of(vm: usize, slot: usize): u32 {
  const index = <u32>((slot - <usize>load<u32>(vm + VM_SLOTS)) / SLOT_SIZE);
  return ((index >> 15) << 16) | (index & 0x7fff);
}
@inline export function sorted_ptr(vm: usize, as_id: u32): usize {
  return <usize>load<u32>(vm + VM_SORTED) + (<usize>as_id << 16);
}
@inline export function nsorted(vm: usize, as_id: u32): u32 {
  return load<u32>(vm + VM_NSORTED + (as_id << 2));
}
/** A DELETE or MOVE of the slot is zapping its mappings (KVM_MEMSLOT_INVALID): faults on it retry. */
@inline export function slot_invalid(slot: usize): bool {
  return (load<u32>(slot + SLOT_FLAGS) & KVM_MEMSLOT_INVALID) != 0;
}
@inline export function slot_logged(slot: usize): bool {
  return (load<u32>(slot + SLOT_FLAGS) & KVM_MEM_LOG_DIRTY_PAGES) != 0;
}
/** kvm_use_dirty_bitmap: bitmap mode, or a ring VM with KVM_CAP_DIRTY_LOG_RING_WITH_BITMAP. */
@inline export function use_dirty_bitmap(vm: usize): bool {
  return load<u32>(vm + VM_RING_SIZE) == 0 || load<u32>(vm + VM_RING_WITH_BITMAP) != 0;
}

/** Index in the sorted array of the last slot with base_gfn <= gfn, or -1. */
export function sorted_floor(vm: usize, as_id: u32, gfn: u64): i32 {
  const arr = sorted_ptr(vm, as_id);
  let lo: i32 = 0;
  let hi: i32 = <i32>nsorted(vm, as_id) - 1;
  let found: i32 = -1;
  while (lo <= hi) {
    const mid = (lo + hi) >>> 1;
    const s = slot_ptr(vm, as_id, load<u16>(arr + (<usize>mid << 1)));
    if (load<u64>(s + SLOT_BASE_GFN) <= gfn) {
      found = mid;
      lo = mid + 1;
    } else {
      hi = mid - 1;
    }
  }
  return found;
}

/** __gfn_to_memslot: the slot of address space as_id containing gfn, or 0. */
export function memslot_lookup(vm: usize, as_id: u32, gfn: u64): usize {
  const i = sorted_floor(vm, as_id, gfn);
  if (i < 0) return 0;
  const s = slot_ptr(vm, as_id, load<u16>(sorted_ptr(vm, as_id) + (<usize>i << 1)));
  return gfn - load<u64>(s + SLOT_BASE_GFN) < load<u64>(s + SLOT_NPAGES) ? s : 0;
}

/**
 * The slot whose host range [hva, hva + npages × 4096) contains `hva` (any address space),
 * or 0: the VMM's mapping behind a host address (hva_to_pfn's view of guest memory).
 * Unbacked slots use their gpa as hva, so an hva may name one in each address space; the
 * first found wins. Lock-free, like memslot_lookup.
 */
export function memslot_by_hva(vm: usize, hva: u64): usize {
  for (let as_id: u32 = 0; as_id < KVM_NR_AS; as_id++) {
    const arr = sorted_ptr(vm, as_id);
    const n = nsorted(vm, as_id);
    for (let i: u32 = 0; i < n; i++) {
      const s = slot_ptr(vm, as_id, load<u16>(arr + (<usize>i << 1)));
      const start = load<u64>(s + SLOT_HVA);
      if (hva >= start && hva - start < load<u64>(s + SLOT_NPAGES) << 12) return s;
    }
  }
  return 0;
}

@inline export function manual_protect_and_init_set(vm: usize): bool {
  return (load<u32>(vm + VM_MANUAL_PROTECT) & KVM_DIRTY_LOG_INITIALLY_SET) != 0;
}
@inline export function manual_protect(vm: usize): bool {
  return (load<u32>(vm + VM_MANUAL_PROTECT) & KVM_DIRTY_LOG_MANUAL_PROTECT_ENABLE) != 0;
}

/**
 * Huge-page rule (lpage_info disallow + host mapping level): a mapping of `level` at the
 * frame containing gfn is allowed iff the frame lies inside the slot, the slot's gfn and
 * hva are congruent at that size, and the backing allows that level.
 */
export function slot_level_allowed(s: usize, gfn: u64, level: u32): bool {
  if (level > load<u32>(s + SLOT_MAX_LEVEL)) return false;
  const span: u64 = (<u64>1) << (9 * (level - 1));
  const frame = gfn & ~(span - 1);
  const base = load<u64>(s + SLOT_BASE_GFN);
  if (frame < base || frame + span > base + load<u64>(s + SLOT_NPAGES)) return false;
  return ((base ^ (load<u64>(s + SLOT_HVA) >> 12)) & (span - 1)) == 0;
}
