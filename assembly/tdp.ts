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
import { PT_LEVELS, SLOT_BACKING, SLOT_BASE_GFN, VM_ROOT, VM_SPLITS, VM_TDP_ITER } from "./layout";
import { lockdep_assert_held_write } from "./mmu_lock";
import { lpage_disallowed } from "./page_track";
import { pool_alloc, pool_free } from "./pt_pool";
import {
  tdp_iter_gfn,
  tdp_iter_level,
  tdp_iter_next,
  tdp_iter_old,
  tdp_iter_set_old,
  tdp_iter_sptep,
  tdp_iter_start,
  tdp_iter_valid,
} from "./tdp_iter";
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

/** tdp_walk from the table `root` (a vCPU's shadow root): `sptep | level`. */
export function tdp_walk_from(root: usize, gfn: u64): usize {
  let table = root;
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

/** The iterator of the mmu_lock writer (range operations run under the write side). */
@inline function writer_iter(vm: usize): usize {
  return vm + VM_TDP_ITER;
}

/**
 * wrprot_gfn_range (logging turned on without PML): clear W on every leaf at a level
 * ≥ min_level meeting [start, end); MMU-writable stays (dirty-log protection, 1 1 0).
 * Returns whether anything changed (the caller flushes).
 */
export function tdp_wrprot_range(vm: usize, as_id: u32, start: u64, end: u64, min_level: u32): bool {
  lockdep_assert_held_write(vm);
  const it = writer_iter(vm);
  let changed = false;
  for (tdp_iter_start(it, tdp_root(vm, as_id), min_level, start, end); tdp_iter_valid(it); tdp_iter_next(it)) {
    const spte = tdp_iter_old(it);
    if (!is_present(spte) || !is_leaf(spte, tdp_iter_level(it)) || (spte & SPTE_W) == 0) continue;
    atomic.and<u64>(tdp_iter_sptep(it), ~SPTE_W);
    changed = true;
  }
  return changed;
}

/**
 * clear_dirty_gfn_range (logging turned on with PML): clear D on 4K leaves (the CPU logs
 * their next write) and W on huge ones (they must fault, to be split). Returns whether
 * anything changed.
 */
export function tdp_clear_dirty_range(vm: usize, as_id: u32, start: u64, end: u64): bool {
  lockdep_assert_held_write(vm);
  const it = writer_iter(vm);
  let changed = false;
  for (tdp_iter_start(it, tdp_root(vm, as_id), 1, start, end); tdp_iter_valid(it); tdp_iter_next(it)) {
    const spte = tdp_iter_old(it);
    const level = tdp_iter_level(it);
    if (!is_present(spte) || !is_leaf(spte, level)) continue;
    const bit = level > 1 ? SPTE_W : SPTE_D;
    if ((spte & bit) == 0) continue;
    atomic.and<u64>(tdp_iter_sptep(it), ~bit);
    changed = true;
  }
  return changed;
}

/**
 * kvm_tdp_mmu_unmap_gfn_range: make every leaf meeting [start, end) non-present; tables
 * stay. An exchange, not a store: a lockless fast fault may be setting W on the entry, and
 * its cmpxchg then fails and it walks again into the slow path. Returns whether anything
 * was zapped (the caller flushes before relying on it).
 */
export function tdp_zap_range(vm: usize, as_id: u32, start: u64, end: u64): bool {
  lockdep_assert_held_write(vm);
  const it = writer_iter(vm);
  let zapped = false;
  for (tdp_iter_start(it, tdp_root(vm, as_id), 1, start, end); tdp_iter_valid(it); tdp_iter_next(it)) {
    const spte = tdp_iter_old(it);
    if (!is_present(spte) || !is_leaf(spte, tdp_iter_level(it))) continue;
    atomic.xchg<u64>(tdp_iter_sptep(it), 0);
    tdp_iter_set_old(it, 0);
    zapped = true;
  }
  return zapped;
}

/**
 * kvm_tdp_mmu_try_split_huge_pages (eager split): every huge leaf meeting [start, end)
 * becomes a table of children with its permissions, pre-order, so a 1G leaf's 2M children
 * are split in turn, down to 4K.
 */
export function tdp_split_range(vm: usize, as_id: u32, start: u64, end: u64): void {
  lockdep_assert_held_write(vm);
  const it = writer_iter(vm);
  for (tdp_iter_start(it, tdp_root(vm, as_id), 2, start, end); tdp_iter_valid(it); tdp_iter_next(it)) {
    const spte = tdp_iter_old(it);
    const level = tdp_iter_level(it);
    if (!is_present(spte) || !is_leaf(spte, level) || level == 1) continue;
    const p = tdp_iter_sptep(it);
    if (tdp_split_huge(vm, p, spte, level)) tdp_iter_set_old(it, atomic.load<u64>(p)); // walk into the new table
  }
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
 * ((gfn >> 9) << 1 | as_id) + 1, u32 leaf table, u32 the level-2 table of the last full
 * walk): re-protection visits the pages of a harvest in gfn order, so one lookup serves a
 * whole 512-page table, and a leaf table of the same 1 GiB costs one PDE load instead of a
 * walk. The table structure cannot change while mmu_lock is held for write (callers empty
 * the cache when they take the lock, and after splits; an empty tag also disowns the
 * level-2 table). Inlined: GET calls it once per bitmap word.
 */
@inline export function tdp_leaf_table_cached(vm: usize, as_id: u32, gfn: u64, cache: usize): usize {
  const tag = ((gfn >> 9) << 1 | <u64>as_id) + 1;
  if (tag == load<u64>(cache)) return <usize>load<u32>(cache + 8);
  return tdp_leaf_table_fill(vm, as_id, gfn, cache, tag);
}

/** tdp_leaf_table_cached's miss (once per leaf table): out of line, so the hit stays small. */
function tdp_leaf_table_fill(vm: usize, as_id: u32, gfn: u64, cache: usize, tag: u64): usize {
  const old = load<u64>(cache);
  const pd = <usize>load<u32>(cache + 12);
  let table: usize = 0;
  // the same address space and 1 GiB as the last lookup (tag bits 1-9 may differ): its
  // level-2 table holds this leaf table's PDE
  if (old != 0 && pd != 0 && (((old - 1) ^ (tag - 1)) & ~(<u64>0x3fe)) == 0) {
    const spte = atomic.load<u64>(entry_at(pd, gfn, 2));
    if (is_present(spte) && !is_leaf(spte, 2)) table = <usize>(spte & SPTE_PFN_MASK);
  } else {
    let t = tdp_root(vm, as_id);
    let level2: usize = 0;
    for (let level = PT_LEVELS; level > 1; level--) {
      if (level == 2) level2 = t;
      const spte = atomic.load<u64>(entry_at(t, gfn, level));
      if (!is_present(spte) || is_leaf(spte, level)) {
        t = 0;
        break;
      }
      t = <usize>(spte & SPTE_PFN_MASK);
    }
    table = t;
    store<u32>(cache + 12, <u32>level2);
  }
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
 * table at a level in 2..max_level whose frame lies in [start, end), whose frame is
 * congruent (bit L-2 of `congruent` set for level L) and holds no write-tracked gfn (its
 * lpage disallow counter is zero) is replaced in place by a huge leaf with the
 * permissions of the first present leaf below it (make_huge_spte). Nothing is zapped, so
 * mapped pages stay mapped. Pre-order: a 1G frame is recovered before its 2M frames are
 * looked at. Returns the number of huge leaves installed. The slot (base gfn, backing)
 * gives each frame's host address; each recovered frame's pages are marked in the slot's
 * `host_present` bitmap (a huge host page exists).
 */
export function tdp_recover_huge_range(
  vm: usize,
  as_id: u32,
  start: u64,
  end: u64,
  max_level: u32,
  congruent: u32,
  slot: usize,
  host_present: usize,
): u32 {
  lockdep_assert_held_write(vm);
  const slot_base = load<u64>(slot + SLOT_BASE_GFN);
  const backing = <usize>load<u32>(slot + SLOT_BACKING);
  const it = writer_iter(vm);
  let n: u32 = 0;
  for (tdp_iter_start(it, tdp_root(vm, as_id), 2, start, end); tdp_iter_valid(it); tdp_iter_next(it)) {
    const level = tdp_iter_level(it);
    const spte = tdp_iter_old(it);
    const fbase = tdp_iter_gfn(it);
    const span = level_pages(level);
    if (level > max_level || (congruent & (1 << (level - 2))) == 0) continue;
    if (!is_present(spte) || is_leaf(spte, level) || fbase < start || fbase + span > end) continue;
    if (lpage_disallowed(slot, fbase, level)) continue; // a tracked gfn keeps its frame split
    const table = <usize>(spte & SPTE_PFN_MASK);
    const leaf = first_leaf(table, level - 1);
    if (leaf == 0) continue;
    const hpa: u64 = backing == 0 ? 0 : <u64>backing + ((fbase - slot_base) << 12);
    const huge = (leaf & ~SPTE_PFN_MASK) | SPTE_PS | hpa;
    const p = tdp_iter_sptep(it);
    if (atomic.cmpxchg<u64>(p, spte, huge) != spte) continue;
    tdp_iter_set_old(it, huge); // a leaf now: the walk does not step into the freed table
    free_subtree(vm, table, level - 1);
    pool_free(vm, table);
    set_range(host_present, fbase - slot_base, span);
    n++;
  }
  return n;
}

function set_range(bitmap: usize, from: u64, count: u64): void {
  for (let n = from; n < from + count; n++) {
    const word = bitmap + <usize>((n >> 6) << 3);
    atomic.or<u64>(word, (<u64>1) << (n & 63));
  }
}
