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
//
// Atomic only where it must be (spte_has_volatile_bits, mmu_spte_clear_bits): re-protection
// is the dominant cost of GET, CLEAR and ring reset, and an atomic read-modify-write per
// SPTE costs ~13× a plain load + store. Under the write side of mmu_lock no other thread
// may change an SPTE unless it has volatile bits — the lockless fast fault sets W only on
// (1 1 0) SPTEs, the CPU sets A or D only where they are clear — so a non-volatile SPTE is
// updated with a plain store, exactly as the kernel's mmu_spte_update does; a volatile one
// keeps the atomic and-not, which cannot lose the concurrent W or D. The debug build turns
// the plain store into a checked compare-and-swap that asserts the rule.
import {
  ERR_TRACK_DISABLED,
  ERR_TRACK_SLOT,
  EINVAL,
  ENXIO,
  SLOT_BASE_GFN,
  SLOT_HVA,
  SLOT_MAX_LEVEL,
  SLOT_NPAGES,
  VM_PML,
  VM_RMAP_ITER,
  VM_WALK_CACHE,
} from "./layout";
import { fail } from "./errno";
import { manual_protect_and_init_set, memslot_lookup, slot_host_present, slot_level_allowed, slot_logged } from "./kvm_host";
import { lockdep_assert_held_write, write_lock, write_unlock } from "./mmu_lock";
import { lpage_disallowed, update_gfn_disallow_lpage, update_gfn_write_track, write_tracking_enabled } from "./page_track";
import {
  RMAP_RECYCLE_THRESHOLD,
  pte_list_count,
  pte_list_pool_has_room,
  pte_list_add_needs_desc,
  rmap_get_first,
  rmap_get_next,
  rmap_write_protect,
  rmap_zap_all,
} from "./rmap";
import {
  gfn_to_rmap,
  is_shadow_mmu,
  shadow_get_or_create,
  shadow_pte_pool,
  shadow_rmap_add,
  kvm_mmu_zap_all_fast_shadow,
  kvm_mmu_remote_flush_or_zap,
  kvm_mmu_unload_root,
  shadow_free_obsolete_roots,
} from "./shadow";
import {
  tdp_clear_dirty_range,
  tdp_get_or_create,
  tdp_leaf_table_cached,
  tdp_recover_huge_range,
  tdp_split_range,
  tdp_walk_cache_reset,
  tdp_write_protect_gfn,
  tdp_wrprot_range,
  tdp_zap_all,
  tdp_zap_range,
} from "./tdp";
import { flush_remote_tlbs, flush_remote_tlbs_dirty_log } from "./tlb";
import { vcpu_can_block } from "./vcpu";
import { SPTE_A, SPTE_D, SPTE_W, spte_clear_bits_locked } from "./spte";

/**
 * kvm_arch_mmu_enable_log_dirty_pt_masked: re-arm the pages of mask at slot offset
 * `offset` (any offset: ring resets pass unaligned ones). Caller holds mmu_lock for write
 * and flushes TLBs afterwards.
 */
export function kvm_arch_mmu_enable_log_dirty_pt_masked(vm: usize, slot: usize, as_id: u32, offset: u64, mask: u64): void {
  lockdep_assert_held_write(vm);
  const gfn = load<u64>(slot + SLOT_BASE_GFN) + offset;
  // (the shadow MMU maps no huge pages: its 2M and 1G rmaps are empty)
  if (manual_protect_and_init_set(vm) && !is_shadow_mmu(vm)) {
    // Nothing was protected when logging was enabled, so huge mappings may still be
    // writable: split them, and write-protect (shadow style) what could not be split.
    const start = gfn + ctz<u64>(mask);
    const end = gfn + 63 - clz<u64>(mask);
    tdp_split_range(vm, as_id, start, end + 1);
    tdp_walk_cache_reset(vm + VM_WALK_CACHE); // splits may have built leaf tables
    tdp_write_protect_gfn(vm, as_id, start, 2);
    if (start >> 9 != end >> 9) tdp_write_protect_gfn(vm, as_id, end, 2);
  }
  kvm_mmu_clear_dirty_pt_masked(vm, slot, as_id, gfn, mask);
}

/**
 * Clear `bits` of the SPTE at p, as mmu_spte_update_no_track / tdp_mmu_clear_spte_bits do
 * under the write side of mmu_lock: an atomic and-not when the SPTE has volatile bits, a
 * plain store otherwise (5.85 against 0.45 ns per SPTE measured on this kind of machine).
 * The debug build makes the plain store a compare-and-swap and asserts that nothing changed
 * the SPTE meanwhile, i.e. that the volatile-bits rule holds.
 */
