// x86 — entering and leaving guest mode (arch/x86/kvm/x86.c vcpu_enter_guest and the VM
// exit path, virt/kvm/kvm_main.c kvm_vcpu_check_block's request checks), shared by KVM_RUN
// (run.ts) and the single guest accesses (fault.ts); and SMM entry and exit (smm.c
// kvm_smm_changed).
//
// Invariant: a vCPU publishes IN_GUEST_MODE before it reads its requests (both
// sequentially consistent), so a thread that saw it outside guest mode made its request
// before that read and the vCPU serves it now; a thread that saw it in guest mode waits for
// its acknowledgement (tlb.ts). Leaving guest mode drains PML and publishes the ring's
// dirty_index.
import {
  IN_GUEST_MODE,
  KVM_EXIT_INTR,
  KVM_REQ_EXIT,
  KVM_REQ_KICK,
  KVM_REQ_MMU_FREE_OBSOLETE_ROOTS,
  OUTSIDE_GUEST_MODE,
  VCPU_AS,
  VCPU_MODE,
  VCPU_REQUESTS,
} from "./layout";
import { dirty_ring_check_request, dirty_ring_publish } from "./dirty_ring";
import { pml_flush } from "./pml";
import { tlb_check_request } from "./tlb";
import { kvm_mmu_free_obsolete_roots, kvm_mmu_reset_context } from "./mmu";
import { vcpu_load, vcpu_put } from "./vcpu";

const EXIT_REQ: u32 = 1 << KVM_REQ_EXIT;
const KICK_REQ: u32 = 1 << KVM_REQ_KICK;
const FREE_OBSOLETE_ROOTS_REQ: u32 = 1 << KVM_REQ_MMU_FREE_OBSOLETE_ROOTS;

/**
 * Guest entry (vcpu_enter_guest): publish IN_GUEST_MODE, then handle requests — a TLB
 * flush is done and acknowledged, an obsolete shadow root is dropped, a kick drains PML,
 * a soft-full ring exits. Returns the exit reason, or 0 when the vCPU is in guest mode.
 * (Stop requests wait for an instruction boundary: vcpu_check_exit_request.)
 */
export function vcpu_enter_guest(vm: usize, vcpu: usize): u32 {
  while (true) {
    // mode first, then requests (both seq-cst): a flusher that saw us outside guest mode
    // made its request before this load, so we serve it here
    atomic.store<u32>(vcpu + VCPU_MODE, IN_GUEST_MODE);
    const req = atomic.load<u32>(vcpu + VCPU_REQUESTS);
    if ((req & ~EXIT_REQ) == 0) return 0;
    atomic.store<u32>(vcpu + VCPU_MODE, OUTSIDE_GUEST_MODE);
    tlb_check_request(vcpu);
    if ((req & FREE_OBSOLETE_ROOTS_REQ) != 0) {
      atomic.and<u32>(vcpu + VCPU_REQUESTS, ~FREE_OBSOLETE_ROOTS_REQ);
      kvm_mmu_free_obsolete_roots(vm, vcpu); // a zap made the root obsolete: load a new one
    }
    if ((req & KICK_REQ) != 0) {
      atomic.and<u32>(vcpu + VCPU_REQUESTS, ~KICK_REQ);
      pml_flush(vm, vcpu);
    }
    const r = dirty_ring_check_request(vcpu);
    if (r != 0) return r;
  }
  return 0;
}

/**
 * At an instruction boundary (no store half-done): a stop request (KVM_REQ_EXIT) makes
 * KVM_RUN return KVM_EXIT_INTR. Checked only between guest stores, never between a fault
 * and the retry of its store, so a stop cannot leave a reported page unwritten.
 */
export function vcpu_check_exit_request(vcpu: usize): u32 {
  if ((atomic.load<u32>(vcpu + VCPU_REQUESTS) & EXIT_REQ) == 0) return 0;
  atomic.and<u32>(vcpu + VCPU_REQUESTS, ~EXIT_REQ);
  return KVM_EXIT_INTR;
}

/**
 * Leave guest mode (a VM exit): from here on a flusher no longer waits for this vCPU. The
 * PML buffer drains, and the ring's dirty_index is published to the resetter.
 */
@inline export function vcpu_exit_guest(vm: usize, vcpu: usize): void {
  atomic.store<u32>(vcpu + VCPU_MODE, OUTSIDE_GUEST_MODE);
  pml_flush(vm, vcpu); // every VM exit drains the PML buffer
  dirty_ring_publish(vcpu);
}

/**
 * kvm_smm_changed (arch/x86/kvm/smm.c; vCPU context): the vCPU enters (1) or leaves (0)
 * SMM and uses that address space from now on; its MMU context is reset (the shadow MMU's
 * root has role.smm, so a new one is loaded). -EBUSY when another thread holds vcpu->mutex.
 */
export function kvm_smm_changed(vm: usize, vcpu: usize, tag: u32, entering: u32): i32 {
  const loaded = vcpu_load(vcpu, tag);
  if (loaded < 0) return loaded;
  if (load<u32>(vcpu + VCPU_AS) != entering) {
    store<u32>(vcpu + VCPU_AS, entering);
    kvm_mmu_reset_context(vm, vcpu);
  }
  vcpu_put(vcpu, loaded);
  return 0;
}
