// shadow — the shadow MMU's pages and their rmaps (arch/x86/kvm/mmu/mmu.c: struct
// kvm_mmu_page, kvm_mmu_get_shadow_page, link_shadow_page, rmap_add, account_shadowed,
// mmu_try_to_unsync_pages, mark_unsync, mmu_unsync_walk, mmu_sync_children,
// kvm_mmu_prepare_zap_page / kvm_mmu_commit_zap_page, kvm_mmu_track_write,
// kvm_mmu_zap_all_fast / kvm_zap_obsolete_pages; paging_tmpl.h FNAME(fetch), FNAME(sync_spte); spec §4.4, §4.5,
// §5.7, §5.8). Selected with createVm({ mmu: "shadow" }) (VM_MMU = MMU_SHADOW).
//
//   shadow page table   4 levels of 512 SPTEs in pt_pool pages, the same format the TDP
//                       MMU uses (the CPU walks it the same way)
//   kvm_mmu_page        SP_SIZE bytes per pool page in VM_SP_TABLE, found from an SPTE's
//                       address (sptep_to_sp): role, gfn, parent_ptes (a pte_list), unsync
//                       state, and for an indirect page the gfn each SPTE maps (SP_GFNS)
//   rmap                per slot, one head per 4K gfn (SLOT_RMAP): every present leaf SPTE
//                       is on the rmap of the gfn it maps (rmap_add when installed, removed
//                       when zapped) — dirty logging re-protects through it (mmu.ts)
//
// An unpaged guest (KVM's nonpaging mode) runs on *direct* pages (role.direct, gfn = the
// first gfn mapped) under one root per address space (VM_ROOT, role.smm = as_id). A paged
// guest (vcpu.setPaging) runs on *indirect* pages shadowing its tables, from a root per CR3
// (VCPU_ROOT; see the second half of this file).
//
// Invariants:
//   - leaves are 4K only (dirtlog's shadow MMU maps no huge pages yet), so the rmaps of
//     the 2M and 1G levels are always empty and are not allocated;
//   - rmaps, parent_ptes and shadow pages change only under mmu_lock for write (every
//     shadow-MMU fault takes the write side; only the lockless fast path runs without it,
//     and it changes no list: it sets W on a present SPTE);
//   - an SPTE is on exactly one rmap while present, and on none once zapped;
//   - zapping is two steps, as in the kernel: kvm_mmu_prepare_zap_page empties a page,
//     unlinks it and marks it invalid (lookups pass over it; it stays in the hash), and
//     kvm_mmu_commit_zap_page flushes every vCPU's TLB, then frees the invalid list. No
//     page is freed before that flush, so a lockless walker never reads a reused page;
//   - every page carries the mmu_valid_gen it was made in; kvm_mmu_zap_all_fast toggles
//     the VM's, which makes every existing page obsolete at once (zapped in batches after);
//   - a root in use (root_count > 0) is never freed: zapped, it stays invalid until its
//     last vCPU lets go (KVM_REQ_MMU_FREE_OBSOLETE_ROOTS asks them to), and a fault on an
//     obsolete root retries;
//   - the long holds of mmu_lock for write (the zap of everything, mmu_sync_children) let
//     a waiting thread in between batches, after the flush their changes need; what they
//     walk is either restarted from the root they hold or can only have become obsolete.
import {
  MMU_SHADOW,
  PAGE_SIZE,
  PT_LEVELS,
  SLOT_BASE_GFN,
  SLOT_RMAP,
  SP_GFN,
  SP_IN_USE,
  SP_PARENT_PTES,
  SP_ROLE,
  SP_SIZE,
  VM_MMU,
  VM_POOL_BASE,
  VM_POOL_NEXT,
  VM_PTE_POOL,
  VM_SHADOW_PAGES,
  VM_SP_TABLE,
  KVM_NR_AS,
  VM_ROOT,
  SP_GFNS,
  SP_HASH_NEXT,
  SP_ROOT_COUNT,
  SP_UNSYNC,
  SP_UNSYNC_BITMAP,
  SP_UNSYNC_CHILDREN,
  SP_WRITE_FLOODING,
  SP_HASH_BUCKETS,
  SP_SPECIAL,
  PAGING_32BIT,
  VCPU_PAGING,
  VM_RMAP_ITER,
  VM_RMAP_ITER2,
  VCPU_AS,
  VCPU_CR3,
  VCPU_ROOT,
  VCPU_WALK,
  VM_SP_HASH,
  WALK_TABLE_GFN,
  BATCH_ZAP_PAGES,
  KVM_PAGE_ARRAY_NR,
  KVM_REQ_MMU_FREE_OBSOLETE_ROOTS,
  SP_INVALID_NEXT,
  SP_MMU_VALID_GEN,
  VM_MMU_INVALID_LIST,
  VM_MMU_LOCK_BREAKS,
  VM_MMU_PAGES,
  VM_MMU_PAGE_PATH,
  VM_MMU_SHADOW_ZAPPED,
  VM_MMU_SYNC_WALKS,
  VM_MMU_UNSYNC,
  VM_MMU_VALID_GEN,
  VM_INDIRECT_SHADOW_PAGES,
  VCPU_ROOT_GEN,
  VM_MMU_ZAP_IN_PROGRESS,
} from "./layout";
import { memslot_lookup } from "./kvm_host";
import { cond_resched_rwlock_write, lockdep_assert_held_write, mmu_lock_needbreak, write_lock, write_unlock } from "./mmu_lock";
import { pool_alloc, pool_free } from "./pt_pool";
import {
  PTE_LIST_DESC_SIZE,
  PTE_POOL_SIZE,
  pte_list_add,
  pte_list_pool_has_room,
  pte_list_pool_init,
  pte_list_at,
  pte_list_destroy,
  pte_list_remove,
  rmap_get_first as first_of,
  rmap_get_next as next_of,
  rmap_write_protect,
} from "./rmap";
import {
  SPTE_PFN_MASK,
  is_present,
  level_index,
  make_nonleaf,
  SPTE_M,
  SPTE_W,
  is_leaf,
} from "./spte";
import { vcpu_can_block } from "./vcpu";
import { flush_remote_tlbs, kvm_make_all_cpus_request, tlb_flush_local } from "./tlb";
import { update_gfn_disallow_lpage, update_gfn_write_track } from "./page_track";
import { GPTE_ADDR_MASK, GPTE_P, GPTE_RW, read_gpte } from "./guest_walk";

// union kvm_mmu_page_role (v6.8 bit layout, spec §5.8)
export const ROLE_LEVEL_MASK: u32 = 0xf;
export const ROLE_4BYTE: u32 = 1 << 4; // has_4_byte_gpte: a 32-bit non-PAE guest's table
export const ROLE_QUADRANT_SHIFT: u32 = 5; // quadrant (2 bits): which part of a 1024-entry table
export const ROLE_DIRECT: u32 = 1 << 7;
export const ROLE_INVALID: u32 = 1 << 11; // zapped while a vCPU still uses it as its root
export const ROLE_SMM_SHIFT: u32 = 24;

@inline export function is_shadow_mmu(vm: usize): bool {
  return load<u32>(vm + VM_MMU) == MMU_SHADOW;
}

/** The pte_list_desc pool of the VM's rmaps and parent_ptes. */
@inline export function shadow_pte_pool(vm: usize): usize {
  return <usize>load<u32>(vm + VM_PTE_POOL);
}