@inline export function mmu_spte_clear_bits(vm: usize, p: usize, bits: u64): void {
  lockdep_assert_held_write(vm);
  const old = load<u64>(p);
  // the common case first: writable, accessed and dirty has no volatile bits (and W or D,
  // whichever `bits` is, to clear); one test instead of the rule's four
  if (ASC_NO_ASSERT && (old & (SPTE_W | SPTE_A | SPTE_D)) == (SPTE_W | SPTE_A | SPTE_D)) {
    store<u64>(p, old & ~bits);
    return;
  }
  if ((old & bits) == 0) return;
  spte_clear_bits_locked(p, old, bits);
}

/**
 * kvm_mmu_write_protect_pt_masked (no PML: clear W) or kvm_mmu_clear_dirty_pt_masked (PML:
 * clear D) on the 4K leaves of mask, gfns from `gfn` of `slot`. The TDP MMU: one walk per
 * 512-page leaf table through the re-protection walk cache (callers empty it when they take
 * mmu_lock), huge leaves skipped (clear_dirty_pt_masked). The shadow MMU: every SPTE on
 * each page's 4K rmap (rmap_write_protect with pt_protect = false: W only). The caller
 * holds mmu_lock for write and flushes TLBs afterwards (dirty-log protection keeps
 * MMU-writable). Inlined: GET calls it once per bitmap word.
 */
@inline export function kvm_mmu_clear_dirty_pt_masked(vm: usize, slot: usize, as_id: u32, gfn: u64, mask: u64): void {
  lockdep_assert_held_write(vm);
  if (is_shadow_mmu(vm)) {
    rmap_clear_masked(vm, slot, gfn, mask, SPTE_W);
    return;
  }
  kvm_tdp_mmu_clear_dirty_pt_masked(vm, as_id, gfn, mask, kvm_mmu_dirty_log_bit(vm));
}

/** The bit dirty-log re-protection clears on a 4K leaf: W, or D under PML. */
@inline export function kvm_mmu_dirty_log_bit(vm: usize): u64 {
  return load<u32>(vm + VM_PML) == 0 ? SPTE_W : SPTE_D;
}

/**
 * The TDP MMU's part of kvm_mmu_clear_dirty_pt_masked, `bit` decided by the caller
 * (kvm_mmu_dirty_log_bit): GET decides it, and the MMU kind, once per call rather than
 * once per bitmap word. Same rules and caller duties as kvm_mmu_clear_dirty_pt_masked.
 */
@inline export function kvm_tdp_mmu_clear_dirty_pt_masked(vm: usize, as_id: u32, gfn: u64, mask: u64, bit: u64): void {
  lockdep_assert_held_write(vm);
  const cache = vm + VM_WALK_CACHE;
  if ((gfn & 511) <= 512 - 64) {
    // the word's 64 pages lie in one leaf table (every word of a 64-aligned slot): one lookup
    const table = tdp_leaf_table_cached(vm, as_id, gfn, cache);
    if (table == 0) return; // not mapped at 4K (huge leaves are skipped)
    const first = table + ((<usize>(gfn & 511)) << 3);
    if (mask == 0xffff_ffff_ffff_ffff) {
      for (let i: usize = 0; i < 64; i++) mmu_spte_clear_bits(vm, first + (i << 3), bit);
      return;
    }
    do {
      mmu_spte_clear_bits(vm, first + ((<usize>ctz<u64>(mask)) << 3), bit);
      mask &= mask - 1;
    } while (mask != 0);
    return;
  }
  while (mask != 0) {
    const g = gfn + ctz<u64>(mask);
    mask &= mask - 1;
    const table = tdp_leaf_table_cached(vm, as_id, g, cache);
    if (table != 0) mmu_spte_clear_bits(vm, table + ((<usize>(g & 511)) << 3), bit);
  }
}

/**
 * Clear `bit` on every SPTE of the 4K rmaps of the pages of mask (the shadow MMU). An rmap
 * of one SPTE (the head is the bare pointer: every gfn of an unpaged guest) needs no
 * iterator; longer ones take for_each_rmap_spte.
 */
