// vm — creation of the VM control block and vCPU blocks (kvm_create_vm, KVM_CREATE_VCPU).
// The host allocates every region and passes its address; the core only initialises them.
import {
  KVM_NR_AS,
  VCPU_ID,
  VM_GEN,
  VM_NR_VCPUS,
  VM_POOL_BASE,
  VM_POOL_PAGES,
  VM_ROOT,
  VM_SLOTS,
  VM_SORTED,
} from "./layout";
import { pool_alloc } from "./pt_pool";

/** Initialise a zeroed VM block. Returns 0, or -1 if the pool cannot hold the two roots. */
export function kvm_vm_init(vm: usize, slots: usize, sorted: usize, pool_base: usize, pool_pages: u32): i32 {
  store<u32>(vm + VM_SLOTS, <u32>slots);
  store<u32>(vm + VM_SORTED, <u32>sorted);
  store<u32>(vm + VM_POOL_BASE, <u32>pool_base);
  store<u32>(vm + VM_POOL_PAGES, pool_pages);
  for (let as_id: u32 = 0; as_id < KVM_NR_AS; as_id++) {
    // generation of address space `as` starts at `as`, so spaces never collide
    store<u64>(vm + VM_GEN + (as_id << 3), <u64>as_id);
    const root = pool_alloc(vm);
    if (root == 0) return -1;
    store<u32>(vm + VM_ROOT + (as_id << 2), <u32>root);
  }
  return 0;
}

/** Initialise a zeroed vCPU block. */
export function kvm_vcpu_init(vm: usize, vcpu: usize, id: u32): void {
  store<u32>(vcpu + VCPU_ID, id);
  atomic.add<u32>(vm + VM_NR_VCPUS, 1);
}