/** sptep_to_sp: the kvm_mmu_page of the page-table page holding `sptep` (or the page itself). */
@inline export function sptep_to_sp(vm: usize, sptep: usize): usize {
  const index = ((sptep & ~(<usize>(PAGE_SIZE - 1))) - <usize>load<u32>(vm + VM_POOL_BASE)) / PAGE_SIZE;
  return <usize>load<u32>(vm + VM_SP_TABLE) + index * SP_SIZE;
}

/** gfn_to_rmap at 4K: the rmap head of gfn in `slot` (a shadow-MMU VM's slot). */
@inline export function gfn_to_rmap(slot: usize, gfn: u64): usize {
  return <usize>load<u32>(slot + SLOT_RMAP) + <usize>((gfn - load<u64>(slot + SLOT_BASE_GFN)) << 3);
}

/** kvm_mmu_alloc_shadow_page's bookkeeping for table `table`: a direct page at `level`. */
function sp_init(vm: usize, table: usize, level: u32, gfn: u64, as_id: u32): usize {
  const sp = sptep_to_sp(vm, table);
  memory.fill(sp, 0, SP_SIZE);
  store<u64>(sp + SP_GFN, gfn);
  store<u32>(sp + SP_ROLE, level | ROLE_DIRECT | (as_id << ROLE_SMM_SHIFT));
  store<u32>(sp + SP_IN_USE, 1);
  store<u32>(sp + SP_MMU_VALID_GEN, load<u32>(vm + VM_MMU_VALID_GEN));
  store<u32>(vm + VM_SHADOW_PAGES, load<u32>(vm + VM_SHADOW_PAGES) + 1);
  return sp;
}

/**
 * Set up a shadow-MMU VM (kvm_mmu_init_vm + the first root): the descriptor pool at
 * `pool` (PTE_POOL_SIZE header, then `descs` descriptors), the kvm_mmu_page table, the
 * zeroed mmu_page_hash (SP_HASH_BUCKETS u32), and each address space's root page
 * (VM_ROOT) as a direct level-4 page (the unpaged guest's).
 */
export function shadow_init(vm: usize, pool: usize, descs: u32, sp_table: usize, hash: usize): void {
  store<u32>(vm + VM_MMU, MMU_SHADOW);
  store<u32>(vm + VM_SP_HASH, <u32>hash);
  store<u32>(vm + VM_PTE_POOL, <u32>pool);
  store<u32>(vm + VM_SP_TABLE, <u32>sp_table);
  pte_list_pool_init(pool, pool + PTE_POOL_SIZE, descs);
  shadow_init_roots(vm);
}

function shadow_init_roots(vm: usize): void {
  store<u32>(vm + VM_SHADOW_PAGES, 0);
  for (let as_id: u32 = 0; as_id < KVM_NR_AS; as_id++) {
    sp_init(vm, <usize>load<u32>(vm + VM_ROOT + (as_id << 2)), PT_LEVELS, 0, as_id);
  }
}

/** Bytes of descriptors for `descs` pte_list_descs, header included. */
export function shadow_pte_pool_bytes(descs: u32): u32 {
  return PTE_POOL_SIZE + descs * PTE_LIST_DESC_SIZE;
}

/**
 * The direct-map fault's walk (kvm_mmu_get_child_sp + link_shadow_page): from the root
 * of as_id down to gfn's 4K SPTE, allocating and linking a direct shadow page at each
 * missing level (its parent SPTE goes on its parent_ptes: the first parent of a new page,
 * a bare pointer, so no descriptor is needed). Returns the 4K SPTE's address | 1, or 0 when
 * the page-table pool is exhausted (nothing linked for the page that failed). Caller holds
 * mmu_lock for write.
 */
export function shadow_get_or_create(vm: usize, as_id: u32, gfn: u64): usize {
  lockdep_assert_held_write(vm);
  let table = <usize>load<u32>(vm + VM_ROOT + (as_id << 2));
  for (let level = PT_LEVELS; level > 1; level--) {
    const p = table + (<usize>level_index(gfn, level) << 3);
    const spte = atomic.load<u64>(p);
    if (is_present(spte)) {
      table = <usize>(spte & SPTE_PFN_MASK);
      continue;
    }
    const child = pool_alloc(vm); // (its first parent is a bare pointer: no descriptor)
    if (child == 0) return 0;
    const child_level = level - 1;
    const span_shift = 9 * child_level; // gfns mapped by the child page: 512^child_level
    const sp = sp_init(vm, child, child_level, (gfn >> span_shift) << span_shift, as_id);
    pte_list_add(shadow_pte_pool(vm), sp + SP_PARENT_PTES, p); // the first parent: a bare pointer
    atomic.store<u64>(p, make_nonleaf(child));
    table = child;
  }
  return (table + (<usize>level_index(gfn, 1) << 3)) | 1;
}

/**
 * rmap_add for a leaf SPTE just made present for gfn of `slot`. Returns the rmap's length
 * before the add (the caller zaps it past RMAP_RECYCLE_THRESHOLD), or -1 if no descriptor
 * was free (the fault checks kvm_mmu_leaf_has_room before it installs the SPTE, under the
 * same write lock, so this does not happen).
 */
export function shadow_rmap_add(vm: usize, slot: usize, gfn: u64, sptep: usize): i32 {
  lockdep_assert_held_write(vm);
  return pte_list_add(shadow_pte_pool(vm), gfn_to_rmap(slot, gfn), sptep);
}

// ---------------------------------------------------------------------------------------
// Indirect shadow pages: a paged guest's tables (vcpu.setPaging under the shadow MMU)
//
//   root      kvm_mmu_page for the guest's PML4 (gfn = CR3 >> 12, level 4), per vCPU
//             (VCPU_ROOT), shared by vCPUs with the same CR3 through mmu_page_hash
//   page      one per (guest table gfn, role) that some walk needed, found in the hash;
//             its SPTE i shadows gPTE i of that table; SP_GFNS keeps the gfn each leaf
//             maps (kvm_mmu_page_get_gfn: an indirect page cannot compute it)
//   account   a shadowed guest table at level > 1 is write-tracked (every guest write to
//             it is emulated, then kvm_mmu_track_write zaps what it changed); at level 1
//             it is write-protected (shadow style) and may go unsync: the first guest write
//             to it marks its pages unsync (mark_unsync up the parents) and maps it writable,
//             and a CR3 load or INVLPG syncs them from the guest's table again
//
// Invariants (all under mmu_lock for write): a page is in the hash iff SP_IN_USE; every
// non-leaf SPTE is on its child's parent_ptes; a leaf SPTE is on the rmap of SP_GFNS[i];
// unsync_child_bitmap bit i of a page is set iff child i is unsync or has unsync children.

/** The page-table page a kvm_mmu_page describes (the inverse of sptep_to_sp). */
@inline export function sp_spt(vm: usize, sp: usize): usize {
  return <usize>load<u32>(vm + VM_POOL_BASE) + ((sp - <usize>load<u32>(vm + VM_SP_TABLE)) / SP_SIZE) * PAGE_SIZE;
}

@inline function role_level(sp: usize): u32 {
  return load<u32>(sp + SP_ROLE) & ROLE_LEVEL_MASK;
}

@inline function is_direct(sp: usize): bool {
  return (load<u32>(sp + SP_ROLE) & ROLE_DIRECT) != 0;
}

@inline function hash_head(vm: usize, gfn: u64): usize {
  const h = <u32>((gfn * 0x9e3779b97f4a7c15) >> 52) & (SP_HASH_BUCKETS - 1);
  return <usize>load<u32>(vm + VM_SP_HASH) + (<usize>h << 2);
}

