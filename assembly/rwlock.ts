// rwlock — a reader/writer spinlock in one u32 word of shared memory (the kernel's
// rwlock_t), used for kvm->mmu_lock (mmu_lock.ts) and each pfn cache's gpc->lock
// (pfncache.ts); and a spin mutex for locks held only by one thread at a time.
//
//   bit 31  WRITER: held for write
//   bit 30  WAITING: a writer wants the lock; new readers hold back (writer preference,
//           so a writer is not starved by a stream of readers)
//   0..29   number of readers
//
// It only spins: a browser's main thread may not block (no atomic.wait).

export const RW_WRITER: u32 = 0x8000_0000;
const WAITING: u32 = 0x4000_0000;

export function rw_read_lock(p: usize): void {
  while (true) {
    const v = atomic.load<u32>(p);
    if ((v & (RW_WRITER | WAITING)) == 0 && atomic.cmpxchg<u32>(p, v, v + 1) == v) return;
  }
}

/** read_trylock: take the read side only if no writer holds or wants it. */
export function rw_read_trylock(p: usize): bool {
  const v = atomic.load<u32>(p);
  return (v & (RW_WRITER | WAITING)) == 0 && atomic.cmpxchg<u32>(p, v, v + 1) == v;
}

export function rw_read_unlock(p: usize): void {
  atomic.sub<u32>(p, 1);
}

export function rw_write_lock(p: usize): void {
  while (true) {
    const v = atomic.load<u32>(p);
    if ((v == 0 || v == WAITING) && atomic.cmpxchg<u32>(p, v, RW_WRITER) == v) return;
    if ((v & WAITING) == 0) atomic.or<u32>(p, WAITING);
  }
}

export function rw_write_unlock(p: usize): void {
  // Clears WAITING too: a writer still waiting sets it again on its next spin.
  atomic.store<u32>(p, 0);
}

/** rwlock_is_contended: a writer waits for the lock (readers that wait cannot be seen). */
@inline export function rw_is_contended(p: usize): bool {
  return (atomic.load<u32>(p) & WAITING) != 0;
}

/** A spin mutex (kvm->gpc_lock, gpc->refresh_lock): 0 free, 1 held. */
export function spin_lock(p: usize): void {
  while (atomic.cmpxchg<u32>(p, 0, 1) != 0) {}
}

export function spin_unlock(p: usize): void {
  atomic.store<u32>(p, 0);
}
