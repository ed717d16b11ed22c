// tlb — remote TLB flushes (kvm_flush_remote_tlbs). In this single-threaded core a flush
// is an event counted in VM_TLB_FLUSHES; tests pin when one is due (spec §5.3, §8):
// once at the end of GET (classic) / CLEAR when anything was re-protected, immediately
// when MMU-writable is cleared or SPTEs are zapped, unconditionally after enabling logging.
import { VM_TLB_FLUSHES } from "./layout";

export function flush_remote_tlbs(vm: usize): void {
  atomic.add<u64>(vm + VM_TLB_FLUSHES, 1);
}
