// vm — creation of the VM control block and vCPU blocks (kvm_create_vm, KVM_CREATE_VCPU).
// The host allocates every region and passes its address; the core only initialises them.
import { kvm_xen_init_vcpu } from "./xen";
import {
  E2BIG,
  EINVAL,
  KVM_DIRTY_RING_MAX_ENTRIES,
  PAGE_SIZE,
  VM_NSORTED,
  VM_RING_WITH_BITMAP,
  KVM_DIRTY_RING_RSVD_ENTRIES,
  KVM_NR_AS,
  PML_LOG_NR_ENTRIES,
  VCPU_ID,
  VM_GEN,
  VM_NR_VCPUS,
  VM_POOL_BASE,
  VM_PML,
  VM_POOL_PAGES,
  VM_RING_SIZE,
  VM_ROOT,
  VM_SLOTS,
  VM_SORTED,
  VM_VCPU_TABLE,
  VM_TLB_MODEL,
  VCPU_TLB,
  VCPU_ROOT_GEN,
  VM_MMU_VALID_GEN,
} from "./layout";
import { dirty_ring_alloc } from "./dirty_ring";
import { pml_init } from "./pml";
import { pool_alloc } from "./pt_pool";

/** Initialise a zeroed VM block. Returns 0, or -1 if the pool cannot hold the two roots. */
export function kvm_vm_init(
  vm: usize,
  slots: usize,
  sorted: usize,
  pool_base: usize,
  pool_pages: u32,
  vcpu_table: usize,
  pml: u32,
  tlb_model: u32,
): i32 {
  store<u32>(vm + VM_VCPU_TABLE, <u32>vcpu_table);
  store<u32>(vm + VM_PML, pml);
  store<u32>(vm + VM_TLB_MODEL, tlb_model);
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

/**
 * Initialise a zeroed vCPU block and add it to the VM's vCPU table. On a ring VM the host
 * passes the zeroed ring (ring_size bytes, shared with userspace) and the core's private
 * copy of it (same size); on a PML VM a zeroed 4 KiB PML buffer; and the vCPU's TLB
 * (TLB_ENTRIES u64, zeroed).
 */
export function kvm_vcpu_init(
  vm: usize,
  vcpu: usize,
  id: u32,
  ring: usize,
  priv: usize,
  pml_buffer: usize,
  tlb: usize,
): void {
  store<u32>(vcpu + VCPU_ID, id);
  store<u32>(vcpu + VCPU_TLB, <u32>tlb);
  store<u32>(vcpu + VCPU_ROOT_GEN, load<u32>(vm + VM_MMU_VALID_GEN)); // (shadow MMU)
  kvm_xen_init_vcpu(vm, vcpu);
  if (pml_buffer != 0) pml_init(vcpu, pml_buffer);
  const ring_bytes = load<u32>(vm + VM_RING_SIZE);
  if (ring_bytes != 0) {
    // rsvd entries: KVM_DIRTY_RING_RSVD_ENTRIES + the PML buffer when the VM models PML
    const reserved = KVM_DIRTY_RING_RSVD_ENTRIES + (load<u32>(vm + VM_PML) != 0 ? PML_LOG_NR_ENTRIES : 0);
    dirty_ring_alloc(vcpu, ring, priv, ring_bytes >> 4, reserved);
  }
  const n = load<u32>(vm + VM_NR_VCPUS);
  store<u32>(<usize>load<u32>(vm + VM_VCPU_TABLE) + (<usize>n << 2), <u32>vcpu);
  atomic.store<u32>(vm + VM_NR_VCPUS, n + 1);
}

/**
 * KVM_ENABLE_CAP(KVM_CAP_DIRTY_LOG_RING[_ACQ_REL]) — kvm_vm_ioctl_enable_dirty_log_ring.
 * `bytes` is args[0] truncated to u32, as the kernel's u32 parameter does.
 */
export function kvm_enable_dirty_log_ring(vm: usize, bytes: u32): i32 {
  const reserved = KVM_DIRTY_RING_RSVD_ENTRIES + (load<u32>(vm + VM_PML) != 0 ? PML_LOG_NR_ENTRIES : 0);
  if (bytes == 0 || (bytes & (bytes - 1)) != 0) return -EINVAL;
  if (bytes < reserved * 16 || bytes < PAGE_SIZE) return -EINVAL;
  if (bytes > KVM_DIRTY_RING_MAX_ENTRIES * 16) return -E2BIG;
  if (load<u32>(vm + VM_RING_SIZE) != 0) return -EINVAL; // only once
  if (load<u32>(vm + VM_NR_VCPUS) != 0) return -EINVAL; // not after a vCPU exists
  store<u32>(vm + VM_RING_SIZE, bytes);
  return 0;
}

/**
 * KVM_ENABLE_CAP(KVM_CAP_DIRTY_LOG_RING_WITH_BITMAP): only on a ring VM, flags 0, and while
 * every address space has no memslot, so that every slot created later gets a bitmap.
 */
export function kvm_enable_dirty_ring_with_bitmap(vm: usize, flags: u32): i32 {
  if (load<u32>(vm + VM_RING_SIZE) == 0 || flags != 0) return -EINVAL;
  for (let as_id: u32 = 0; as_id < KVM_NR_AS; as_id++) {
    if (load<u32>(vm + VM_NSORTED + (as_id << 2)) != 0) return -EINVAL;
  }
  store<u32>(vm + VM_RING_WITH_BITMAP, 1);
  return 0;
}