/** kvm_mmu_page_get_gfn: the gfn SPTE i of `sp` maps (a leaf) or shadows (a table). */
@inline export function sp_gfn_at(sp: usize, i: u32): u64 {
  const gfns = <usize>load<u32>(sp + SP_GFNS);
  if (gfns != 0) return load<u64>(gfns + (<usize>i << 3));
  return load<u64>(sp + SP_GFN) + ((<u64>i) << (9 * (role_level(sp) - 1)));
}

/**
 * is_obsolete_sp: zapped while in use as a root (role.invalid), or made before the last
 * kvm_mmu_zap_all_fast (another mmu_valid_gen). Lookups pass over it; it is zapped or
 * freed later.
 */
@inline export function is_obsolete_sp(vm: usize, sp: usize): bool {
  return (load<u32>(sp + SP_ROLE) & ROLE_INVALID) != 0 || load<u32>(sp + SP_MMU_VALID_GEN) != load<u32>(vm + VM_MMU_VALID_GEN);
}

/**
 * for_each_gfn_valid_sp_with_gptes: the first indirect page shadowing gfn after `after`
 * (0: the first), obsolete pages passed over. A page zapped meanwhile stays in the hash,
 * invalid, until kvm_mmu_commit_zap_page, so `after` may be one.
 */
function next_sp_of_gfn(vm: usize, gfn: u64, after: usize): usize {
  let sp = after == 0 ? <usize>load<u32>(hash_head(vm, gfn)) : <usize>load<u32>(after + SP_HASH_NEXT);
  while (sp != 0 && (load<u64>(sp + SP_GFN) != gfn || is_direct(sp) || is_obsolete_sp(vm, sp))) {
    sp = <usize>load<u32>(sp + SP_HASH_NEXT);
  }
  return sp;
}

/** account_shadowed / unaccount_shadowed (delta ±1), the guest table's slot in `as_id`. */
function account_shadowed(vm: usize, sp: usize, delta: i32): bool {
  // read without mmu_lock by kvm_mmu_track_write's callers (nothing shadowed: no lock taken)
  atomic.store<u32>(vm + VM_INDIRECT_SHADOW_PAGES, load<u32>(vm + VM_INDIRECT_SHADOW_PAGES) + delta);
  const gfn = load<u64>(sp + SP_GFN);
  const slot = memslot_lookup(vm, load<u32>(sp + SP_ROLE) >> ROLE_SMM_SHIFT, gfn);
  if (slot == 0) return false;
  // __kvm_write_track_add_gfn / _remove_gfn: every guest write to an upper-level table
  // traps; a leaf table is only write-protected (it may go unsync)
  if (role_level(sp) > 1) update_gfn_write_track(vm, slot, gfn, delta);
  update_gfn_disallow_lpage(vm, slot, gfn, delta);
  return delta > 0 && rmap_write_protect(vm, gfn_to_rmap(slot, gfn), true, vm + VM_RMAP_ITER);
}

/**
 * kvm_mmu_get_shadow_page: the indirect page shadowing guest table `gfn` with this level,
 * address space and `extra` role bits (ROLE_4BYTE and the quadrant of a 32-bit guest's
 * table), from the hash, or a new one (accounted: write-tracked or
 * write-protected, with the flush due recorded in `flush`). 0 when a pool is exhausted.
 */
export function kvm_mmu_get_shadow_page(vm: usize, gfn: u64, level: u32, as_id: u32, extra: u32, flush: usize): usize {
  lockdep_assert_held_write(vm);
  const role = level | extra | (as_id << ROLE_SMM_SHIFT);
  for (let sp = next_sp_of_gfn(vm, gfn, 0); sp != 0; sp = next_sp_of_gfn(vm, gfn, sp)) {
    if (load<u32>(sp + SP_ROLE) != role) {
      // kvm_mmu_find_shadow_page: the guest makes an upper-level table of a page it used
      // as a leaf table; the new page will be write-tracked, so an unsync page of the gfn
      // cannot stay (zapped: the caller's kvm_mmu_remote_flush_or_zap frees it)
      if (level > 1 && load<u32>(sp + SP_UNSYNC) != 0) {
        kvm_mmu_prepare_zap_page(vm, sp);
        store<u32>(flush, 1);
      }
      continue;
    }
    // An unsync page is good but stale. Bring its SPTEs in line with the guest's table
    // (kvm_sync_page), but leave it unsync and writable: the next TLB invalidation by the
    // guest syncs it for good. (An INVLPG made while the page hung from no parent could
    // not reach it.)
    if (load<u32>(sp + SP_UNSYNC) != 0 && kvm_sync_page(vm, sp)) store<u32>(flush, 1);
    store<u32>(sp + SP_WRITE_FLOODING, 0); // __clear_sp_write_flooding_count
    return sp;
  }
  const spt = pool_alloc(vm);
  if (spt == 0) return 0;
  const gfns = pool_alloc(vm);
  if (gfns == 0) {
    pool_free(vm, spt);
    return 0;
  }
  const sp = sptep_to_sp(vm, spt);
  memory.fill(sp, 0, SP_SIZE);
  store<u64>(sp + SP_GFN, gfn);
  store<u32>(sp + SP_ROLE, role);
  store<u32>(sp + SP_IN_USE, 1);
  store<u32>(sp + SP_MMU_VALID_GEN, load<u32>(vm + VM_MMU_VALID_GEN));
  store<u32>(sp + SP_GFNS, <u32>gfns);
  const head = hash_head(vm, gfn);
  store<u32>(sp + SP_HASH_NEXT, load<u32>(head));
  store<u32>(head, <u32>sp);
  store<u32>(vm + VM_SHADOW_PAGES, load<u32>(vm + VM_SHADOW_PAGES) + 1);
  if (account_shadowed(vm, sp, 1)) store<u32>(flush, 1);
  return sp;
}

/** mark_unsync: tell every parent that `sp` (or a page below it) is unsync (spec §5.8). */
function mark_unsync(vm: usize, sp: usize): void {
  const head = sp + SP_PARENT_PTES;
  // (no shared iterator: the walk recurses into the parents' own parent_ptes)
  for (let k: u32 = 0, p = pte_list_at(head, 0); p != 0; p = pte_list_at(head, ++k)) {
    const psp = sptep_to_sp(vm, p);
    const i = <u32>((p & (PAGE_SIZE - 1)) >> 3);
    const word = psp + SP_UNSYNC_BITMAP + (<usize>(i >> 6) << 3);
    const bit = (<u64>1) << (i & 63);
    if ((load<u64>(word) & bit) != 0) continue;
    store<u64>(word, load<u64>(word) | bit);
    const n = load<u32>(psp + SP_UNSYNC_CHILDREN);
    store<u32>(psp + SP_UNSYNC_CHILDREN, n + 1);
    if (n != 0) continue;
    mark_unsync(vm, psp); // (depth ≤ 3: a page's parents are one level up)
  }
}

/**
 * mmu_try_to_unsync_pages for a leaf about to be made writable on gfn: every level-1 page
 * shadowing gfn goes unsync (kvm_unsync_page + mark_unsync). False if gfn may not be
 * mapped writable (it is write-tracked, i.e. an upper-level table, checked by the caller).
 */