function rmap_clear_masked(vm: usize, slot: usize, gfn: u64, mask: u64, bit: u64): void {
  const iter = vm + VM_RMAP_ITER;
  const heads = gfn_to_rmap(slot, gfn);
  while (mask != 0) {
    const head = heads + (<usize>ctz<u64>(mask) << 3);
    mask &= mask - 1;
    const val = load<u64>(head);
    if (val == 0) continue;
    if ((val & 1) == 0) {
      mmu_spte_clear_bits(vm, <usize>val, bit);
      continue;
    }
    for (let sptep = rmap_get_first(head, iter); sptep != 0; sptep = rmap_get_next(iter)) {
      mmu_spte_clear_bits(vm, sptep, bit);
    }
  }
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
  if (is_shadow_mmu(vm)) {
    // no huge pages to recover or split; enabling logging write-protects every 4K rmap
    // (kvm_mmu_slot_remove_write_access → walk_slot_rmaps → rmap_write_protect, W only)
    if (!logging || manual_protect_and_init_set(vm)) return;
    for (let g = start; g < end; g += 64) {
      const n = end - g < 64 ? end - g : 64;
      rmap_clear_masked(vm, s, g, n == 64 ? 0xffff_ffff_ffff_ffff : ((<u64>1) << n) - 1, SPTE_W);
    }
    flush_remote_tlbs_dirty_log(vm, can_block);
    return;
  }
  if (!logging) {
    // Recover huge pages in place (kvm_mmu_recover_huge_pages): no zap, mappings stay.
    const hva_gfn = load<u64>(s + SLOT_HVA) >> 12;
    let congruent: u32 = 0;
    if (((start ^ hva_gfn) & 511) == 0) congruent |= 1;
    if (((start ^ hva_gfn) & 262143) == 0) congruent |= 2;
    const max_level = load<u32>(s + SLOT_MAX_LEVEL);
    if (max_level >= 2 && congruent != 0) {
      const n = tdp_recover_huge_range(vm, as_id, start, end, max_level, congruent, s, slot_host_present(s));
      if (n != 0) flush_remote_tlbs(vm, can_block); // freed page tables: never skipped
    }
    return;
  }
  if (manual_protect_and_init_set(vm)) return; // all pages already count as dirty
  tdp_split_range(vm, as_id, start, end); // eager_page_split
  // PML: clear D on 4K leaves (W on huge ones); otherwise write-protect every level.
  if (load<u32>(vm + VM_PML) != 0) tdp_clear_dirty_range(vm, as_id, start, end);
  else tdp_wrprot_range(vm, as_id, start, end, 1);
  flush_remote_tlbs_dirty_log(vm, can_block); // unconditional kvm_flush_remote_tlbs_memslot
}

/**
 * kvm_mmu_max_mapping_level + kvm_mmu_hugepage_adjust: never huge in a dirty-logged slot;
 * otherwise the largest level the slot's alignment and backing allow (slot_level_allowed)
 * and whose frame no tracked gfn disallows (lpage_info.disallow_lpage). The TDP MMU maps
 * at this level; the shadow MMU maps 4K only, but the host page behind it is the same.
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
 * mapping gfn at a level ≥ min_level: through the rmaps (rmap_write_protect with
 * pt_protect = true) and the TDP MMU's write_protect_gfn. True if a TLB flush is due
 * before mmu_lock drops.
 */
export function kvm_mmu_slot_gfn_write_protect(vm: usize, slot: usize, as_id: u32, gfn: u64, min_level: u32): bool {
  lockdep_assert_held_write(vm);
  if (is_shadow_mmu(vm)) return min_level == 1 && rmap_write_protect(vm, gfn_to_rmap(slot, gfn), true, vm + VM_RMAP_ITER);
  return tdp_write_protect_gfn(vm, as_id, gfn, min_level);
}

/**
 * kvm_mmu_zap_all_fast: every mapping of the VM goes (a memslot flush on DELETE/MOVE).
 * The shadow MMU makes its pages obsolete and zaps them in batches, letting waiters for
 * mmu_lock in between (shadow.ts); the TDP MMU frees its tables in one go under the lock
 * (the kernel invalidates the TDP roots and zaps them after dropping it).
 */
export function kvm_mmu_zap_all_fast(vm: usize, nr_as: u32, can_block: bool): void {
  if (is_shadow_mmu(vm)) kvm_mmu_zap_all_fast_shadow(vm, nr_as, can_block);
  else tdp_zap_all(vm, nr_as);
}

/**
 * kvm_mmu_reset_context for a change of the vCPU's MMU role (SMM entry or exit: role.smm):
 * the shadow MMU lets go of the vCPU's root, and the next fault loads one of the new role.
 */
