// tdp — the TDP MMU's 4-level direct page table (arch/x86/kvm/mmu/tdp_mmu.c).
//
//   root (level 4) ─► level 3 (1G leaves allowed) ─► level 2 (2M leaves) ─► level 1 (4K)
//   each table: 512 u64 SPTEs in one pool page; index at level L = (gfn >> 9(L-1)) & 511
//
// One root per address space (VM_ROOT[as]); roots live as long as the VM.
// Invariants kept here:
//   - SPTEs change by compare-and-swap or atomic and/or, since the lockless fast path may
//     set W at any time; the one exception is re-protection under the write side of
//     mmu_lock, which stores plainly to SPTEs without volatile bits (mmu.ts).
//   - A table is linked into its parent by compare-and-swap (two faults may race to
//     create it; the loser returns its page to the pool).
//   - A split replaces a huge leaf by a table of children with the same permissions, so
//     a split never makes anything writable that was not (tdp_mmu_split_huge_page).
//   - Walk results are packed as `sptep | level`: SPTE pointers are 8-aligned.
import { PT_LEVELS, VM_ROOT, VM_SPLITS } from "./layout";
import { lockdep_assert_held_write } from "./mmu_lock";
import { lpage_disallowed } from "./page_track";
import { pool_alloc, pool_free } from "./pt_pool";
import {
  SPTE_D,
  SPTE_M,
  SPTE_PFN_MASK,
  SPTE_PS,
  SPTE_W,
  is_leaf,
  is_present,
  level_index,
  level_pages,
  make_nonleaf,
} from "./spte";

// range operations of tdp_range_op
export const OP_WRPROT: u32 = 0; // clear W on leaves >= min_level (dirty-log protection)
export const OP_SPLIT: u32 = 1; // eager split of huge leaves down to 4K
export const OP_CLEAR_D: u32 = 3; // PML: clear D on 4K leaves, W on huge ones
export const OP_ZAP: u32 = 4; // unmap leaves (kvm_tdp_mmu_unmap_gfn_range): tables stay

@inline export function tdp_root(vm: usize, as_id: u32): usize {
  return <usize>load<u32>(vm + VM_ROOT + (as_id << 2));
}

@inline function entry_at(table: usize, gfn: u64, level: u32): usize {
  return table + ((<usize>level_index(gfn, level)) << 3);
}

/** Walk to the leaf (or the non-present entry) for gfn; returns `sptep | level`. */
export function tdp_walk(vm: usize, as_id: u32, gfn: u64): usize {
  let table = tdp_root(vm, as_id);
  let level = PT_LEVELS;
  while (true) {
    const p = entry_at(table, gfn, level);
    const spte = atomic.load<u64>(p);
    if (!is_present(spte) || is_leaf(spte, level)) return p | level;
    table = <usize>(spte & SPTE_PFN_MASK);
    level--;
  }
  return 0;
}

/**
 * Count the present leaves mapping gfns [gfn, gfn + npages) whose SPTE has any bit of
 * `bits` (a test tool: e.g. W after a final harvest is a page dirtied but never reported).
 * A huge leaf counts once per 4K page it maps. One walk per 512-page block; blocks with
 * no leaf table are skipped whole. Reads only (any thread, no lock: a snapshot).
 */
export function tdp_count_bits(vm: usize, as_id: u32, gfn: u64, npages: u64, bits: u64): u64 {
  let n: u64 = 0;
  const end = gfn + npages;
  let g = gfn;
  while (g < end) {
    const block_end = (g | 511) + 1 < end ? (g | 511) + 1 : end;
    const w = tdp_walk(vm, as_id, g);
    const level = <u32>(w & 7);
    const spte = atomic.load<u64>(w & ~7);
    if (level == 1) {
      const table = w & ~(<usize>0xfff);
      for (let x = g; x < block_end; x++) {
        const e = atomic.load<u64>(table + (<usize>(x & 511) << 3));
        if (is_present(e) && (e & bits) != 0) n++;
      }
    } else if (is_present(spte) && (spte & bits) != 0) {
      n += block_end - g; // a huge leaf (or the block lies in one)
    }
    g = block_end;
  }
  return n;
}