export function mmu_try_to_unsync_pages(vm: usize, gfn: u64): bool {
  lockdep_assert_held_write(vm);
  for (let sp = next_sp_of_gfn(vm, gfn, 0); sp != 0; sp = next_sp_of_gfn(vm, gfn, sp)) {
    if (role_level(sp) != 1) return false;
    if (load<u32>(sp + SP_UNSYNC) != 0) continue;
    store<u32>(sp + SP_UNSYNC, 1); // kvm_unsync_page
    store<u32>(vm + VM_MMU_UNSYNC, load<u32>(vm + VM_MMU_UNSYNC) + 1);
    mark_unsync(vm, sp);
  }
  return true;
}

/** mmu_page_zap_pte: drop SPTE i of `sp` (off its rmap, or off its child's parent_ptes). True if it was present. */
function zap_pte(vm: usize, sp: usize, i: u32): bool {
  const p = sp_spt(vm, sp) + (<usize>i << 3);
  const spte = atomic.xchg<u64>(p, 0);
  if (!is_present(spte)) return false;
  const level = role_level(sp);
  if (is_leaf(spte, level)) {
    const gfn = sp_gfn_at(sp, i);
    const slot = memslot_lookup(vm, load<u32>(sp + SP_ROLE) >> ROLE_SMM_SHIFT, gfn);
    if (slot != 0 && load<u32>(slot + SLOT_RMAP) != 0) pte_list_remove(shadow_pte_pool(vm), gfn_to_rmap(slot, gfn), p);
  } else {
    const child = sptep_to_sp(vm, <usize>(spte & SPTE_PFN_MASK));
    pte_list_remove(shadow_pte_pool(vm), child + SP_PARENT_PTES, p);
    clear_unsync_child(sp, i);
  }
  return true;
}

/** The child at index i is gone or synced: its bit in the parent's unsync bitmap goes. */
function clear_unsync_child(sp: usize, i: u32): void {
  const word = sp + SP_UNSYNC_BITMAP + (<usize>(i >> 6) << 3);
  const bit = (<u64>1) << (i & 63);
  if ((load<u64>(word) & bit) == 0) return;
  store<u64>(word, load<u64>(word) & ~bit);
  store<u32>(sp + SP_UNSYNC_CHILDREN, load<u32>(sp + SP_UNSYNC_CHILDREN) - 1);
}

/**
 * kvm_mmu_prepare_zap_page: take `sp` out of use. Its unsync children are zapped first
 * (mmu_zap_unsync_children), its SPTEs dropped (leaves off their rmaps, links off their
 * children's parent_ptes), its parents' links to it dropped, its guest table no longer
 * shadowed (unaccount_shadowed), and it is marked invalid: lookups pass over it. A page no
 * vCPU uses as its root goes on the invalid list, freed by kvm_mmu_commit_zap_page after
 * a flush; a root in use stays until its last vCPU lets go (kvm_mmu_unload_root), and
 * every vCPU is asked to drop obsolete roots (KVM_REQ_MMU_FREE_OBSOLETE_ROOTS, served at
 * guest entry). Idempotent. Returns whether a root in use was zapped.
 */
export function kvm_mmu_prepare_zap_page(vm: usize, sp: usize): bool {
  lockdep_assert_held_write(vm);
  if ((load<u32>(sp + SP_ROLE) & ROLE_INVALID) != 0) return false;
  store<u32>(vm + VM_MMU_SHADOW_ZAPPED, load<u32>(vm + VM_MMU_SHADOW_ZAPPED) + 1);
  if (role_level(sp) > 1 && load<u32>(sp + SP_UNSYNC_CHILDREN) != 0) mmu_zap_unsync_children(vm, sp);
  kvm_mmu_page_unlink_children(vm, sp);
  const parents = sp + SP_PARENT_PTES;
  const iter = vm + VM_RMAP_ITER2;
  for (let p = first_of(parents, iter); p != 0; p = next_of(iter)) {
    atomic.xchg<u64>(p, 0);
    clear_unsync_child(sptep_to_sp(vm, p), <u32>((p & (PAGE_SIZE - 1)) >> 3));
  }
  pte_list_destroy(shadow_pte_pool(vm), parents);
  if (!is_direct(sp)) account_shadowed(vm, sp, -1);
  if (load<u32>(sp + SP_UNSYNC) != 0) kvm_unlink_unsync_page(vm, sp);
  store<u32>(sp + SP_ROLE, load<u32>(sp + SP_ROLE) | ROLE_INVALID);
  if (load<u32>(sp + SP_ROOT_COUNT) == 0) {
    invalid_list_add(vm, sp);
    return false;
  }
  kvm_make_all_cpus_request(vm, KVM_REQ_MMU_FREE_OBSOLETE_ROOTS, false, false);
  return true;
}

/** kvm_mmu_page_unlink_children: every SPTE of `sp` dropped (mmu_page_zap_pte). */
function kvm_mmu_page_unlink_children(vm: usize, sp: usize): void {
  const spt = sp_spt(vm, sp);
  for (let i: u32 = 0; i < 512; i++) {
    if (atomic.load<u64>(spt + (<usize>i << 3)) != 0) zap_pte(vm, sp, i);
  }
}

@inline function invalid_list_add(vm: usize, sp: usize): void {
  store<u32>(sp + SP_INVALID_NEXT, load<u32>(vm + VM_MMU_INVALID_LIST));
  store<u32>(vm + VM_MMU_INVALID_LIST, <u32>sp);
}

/**
 * kvm_mmu_commit_zap_page: flush every vCPU's TLB (no lockless walker still reads the
 * pages), then free every page on the invalid list.
 */
export function kvm_mmu_commit_zap_page(vm: usize, can_block: bool): void {
  lockdep_assert_held_write(vm);
  let sp = <usize>load<u32>(vm + VM_MMU_INVALID_LIST);
  if (sp == 0) return;
  flush_remote_tlbs(vm, can_block);
  store<u32>(vm + VM_MMU_INVALID_LIST, 0);
  while (sp != 0) {
    const next = <usize>load<u32>(sp + SP_INVALID_NEXT);
    kvm_mmu_free_shadow_page(vm, sp);
    sp = next;
  }
}

/**
 * kvm_mmu_remote_flush_or_zap: commit the invalid list (which flushes), or flush if
 * `flush`. Returns whether a flush was done.
 */
export function kvm_mmu_remote_flush_or_zap(vm: usize, flush: bool, can_block: bool): bool {
  if (load<u32>(vm + VM_MMU_INVALID_LIST) != 0) {
    kvm_mmu_commit_zap_page(vm, can_block);
    return true;
  }
  if (flush) flush_remote_tlbs(vm, can_block);
  return flush;
}

function kvm_mmu_free_shadow_page(vm: usize, sp: usize): void {
  if (!is_direct(sp)) {
    // leave the hash (direct pages are never in it: dirtlog finds them from the VM's root)
    let link = hash_head(vm, load<u64>(sp + SP_GFN));
    while (<usize>load<u32>(link) != sp) link = <usize>load<u32>(link) + SP_HASH_NEXT;
    store<u32>(link, load<u32>(sp + SP_HASH_NEXT));
  }
  const gfns = <usize>load<u32>(sp + SP_GFNS);
  if (gfns != 0) pool_free(vm, gfns);
  pool_free(vm, sp_spt(vm, sp));
  store<u32>(sp + SP_IN_USE, 0);
  store<u32>(vm + VM_SHADOW_PAGES, load<u32>(vm + VM_SHADOW_PAGES) - 1);
}

