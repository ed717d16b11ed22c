// mmu — what arch/x86/kvm/mmu/mmu.c decides above the page-table walkers: re-protection
// for dirty logging (kvm_arch_mmu_enable_log_dirty_pt_masked), the logging change of a
// slot (kvm_mmu_slot_apply_flags), the shadow-style write protection of one gfn
// (kvm_mmu_slot_gfn_write_protect), the largest mapping level a fault may use
// (kvm_mmu_max_mapping_level with the lpage disallow counters), the zap of everything on a
// memslot flush (kvm_mmu_zap_all_fast), and write tracking's add/remove
// (__kvm_write_track_add_gfn / __kvm_write_track_remove_gfn, page_track.c).
// It dispatches to the TDP MMU (tdp.ts); callers never walk page tables themselves.
//
// Two kinds of write protection (spec §5.2–5.4), and who flushes:
//   dirty logging   clears W, keeps MMU-writable (1 1 0): the fast path may restore W, so the
//                   flush may wait until the end of the ioctl (GET/CLEAR/reset flush once);
//   shadow style    clears W and MMU-writable (1 0 0): only the slow path under mmu_lock may
//                   restore W, and the TLB must be flushed before mmu_lock is dropped
//                   (write tracking, the INITIALLY_SET huge-page step).
import {
  ERR_TRACK_DISABLED,
  ERR_TRACK_SLOT,
  EINVAL,
  ENXIO,
  SLOT_BACKING,
  SLOT_BASE_GFN,
  SLOT_HVA,
  SLOT_MAX_LEVEL,
  SLOT_NPAGES,
  VM_PML,
  VM_WALK_CACHE,
} from "./layout";
import { fail } from "./errno";
import { manual_protect_and_init_set, memslot_lookup, slot_host_present, slot_level_allowed, slot_logged } from "./kvm_host";
import { lockdep_assert_held_write, write_lock, write_unlock } from "./mmu_lock";
import { lpage_disallowed, update_gfn_disallow_lpage, update_gfn_write_track, write_tracking_enabled } from "./page_track";
import {
  OP_CLEAR_D,
  OP_SPLIT,
  OP_WRPROT,
  tdp_clear_dirty_masked,
  tdp_range,
  tdp_recover_huge,
  tdp_root,
  tdp_walk_cache_reset,
  tdp_write_protect_gfn,
  tdp_zap_all,
} from "./tdp";
import { flush_remote_tlbs, flush_remote_tlbs_dirty_log } from "./tlb";

/**
 * kvm_arch_mmu_enable_log_dirty_pt_masked: re-arm the pages of mask at slot offset
 * `offset` (any offset: ring resets pass unaligned ones). Caller holds mmu_lock for write
 * and flushes TLBs afterwards.
 */
export function kvm_arch_mmu_enable_log_dirty_pt_masked(vm: usize, slot: usize, as_id: u32, offset: u64, mask: u64): void {
  lockdep_assert_held_write(vm);
  const gfn = load<u64>(slot + SLOT_BASE_GFN) + offset;
  if (manual_protect_and_init_set(vm)) {
    // Nothing was protected when logging was enabled, so huge mappings may still be
    // writable: split them, and write-protect (shadow style) what could not be split.
    const start = gfn + ctz<u64>(mask);
    const end = gfn + 63 - clz<u64>(mask);
    tdp_range(vm, as_id, start, end + 1, OP_SPLIT, 1);
    tdp_walk_cache_reset(vm + VM_WALK_CACHE); // splits may have built leaf tables
    tdp_write_protect_gfn(vm, as_id, start, 2);
    if (start >> 9 != end >> 9) tdp_write_protect_gfn(vm, as_id, end, 2);
  }
  kvm_mmu_clear_dirty_pt_masked(vm, as_id, gfn, mask);
}

/**
 * kvm_mmu_write_protect_pt_masked (no PML: clear W) or kvm_mmu_clear_dirty_pt_masked (PML:
 * clear D) on the 4K leaves of mask, through the re-protection walk cache (callers empty it
 * when they take mmu_lock). Inlined: GET calls it once per dirty bitmap word.
 */
@inline export function kvm_mmu_clear_dirty_pt_masked(vm: usize, as_id: u32, gfn: u64, mask: u64): void {
  tdp_clear_dirty_masked(vm, as_id, gfn, mask, load<u32>(vm + VM_PML) == 0, vm + VM_WALK_CACHE);
}

/** Empty the re-protection walk cache: every GET/CLEAR/reset does so after write_lock. */
@inline export function kvm_mmu_reprotect_begin(vm: usize): void {
  tdp_walk_cache_reset(vm + VM_WALK_CACHE);
}

