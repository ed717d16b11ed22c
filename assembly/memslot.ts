// memslot — KVM_SET_USER_MEMORY_REGION: address spaces, slots, generations
// (virt/kvm/kvm_main.c kvm_set_memory_region / kvm_set_memslot, x86.c kvm_arch_prepare_memory_region /
// kvm_arch_commit_memory_region; the MMU side is mmu.ts).
//
// Slot table: one SLOT_SIZE record per (as_id, id), at slots + ((as_id << 15) | id) * 64.
// Sorted ids: per address space, u16 ids of existing slots ordered by base_gfn, at
// sorted + as_id * 65536; VM_NSORTED[as_id] of them. Lookups binary-search it.
//
// Per-slot metadata region (SLOT_META), W = ALIGN(npages, 64) / 64 words, S = ceil(W / 64):
//   +0        live dirty bitmap, W u64 (bit p = page p)    ─┐ KVM's two halves
//   +8W       second bitmap, W u64 (scratch, all zero       ─┘ of kvm_dirty_bitmap_bytes
//             between calls)
//   +16W      summary, S u64: bit w set if live word w may be non-zero (dirtlog's fast skip)
//   +16W+8S   host-page-present bitmap, W u64 (the host page behind the gfn exists)
//   +24W+8S   scratch list, S u32 (summary words a harvest touched)
//
// Invariants:
//   - Slots of one address space never overlap; overlap is not checked across spaces.
//   - bits >= npages of the live bitmap are always 0; a slot with no bitmap has an
//     all-zero live half and summary (dropping a bitmap zeroes it).
//   - generation[as] starts at as and grows by KVM_NR_AS per published swap, so
//     generations of different address spaces never collide. CREATE and FLAGS_ONLY
//     publish once; DELETE and MOVE publish twice (first an INVALID copy, then the result).
//   - Internal slots (ids 32764..32766) are created only through the internal path,
//     with flags 0: they can never be dirty-logged.
import { fail } from "./errno";
import {
  ERR_ALIGN,
  ERR_AS_ID,
  ERR_CHANGE_BACKED,
  ERR_CHANGE_RO,
  ERR_CHANGE_SIZE,
  ERR_FLAGS,
  ERR_INTERNAL,
  ERR_MAX_GFN,
  ERR_MOVE_TRACKED,
  ERR_NO_SLOT,
  ERR_NPAGES,
  ERR_OVERLAP,
  ERR_SLOT_ID,
  ERR_WRAP,
  VM_ERR_REASON,
  EEXIST,
  EINVAL,
  KVM_DIRTY_LOG_INITIALLY_SET,
  KVM_DIRTY_LOG_MANUAL_PROTECT_ENABLE,
  KVM_MAX_GFN,
  KVM_MEM_LOG_DIRTY_PAGES,
  KVM_MEM_MAX_NR_PAGES,
  KVM_MEM_READONLY,
  KVM_MEMSLOT_INVALID,
  KVM_MEM_SLOTS_NUM,
  KVM_MR_CREATE,
  KVM_MR_DELETE,
  KVM_MR_FLAGS_ONLY,
  KVM_MR_MOVE,
  KVM_MR_MOVE_REJECTED,
  KVM_MR_NONE,
  KVM_NR_AS,
  KVM_USER_MEM_SLOTS,
  SLOT_ACTIVE,
  VM_MMU_INVALIDATE_SEQ,
  VM_MN_ACTIVE_INVALIDATE,
  SLOT_BACKING,
  SLOT_BASE_GFN,
  SLOT_BITMAP,
  SLOT_FLAGS,
  SLOT_HVA,
  SLOT_WRITE_TRACK,
  SLOT_RMAP,
  SLOT_MAX_LEVEL,
  SLOT_META,
  SLOT_NPAGES,
  SLOT_SIZE,
  VM_GEN,
  VM_MANUAL_PROTECT,
  VM_NR_LOGGING,
  VM_NSORTED,
  VM_PML,
  VM_RING_SIZE,
  VM_RING_WITH_BITMAP,
  VM_SLOTS,
  VM_SORTED,
  VM_ZAPS,
} from "./layout";
import { lockdep_assert_held_write, write_lock, write_unlock } from "./mmu_lock";
import { gfn_to_pfn_cache_invalidate_start } from "./pfncache";
import {
  bitmap_words,
  manual_protect_and_init_set,
  nsorted,
  slot_host_present,
  slot_logged,
  slot_ptr,
  slot_summary,
  slot_summary_words,
  slot_words,
  sorted_floor,
  sorted_ptr,
  summary_words,
  use_dirty_bitmap,
} from "./kvm_host";
import { kvm_mmu_slot_apply_flags, kvm_mmu_zap_all_fast } from "./mmu";
import { page_track_has_external_user, page_track_bytes } from "./page_track";
import { flush_remote_tlbs } from "./tlb";