/**
 * FNAME(fetch) for the last guest walk of `vcpu` (VCPU_WALK): from the vCPU's root down to
 * the level-1 shadow page for gva, taking the page of each guest table the walk went
 * through from the hash (or making it) and linking it; each page on the way is "used by a
 * guest walk" (its write-flooding count restarts). Returns the leaf SPTE's address, or 0
 * when a pool is exhausted. Sets *flush when accounting write-protected something.
 */
export function shadow_fetch(vm: usize, vcpu: usize, gva: u64, flush: usize): usize {
  lockdep_assert_held_write(vm);
  const as_id = load<u32>(vcpu + VCPU_AS);
  const walk = vcpu + VCPU_WALK + WALK_TABLE_GFN;
  let table = <usize>load<u32>(vcpu + VCPU_ROOT);
  if (table == 0) {
    const root = kvm_mmu_load_root(vm, vcpu, flush);
    if (root == 0) return 0;
    table = root;
  }
  const bits32 = load<u32>(vcpu + VCPU_PAGING) == PAGING_32BIT;
  for (let level = PT_LEVELS; level > 1; level--) {
    store<u32>(sptep_to_sp(vm, table) + SP_WRITE_FLOODING, 0); // clear_sp_write_flooding_count
    const index = level_index(gva >> 12, level);
    const p = table + (<usize>index << 3);
    const spte = atomic.load<u64>(p);
    if (is_present(spte)) {
      table = <usize>(spte & SPTE_PFN_MASK);
      continue;
    }
    if (!pte_list_pool_has_room(shadow_pte_pool(vm))) return 0;
    // a 32-bit guest: the PAE root's entry i takes the guest PD's quarter i (quadrant i);
    // a shadow PD entry covers half of a 4 MiB guest PDE, so its child, the guest PT's
    // half (quadrant = the entry's index & 1) (kvm_mmu_child_role)
    let extra: u32 = 0;
    if (bits32) extra = ROLE_4BYTE | ((level == 3 ? index & 3 : index & 1) << ROLE_QUADRANT_SHIFT);
    const child = kvm_mmu_get_shadow_page(vm, load<u64>(walk + (<usize>(level - 2) << 3)), level - 1, as_id, extra, flush);
    if (child == 0) return 0;
    pte_list_add(shadow_pte_pool(vm), child + SP_PARENT_PTES, p); // link_shadow_page
    const parent = sptep_to_sp(vm, table);
    const gfns = <usize>load<u32>(parent + SP_GFNS); // (a special root has none)
    if (gfns != 0) store<u64>(gfns + (<usize>index << 3), load<u64>(child + SP_GFN));
    atomic.store<u64>(p, make_nonleaf(sp_spt(vm, child)));
    if (load<u32>(child + SP_UNSYNC) != 0 || load<u32>(child + SP_UNSYNC_CHILDREN) != 0) mark_unsync_link(vm, parent, p);
    table = sp_spt(vm, child);
  }
  return table + (<usize>level_index(gva >> 12, 1) << 3);
}

/** link_shadow_page's mark_unsync(sptep) for one new link from `parent` at `p`. */
function mark_unsync_link(vm: usize, parent: usize, p: usize): void {
  const i = <u32>((p & (PAGE_SIZE - 1)) >> 3);
  const word = parent + SP_UNSYNC_BITMAP + (<usize>(i >> 6) << 3);
  const bit = (<u64>1) << (i & 63);
  if ((load<u64>(word) & bit) != 0) return;
  store<u64>(word, load<u64>(word) | bit);
  const n = load<u32>(parent + SP_UNSYNC_CHILDREN);
  store<u32>(parent + SP_UNSYNC_CHILDREN, n + 1);
  if (n == 0) mark_unsync(vm, parent);
}

/**
 * mmu_alloc_shadow_roots: the vCPU's root for its CR3 (the page shadowing the guest's
 * PML4), from the hash or new; root_count goes up. Returns its table (0: pool exhausted).
 */
export function kvm_mmu_load_root(vm: usize, vcpu: usize, flush: usize): usize {
  if (load<u32>(vcpu + VCPU_PAGING) == PAGING_32BIT) return load_special_root(vm, vcpu, flush);
  const sp = kvm_mmu_get_shadow_page(vm, load<u64>(vcpu + VCPU_CR3) >> 12, PT_LEVELS, load<u32>(vcpu + VCPU_AS), 0, flush);
  if (sp == 0) return 0;
  store<u32>(sp + SP_ROOT_COUNT, load<u32>(sp + SP_ROOT_COUNT) + 1);
  const table = sp_spt(vm, sp);
  store<u32>(vcpu + VCPU_ROOT, <u32>table);
  return table;
}

/**
 * mmu_alloc_special_roots + mmu_alloc_shadow_roots for a 32-bit guest: the vCPU's own
 * pml4_root, whose entry 0 is its pae_root, whose 4 entries are the pages shadowing the
 * guest PD's quarters (quadrants 0-3, from the hash when they exist, so what went unsync
 * below them is reachable for the CR3 load's sync). The special pages shadow no guest
 * table; they go with the root. 0 when a pool is exhausted.
 */
function load_special_root(vm: usize, vcpu: usize, flush: usize): usize {
  const pml4 = pool_alloc(vm);
  if (pml4 == 0) return 0;
  const pae = pool_alloc(vm);
  if (pae == 0) {
    pool_free(vm, pml4);
    return 0;
  }
  const as_id = load<u32>(vcpu + VCPU_AS);
  const top = sp_init(vm, pml4, PT_LEVELS, 0, as_id);
  const mid = sp_init(vm, pae, PT_LEVELS - 1, 0, as_id);
  store<u32>(top + SP_SPECIAL, 1);
  store<u32>(mid + SP_SPECIAL, 1);
  store<u32>(top + SP_ROOT_COUNT, 1);
  pte_list_add(shadow_pte_pool(vm), mid + SP_PARENT_PTES, pml4); // entry 0: a bare pointer, no descriptor
  atomic.store<u64>(pml4, make_nonleaf(pae));
  store<u32>(vcpu + VCPU_ROOT, <u32>pml4);
  const pd_gfn = (load<u64>(vcpu + VCPU_CR3) & 0xffff_f000) >> 12;
  for (let i: u32 = 0; i < 4; i++) {
    if (!pte_list_pool_has_room(shadow_pte_pool(vm))) break; // (the walks link the rest)
    const quarter = kvm_mmu_get_shadow_page(vm, pd_gfn, 2, as_id, ROLE_4BYTE | (i << ROLE_QUADRANT_SHIFT), flush);
    if (quarter == 0) break;
    const p = pae + (<usize>i << 3);
    pte_list_add(shadow_pte_pool(vm), quarter + SP_PARENT_PTES, p);
    atomic.store<u64>(p, make_nonleaf(sp_spt(vm, quarter)));
    if (load<u32>(quarter + SP_UNSYNC_CHILDREN) != 0) mark_unsync_link(vm, mid, p);
  }
  return pml4;
}

/** Free a special root and the pae_root below it (their entries unlinked from the pages below). */
function free_special_root(vm: usize, top: usize): void {
  const pae = <usize>(atomic.load<u64>(sp_spt(vm, top)) & SPTE_PFN_MASK);
  const mid = sptep_to_sp(vm, pae);
  for (let i: u32 = 0; i < 4; i++) zap_pte(vm, mid, i);
  pte_list_destroy(shadow_pte_pool(vm), mid + SP_PARENT_PTES);
  atomic.store<u64>(sp_spt(vm, top), 0);
  release_special(vm, top);
  release_special(vm, mid);
}