export function kvm_mmu_reset_context(vm: usize, vcpu: usize): void {
  if (!is_shadow_mmu(vm)) return;
  write_lock(vm);
  kvm_mmu_unload_root(vm, vcpu);
  kvm_mmu_remote_flush_or_zap(vm, false, vcpu_can_block(vm, vcpu));
  write_unlock(vm);
}

/** KVM_REQ_MMU_FREE_OBSOLETE_ROOTS on the vCPU's thread: drop its root if obsolete (shadow MMU). */
export function kvm_mmu_free_obsolete_roots(vm: usize, vcpu: usize): void {
  if (is_shadow_mmu(vm)) shadow_free_obsolete_roots(vm, vcpu);
}

/**
 * The fault's walk to gfn's entry at `level` (kvm_tdp_mmu_map / the direct map of the
 * shadow MMU), creating what is missing: `sptep | level`, or 0 when a pool is exhausted.
 * The shadow MMU maps 4K only and needs mmu_lock for write; the TDP MMU, the read side.
 */
export function kvm_mmu_map(vm: usize, as_id: u32, gfn: u64, level: u32): usize {
  if (is_shadow_mmu(vm)) return shadow_get_or_create(vm, as_id, gfn);
  return tdp_get_or_create(vm, as_id, gfn, level);
}

/**
 * A leaf SPTE at `sptep` became present for gfn of `slot` (the shadow MMU's rmap_add,
 * with the recycle rule: an rmap that held more than RMAP_RECYCLE_THRESHOLD SPTEs is
 * zapped whole and the TLBs flushed). Caller holds mmu_lock for write in shadow mode.
 */
export function kvm_mmu_leaf_installed(vm: usize, slot: usize, gfn: u64, sptep: usize, can_block: bool): void {
  if (!is_shadow_mmu(vm)) return;
  const count = shadow_rmap_add(vm, slot, gfn, sptep);
  // the fault checked for room before installing the SPTE (kvm_mmu_leaf_has_room)
  if (!ASC_NO_ASSERT) assert(count >= 0, "rmap_add found no free pte_list_desc");
  if (count > <i32>RMAP_RECYCLE_THRESHOLD) {
    rmap_zap_all(vm, shadow_pte_pool(vm), gfn_to_rmap(slot, gfn), vm + VM_RMAP_ITER);
    flush_remote_tlbs(vm, can_block);
  }
}

/**
 * mmu_topup_memory_caches before a fault installs gfn's leaf: the shadow MMU's direct map
 * needs a free pte_list_desc only if its rmap_add takes one (the tables it may create
 * are new, each with its first parent: a bare pointer); the TDP MMU keeps no rmaps. The
 * kernel tops its caches up from the slab; dirtlog's pool is fixed, and an rmap that once
 * held two SPTEs keeps its descriptor, so "two free" is asked only where it is needed.
 */
export function kvm_mmu_leaf_has_room(vm: usize, slot: usize, gfn: u64): bool {
  if (!is_shadow_mmu(vm)) return true;
  return pte_list_pool_has_room(shadow_pte_pool(vm)) || !pte_list_add_needs_desc(gfn_to_rmap(slot, gfn));
}

/**
 * kvm_unmap_gfn_range for [start, end) of `slot` (the mmu notifier): every leaf mapping
 * those gfns goes — through the rmaps (the shadow MMU) or the TDP walk. Tables stay.
 * Caller holds mmu_lock for write and flushes. True if anything was zapped.
 */
export function kvm_mmu_unmap_gfn_range(vm: usize, slot: usize, as_id: u32, start: u64, end: u64): bool {
  lockdep_assert_held_write(vm);
  if (!is_shadow_mmu(vm)) return tdp_zap_range(vm, as_id, start, end);
  let zapped = false;
  for (let g = start; g < end; g++) {
    zapped |= rmap_zap_all(vm, shadow_pte_pool(vm), gfn_to_rmap(slot, g), vm + VM_RMAP_ITER);
  }
  return zapped;
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
  if (delta > 0 && kvm_mmu_slot_gfn_write_protect(vm, slot, 0, gfn, 1)) flush_remote_tlbs(vm, can_block != 0);
  write_unlock(vm);
  return 0;
}

/**
 * The length of gfn's 4K rmap in address space as_id (a test tool): -1 without a slot
 * there or on a TDP-MMU VM (it keeps no rmaps).
 */
export function kvm_rmap_count(vm: usize, as_id: u32, gfn: u64): i32 {
  if (!is_shadow_mmu(vm)) return -1;
  const slot = memslot_lookup(vm, as_id, gfn);
  if (slot == 0) return -1;
  return <i32>pte_list_count(gfn_to_rmap(slot, gfn));
}