/** kvm_mmu_slot_apply_flags for a FLAGS_ONLY change that toggled dirty logging. */
export function kvm_mmu_slot_apply_flags(vm: usize, s: usize, as_id: u32, logging: bool, can_block: bool): void {
  lockdep_assert_held_write(vm);
  const start = load<u64>(s + SLOT_BASE_GFN);
  const end = start + load<u64>(s + SLOT_NPAGES);
  if (!logging) {
    // Recover huge pages in place (kvm_mmu_recover_huge_pages): no zap, mappings stay.
    const hva_gfn = load<u64>(s + SLOT_HVA) >> 12;
    let congruent: u32 = 0;
    if (((start ^ hva_gfn) & 511) == 0) congruent |= 1;
    if (((start ^ hva_gfn) & 262143) == 0) congruent |= 2;
    const max_level = load<u32>(s + SLOT_MAX_LEVEL);
    if (max_level >= 2 && congruent != 0) {
      const root = tdp_root(vm, as_id);
      const backing = <usize>load<u32>(s + SLOT_BACKING);
      const n = tdp_recover_huge(vm, root, 4, 0, start, end, max_level, congruent, start, backing, slot_host_present(s), s);
      if (n != 0) flush_remote_tlbs(vm, can_block); // freed page tables: never skipped
    }
    return;
  }
  if (manual_protect_and_init_set(vm)) return; // all pages already count as dirty
  tdp_range(vm, as_id, start, end, OP_SPLIT, 1); // eager_page_split
  // PML: clear D on 4K leaves (W on huge ones); otherwise write-protect every level.
  tdp_range(vm, as_id, start, end, load<u32>(vm + VM_PML) != 0 ? OP_CLEAR_D : OP_WRPROT, 1);
  flush_remote_tlbs_dirty_log(vm, can_block); // unconditional kvm_flush_remote_tlbs_memslot
}

/**
 * kvm_mmu_max_mapping_level + kvm_mmu_hugepage_adjust: never huge in a dirty-logged slot;
 * otherwise the largest level the slot's alignment and backing allow (slot_level_allowed)
 * and whose frame no tracked gfn disallows (lpage_info.disallow_lpage).
 */
export function kvm_mmu_max_mapping_level(s: usize, gfn: u64): u32 {
  if (slot_logged(s)) return 1;
  for (let level: u32 = 3; level >= 2; level--) {
    if (slot_level_allowed(s, gfn, level) && !lpage_disallowed(s, gfn, level)) return level;
  }
  return 1;
}

/**
 * kvm_mmu_slot_gfn_write_protect: clear W and MMU-writable (shadow style) on every leaf
 * mapping gfn at a level ≥ min_level. True if a TLB flush is due before mmu_lock drops.
 */
export function kvm_mmu_slot_gfn_write_protect(vm: usize, as_id: u32, gfn: u64, min_level: u32): bool {
  lockdep_assert_held_write(vm);
  return tdp_write_protect_gfn(vm, as_id, gfn, min_level);
}

/** kvm_mmu_zap_all_fast: every mapping of the VM goes (a memslot flush on DELETE/MOVE). */
export function kvm_mmu_zap_all_fast(vm: usize, nr_as: u32): void {
  tdp_zap_all(vm, nr_as);
}

/**
 * kvm_write_track_add_gfn (delta 1) / kvm_write_track_remove_gfn (delta -1): the slot of gfn
 * in address space 0 (EINVAL without one), then under mmu_lock for write: the counter, the
 * huge-page disallow counters and, on add, shadow-style write protection of every mapping
 * of gfn with the flush before the lock drops. Remove leaves SPTEs read-only: they become
 * writable lazily, at the next fault. ENXIO when tracking is not enabled (the kernel's
 * KVM_BUG_ON: dirtlog refuses the call instead of killing the VM). Returns 0 or -errno.
 */
export function kvm_write_track_update_gfn(vm: usize, gfn: u64, delta: i32, can_block: u32): i32 {
  const slot = memslot_lookup(vm, 0, gfn);
  if (slot == 0) return fail(vm, EINVAL, ERR_TRACK_SLOT);
  if (!write_tracking_enabled(vm)) return fail(vm, ENXIO, ERR_TRACK_DISABLED);
  write_lock(vm);
  update_gfn_write_track(vm, slot, gfn, delta);
  update_gfn_disallow_lpage(vm, slot, gfn, delta);
  if (delta > 0 && kvm_mmu_slot_gfn_write_protect(vm, 0, gfn, 1)) flush_remote_tlbs(vm, can_block != 0);
  write_unlock(vm);
  return 0;
}