function release_special(vm: usize, sp: usize): void {
  pool_free(vm, sp_spt(vm, sp));
  store<u32>(sp + SP_IN_USE, 0);
  store<u32>(sp + SP_SPECIAL, 0);
  store<u32>(vm + VM_SHADOW_PAGES, load<u32>(vm + VM_SHADOW_PAGES) - 1);
}

/**
 * kvm_mmu_unload: the vCPU lets go of its root (root_count down; the page stays in the
 * hash). A root zapped while in use goes on the invalid list with its last user
 * (mmu_free_root_page); the caller commits it.
 */
export function kvm_mmu_unload_root(vm: usize, vcpu: usize): void {
  const table = <usize>load<u32>(vcpu + VCPU_ROOT);
  if (table == 0) return;
  const sp = sptep_to_sp(vm, table);
  if (load<u32>(sp + SP_SPECIAL) != 0) {
    free_special_root(vm, sp);
    store<u32>(vcpu + VCPU_ROOT, 0);
    return;
  }
  const count = load<u32>(sp + SP_ROOT_COUNT) - 1;
  store<u32>(sp + SP_ROOT_COUNT, count);
  store<u32>(vcpu + VCPU_ROOT, 0);
  if (count == 0 && (load<u32>(sp + SP_ROLE) & ROLE_INVALID) != 0) invalid_list_add(vm, sp);
}

/**
 * The gPTE that SPTE i of `sp` shadows, 0 outside backed memory: entry i of the guest table
 * (8 bytes), or for a 32-bit guest's table (4 bytes) entry quadrant × 512 + i.
 */
function sp_gpte(vm: usize, sp: usize, i: u32): u64 {
  const role = load<u32>(sp + SP_ROLE);
  const bits32 = (role & ROLE_4BYTE) != 0;
  const index = bits32 ? (((role >> ROLE_QUADRANT_SHIFT) & 3) << 9) | i : i;
  return read_gpte(vm, role >> ROLE_SMM_SHIFT, load<u64>(sp + SP_GFN), index, bits32);
}

/**
 * FNAME(sync_spte): bring SPTE i of the unsync level-1 page `sp` in line with its gPTE:
 * gone if the gPTE is not present or now maps another gfn; read-only if the gPTE no longer
 * allows writes. True if the SPTE changed (a flush is due).
 */
function sync_spte(vm: usize, sp: usize, i: u32): bool {
  const p = sp_spt(vm, sp) + (<usize>i << 3);
  const spte = atomic.load<u64>(p);
  if (!is_present(spte)) return false;
  const gpte = sp_gpte(vm, sp, i);
  if ((gpte & GPTE_P) == 0 || (gpte & GPTE_ADDR_MASK) >> 12 != sp_gfn_at(sp, i)) return zap_pte(vm, sp, i);
  if ((gpte & GPTE_RW) == 0 && (spte & (SPTE_W | SPTE_M)) != 0) {
    atomic.and<u64>(p, ~(SPTE_W | SPTE_M));
    return true;
  }
  return false;
}

/** __kvm_sync_page: every SPTE of the unsync page `sp` synced. True if one changed. */
function kvm_sync_page(vm: usize, sp: usize): bool {
  let flush = false;
  for (let i: u32 = 0; i < 512; i++) flush |= sync_spte(vm, sp, i);
  return flush;
}

/** kvm_unlink_unsync_page: `sp` is sync again (its gfn write-protected by the caller). */
function kvm_unlink_unsync_page(vm: usize, sp: usize): void {
  store<u32>(sp + SP_UNSYNC, 0);
  store<u32>(vm + VM_MMU_UNSYNC, load<u32>(vm + VM_MMU_UNSYNC) - 1);
}

/** kvm_vcpu_write_protect_gfn for the guest table `sp` shadows (W and MMU-writable cleared). */
function write_protect_sp_gfn(vm: usize, sp: usize): bool {
  const gfn = load<u64>(sp + SP_GFN);
  const slot = memslot_lookup(vm, load<u32>(sp + SP_ROLE) >> ROLE_SMM_SHIFT, gfn);
  return slot != 0 && rmap_write_protect(vm, gfn_to_rmap(slot, gfn), true, vm + VM_RMAP_ITER);
}

// ---------------------------------------------------------------------------------------
// The unsync walk (mmu_unsync_walk, for_each_sp): the pages below a parent that are unsync,
// found through the unsync_child_bitmaps, in batches of KVM_PAGE_ARRAY_NR.
//
//   struct kvm_mmu_pages (VM_MMU_PAGES)  nr, then {sp, idx} × KVM_PAGE_ARRAY_NR: the parent
//                      first (idx INVALID_INDEX), then in walk order each page with unsync
//                      children (an upper level) and each unsync page (level 1), with its
//                      index in the page above it
//   struct mmu_page_path (VM_MMU_PAGE_PATH)  {parent, idx} per level: while for_each_sp
//                      visits an unsync page, the pages above it and the index of each
//                      link, so that mmu_pages_clear_parents clears the bits of the path
//
// Both live in the VM block: only the mmu_lock writer uses them, and a lock break starts
// a fresh walk.
const INVALID_INDEX: u32 = 0xffff_ffff;

@inline function pvec_nr(vm: usize): u32 {
  return load<u32>(vm + VM_MMU_PAGES);
}

@inline function pvec_sp(vm: usize, n: u32): usize {
  return <usize>load<u32>(vm + VM_MMU_PAGES + 4 + (<usize>n << 3));
}

@inline function pvec_idx(vm: usize, n: u32): u32 {
  return load<u32>(vm + VM_MMU_PAGES + 8 + (<usize>n << 3));
}

/** mmu_pages_add: true when the vector is full. An unsync page already in it is not added twice. */
function mmu_pages_add(vm: usize, sp: usize, idx: u32): bool {
  const nr = pvec_nr(vm);
  if (load<u32>(sp + SP_UNSYNC) != 0) {
    for (let i: u32 = 0; i < nr; i++) if (pvec_sp(vm, i) == sp) return false;
  }
  store<u32>(vm + VM_MMU_PAGES + 4 + (<usize>nr << 3), <u32>sp);
  store<u32>(vm + VM_MMU_PAGES + 8 + (<usize>nr << 3), idx);
  store<u32>(vm + VM_MMU_PAGES, nr + 1);
  return nr + 1 == KVM_PAGE_ARRAY_NR;
}

/**
 * __mmu_unsync_walk: add the unsync pages below `sp` (and the pages on the way) to the
 * vector; bits that lead to nothing unsync any more are cleared. The number of unsync
 * pages added, or -1 (ENOSPC) when the vector filled up.
 */
function __mmu_unsync_walk(vm: usize, sp: usize): i32 {
  let nr_unsync_leaf: i32 = 0;
  const spt = sp_spt(vm, sp);
  const level = role_level(sp);
  for (let w: u32 = 0; w < 8; w++) {
    let bits = load<u64>(sp + SP_UNSYNC_BITMAP + (<usize>w << 3));
    while (bits != 0) {
      const i = (w << 6) + <u32>ctz<u64>(bits);
      bits &= bits - 1;
      const ent = atomic.load<u64>(spt + (<usize>i << 3));
      if (!is_present(ent) || is_leaf(ent, level)) {
        clear_unsync_child(sp, i);
        continue;
      }
      const child = sptep_to_sp(vm, <usize>(ent & SPTE_PFN_MASK));
      if (load<u32>(child + SP_UNSYNC_CHILDREN) != 0) {
        if (mmu_pages_add(vm, child, i)) return -1;
        const ret = __mmu_unsync_walk(vm, child);
        if (ret == 0) {
          clear_unsync_child(sp, i);
          continue;
        }
        if (ret < 0) return ret;
        nr_unsync_leaf += ret;
      } else if (load<u32>(child + SP_UNSYNC) != 0) {
        nr_unsync_leaf++;
        if (mmu_pages_add(vm, child, i)) return -1;
      } else {
        clear_unsync_child(sp, i);
      }
    }
  }
  return nr_unsync_leaf;
}

