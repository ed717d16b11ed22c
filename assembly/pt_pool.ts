// pt_pool — 4 KiB page-table pages for the TDP MMU, taken from a pool in shared memory.
//
//   pool_base .. pool_base + pages*4096   the pages
//   VM_POOL_NEXT   pages never handed out (bump); they are still zero
//   VM_POOL_FREE   singly linked free list: the first u32 of a free page is the next one
//   VM_POOL_LOCK   spinlock for the free list (any thread may allocate: faults run under
//                  the read side of mmu_lock, concurrently)
//
// Invariant: a page handed out by pool_alloc is all zero (512 non-present SPTEs).
import { PAGE_SIZE, VM_POOL_BASE, VM_POOL_FREE, VM_POOL_LOCK, VM_POOL_NEXT, VM_POOL_PAGES, VM_POOL_USED } from "./layout";

/** A zeroed page-table page, or 0 when the pool is exhausted. */
export function pool_alloc(vm: usize): usize {
  const lock = vm + VM_POOL_LOCK;
  while (atomic.cmpxchg<u32>(lock, 0, 1) != 0) {}
  let page = <usize>load<u32>(vm + VM_POOL_FREE);
  if (page != 0) {
    store<u32>(vm + VM_POOL_FREE, load<u32>(page));
  } else {
    const next = load<u32>(vm + VM_POOL_NEXT);
    if (next < load<u32>(vm + VM_POOL_PAGES)) {
      store<u32>(vm + VM_POOL_NEXT, next + 1);
      page = <usize>load<u32>(vm + VM_POOL_BASE) + (<usize>next) * PAGE_SIZE;
    }
  }
  if (page != 0) store<u32>(vm + VM_POOL_USED, load<u32>(vm + VM_POOL_USED) + 1);
  atomic.store<u32>(lock, 0);
  if (page != 0) memory.fill(page, 0, PAGE_SIZE);
  return page;
}

/** Return a page that no SPTE references any more. */
export function pool_free(vm: usize, page: usize): void {
  const lock = vm + VM_POOL_LOCK;
  while (atomic.cmpxchg<u32>(lock, 0, 1) != 0) {}
  store<u32>(page, load<u32>(vm + VM_POOL_FREE));
  store<u32>(vm + VM_POOL_FREE, <u32>page);
  store<u32>(vm + VM_POOL_USED, load<u32>(vm + VM_POOL_USED) - 1);
  atomic.store<u32>(lock, 0);
}