/**
 * Replace the huge leaf `spte` at `p` (level > 1) by a table of 512 children with the
 * same permissions. Returns false if the pool is empty or another thread changed `p`.
 */
export function tdp_split_huge(vm: usize, p: usize, spte: u64, level: u32): bool {
  const table = pool_alloc(vm);
  if (table == 0) return false;
  const child_level = level - 1;
  const child_bytes = level_pages(child_level) << 12;
  let child = spte;
  if (child_level == 1) child &= ~SPTE_PS;
  const hpa = spte & SPTE_PFN_MASK;
  for (let i: u32 = 0; i < 512; i++) {
    // pfn 0 (zero page / unbacked) stays 0 in every child
    const child_hpa = hpa == 0 ? 0 : hpa + (<u64>i) * child_bytes;
    store<u64>(table + (<usize>i << 3), (child & ~SPTE_PFN_MASK) | child_hpa);
  }
  if (atomic.cmpxchg<u64>(p, spte, make_nonleaf(table)) != spte) {
    pool_free(vm, table);
    return false;
  }
  atomic.add<u64>(vm + VM_SPLITS, 1);
  return true;
}

/**
 * Find or build the path to gfn's entry at `target` level, creating tables and splitting
 * huge leaves on the way. If a table already sits at the target level the walk goes on
 * to 4K (an existing table is never collapsed by a fault). Returns `sptep | level`, or 0
 * when the page-table pool is exhausted.
 */
export function tdp_get_or_create(vm: usize, as_id: u32, gfn: u64, target: u32): usize {
  let table = tdp_root(vm, as_id);
  let level = PT_LEVELS;
  while (true) {
    const p = entry_at(table, gfn, level);
    const spte = atomic.load<u64>(p);
    if (level == target) {
      if (!is_present(spte) || is_leaf(spte, level)) return p | level;
      target = 1;
    }
    if (!is_present(spte)) {
      const t = pool_alloc(vm);
      if (t == 0) return 0;
      if (atomic.cmpxchg<u64>(p, spte, make_nonleaf(t)) != spte) pool_free(vm, t);
      continue;
    }
    if (is_leaf(spte, level)) {
      if (!tdp_split_huge(vm, p, spte, level) && atomic.load<u64>(p) == spte) return 0;
      continue;
    }
    table = <usize>(spte & SPTE_PFN_MASK);
    level--;
  }
  return 0;
}

/**
 * The entries of a table (covering gfns from `base`, `span` pages each) that meet
 * [start, end), as first | last << 16. The range must meet the table.
 */
@inline function entry_range(base: u64, span: u64, start: u64, end: u64): u32 {
  const first: u32 = start > base ? <u32>((start - base) / span) : 0;
  const last = (end - 1 - base) / span;
  return first | ((last >= 511 ? 511 : <u32>last) << 16);
}

/**
 * Apply `op` to every present entry of [start, end) under `table` (at `level`, covering
 * gfns from `base`). Returns 2 if W/D bits were cleared (these never clear MMU-writable,
 * so the flush may be deferred), 1 if leaves were zapped (flush before relying on it), 0 if
 * nothing changed.
 */
