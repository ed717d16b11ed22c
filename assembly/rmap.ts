// rmap — reverse maps from a gfn to the SPTEs that map it, for the shadow MMU
// (arch/x86/kvm/mmu/mmu.c pte_list_add / pte_list_remove / rmap_get_first / rmap_get_next /
// for_each_rmap_spte / rmap_write_protect; spec §5.4, §5.7). The list is a `pte_list`;
// its use for gfns is the rmap (and for a shadow page's parents, parent_ptes).
//
//   head (u64, struct kvm_rmap_head)   0            empty
//                                      bit 0 clear  the one SPTE's address
//                                      bit 0 set    (head & ~1) is the head pte_list_desc
//   pte_list_desc (128 bytes, the kernel's layout with 8-byte pointers):
//     +0  more        u64  next (older) descriptor, 0 = none
//     +8  spte_count  u32  entries used in this descriptor
//     +12 tail_count  u32  entries in all the descriptors after it
//     +16 sptes[14]   u64  SPTE addresses
//
// Invariants (pte_list_add / pte_list_desc_remove_entry):
//   - only the head descriptor may be partly used: tail descriptors are always full, so a
//     descriptor's tail_count never changes and head.spte_count + head.tail_count is the
//     length of the list;
//   - the head descriptor is never empty: a removal fills the hole with the head's last
//     entry, and a head that empties is freed (the list then starts at its `more`);
//   - a list of one that was a descriptor stays a descriptor (only an add to an empty head
//     stores a bare pointer);
//   - every list is changed only under mmu_lock for write; descriptors come from a pool
//     in the shared memory (PTE_POOL_*), a free list under its own spinlock.
//
// The iterator has the kernel's shape: private fields (desc, pos) in RMAP_ITER_SIZE bytes
// the caller provides; rmap_get_first / rmap_get_next return SPTE addresses, 0 at the end.
import { VM_RMAP_ITER } from "./layout";
import { lockdep_assert_held_write, write_lock, write_unlock } from "./mmu_lock";
import { SPTE_M, SPTE_W, spte_clear_bits_locked } from "./spte";

export const PTE_LIST_EXT: u32 = 14;
export const PTE_LIST_DESC_SIZE: u32 = 128;
const DESC_MORE: usize = 0;
const DESC_COUNT: usize = 8;
const DESC_TAIL: usize = 12;
const DESC_SPTES: usize = 16;

/** RMAP_RECYCLE_THRESHOLD: an rmap that long when an SPTE is added is zapped whole. */
export const RMAP_RECYCLE_THRESHOLD: u32 = 1000;

// ---- the descriptor pool (kvm_mmu_memory_cache for pte_list_desc) ----
// PTE_POOL_SIZE bytes of header, then `capacity` descriptors
export const PTE_POOL_SIZE: u32 = 32;
const POOL_LOCK: usize = 0; // u32 spinlock
const POOL_FREE: usize = 4; // u32 free-list head (a free descriptor's first u32 links the next)
const POOL_NEXT: usize = 8; // u32 descriptors never handed out yet
const POOL_CAPACITY: usize = 12; // u32
const POOL_USED: usize = 16; // u32 descriptors in use (statistics)
const POOL_BASE: usize = 20; // u32 address of descriptor 0

/** Set up a descriptor pool at `pool` for `capacity` descriptors at `base` (zeroed memory). */
export function pte_list_pool_init(pool: usize, base: usize, capacity: u32): void {
  memory.fill(pool, 0, PTE_POOL_SIZE);
  store<u32>(pool + POOL_CAPACITY, capacity);
  store<u32>(pool + POOL_BASE, <u32>base);
}

/** Descriptors in use. */
export function pte_list_pool_used(pool: usize): u32 {
  return atomic.load<u32>(pool + POOL_USED);
}

function desc_alloc(pool: usize): usize {
  while (atomic.cmpxchg<u32>(pool + POOL_LOCK, 0, 1) != 0) {}
  let d = <usize>load<u32>(pool + POOL_FREE);
  if (d != 0) {
    store<u32>(pool + POOL_FREE, load<u32>(d));
  } else {
    const next = load<u32>(pool + POOL_NEXT);
    if (next < load<u32>(pool + POOL_CAPACITY)) {
      store<u32>(pool + POOL_NEXT, next + 1);
      d = <usize>load<u32>(pool + POOL_BASE) + <usize>next * PTE_LIST_DESC_SIZE;
    }
  }
  if (d != 0) store<u32>(pool + POOL_USED, load<u32>(pool + POOL_USED) + 1);
  atomic.store<u32>(pool + POOL_LOCK, 0);
  if (d != 0) memory.fill(d, 0, PTE_LIST_DESC_SIZE);
  return d;
}

function desc_free(pool: usize, d: usize): void {
  while (atomic.cmpxchg<u32>(pool + POOL_LOCK, 0, 1) != 0) {}
  store<u32>(d, load<u32>(pool + POOL_FREE));
  store<u32>(pool + POOL_FREE, <u32>d);
  store<u32>(pool + POOL_USED, load<u32>(pool + POOL_USED) - 1);
  atomic.store<u32>(pool + POOL_LOCK, 0);
}

