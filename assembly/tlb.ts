// tlb — each vCPU's TLB model and remote TLB flushes
// (virt/kvm/kvm_main.c kvm_flush_remote_tlbs / kvm_make_all_cpus_request, spec §5.3, §8).
//
// A vCPU caches writable 4K translations ((address space, gfn) → host page) for its stores:
//   TLB_ENTRIES u64 per vCPU, direct-mapped by gfn & (TLB_ENTRIES − 1)
//   entry = tag << 21 | 1 << 20 | host page number (20 bits), tag = (gfn << 1 | as_id) + 1;
//   0 = invalid. Entries are tagged by address space like TLB entries are tagged by EPT
//   root, so entering or leaving SMM never reuses the other space's translations.
// Next to it, a one-entry paging-structure cache remembers the last 4K leaf table walked
// (VCPU_PSC_*), so a TLB miss near the last one costs one SPTE load instead of four.
// Both are emptied by the same flush; page tables freed by a zap are not reused before
// every vCPU has flushed (the zap's flush waits), so a cached table pointer never dangles.
// A cached translation keeps working after its SPTE loses W, until the vCPU handles a
// KVM_REQ_TLB_FLUSH — exactly the window the kernel's flush protocol closes, so a
// missing or late flush shows up as a lost dirty page. VM_TLB_MODEL = 0 turns the cache
// off (every store walks the SPTEs) to measure its cost.
//
// Flush protocol (kvm_make_all_cpus_request with wait): set the request on every vCPU,
// then wait for each vCPU until it has acknowledged (cleared the request) or is outside
// guest mode. A vCPU's lockless walks (TLB misses, the fast page fault) happen in guest
// mode, between two request checks, so page-table pages freed under the write lock cannot
// be reused while such a walker still reads them: the zap's flush waits for it. A vCPU
// entering guest mode sets IN_GUEST_MODE and then checks requests (both seq-cst), so it
// cannot miss a request made while it was outside.
//
// Fault injection (VM_DEBUG_SKIP_TLB_FLUSH) suppresses only flush_remote_tlbs_dirty_log,
// the flush after dirty-logging re-protection: vCPUs keep writing through stale writable
// translations and pages are lost. The flushes that keep the model itself sound — a zap
// (memslot DELETE/MOVE) or a huge-page recovery freeing page-table pages the vCPUs' caches
// may still point at — always go through flush_remote_tlbs: the switch may lose pages,
// never break progress or memory safety.
import {
  IN_GUEST_MODE,
  KVM_REQ_TLB_FLUSH,
  OUTSIDE_GUEST_MODE,
  TLB_ENTRIES,
  VCPU_MODE,
  VCPU_PSC_TAG,
  VCPU_REQUESTS,
  VCPU_TLB,
  VCPU_TLB_FLUSHES,
  VM_TLB_FLUSHES,
  VM_TLB_MODEL,
  VM_DEBUG,
  VM_DEBUG_SKIP_TLB_FLUSH,
} from "./layout";
import { kvm_get_vcpu, kvm_nr_vcpus } from "./vcpu";

/** kvm_flush_remote_tlbs for the host (`can_block` as in flush_remote_tlbs). */
export function kvm_flush_remote_tlbs(vm: usize, can_block: u32): void {
  flush_remote_tlbs(vm, can_block != 0);
}

const TLB_FLUSH_REQ: u32 = 1 << KVM_REQ_TLB_FLUSH;
const SPINS_BEFORE_SLEEP: u32 = 4096;
const VALID: u64 = 1 << 20;

@inline export function tlb_on(vm: usize): bool {
  return load<u32>(vm + VM_TLB_MODEL) != 0;
}

/** Host address of the cached writable translation of gfn's page, 1 for "cached, no bytes", or 0. */
@inline export function tlb_lookup(vcpu: usize, as_id: u32, gfn: u64): usize {
  const tlb = <usize>load<u32>(vcpu + VCPU_TLB);
  const e = load<u64>(tlb + (<usize>(gfn & (TLB_ENTRIES - 1)) << 3));
  if (e >> 21 != ((gfn << 1) | as_id) + 1) return 0;
  const page = <usize>(e & 0xfffff) << 12;
  return page == 0 ? 1 : page;
}