/** Bytes of the metadata region for a slot of npages pages. */
export function memslot_meta_bytes(npages: u64): u64 {
  const w = bitmap_words(npages);
  const s = summary_words(w);
  return 24 * w + 12 * s;
}

/**
 * The host-page-present bitmap (W u64, bit p = page p's host page exists) of an active
 * slot, or 0 (no such slot). The host reads it to scrub only the backing pages that may
 * have been written when it recycles the VM's memory (src/vm.ts).
 */
export function memslot_host_present_map(vm: usize, slot_id: u32): usize {
  const as_id = slot_id >> 16;
  const id = slot_id & 0xffff;
  if (as_id >= KVM_NR_AS || id >= KVM_MEM_SLOTS_NUM) return 0;
  const s = slot_ptr(vm, as_id, id);
  return load<u32>(s + SLOT_ACTIVE) != 0 ? slot_host_present(s) : 0;
}

/** kvm_check_memslot_overlap: does [base, base+npages) meet a slot other than `id`? */
function overlaps(vm: usize, as_id: u32, id: u32, base: u64, npages: u64): bool {
  const arr = sorted_ptr(vm, as_id);
  const n = <i32>nsorted(vm, as_id);
  const end = base + npages;
  // Slots are disjoint and sorted, so only the last slot starting at or below `base` and
  // the slots starting inside the range can meet it; skip our own id.
  let i = sorted_floor(vm, as_id, base);
  if (i < 0) i = 0;
  for (; i < n; i++) {
    const sid = <u32>load<u16>(arr + (<usize>i << 1));
    const s = slot_ptr(vm, as_id, sid);
    const sbase = load<u64>(s + SLOT_BASE_GFN);
    if (sbase >= end) break;
    if (sid != id && sbase + load<u64>(s + SLOT_NPAGES) > base) return true;
  }
  return false;
}

function sorted_remove(vm: usize, as_id: u32, id: u32): void {
  lockdep_assert_held_write(vm);
  const arr = sorted_ptr(vm, as_id);
  const n = nsorted(vm, as_id);
  for (let i: u32 = 0; i < n; i++) {
    if (<u32>load<u16>(arr + (<usize>i << 1)) == id) {
      memory.copy(arr + (<usize>i << 1), arr + (<usize>(i + 1) << 1), <usize>(n - i - 1) << 1);
      store<u32>(vm + VM_NSORTED + (as_id << 2), n - 1);
      return;
    }
  }
}

function sorted_insert(vm: usize, as_id: u32, id: u32, base: u64): void {
  lockdep_assert_held_write(vm);
  const arr = sorted_ptr(vm, as_id);
  const n = nsorted(vm, as_id);
  const at = <u32>(sorted_floor(vm, as_id, base) + 1);
  memory.copy(arr + (<usize>(at + 1) << 1), arr + (<usize>at << 1), <usize>(n - at) << 1);
  store<u16>(arr + (<usize>at << 1), <u16>id);
  store<u32>(vm + VM_NSORTED + (as_id << 2), n + 1);
}