/** mmu_unsync_walk: the next batch below `sp`; 0 when nothing below it is unsync. */
function mmu_unsync_walk(vm: usize, sp: usize): i32 {
  store<u32>(vm + VM_MMU_PAGES, 0);
  if (load<u32>(sp + SP_UNSYNC_CHILDREN) == 0) return 0;
  mmu_pages_add(vm, sp, INVALID_INDEX);
  return __mmu_unsync_walk(vm, sp);
}

@inline function path_set(vm: usize, k: u32, sp: usize): void {
  store<u32>(vm + VM_MMU_PAGE_PATH + (<usize>k << 3), <u32>sp);
}

@inline function path_set_idx(vm: usize, k: u32, idx: u32): void {
  store<u32>(vm + VM_MMU_PAGE_PATH + (<usize>k << 3) + 4, idx);
}

/** mmu_pages_next: the vector index of the next unsync page after `i` (nr: none), the path kept. */
function mmu_pages_next(vm: usize, i: u32): u32 {
  const nr = pvec_nr(vm);
  let n = i + 1;
  for (; n < nr; n++) {
    const sp = pvec_sp(vm, n);
    const level = role_level(sp);
    path_set_idx(vm, level - 1, pvec_idx(vm, n));
    if (level == 1) break;
    path_set(vm, level - 2, sp);
  }
  return n;
}

/** mmu_pages_first: the first unsync page of the batch; the path starts at the walk's parent. */
function mmu_pages_first(vm: usize): u32 {
  if (pvec_nr(vm) == 0) return 0;
  const sp = pvec_sp(vm, 0);
  const level = role_level(sp);
  path_set(vm, level - 2, sp);
  path_set(vm, level - 1, 0); // the sentinel: nothing above the walk's parent
  return mmu_pages_next(vm, 0);
}

/** mmu_pages_clear_parents: the visited page's bit goes, and each parent's that is now clean. */
function mmu_pages_clear_parents(vm: usize): void {
  for (let level: u32 = 0; level < 4; level++) {
    const sp = <usize>load<u32>(vm + VM_MMU_PAGE_PATH + (<usize>level << 3));
    if (sp == 0) return;
    clear_unsync_child(sp, load<u32>(vm + VM_MMU_PAGE_PATH + (<usize>level << 3) + 4));
    if (load<u32>(sp + SP_UNSYNC_CHILDREN) != 0) return;
  }
}

/** mmu_zap_unsync_children: zap every unsync page below `parent` (it is being zapped). */
function mmu_zap_unsync_children(vm: usize, parent: usize): void {
  while (mmu_unsync_walk(vm, parent) != 0) {
    for (let i = mmu_pages_first(vm); i < pvec_nr(vm); i = mmu_pages_next(vm, i)) {
      kvm_mmu_prepare_zap_page(vm, pvec_sp(vm, i)); // (a level-1 page: it walks nothing itself)
      mmu_pages_clear_parents(vm);
    }
  }
}

/**
 * mmu_sync_children (a CR3 load's kvm_mmu_sync_roots, on `vcpu`): sync every unsync page
 * below `parent`, KVM_PAGE_ARRAY_NR pages at a time: each batch's guest tables are
 * write-protected first (and flushed if that changed an SPTE), then each page synced
 * from its guest table and its bits cleared up the path. Between batches, a thread
 * waiting for mmu_lock gets it (after the flush due). The caller holds a root count on
 * `parent`, so it outlives the lock breaks (at worst zapped: nothing below it then).
 */
export function mmu_sync_children(vm: usize, vcpu: usize, parent: usize): void {
  lockdep_assert_held_write(vm);
  const can_block = vcpu_can_block(vm, vcpu);
  let flush = false;
  while (mmu_unsync_walk(vm, parent) != 0) {
    store<u32>(vm + VM_MMU_SYNC_WALKS, load<u32>(vm + VM_MMU_SYNC_WALKS) + 1);
    let protect = false;
    for (let i = mmu_pages_first(vm); i < pvec_nr(vm); i = mmu_pages_next(vm, i)) protect |= write_protect_sp_gfn(vm, pvec_sp(vm, i));
    if (protect) {
      kvm_mmu_remote_flush_or_zap(vm, true, can_block);
      flush = false;
    }
    for (let i = mmu_pages_first(vm); i < pvec_nr(vm); i = mmu_pages_next(vm, i)) {
      const sp = pvec_sp(vm, i);
      kvm_unlink_unsync_page(vm, sp);
      flush |= kvm_sync_page(vm, sp);
      mmu_pages_clear_parents(vm);
    }
    if (mmu_lock_needbreak(vm)) {
      kvm_mmu_remote_flush_or_zap(vm, flush, can_block);
      flush = false;
      lock_break(vm);
    }
  }
  kvm_mmu_remote_flush_or_zap(vm, flush, can_block);
}

/** cond_resched_rwlock_write, counted: let the waiting thread in, then take the lock again. */
function lock_break(vm: usize): void {
  store<u32>(vm + VM_MMU_LOCK_BREAKS, load<u32>(vm + VM_MMU_LOCK_BREAKS) + 1);
  cond_resched_rwlock_write(vm);
}

/**
 * kvm_mmu_track_write, after an emulated guest write of `len` bytes at gpa (the page is
 * write-tracked: it is a guest table some page shadows at level > 1): each page shadowing
 * it loses the SPTE covering the written gPTE — or is zapped whole on a misaligned write
 * (not within one 8-byte gPTE, or shorter than 4 bytes) or write flooding (a third write
 * since a guest walk last used the page, level > 1 only). Returns whether to flush; zapped
 * pages wait on the invalid list (the caller's kvm_mmu_remote_flush_or_zap frees them).
 */
export function kvm_mmu_track_write(vm: usize, gpa: u64, len: u32): bool {
  lockdep_assert_held_write(vm);
  const gfn = gpa >> 12;
  const offset = <u32>(gpa & 0xfff);
  let flush = false;
  let sp = next_sp_of_gfn(vm, gfn, 0);
  while (sp != 0) {
    const next = next_sp_of_gfn(vm, gfn, sp);
    // detect_write_misaligned: not within one gPTE (8 bytes, or 4 for a 32-bit guest)
    const role = load<u32>(sp + SP_ROLE);
    const pte_mask: u32 = (role & ROLE_4BYTE) != 0 ? 3 : 7;
    const misaligned = len < 4 || ((offset ^ (offset + len - 1)) & ~pte_mask) != 0;
    let flooded = false;
    if (role_level(sp) > 1) {
      const n = load<u32>(sp + SP_WRITE_FLOODING) + 1;
      store<u32>(sp + SP_WRITE_FLOODING, n);
      flooded = n >= 3;
    }
    if (misaligned || flooded) {
      kvm_mmu_prepare_zap_page(vm, sp);
      flush = true;
    } else if ((role & ROLE_4BYTE) == 0) {
      flush |= zap_pte(vm, sp, offset >> 3);
    } else {
      // get_written_sptes: a 4-byte gPTE is an 8-byte SPTE of one quadrant; a 32-bit PDE
      // (4 MiB) is two shadow PDEs
      let page_offset = offset << 1;
      let n: u32 = 1;
      if (role_level(sp) == 2) {
        page_offset = (page_offset & ~7) << 1;
        n = 2;
      }
      if (page_offset >> 12 == ((role >> ROLE_QUADRANT_SHIFT) & 3)) {
        const first = (page_offset & 0xfff) >> 3;
        for (let k: u32 = 0; k < n; k++) flush |= zap_pte(vm, sp, first + k);
      }
    }
    sp = next;
  }
  return flush;
}