/** Cache a writable translation of gfn to the host page at `host` (0 = no bytes). */
@inline export function tlb_fill(vcpu: usize, as_id: u32, gfn: u64, host: usize): void {
  const tlb = <usize>load<u32>(vcpu + VCPU_TLB);
  const tag = ((gfn << 1) | as_id) + 1;
  store<u64>(tlb + (<usize>(gfn & (TLB_ENTRIES - 1)) << 3), (tag << 21) | VALID | <u64>(host >> 12));
}

/** The vCPU's own flush (on its thread). */
export function tlb_flush_local(vcpu: usize): void {
  const tlb = <usize>load<u32>(vcpu + VCPU_TLB);
  if (tlb != 0) memory.fill(tlb, 0, TLB_ENTRIES << 3);
  store<u64>(vcpu + VCPU_PSC_TAG, 0);
  store<u64>(vcpu + VCPU_TLB_FLUSHES, load<u64>(vcpu + VCPU_TLB_FLUSHES) + 1);
}

/** Handle a pending KVM_REQ_TLB_FLUSH on the vCPU's thread. */
@inline export function tlb_check_request(vcpu: usize): void {
  if ((atomic.load<u32>(vcpu + VCPU_REQUESTS) & TLB_FLUSH_REQ) != 0) {
    tlb_flush_local(vcpu);
    atomic.and<u32>(vcpu + VCPU_REQUESTS, ~TLB_FLUSH_REQ); // the acknowledgement
    atomic.notify(vcpu + VCPU_REQUESTS, 1); // a flusher may sleep on it
  }
}

/**
 * The flush that ends a dirty-logging re-protection (GET / CLEAR, dirty-ring reset,
 * enabling logging): W was cleared (or D, under PML) and no page-table page was freed.
 * The only flush the fault injection skips — the bug class this protocol exists for
 * (tests show it loses pages); it is still counted.
 */
export function flush_remote_tlbs_dirty_log(vm: usize, can_block: bool): void {
  if ((load<u32>(vm + VM_DEBUG) & VM_DEBUG_SKIP_TLB_FLUSH) != 0) {
    atomic.add<u64>(vm + VM_TLB_FLUSHES, 1);
    return;
  }
  flush_remote_tlbs(vm, can_block);
}

/**
 * kvm_flush_remote_tlbs: request a flush on every vCPU and wait until each one has
 * acknowledged or is outside guest mode. Never called from a vCPU thread. The wait spins;
 * when the calling thread may block (`can_block`: not a browser's main thread) it sleeps
 * on the vCPU's request word after a while, so that a vCPU sharing its core gets to run
 * and acknowledge (the acknowledgement notifies). Always delivered, whatever VM_DEBUG
 * says: zaps rely on it before freed page-table pages can be reused.
 */
export function flush_remote_tlbs(vm: usize, can_block: bool): void {
  atomic.add<u64>(vm + VM_TLB_FLUSHES, 1);
  kvm_make_all_cpus_request(vm, KVM_REQ_TLB_FLUSH, can_block, true);
}

/**
 * kvm_make_all_cpus_request: set request `req` on every vCPU; with `wait`
 * (KVM_REQUEST_WAIT), wait until each one has acknowledged it (cleared it) or is outside
 * guest mode, as flush_remote_tlbs does.
 */
export function kvm_make_all_cpus_request(vm: usize, req: u32, can_block: bool, wait: bool): void {
  const bit: u32 = 1 << req;
  const n = kvm_nr_vcpus(vm);
  for (let i: u32 = 0; i < n; i++) atomic.or<u32>(kvm_get_vcpu(vm, i) + VCPU_REQUESTS, bit);
  if (!wait) return;
  for (let i: u32 = 0; i < n; i++) {
    const vcpu = kvm_get_vcpu(vm, i);
    for (let spins: u32 = 0; ; spins++) {
      const mode = atomic.load<u32>(vcpu + VCPU_MODE);
      if (mode == OUTSIDE_GUEST_MODE) break;
      const reqs = atomic.load<u32>(vcpu + VCPU_REQUESTS);
      if (mode == IN_GUEST_MODE && (reqs & bit) == 0) break;
      if (can_block && spins >= SPINS_BEFORE_SLEEP) {
        // until the request word changes (the ack notifies) or 50 µs pass (mode changes
        // do not notify)
        atomic.wait<i32>(vcpu + VCPU_REQUESTS, <i32>reqs, 50_000);
      }
    }
  }
}