// ---- bitmap lifetime (kvm_prepare_memory_region / kvm_commit_memory_region) ----
function bitmap_drop(slot: usize): void {
  const meta = <usize>load<u32>(slot + SLOT_META);
  const w = slot_words(slot);
  memory.fill(meta, 0, <usize>(w << 3));
  memory.fill(slot_summary(slot), 0, <usize>(slot_summary_words(slot) << 3));
  store<u32>(slot + SLOT_BITMAP, 0);
}

/** A fresh bitmap: all zero, or bits 0..npages-1 set with manual protect + INITIALLY_SET. */
function bitmap_alloc(vm: usize, slot: usize): void {
  const meta = <usize>load<u32>(slot + SLOT_META);
  store<u32>(slot + SLOT_BITMAP, <u32>meta);
  if (!manual_protect_and_init_set(vm)) return;
  const npages = load<u64>(slot + SLOT_NPAGES);
  const w = slot_words(slot);
  memory.fill(meta, 0xff, <usize>(w << 3));
  const tail = npages & 63;
  if (tail != 0) store<u64>(meta + <usize>((w - 1) << 3), ((<u64>1) << tail) - 1);
  const sw = slot_summary_words(slot);
  const summary = slot_summary(slot);
  memory.fill(summary, 0xff, <usize>(sw << 3));
  // summary bits exist only for real bitmap words
  const wtail = w & 63;
  if (wtail != 0) store<u64>(summary + <usize>((sw - 1) << 3), ((<u64>1) << wtail) - 1);
}


function publish(vm: usize, as_id: u32, swaps: u32): void {
  const g = vm + VM_GEN + (as_id << 3);
  store<u64>(g, load<u64>(g) + <u64>(swaps * KVM_NR_AS));
}

/**
 * Validate a KVM_SET_USER_MEMORY_REGION call without changing anything.
 * Returns the change kind (KVM_MR_*) or -errno, in the kernel's check order
 * (KVM_MR_MOVE_REJECTED: commit it, then fail with EINVAL, as the kernel does).
 * `internal` selects kvm_set_internal_memslot's rules (ids 32764..32766, flags 0).
 */
export function memslot_prepare(
  vm: usize,
  slot: u32,
  flags: u32,
  gpa: u64,
  size: u64,
  backed: u32,
  internal: u32,
): i32 {
  const as_id = slot >> 16;
  const id = slot & 0xffff;
  if ((flags & ~(KVM_MEM_LOG_DIRTY_PAGES | KVM_MEM_READONLY)) != 0) return fail(vm, EINVAL, ERR_FLAGS);
  if (internal != 0) {
    if (id < KVM_USER_MEM_SLOTS || flags != 0) return fail(vm, EINVAL, ERR_INTERNAL);
  } else if (id >= KVM_USER_MEM_SLOTS) {
    return fail(vm, EINVAL, ERR_SLOT_ID);
  }
  if ((size & 4095) != 0 || (gpa & 4095) != 0) return fail(vm, EINVAL, ERR_ALIGN);
  if (as_id >= KVM_NR_AS || id >= KVM_MEM_SLOTS_NUM) return fail(vm, EINVAL, ERR_AS_ID);
  if (gpa + size < gpa) return fail(vm, EINVAL, ERR_WRAP);
  const npages = size >> 12;
  if (internal == 0 && npages > KVM_MEM_MAX_NR_PAGES) return fail(vm, EINVAL, ERR_NPAGES);

  const s = slot_ptr(vm, as_id, id);
  const exists = load<u32>(s + SLOT_ACTIVE) != 0;
  const base = gpa >> 12;
  if (npages == 0) return exists ? KVM_MR_DELETE : fail(vm, EINVAL, ERR_NO_SLOT);

  let change: i32;
  if (!exists) {
    change = KVM_MR_CREATE;
  } else {
    const old_flags = load<u32>(s + SLOT_FLAGS);
    const old_backed: u32 = load<u32>(s + SLOT_BACKING) != 0 ? 1 : 0;
    if (npages != load<u64>(s + SLOT_NPAGES)) return fail(vm, EINVAL, ERR_CHANGE_SIZE);
    if (((flags ^ old_flags) & KVM_MEM_READONLY) != 0) return fail(vm, EINVAL, ERR_CHANGE_RO);
    if ((backed != 0 ? 1 : 0) != old_backed) return fail(vm, EINVAL, ERR_CHANGE_BACKED);
    if (base != load<u64>(s + SLOT_BASE_GFN)) change = KVM_MR_MOVE;
    else if (flags != old_flags) change = KVM_MR_FLAGS_ONLY;
    else return KVM_MR_NONE;
  }
  if (overlaps(vm, as_id, id, base, npages)) return fail(vm, EEXIST, ERR_OVERLAP);
  // kvm_arch_prepare_memory_region: KVM does not support moving memslots while an external
  // page-track user (KVMGT) is attached; like the next check, it fails after the invalidation
  if (change == KVM_MR_MOVE && page_track_has_external_user(vm)) {
    store<u32>(vm + VM_ERR_REASON, ERR_MOVE_TRACKED);
    return KVM_MR_MOVE_REJECTED;
  }
  if (base + npages - 1 > KVM_MAX_GFN) {
    if (change == KVM_MR_MOVE) {
      store<u32>(vm + VM_ERR_REASON, ERR_MAX_GFN); // for the EINVAL after the commit
      return KVM_MR_MOVE_REJECTED;
    }
    return fail(vm, EINVAL, ERR_MAX_GFN);
  }
  return change;
}