/**
 * kvm_mmu_zap_all_fast (a memslot DELETE or MOVE): every shadow page becomes obsolete at
 * once by toggling mmu_valid_gen, then is zapped in batches of BATCH_ZAP_PAGES with a lock
 * break between batches when a thread waits for mmu_lock (kvm_zap_obsolete_pages).
 * Meanwhile new pages are made in the new generation and lookups pass over the old.
 *   - The VM's direct roots (one per address space, shared by the unpaged vCPUs) are
 *     emptied and renewed in place: the kernel's vCPUs each load a new direct root; here
 *     the VM holds it.
 *   - Every vCPU is asked to drop an obsolete root (KVM_REQ_MMU_FREE_OBSOLETE_ROOTS), and
 *     the request waits until each has left guest mode: from then on none walks an
 *     obsolete page, and a fault on an obsolete root retries (is_page_fault_stale).
 *   - A root still in use is zapped but stays, invalid, until its vCPU lets go.
 *   - Zapped pages wait on the invalid list; the final commit flushes and frees them.
 * The caller (the memslot update) has flagged the slot KVM_MEMSLOT_INVALID, so a fault on
 * it during a lock break retries instead of mapping it again.
 */
export function kvm_mmu_zap_all_fast_shadow(vm: usize, nr_as: u32, can_block: bool): void {
  lockdep_assert_held_write(vm);
  const gen = load<u32>(vm + VM_MMU_VALID_GEN) ^ 1;
  store<u32>(vm + VM_MMU_VALID_GEN, gen);
  for (let as_id: u32 = 0; as_id < nr_as; as_id++) {
    const root = sptep_to_sp(vm, <usize>load<u32>(vm + VM_ROOT + (as_id << 2)));
    kvm_mmu_page_unlink_children(vm, root);
    store<u32>(root + SP_MMU_VALID_GEN, gen);
  }
  kvm_make_all_cpus_request(vm, KVM_REQ_MMU_FREE_OBSOLETE_ROOTS, can_block, true);
  kvm_zap_obsolete_pages(vm, can_block);
}

/**
 * kvm_zap_obsolete_pages: zap every obsolete page not zapped yet (special roots are
 * not shadow pages: their vCPUs free them). The scan goes on where it was after a lock
 * break: pages made meanwhile are valid, and no other thread zaps an obsolete page.
 */
function kvm_zap_obsolete_pages(vm: usize, can_block: bool): void {
  const table = <usize>load<u32>(vm + VM_SP_TABLE);
  let batch: u32 = 0;
  store<u32>(vm + VM_MMU_ZAP_IN_PROGRESS, 1);
  for (let k: u32 = 0; k < load<u32>(vm + VM_POOL_NEXT); k++) {
    const sp = table + <usize>k * SP_SIZE;
    if (load<u32>(sp + SP_IN_USE) == 0 || load<u32>(sp + SP_SPECIAL) != 0) continue;
    if (!is_obsolete_sp(vm, sp) || (load<u32>(sp + SP_ROLE) & ROLE_INVALID) != 0) continue;
    if (batch >= BATCH_ZAP_PAGES && mmu_lock_needbreak(vm)) {
      batch = 0;
      lock_break(vm); // (the zapped pages stay on the invalid list, out of every walker's reach)
    }
    const zapped = load<u32>(vm + VM_MMU_SHADOW_ZAPPED);
    kvm_mmu_prepare_zap_page(vm, sp);
    batch += load<u32>(vm + VM_MMU_SHADOW_ZAPPED) - zapped;
  }
  store<u32>(vm + VM_MMU_ZAP_IN_PROGRESS, 0);
  kvm_mmu_commit_zap_page(vm, can_block);
}

/**
 * A fault that found a pool (page tables, pte_list descriptors) empty during a lock break
 * of kvm_zap_obsolete_pages: the obsolete pages it has yet to zap still hold what the
 * fault needs (and an rmap of a gfn mapped by an old and a new page needs a descriptor),
 * so the fault retries once they are gone instead of failing. Caller holds mmu_lock.
 */
@inline export function shadow_pool_short_during_zap(vm: usize): bool {
  return load<u32>(vm + VM_MMU_ZAP_IN_PROGRESS) != 0;
}

/** INVLPG's sync: if the leaf at `sptep` is in an unsync page, sync its gPTE. True if it changed. */
export function shadow_sync_one(vm: usize, sptep: usize): bool {
  lockdep_assert_held_write(vm);
  const sp = sptep_to_sp(vm, sptep);
  if (load<u32>(sp + SP_IN_USE) == 0 || is_direct(sp) || load<u32>(sp + SP_UNSYNC) == 0) return false;
  return sync_spte(vm, sp, <u32>((sptep & (PAGE_SIZE - 1)) >> 3));
}

/**
 * kvm_mmu_free_obsolete_roots (KVM_REQ_MMU_FREE_OBSOLETE_ROOTS, on the vCPU's thread at
 * guest entry): if the vCPU's root is obsolete it lets go of it (under mmu_lock) and
 * flushes its own TLB, as loading the next root does; the next fault loads a root of the
 * current generation. Whether it is obsolete is read without the lock, as the kernel's
 * is_obsolete_root does: the root cannot go while this vCPU holds it, and a zap that marks
 * it later asks again. An unpaged vCPU's root is the VM's direct root, renewed in place by
 * the zap: it has "reloaded" it when the generation moved since it last looked
 * (VCPU_ROOT_GEN), which needs no lock.
 */
export function shadow_free_obsolete_roots(vm: usize, vcpu: usize): void {
  const gen = load<u32>(vm + VM_MMU_VALID_GEN);
  const table = <usize>load<u32>(vcpu + VCPU_ROOT);
  if (table != 0) {
    if (!is_obsolete_sp(vm, sptep_to_sp(vm, table))) return;
    write_lock(vm);
    kvm_mmu_unload_root(vm, vcpu);
    kvm_mmu_remote_flush_or_zap(vm, false, vcpu_can_block(vm, vcpu));
    write_unlock(vm);
  } else if (load<u32>(vcpu + VCPU_ROOT_GEN) == gen) {
    return;
  }
  store<u32>(vcpu + VCPU_ROOT_GEN, gen);
  tlb_flush_local(vcpu);
}

/**
 * kvm_mmu_track_write's early exit: no indirect shadow page exists, so no guest table is
 * shadowed and nothing can need zapping (read without mmu_lock, as the kernel's READ_ONCE).
 */
@inline export function shadow_has_indirect_pages(vm: usize): bool {
  return atomic.load<u32>(vm + VM_INDIRECT_SHADOW_PAGES) != 0;
}
