// mmu_lock — KVM's kvm->mmu_lock (an rwlock on x86) as one u32 word in shared memory
// (rwlock.ts: writer preference, so a harvest is not starved by a stream of faults).
//
// Read side: TDP MMU faults (they change SPTEs only by compare-and-swap).
// Write side: GET/CLEAR re-protection, ring reset, memslot commits, zap, eager split.
// A long write hold may let waiters in between batches (mmu_lock_needbreak +
// cond_resched_rwlock_write): the shadow MMU's zap of everything and its unsync sync do.
//
// lockdep_assert_held_write: functions whose rule is "caller holds mmu_lock for write"
// assert it in the debug build (asc --target debug); the release build compiles the check
// out (noAssert). The word has no owner, so the check is "some thread holds it for write",
// which catches a caller that forgot the lock (lockdep's own check is per task).
import { VM_MMU_LOCK } from "./layout";
import { RW_WRITER, rw_is_contended, rw_read_lock, rw_read_unlock, rw_write_lock, rw_write_unlock } from "./rwlock";

@inline export function read_lock(vm: usize): void {
  rw_read_lock(vm + VM_MMU_LOCK);
}

@inline export function read_unlock(vm: usize): void {
  rw_read_unlock(vm + VM_MMU_LOCK);
}

@inline export function write_lock(vm: usize): void {
  rw_write_lock(vm + VM_MMU_LOCK);
}

/** lockdep_assert_held_write(&kvm->mmu_lock), debug builds only. */
@inline export function lockdep_assert_held_write(vm: usize): void {
  if (!ASC_NO_ASSERT) assert((atomic.load<u32>(vm + VM_MMU_LOCK) & RW_WRITER) != 0, "mmu_lock is not held for write");
}

@inline export function write_unlock(vm: usize): void {
  rw_write_unlock(vm + VM_MMU_LOCK);
}

/** rwlock_needbreak(&kvm->mmu_lock): another thread waits for the write side. */
@inline export function mmu_lock_needbreak(vm: usize): bool {
  return rw_is_contended(vm + VM_MMU_LOCK);
}

/**
 * cond_resched_rwlock_write: drop the write side and take it again, so that a thread
 * waiting for it gets in between. The caller has flushed what its waiters must not see
 * stale, and revalidates what it holds after.
 */
export function cond_resched_rwlock_write(vm: usize): void {
  const p = vm + VM_MMU_LOCK;
  rw_write_unlock(p);
  // hand the lock over: the waiter that set WAITING spins for it, so wait until someone
  // took it (the word leaves 0), bounded (≈ 0.1 ms) in case that thread is not running
  for (let spins: u32 = 0; spins < 1 << 18 && atomic.load<u32>(p) == 0; spins++) {}
  rw_write_lock(p);
}
