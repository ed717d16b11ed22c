// errno — how the core rejects a call: it returns -errno and leaves the reason (an ERR_*
// code of layout.ts) in the VM block, where the host finds it to word the KvmError. Only
// the thread that owns the VM object makes the calls that fail this way.
import { VM_ERR_REASON } from "./layout";

/** Return -errno for a call on `vm`, recording why. */
@inline export function fail(vm: usize, errno: i32, why: u32): i32 {
  store<u32>(vm + VM_ERR_REASON, why);
  return -errno;
}
