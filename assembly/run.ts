// run — KVM_RUN: the vCPU enters guest mode and executes its guest workload (workload.ts)
// until an exit:
//   KVM_EXIT_IO               the batch of VCPU_WL_BATCH stores is done
//   KVM_EXIT_SHUTDOWN         the workload reached VCPU_WL_LIMIT stores
//   KVM_EXIT_DIRTY_RING_FULL  the ring is soft-full (the pending store has not retired)
//   KVM_EXIT_MMIO             a store hit no slot or a read-only slot (not retired)
//   KVM_EXIT_INTR             the host asked the vCPU to stop (KVM_REQ_EXIT)
// A store that did not retire stays pending (VCPU_WL_PENDING) and is retried first on the
// next KVM_RUN, like a faulting instruction. Requests are checked before every store: a
// request is the model of an IPI, so a flush or kick is served within one store. A stop
// request (KVM_REQ_EXIT) is taken only between stores, like dirty_log_test's guest, which
// stops itself at GUEST_SYNC: a page is never reported by a fault whose store then waits.
import {
  TLB_ENTRIES,
  VCPU_AS,
  VCPU_TLB,
  KVM_EXIT_IO,
  KVM_EXIT_SHUTDOWN,
  VCPU_EXIT_REASON,
  VCPU_ID,
  VCPU_LAST_GPA,
  VCPU_REQUESTS,
  VCPU_RNG,
  VCPU_STORES,
  VCPU_WL_BATCH,
  VCPU_WL_DONE,
  VCPU_WL_LIMIT,
  VCPU_WL_PENDING,
  VM_ITERATION,
} from "./layout";
import { guest_write_tlb_miss } from "./fault";
import { vcpu_check_exit_request, vcpu_enter_guest, vcpu_exit_guest } from "./x86";
import { tlb_on } from "./tlb";
import { rng_next, workload_gpa, workload_next_page } from "./workload";
import { vcpu_load, vcpu_put } from "./vcpu";

/**
 * KVM_RUN with the vCPU's guest workload. Returns the exit reason, or -EBUSY when another
 * thread holds vcpu->mutex (`tag`: the caller's, see vcpu.ts; nothing done).
 */
export function kvm_run(vm: usize, vcpu: usize, tag: u32): i32 {
  const loaded = vcpu_load(vcpu, tag);
  if (loaded < 0) return loaded;
  let r = vcpu_check_exit_request(vcpu);
  if (r == 0) r = vcpu_enter_guest(vm, vcpu);
  const limit = load<u64>(vcpu + VCPU_WL_LIMIT);
  let done = load<u64>(vcpu + VCPU_WL_DONE);
  // stores this KVM_RUN may retire: the batch, or what is left before the limit
  let budget = <u64>load<u32>(vcpu + VCPU_WL_BATCH);
  let shutdown = false;
  if (limit != 0) {
    const left = done >= limit ? 0 : limit - done;
    if (left <= budget) {
      budget = left;
      shutdown = true;
    }
  }
  let pending = load<u64>(vcpu + VCPU_WL_PENDING);
  let rng = load<u64>(vcpu + VCPU_RNG);
  if (rng == 0) rng = 0x9e3779b97f4a7c15 ^ ((<u64>load<u32>(vcpu + VCPU_ID) + 1) * 0xbf58476d1ce4e5b9);
  let last: u64 = load<u64>(vcpu + VCPU_LAST_GPA);
  // the TLB-hit store is inlined here; everything else goes through guest_write
  const tlb = tlb_on(vm) ? <usize>load<u32>(vcpu + VCPU_TLB) : 0;
  const as_id = <u64>load<u32>(vcpu + VCPU_AS);
  const requests = vcpu + VCPU_REQUESTS;
  const iteration = vm + VM_ITERATION;
  let i: u64 = 0;
  while (r == 0) {
    if (i >= budget) {
      r = shutdown ? KVM_EXIT_SHUTDOWN : KVM_EXIT_IO;
      break;
    }
    if (atomic.load<u32>(requests) != 0) {
      // an IPI: exit, serve the requests, re-enter (or exit to userspace); a stop request
      // is taken here, at an instruction boundary
      vcpu_exit_guest(vm, vcpu);
      r = vcpu_check_exit_request(vcpu);
      if (r == 0) r = vcpu_enter_guest(vm, vcpu);
      if (r != 0) break;
    }
    let gpa: u64;
    if (pending != 0) {
      gpa = pending - 1;
    } else {
      rng = rng_next(rng);
      gpa = workload_gpa(vcpu, workload_next_page(vcpu, rng));
    }
    // dirty_log_test's guest stores the current iteration into the page's first 8 bytes
    const value = atomic.load<u64>(iteration);
    const gfn = gpa >> 12;
    if (tlb != 0) {
      const e = load<u64>(tlb + (<usize>(gfn & (TLB_ENTRIES - 1)) << 3));
      if (e >> 21 == ((gfn << 1) | as_id) + 1) {
        const page = <usize>(e & 0xfffff) << 12;
        if (page != 0) store<u64>(page + <usize>(gpa & 0xff8), value);
        pending = 0;
        last = gpa;
        i++;
        continue;
      }
    }
    r = guest_write_tlb_miss(vm, vcpu, gpa, value);
    if (r != 0) {
      pending = gpa + 1;
      break;
    }
    pending = 0;
    last = gpa;
    i++;
  }
  done += i;
  store<u64>(vcpu + VCPU_WL_DONE, done);
  store<u64>(vcpu + VCPU_WL_PENDING, pending);
  store<u64>(vcpu + VCPU_RNG, rng);
  store<u64>(vcpu + VCPU_LAST_GPA, last);
  store<u64>(vcpu + VCPU_STORES, load<u64>(vcpu + VCPU_STORES) + i);
  vcpu_exit_guest(vm, vcpu);
  store<u32>(vcpu + VCPU_EXIT_REASON, r);
  vcpu_put(vcpu, loaded);
  return <i32>r;
}