export function tdp_range_op(
  vm: usize,
  table: usize,
  level: u32,
  base: u64,
  start: u64,
  end: u64,
  op: u32,
  min_level: u32,
): u32 {
  const span = level_pages(level);
  const range = entry_range(base, span, start, end);
  const i0 = range & 0xffff;
  const i1 = range >> 16;
  let result: u32 = 0;
  for (let i = i0; i <= i1; i++) {
    const p = table + (<usize>i << 3);
    let spte = atomic.load<u64>(p);
    if (!is_present(spte)) continue;
    const gbase = base + (<u64>i) * span;
    if (is_leaf(spte, level)) {
      if (op == OP_WRPROT) {
        if (level >= min_level && (spte & SPTE_W) != 0) {
          atomic.and<u64>(p, ~SPTE_W);
          result |= 2;
        }
      } else if (op == OP_CLEAR_D) {
        const bit = level > 1 ? SPTE_W : SPTE_D;
        if ((spte & bit) != 0) {
          atomic.and<u64>(p, ~bit);
          result |= 2;
        }
      } else if (op == OP_ZAP) {
        // exchange, not store: a lockless fast fault may be setting W on this entry; its
        // cmpxchg then fails and it walks again into the slow path
        atomic.xchg<u64>(p, 0);
        result |= 1;
      } else if (op == OP_SPLIT && level > 1) {
        // pre-order: split this leaf, then split its children if they are still huge
        if (tdp_split_huge(vm, p, spte, level)) {
          spte = atomic.load<u64>(p);
          result |= tdp_range_op(vm, <usize>(spte & SPTE_PFN_MASK), level - 1, gbase, start, end, op, min_level);
        }
      }
      continue;
    }
    const child = <usize>(spte & SPTE_PFN_MASK);
    result |= tdp_range_op(vm, child, level - 1, gbase, start, end, op, min_level);
  }
  return result;
}

/** tdp_range_op over the root of an address space. */
export function tdp_range(vm: usize, as_id: u32, start: u64, end: u64, op: u32, min_level: u32): u32 {
  if (end <= start) return 0;
  return tdp_range_op(vm, tdp_root(vm, as_id), PT_LEVELS, 0, start, end, op, min_level);
}

/**
 * write_protect_gfn, shadow style: clear W and MMU-writable on the leaf covering gfn if
 * its level is >= min_level. Returns true if a TLB flush is due (MMU-writable cleared).
 */
export function tdp_write_protect_gfn(vm: usize, as_id: u32, gfn: u64, min_level: u32): bool {
  const w = tdp_walk(vm, as_id, gfn);
  const p = w & ~7;
  const level = <u32>(w & 7);
  const spte = atomic.load<u64>(p);
  if (!is_present(spte) || level < min_level || (spte & (SPTE_W | SPTE_M)) == 0) return false;
  const old = atomic.and<u64>(p, ~(SPTE_W | SPTE_M));
  return (old & SPTE_M) != 0;
}

/**
 * The 4K leaf table holding gfn's SPTE in address space as_id, or 0 when gfn is not mapped
 * at 4K (absent, or inside a huge leaf), through `cache` (16 bytes: u64 tag
 * ((gfn >> 9) << 1 | as_id) + 1, u32 table): re-protection visits the pages of a harvest in
 * gfn order, so one walk serves a whole 512-page table. The table structure cannot change
 * while mmu_lock is held for write (callers empty the cache when they take the lock, and
 * after splits). Inlined: GET calls it once per dirty page.
 */
@inline export function tdp_leaf_table_cached(vm: usize, as_id: u32, gfn: u64, cache: usize): usize {
  const tag = ((gfn >> 9) << 1 | <u64>as_id) + 1;
  if (tag == load<u64>(cache)) return <usize>load<u32>(cache + 8);
  const w = tdp_walk(vm, as_id, gfn);
  const table = (w & 7) == 1 ? (w & ~(<usize>0xfff)) : 0;
  store<u64>(cache, tag);
  store<u32>(cache + 8, <u32>table);
  return table;
}

/** Empty a walk cache (see tdp_leaf_table_cached). */
@inline export function tdp_walk_cache_reset(cache: usize): void {
  store<u64>(cache, 0);
}

function free_subtree(vm: usize, table: usize, level: u32): void {
  for (let i: usize = 0; i < 512; i++) {
    const p = table + (i << 3);
    const spte = load<u64>(p);
    if (!is_present(spte)) continue;
    if (!is_leaf(spte, level)) {
      const child = <usize>(spte & SPTE_PFN_MASK);
      free_subtree(vm, child, level - 1);
      pool_free(vm, child);
    }
    store<u64>(p, 0);
  }
}