/**
 * Carry out a change that memslot_prepare accepted. For CREATE the host passes the zeroed
 * metadata region, the backing (0 = unbacked), the hva used for huge-page alignment and the
 * largest mapping level the backing allows, and its zeroed write-tracking region
 * (page_track_bytes; 0 while write tracking is off), and on a shadow-MMU VM its zeroed
 * 4K rmap heads (8 bytes per page; 0 otherwise). Returns the change kind.
 */
export function memslot_commit(
  vm: usize,
  slot: u32,
  flags: u32,
  gpa: u64,
  size: u64,
  change: i32,
  meta: usize,
  backing: usize,
  hva: u64,
  max_level: u32,
  track: usize,
  rmap: usize,
  can_block: u32,
): i32 {
  const as_id = slot >> 16;
  const id = slot & 0xffff;
  const s = slot_ptr(vm, as_id, id);
  const base = gpa >> 12;
  if (change == KVM_MR_NONE) return change;
  // DELETE: the host releases the slot's backing afterwards (the kernel's pfn caches hold
  // a page reference; here the memory is reused): every pfn cache on the slot's host range
  // stops being valid before the record and the backing go, and a refresh racing this sees
  // the invalidation and resolves again, to EFAULT (mmu_notifier.ts does the same for host
  // changes). MOVE keeps the host range: its gpa-based caches go stale by generation.
  const remap = change == KVM_MR_DELETE;
  if (remap) {
    atomic.add<u32>(vm + VM_MN_ACTIVE_INVALIDATE, 1);
    const old_hva = load<u64>(s + SLOT_HVA);
    gfn_to_pfn_cache_invalidate_start(vm, old_hva, old_hva + (load<u64>(s + SLOT_NPAGES) << 12));
  }
  write_lock(vm);
  const old_logged = change != KVM_MR_CREATE && slot_logged(s);
  const new_logged = change != KVM_MR_DELETE && (flags & KVM_MEM_LOG_DIRTY_PAGES) != 0;

  if (change == KVM_MR_DELETE || change == KVM_MR_MOVE || change == KVM_MR_MOVE_REJECTED) {
    // kvm_invalidate_memslot: publish an INVALID copy, then zap every mapping (x86's
    // default zap-all on a memslot flush; other slots lose their mappings too). The shadow
    // MMU's zap lets faults in between its batches: one on this slot retries until the
    // update is done (RET_PF_RETRY).
    publish(vm, as_id, 1);
    store<u32>(s + SLOT_FLAGS, load<u32>(s + SLOT_FLAGS) | KVM_MEMSLOT_INVALID);
    kvm_mmu_zap_all_fast(vm, KVM_NR_AS, can_block != 0);
    atomic.add<u64>(vm + VM_ZAPS, 1);
    // never skipped (not even by VM_DEBUG_SKIP_TLB_FLUSH): the zap freed page-table pages
    // that the vCPUs' paging-structure caches and TLBs may still use, and the write lock
    // keeps them from being reused only until this flush has been served
    flush_remote_tlbs(vm, can_block != 0);
    if (change == KVM_MR_MOVE_REJECTED) {
      // kvm_activate_memslot(invalid_slot, old): the old slot is published again
      publish(vm, as_id, 1);
      store<u32>(s + SLOT_FLAGS, load<u32>(s + SLOT_FLAGS) & ~KVM_MEMSLOT_INVALID);
      write_unlock(vm);
      return change;
    }
    sorted_remove(vm, as_id, id);
  }
  if (change == KVM_MR_DELETE) {
    memory.fill(s, 0, SLOT_SIZE);
  } else {
    if (change == KVM_MR_CREATE) {
      store<u64>(s + SLOT_NPAGES, size >> 12);
      store<u32>(s + SLOT_META, <u32>meta);
      store<u32>(s + SLOT_BACKING, <u32>backing);
      store<u64>(s + SLOT_HVA, hva);
      store<u32>(s + SLOT_MAX_LEVEL, max_level);
      store<u32>(s + SLOT_WRITE_TRACK, <u32>track);
      store<u32>(s + SLOT_RMAP, <u32>rmap);
      store<u32>(s + SLOT_ACTIVE, 1);
    } else if (change == KVM_MR_MOVE) {
      // x86 allocates fresh metadata for a MOVE (kvm_alloc_memslot_metadata): the write
      // tracking counts start again from zero
      const t = <usize>load<u32>(s + SLOT_WRITE_TRACK);
      if (t != 0) memory.fill(t, 0, <usize>page_track_bytes(load<u64>(s + SLOT_NPAGES)));
    }
    store<u64>(s + SLOT_BASE_GFN, base);
    store<u32>(s + SLOT_FLAGS, flags);
    if (change != KVM_MR_FLAGS_ONLY) sorted_insert(vm, as_id, id, base);
    // kvm_prepare_memory_region: keep, drop or allocate the dirty bitmap.
    if (!new_logged) {
      if (load<u32>(s + SLOT_BITMAP) != 0) bitmap_drop(s);
    } else if (load<u32>(s + SLOT_BITMAP) == 0 && use_dirty_bitmap(vm)) {
      bitmap_alloc(vm, s);
    }
  }
  publish(vm, as_id, 1);
  if (old_logged != new_logged) {
    const nr = vm + VM_NR_LOGGING;
    store<u32>(nr, new_logged ? load<u32>(nr) + 1 : load<u32>(nr) - 1);
  }
  // kvm_mmu_slot_apply_flags: nothing to do unless FLAGS_ONLY on a writable slot (CREATE has
  // no mappings yet, MOVE/DELETE zapped them; read-only slots never have writable SPTEs)
  if (change == KVM_MR_FLAGS_ONLY && old_logged != new_logged && (flags & KVM_MEM_READONLY) == 0) {
    kvm_mmu_slot_apply_flags(vm, s, as_id, new_logged, can_block != 0);
  }
  if (remap) atomic.add<u64>(vm + VM_MMU_INVALIDATE_SEQ, 1);
  write_unlock(vm);
  if (remap) atomic.sub<u32>(vm + VM_MN_ACTIVE_INVALIDATE, 1);
  return change;
}