/**
 * Are at least two descriptors free (mmu_topup_memory_caches: checked before acting, so an
 * add under mmu_lock cannot fail; an add needs one, a new head plus a parent_ptes list two)?
 */
export function pte_list_pool_has_room(pool: usize): bool {
  return load<u32>(pool + POOL_CAPACITY) - atomic.load<u32>(pool + POOL_USED) >= 2;
}

/**
 * Whether adding one entry to the list at `head` takes a descriptor: a single entry becomes
 * one, and a full head descriptor gets a new head. (An empty list takes none.)
 */
@inline export function pte_list_add_needs_desc(head: usize): bool {
  const val = load<u64>(head);
  if (val == 0) return false;
  if ((val & 1) == 0) return true;
  return load<u32>(desc_of(val) + DESC_COUNT) == PTE_LIST_EXT;
}

@inline function desc_of(head_val: u64): usize {
  return <usize>(head_val & ~(<u64>1));
}
@inline function desc_spte(d: usize, i: u32): usize {
  return <usize>load<u64>(d + DESC_SPTES + (<usize>i << 3));
}
@inline function set_desc_spte(d: usize, i: u32, sptep: usize): void {
  store<u64>(d + DESC_SPTES + (<usize>i << 3), <u64>sptep);
}

// ---- add / remove ----

/**
 * pte_list_add: add `sptep` to the list at `head`. Returns the number of entries before the
 * add (1 when a single entry became a descriptor, as the kernel counts), or -1 when the
 * descriptor pool is exhausted (nothing changed).
 */
export function pte_list_add(pool: usize, head: usize, sptep: usize): i32 {
  const val = load<u64>(head);
  if (val == 0) {
    store<u64>(head, <u64>sptep);
    return 0;
  }
  if ((val & 1) == 0) {
    const d = desc_alloc(pool);
    if (d == 0) return -1;
    set_desc_spte(d, 0, <usize>val);
    set_desc_spte(d, 1, sptep);
    store<u32>(d + DESC_COUNT, 2);
    store<u64>(head, <u64>d | 1);
    return 1;
  }
  let d = desc_of(val);
  const count = load<u32>(d + DESC_TAIL) + load<u32>(d + DESC_COUNT);
  if (load<u32>(d + DESC_COUNT) == PTE_LIST_EXT) {
    // tail descriptors are kept full: a new head in front of the full one
    const n = desc_alloc(pool);
    if (n == 0) return -1;
    store<u64>(n + DESC_MORE, <u64>d);
    store<u32>(n + DESC_TAIL, count);
    store<u64>(head, <u64>n | 1);
    d = n;
  }
  const c = load<u32>(d + DESC_COUNT);
  set_desc_spte(d, c, sptep);
  store<u32>(d + DESC_COUNT, c + 1);
  return <i32>count;
}

/** pte_list_desc_remove_entry: fill entry i of `d` with the head's last entry; free an empty head. */
function desc_remove_entry(pool: usize, head: usize, d: usize, i: u32): void {
  const head_desc = desc_of(load<u64>(head));
  const j = load<u32>(head_desc + DESC_COUNT) - 1;
  set_desc_spte(d, i, desc_spte(head_desc, j));
  set_desc_spte(head_desc, j, 0);
  store<u32>(head_desc + DESC_COUNT, j);
  if (j != 0) return;
  const more = load<u64>(head_desc + DESC_MORE);
  store<u64>(head, more == 0 ? 0 : more | 1);
  desc_free(pool, head_desc);
}

/**
 * pte_list_remove: remove `sptep` from the list at `head`. Returns false if it is not there
 * (the kernel's KVM_BUG_ON_DATA_CORRUPTION; nothing changes).
 */
export function pte_list_remove(pool: usize, head: usize, sptep: usize): bool {
  const val = load<u64>(head);
  if (val == 0) return false;
  if ((val & 1) == 0) {
    if (<usize>val != sptep) return false;
    store<u64>(head, 0);
    return true;
  }
  let d = desc_of(val);
  while (d != 0) {
    const n = load<u32>(d + DESC_COUNT);
    for (let i: u32 = 0; i < n; i++) {
      if (desc_spte(d, i) == sptep) {
        desc_remove_entry(pool, head, d, i);
        return true;
      }
    }
    d = <usize>load<u64>(d + DESC_MORE);
  }
  return false;
}

/** pte_list_count: entries in the list. */
export function pte_list_count(head: usize): u32 {
  const val = load<u64>(head);
  if (val == 0) return 0;
  if ((val & 1) == 0) return 1;
  const d = desc_of(val);
  return load<u32>(d + DESC_COUNT) + load<u32>(d + DESC_TAIL);
}

/** pte_list_destroy: free every descriptor of the list and empty it. */
export function pte_list_destroy(pool: usize, head: usize): void {
  const val = load<u64>(head);
  store<u64>(head, 0);
  if ((val & 1) == 0) return;
  let d = desc_of(val);
  while (d != 0) {
    const next = <usize>load<u64>(d + DESC_MORE);
    desc_free(pool, d);
    d = next;
  }
}