/** kvm_mmu_zap_all_fast: drop every mapping of the VM (both address spaces). */
export function tdp_zap_all(vm: usize, nr_as: u32): void {
  lockdep_assert_held_write(vm);
  for (let as_id: u32 = 0; as_id < nr_as; as_id++) free_subtree(vm, tdp_root(vm, as_id), PT_LEVELS);
}

/** The first present leaf under `table` (a table at `level`), or 0. */
function first_leaf(table: usize, level: u32): u64 {
  for (let i: usize = 0; i < 512; i++) {
    const spte = atomic.load<u64>(table + (i << 3));
    if (!is_present(spte)) continue;
    if (is_leaf(spte, level)) return spte;
    const leaf = first_leaf(<usize>(spte & SPTE_PFN_MASK), level - 1);
    if (leaf != 0) return leaf;
  }
  return 0;
}

/**
 * kvm_mmu_recover_huge_pages (6.12+, TDP MMU), when dirty logging is turned off: every
 * table at a level in 2..max_level whose frame lies in [start, end) and whose frame is
 * congruent (bit L-2 of `congruent` set for level L) is replaced in place by a huge leaf
 * with the permissions of the first present leaf below it (make_huge_spte). Nothing is
 * zapped, so mapped pages stay mapped. Returns the number of huge leaves installed. The
 * slot (base gfn, backing) gives each frame's host address; each recovered frame's pages
 * are marked in the slot's `host_present` bitmap (a huge host page exists). A frame
 * holding a write-tracked gfn stays split (its lpage disallow counter is non-zero).
 */
export function tdp_recover_huge(
  vm: usize,
  table: usize,
  level: u32,
  base: u64,
  start: u64,
  end: u64,
  max_level: u32,
  congruent: u32,
  slot_base: u64,
  backing: usize,
  host_present: usize,
  slot: usize,
): u32 {
  const span = level_pages(level);
  const range = entry_range(base, span, start, end);
  const i0 = range & 0xffff;
  const i1 = range >> 16;
  let n: u32 = 0;
  for (let i = i0; i <= i1; i++) {
    const p = table + (<usize>i << 3);
    const spte = atomic.load<u64>(p);
    if (!is_present(spte) || is_leaf(spte, level)) continue;
    const gbase = base + (<u64>i) * span;
    const child = <usize>(spte & SPTE_PFN_MASK);
    const child_level = level - 1;
    const child_span = level_pages(child_level);
    if (
      child_level >= 2 &&
      child_level <= max_level &&
      (congruent & (1 << (child_level - 2))) != 0
    ) {
      // entries of `child` are candidates for huge leaves of child_level
      for (let j: u32 = 0; j < 512; j++) {
        const q = child + (<usize>j << 3);
        const c = atomic.load<u64>(q);
        const fbase = gbase + (<u64>j) * child_span;
        if (!is_present(c) || is_leaf(c, child_level) || fbase < start || fbase + child_span > end) continue;
        if (lpage_disallowed(slot, fbase, child_level)) continue; // a tracked gfn keeps its frame split
        const leaf = first_leaf(<usize>(c & SPTE_PFN_MASK), child_level - 1);
        if (leaf == 0) continue;
        const hpa: u64 = backing == 0 ? 0 : <u64>backing + ((fbase - slot_base) << 12);
        const huge = (leaf & ~SPTE_PFN_MASK) | SPTE_PS | hpa;
        if (atomic.cmpxchg<u64>(q, c, huge) != c) continue;
        free_subtree(vm, <usize>(c & SPTE_PFN_MASK), child_level - 1);
        pool_free(vm, <usize>(c & SPTE_PFN_MASK));
        set_range(host_present, fbase - slot_base, child_span);
        n++;
      }
    }
    n += tdp_recover_huge(vm, child, child_level, gbase, start, end, max_level, congruent, slot_base, backing, host_present, slot);
  }
  return n;
}

function set_range(bitmap: usize, from: u64, count: u64): void {
  for (let n = from; n < from + count; n++) {
    const word = bitmap + <usize>((n >> 6) << 3);
    atomic.or<u64>(word, (<u64>1) << (n & 63));
  }
}
