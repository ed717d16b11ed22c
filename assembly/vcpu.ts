// vcpu — vcpu->mutex: a vCPU is driven by one thread at a time (virt/kvm/kvm_main.c
// kvm_vcpu_ioctl takes vcpu->mutex around every vCPU ioctl, KVM_RUN included), and the
// kick (kvm_vcpu_kick: a request that makes a vCPU in guest mode exit and re-enter).
//
//   VCPU_MUTEX (u32)   0 = free, else the tag of the thread that holds it, with bit 31
//                      (MUTEX_WAITER) set while another thread sleeps until it is free
//
// Tags are chosen by the host: each thread that drives vCPUs has its own non-zero tag
// (the VMM thread that owns the VM object uses 1; every vCPU worker gets a unique one).
// Every vCPU-context entry point (kvm_run, the guest accesses, kvm_vcpu_write_guest) calls
// vcpu_load with its caller's tag:
//   - mutex free           → taken for the call, released by vcpu_put at the end;
//   - held with this tag   → the caller already owns the vCPU (a worker's run loop holds
//                            it from loop start to pause/end): the call runs, keeps it;
//   - held with another tag→ -EBUSY, and the call changes nothing.
// The kernel's mutex_lock sleeps instead; a model whose run loop owns the vCPU for its
// whole life would then block the caller until the loop pauses, so a second driver gets
// EBUSY at once (the deviation is documented in the README).
//
// Fields only the mutex holder may write: dirty_index and the ring entries it pushes, the
// PML index, the TLB and paging-structure cache, the workload state, exit_reason and the
// statistics of the vCPU block. The debug build asserts the mutex is held where the
// single-writer ones are written (lockdep_assert_vcpu_held).
import {
  EBUSY,
  EINVAL,
  EPERM,
  KVM_REQ_KICK,
  VCPU_HOST_TAG,
  VCPU_MUTEX,
  VCPU_REQUESTS,
  VM_NR_VCPUS,
  VM_OWNER_CAN_BLOCK,
  VM_VCPU_TABLE,
} from "./layout";

/** Bit of VCPU_MUTEX set by a thread sleeping until the mutex is free (the holder notifies). */
export const MUTEX_WAITER: u32 = 0x8000_0000;

/**
 * vcpu_load: take vcpu->mutex for a call with `tag` (non-zero). Returns 1 when taken now
 * (vcpu_put releases it), 0 when `tag` already holds it, -EBUSY when another thread does,
 * -EINVAL for tag 0.
 */
@inline export function vcpu_load(vcpu: usize, tag: u32): i32 {
  if (tag == 0 || (tag & MUTEX_WAITER) != 0) return -EINVAL; // 0 means "free": no thread has it
  const old = atomic.cmpxchg<u32>(vcpu + VCPU_MUTEX, 0, tag);
  if (old == 0) return 1;
  return (old & ~MUTEX_WAITER) == tag ? 0 : -EBUSY;
}

/** vcpu_put: release what vcpu_load took (`loaded` is its return value). */
@inline export function vcpu_put(vcpu: usize, loaded: i32): void {
  if (loaded == 1) mutex_release(vcpu);
}

/** Free the mutex; wake a thread waiting for it (only then: a notify costs a lock in the engine). */
@inline function mutex_release(vcpu: usize): void {
  if ((atomic.xchg<u32>(vcpu + VCPU_MUTEX, 0) & MUTEX_WAITER) != 0) atomic.notify(vcpu + VCPU_MUTEX);
}

/** Take vcpu->mutex for `tag` until kvm_vcpu_unlock (a run loop's ownership). 0, -EBUSY or -EINVAL (tag 0). */
export function kvm_vcpu_lock(vcpu: usize, tag: u32): i32 {
  if (tag == 0 || (tag & MUTEX_WAITER) != 0) return -EINVAL;
  return atomic.cmpxchg<u32>(vcpu + VCPU_MUTEX, 0, tag) == 0 ? 0 : -EBUSY;
}

/** Release vcpu->mutex held by `tag`. 0, or -EPERM when `tag` does not hold it. */
export function kvm_vcpu_unlock(vcpu: usize, tag: u32): i32 {
  if (tag == 0 || (atomic.load<u32>(vcpu + VCPU_MUTEX) & ~MUTEX_WAITER) != tag) return -EPERM;
  mutex_release(vcpu);
  return 0;
}

/**
 * Before sleeping until the mutex is free: mark it as waited for, so that its holder
 * notifies. Returns the word to sleep on (wait while it still holds this value), or 0 when
 * the mutex is already free (retry kvm_vcpu_lock).
 */
export function kvm_vcpu_mutex_wait_prepare(vcpu: usize): u32 {
  const p = vcpu + VCPU_MUTEX;
  while (true) {
    const old = atomic.load<u32>(p);
    if (old == 0) return 0;
    if ((old & MUTEX_WAITER) != 0 || atomic.cmpxchg<u32>(p, old, old | MUTEX_WAITER) == old) return old | MUTEX_WAITER;
  }
  return 0;
}

/** The thread driving the vCPU holds vcpu->mutex (debug builds only). */
@inline export function lockdep_assert_vcpu_held(vcpu: usize): void {
  if (!ASC_NO_ASSERT) assert(atomic.load<u32>(vcpu + VCPU_MUTEX) != 0, "vcpu->mutex is not held");
}

/**
 * kvm_vcpu_kick: make a vCPU in guest mode exit (draining its PML buffer) and re-enter.
 * Does not wait. A vCPU outside KVM_RUN has nothing to drain (every exit drains).
 */
export function kvm_vcpu_kick(vcpu: usize): void {
  atomic.or<u32>(vcpu + VCPU_REQUESTS, 1 << KVM_REQ_KICK);
}

/**
 * May the thread driving this vCPU sleep (Atomics.wait) while it waits for a remote TLB
 * flush? vCPU workers always may; the VM owner's thread may unless it is a browser's main
 * thread (the host records which in VM_OWNER_CAN_BLOCK).
 */
export function vcpu_can_block(vm: usize, vcpu: usize): bool {
  const tag = atomic.load<u32>(vcpu + VCPU_MUTEX) & ~MUTEX_WAITER;
  return tag != VCPU_HOST_TAG || load<u32>(vm + VM_OWNER_CAN_BLOCK) != 0;
}

// ---- kvm_for_each_vcpu: for (let i: u32 = 0; i < kvm_nr_vcpus(vm); i++) kvm_get_vcpu(vm, i) ----

/** online_vcpus (acquire: a vCPU counted here is fully initialised). */
@inline export function kvm_nr_vcpus(vm: usize): u32 {
  return atomic.load<u32>(vm + VM_NR_VCPUS);
}

/** kvm_get_vcpu: the i-th vCPU block, in creation order. */
@inline export function kvm_get_vcpu(vm: usize, i: u32): usize {
  return <usize>load<u32>(<usize>load<u32>(vm + VM_VCPU_TABLE) + (<usize>i << 2));
}