/**
 * The k-th entry of the list (0 past the end), in iteration order: for walks that recurse
 * into other lists (mark_unsync climbs parent_ptes) and so cannot share one iterator.
 */
export function pte_list_at(head: usize, k: u32): usize {
  const val = load<u64>(head);
  if (val == 0) return 0;
  if ((val & 1) == 0) return k == 0 ? <usize>val : 0;
  let d = desc_of(val);
  while (d != 0) {
    const n = load<u32>(d + DESC_COUNT);
    if (k < n) return desc_spte(d, k);
    k -= n;
    d = <usize>load<u64>(d + DESC_MORE);
  }
  return 0;
}

// ---- the iterator (struct rmap_iterator: private desc, pos) ----
export const RMAP_ITER_SIZE: u32 = 8;
const ITER_DESC: usize = 0; // u32: descriptor holding the current entry, 0 for a bare pointer
const ITER_POS: usize = 4; // u32: index of the current entry in it

/** rmap_get_first: the first SPTE of the list at `head` (0 if empty), iterator at `iter`. */
@inline export function rmap_get_first(head: usize, iter: usize): usize {
  const val = load<u64>(head);
  if (val == 0) return 0;
  if ((val & 1) == 0) {
    store<u32>(iter + ITER_DESC, 0);
    return <usize>val;
  }
  const d = desc_of(val);
  store<u32>(iter + ITER_DESC, <u32>d);
  store<u32>(iter + ITER_POS, 0);
  return desc_spte(d, 0);
}

/** rmap_get_next: the next SPTE, or 0 at the end of the list. */
@inline export function rmap_get_next(iter: usize): usize {
  let d = <usize>load<u32>(iter + ITER_DESC);
  if (d == 0) return 0;
  const pos = load<u32>(iter + ITER_POS);
  if (pos < PTE_LIST_EXT - 1) {
    const sptep = desc_spte(d, pos + 1);
    store<u32>(iter + ITER_POS, pos + 1);
    if (sptep != 0) return sptep;
  }
  d = <usize>load<u64>(d + DESC_MORE);
  store<u32>(iter + ITER_DESC, <u32>d);
  if (d == 0) return 0;
  store<u32>(iter + ITER_POS, 0);
  return desc_spte(d, 0); // a tail descriptor is full: entry 0 exists
}

// ---- what the MMU does through an rmap ----

/**
 * spte_write_protect: clear W, and MMU-writable too for pt_protect (shadow style). A no-op
 * when neither is set that would be cleared. Returns whether a TLB flush is due before it
 * is relied on (W was set, or MMU-writable was cleared).
 */
@inline export function spte_write_protect(sptep: usize, pt_protect: bool): bool {
  const spte = load<u64>(sptep);
  const bits = pt_protect ? SPTE_W | SPTE_M : SPTE_W;
  if ((spte & bits) == 0) return false;
  // mmu_spte_update under the write side of mmu_lock: atomic only if the lockless fast path
  // (a (1 1 0) SPTE may get W at any moment) or the CPU (A, D) may change the SPTE meanwhile
  spte_clear_bits_locked(sptep, spte, bits);
  return true;
}

/**
 * rmap_write_protect: spte_write_protect every SPTE of the rmap at `head`. Caller holds
 * mmu_lock for write; `iter` is RMAP_ITER_SIZE bytes of scratch. Returns whether a flush
 * is due.
 */
export function rmap_write_protect(vm: usize, head: usize, pt_protect: bool, iter: usize): bool {
  lockdep_assert_held_write(vm);
  let flush = false;
  for (let sptep = rmap_get_first(head, iter); sptep != 0; sptep = rmap_get_next(iter)) {
    flush |= spte_write_protect(sptep, pt_protect);
  }
  return flush;
}

/**
 * rmap_write_protect for the host (bench/rmap.js times it per SPTE beside its JS twin):
 * takes mmu_lock for write around the walk. Returns 1 if a flush is due.
 */
export function kvm_rmap_write_protect(vm: usize, head: usize, pt_protect: u32): u32 {
  write_lock(vm);
  const flush = rmap_write_protect(vm, head, pt_protect != 0, vm + VM_RMAP_ITER);
  write_unlock(vm);
  return flush ? 1 : 0;
}

/**
 * kvm_zap_all_rmap_sptes: make every SPTE of the rmap at `head` non-present (an exchange:
 * the lockless fast path's cmpxchg then fails) and empty the list. Caller holds mmu_lock
 * for write and flushes. Returns whether anything was zapped.
 */
export function rmap_zap_all(vm: usize, pool: usize, head: usize, iter: usize): bool {
  lockdep_assert_held_write(vm);
  if (load<u64>(head) == 0) return false;
  for (let sptep = rmap_get_first(head, iter); sptep != 0; sptep = rmap_get_next(iter)) {
    atomic.xchg<u64>(sptep, 0);
  }
  pte_list_destroy(pool, head);
  return true;
}
