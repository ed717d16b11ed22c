// tdp_iter — the pre-order walk over a 4-level page table that every range operation of
// the TDP MMU uses (arch/x86/kvm/mmu/tdp_iter.h / tdp_iter.c: struct tdp_iter,
// tdp_iter_start, tdp_iter_next, for_each_tdp_pte_min_level).
//
// The iterator lives in TDP_ITER_SIZE bytes the caller provides (the mmu_lock writer uses
// VM_TDP_ITER), with the kernel's three kinds of field:
//   input    ITER_END         walk the entries covering gfns [start, ITER_END)
//            ITER_MIN_LEVEL   never step below this level
//   output   ITER_SPTEP       the entry visited, at ITER_LEVEL, covering gfns from ITER_GFN
//            ITER_OLD_SPTE    its value when visited; a caller that changes the entry stores
//                             the new value here (tdp_iter_set_old), so the walk steps down
//                             into a table it just made (a split) and not into one it freed
//            ITER_VALID       0 once the walk is over
//   private  ITER_NEXT_GFN    next_last_level_gfn: where the walk resumes after a step side
//            ITER_PATH        pt_path: the table at each level on the way down
//
// Usage (for_each_tdp_pte_min_level):
//   for (tdp_iter_start(it, root, min_level, start, end); tdp_iter_valid(it); tdp_iter_next(it)) { ... }
// Order: an entry, then (if it is a present table above min_level) its children, then its
// next sibling, climbing when a table is done; only entries meeting [start, end) are seen.
import { PT_LEVELS } from "./layout";
import { SPTE_PFN_MASK, is_leaf, is_present, level_index, level_pages } from "./spte";

export const TDP_ITER_SIZE: u32 = 64;
const ITER_END: usize = 0; // u64
const ITER_GFN: usize = 8; // u64
const ITER_NEXT_GFN: usize = 16; // u64
const ITER_OLD_SPTE: usize = 24; // u64
const ITER_SPTEP: usize = 32; // u32
const ITER_LEVEL: usize = 36; // u32
const ITER_MIN_LEVEL: usize = 40; // u32
const ITER_VALID: usize = 44; // u32
const ITER_PATH: usize = 48; // u32 × PT_LEVELS: pt_path[level - 1]

@inline function round_gfn(gfn: u64, level: u32): u64 {
  return gfn & ~(level_pages(level) - 1);
}

/** tdp_iter_refresh_sptep: point at the entry of the current level covering ITER_GFN. */
@inline function refresh(it: usize): void {
  const level = load<u32>(it + ITER_LEVEL);
  const table = <usize>load<u32>(it + ITER_PATH + (<usize>(level - 1) << 2));
  const sptep = table + (<usize>level_index(load<u64>(it + ITER_GFN), level) << 3);
  store<u32>(it + ITER_SPTEP, <u32>sptep);
  store<u64>(it + ITER_OLD_SPTE, atomic.load<u64>(sptep));
}

/** tdp_iter_start: begin at the root's entry covering `start`. */
export function tdp_iter_start(it: usize, root: usize, min_level: u32, start: u64, end: u64): void {
  store<u64>(it + ITER_END, end);
  store<u32>(it + ITER_MIN_LEVEL, min_level);
  store<u64>(it + ITER_NEXT_GFN, start);
  store<u32>(it + ITER_LEVEL, PT_LEVELS);
  store<u32>(it + ITER_PATH + (<usize>(PT_LEVELS - 1) << 2), <u32>root);
  store<u64>(it + ITER_GFN, round_gfn(start, PT_LEVELS));
  refresh(it);
  store<u32>(it + ITER_VALID, start < end ? 1 : 0);
}

/** Step into the table the current entry points at, to the child covering next_gfn. */
function try_step_down(it: usize): bool {
  const level = load<u32>(it + ITER_LEVEL);
  if (level == load<u32>(it + ITER_MIN_LEVEL)) return false;
  const spte = load<u64>(it + ITER_OLD_SPTE);
  if (!is_present(spte) || is_leaf(spte, level)) return false;
  const child_level = level - 1;
  store<u32>(it + ITER_LEVEL, child_level);
  store<u32>(it + ITER_PATH + (<usize>(child_level - 1) << 2), <u32>(spte & SPTE_PFN_MASK));
  store<u64>(it + ITER_GFN, round_gfn(load<u64>(it + ITER_NEXT_GFN), child_level));
  refresh(it);
  return true;
}

/** Step to the next entry of the same table, unless this was its last. */
function try_step_side(it: usize): bool {
  const level = load<u32>(it + ITER_LEVEL);
  const gfn = load<u64>(it + ITER_GFN);
  if (level_index(gfn, level) == 511) return false;
  const next = gfn + level_pages(level);
  store<u64>(it + ITER_GFN, next);
  store<u64>(it + ITER_NEXT_GFN, next);
  const sptep = <usize>load<u32>(it + ITER_SPTEP) + 8;
  store<u32>(it + ITER_SPTEP, <u32>sptep);
  store<u64>(it + ITER_OLD_SPTE, atomic.load<u64>(sptep));
  return true;
}

/** Climb to the parent entry (the table is done). */
function try_step_up(it: usize): bool {
  const level = load<u32>(it + ITER_LEVEL);
  if (level == PT_LEVELS) return false;
  store<u32>(it + ITER_LEVEL, level + 1);
  store<u64>(it + ITER_GFN, round_gfn(load<u64>(it + ITER_GFN), level + 1));
  refresh(it);
  return true;
}

/** tdp_iter_next: the next entry in pre-order; invalid past the end of the range. */
export function tdp_iter_next(it: usize): void {
  if (try_step_down(it)) return;
  do {
    if (try_step_side(it)) {
      if (load<u64>(it + ITER_GFN) >= load<u64>(it + ITER_END)) store<u32>(it + ITER_VALID, 0);
      return;
    }
  } while (try_step_up(it));
  store<u32>(it + ITER_VALID, 0);
}

@inline export function tdp_iter_valid(it: usize): bool {
  return load<u32>(it + ITER_VALID) != 0;
}
@inline export function tdp_iter_sptep(it: usize): usize {
  return <usize>load<u32>(it + ITER_SPTEP);
}
@inline export function tdp_iter_level(it: usize): u32 {
  return load<u32>(it + ITER_LEVEL);
}
@inline export function tdp_iter_gfn(it: usize): u64 {
  return load<u64>(it + ITER_GFN);
}
@inline export function tdp_iter_old(it: usize): u64 {
  return load<u64>(it + ITER_OLD_SPTE);
}
/** The caller changed the entry to `spte`: the walk continues from that value. */
@inline export function tdp_iter_set_old(it: usize, spte: u64): void {
  store<u64>(it + ITER_OLD_SPTE, spte);
}
