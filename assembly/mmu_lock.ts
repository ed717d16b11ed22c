// mmu_lock — KVM's kvm->mmu_lock (an rwlock on x86) as one u32 word in shared memory.
//
//   bit 31  WRITER: held for write
//   bit 30  WAITING: a writer wants the lock; new readers hold back (writer preference,
//           so a harvest is not starved by a stream of faults)
//   0..29   number of readers
//
// Read side: TDP MMU faults (they change SPTEs only by compare-and-swap).
// Write side: GET/CLEAR re-protection, ring reset, memslot commits, zap, eager split.
// The lock only spins: a browser's main thread may not block (no atomic.wait).
//
// lockdep_assert_held_write: functions whose rule is "caller holds mmu_lock for write"
// assert it in the debug build (asc --target debug); the release build compiles the check
// out (noAssert). The word has no owner, so the check is "some thread holds it for write",
// which catches a caller that forgot the lock (lockdep's own check is per task).
import { VM_MMU_LOCK } from "./layout";

const WRITER: u32 = 0x8000_0000;
const WAITING: u32 = 0x4000_0000;

export function read_lock(vm: usize): void {
  const p = vm + VM_MMU_LOCK;
  while (true) {
    const v = atomic.load<u32>(p);
    if ((v & (WRITER | WAITING)) == 0 && atomic.cmpxchg<u32>(p, v, v + 1) == v) return;
  }
}

export function read_unlock(vm: usize): void {
  atomic.sub<u32>(vm + VM_MMU_LOCK, 1);
}

export function write_lock(vm: usize): void {
  const p = vm + VM_MMU_LOCK;
  while (true) {
    const v = atomic.load<u32>(p);
    if ((v == 0 || v == WAITING) && atomic.cmpxchg<u32>(p, v, WRITER) == v) return;
    if ((v & WAITING) == 0) atomic.or<u32>(p, WAITING);
  }
}

/** lockdep_assert_held_write(&kvm->mmu_lock), debug builds only. */
@inline export function lockdep_assert_held_write(vm: usize): void {
  if (!ASC_NO_ASSERT) assert((atomic.load<u32>(vm + VM_MMU_LOCK) & WRITER) != 0, "mmu_lock is not held for write");
}

export function write_unlock(vm: usize): void {
  // Clears WAITING too: a writer still waiting sets it again on its next spin.
  atomic.store<u32>(vm + VM_MMU_LOCK, 0);
}
