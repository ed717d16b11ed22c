// js-get-dirty-log — classic KVM_GET_DIRTY_LOG written in plain JavaScript over a VM's
// shared memory: the baseline the WASM core is measured against (bench/micro.js) and checked
// against (test/js-get-dirty-log.test.ts).
//
// Same algorithm, same memory effects as kvm_get_dirty_log + kvm_dirty_log_done in
// assembly/dirty_bitmap.ts (and Vm.getDirtyLog in src/vm.ts):
//   1. checks: ENXIO (ring without bitmap), EINVAL (id), ENOENT (no bitmap)
//   2. kvm_arch_sync_dirty_log: with PML, kick every vCPU (a request bit, no wait)
//   3. manual protect: list the non-zero summary words, copy those chunks of the live bitmap
//   4. classic, under mmu_lock for write: for each non-zero summary word, exchange it with 0;
//      for each of its non-zero live words, exchange the word with 0, keep it in the second
//      bitmap and re-arm its pages (clear W, or D under PML, on each page's 4K SPTE, one
//      4-level walk per 512-page leaf table per word); record the summary word in the
//      scratch list; unlock; if anything was taken, one remote TLB flush (tlb.ts: count
//      it, request KVM_REQ_TLB_FLUSH on every vCPU, wait for each to acknowledge or be
//      outside guest mode)
//   5. copy the listed 512-byte chunks of the second bitmap into a fresh Uint8Array and
//      re-zero them
//
// Translation choices, each the fastest faithful one found:
//   - 64-bit words are two 32-bit halves on an Int32Array (BigUint64Array Atomics allocate
//     BigInts and are 2-3x slower, ../shared/notes/wasm-shared-memory.md §3). Exchanging
//     the halves one after the other is still loss-free: a vCPU sets a bit with an atomic
//     or, so each set bit is taken by exactly one exchange. A zero half is not exchanged
//     (the core's "plain precheck, then xchg", applied per half).
//   - Read-modify-writes are Atomics (exchange, and, compareExchange, add). Loads that the
//     core does with atomic.load (a plain mov on x86) are plain typed-array reads here:
//     Node 20 does not inline Atomics.load, which made this baseline 2.5-4x slower.
//   - Non-leaf SPTEs point below 4 GiB (the memory is at most 4 GiB), so their low half
//     holds the whole table address; the bits tested and cleared (present 11, PS 7, W 1,
//     D 9) are in the low half too. The 4-level walk is unrolled.
//
// The views, mmu_lock, the PML kick, the TLB flush and the re-arm through the walk cache are
// the ones every twin shares (bench/js-twins.js twinCore); offsets come from the generated
// mirror of assembly/layout.ts (dist/layout.js); the metadata region follows memslot.ts.
import * as L from "../dist/layout.js";
import { twinCore } from "./js-twins.js";

const TWO32 = 2 ** 32;

class DirtyLogError extends Error {
  constructor(errno, code) {
    super(`KVM_GET_DIRTY_LOG: ${errno}`);
    this.name = "KvmError";
    this.errno = errno;
    this.code = code;
  }
}

/**
 * A JS implementation of Vm.getDirtyLog for `vm` (anything with `memory` and `addr`).
 * Returns `getDirtyLog(slot) → Uint8Array` with the same result and side effects.
 */
export function createJsGetDirtyLog(vm) {
  const c = twinCore(vm);

  function getDirtyLog(slotId) {
    c.views();
    const { i32, u32 } = c;
    slotId >>>= 0;
    const vmAddr = vm.addr;
    if (u32[(vmAddr + L.VM_RING_SIZE) >>> 2] !== 0 && u32[(vmAddr + L.VM_RING_WITH_BITMAP) >>> 2] === 0) {
      throw new DirtyLogError("ENXIO", 6);
    }
    const asId = slotId >>> 16;
    const id = slotId & 0xffff;
    if (asId >= L.KVM_NR_AS || id >= L.KVM_USER_MEM_SLOTS) throw new DirtyLogError("EINVAL", 22);
    const s = c.slotPtr(slotId);
    const live = u32[(s + L.SLOT_BITMAP) >>> 2];
    if (live === 0) throw new DirtyLogError("ENOENT", 2);

    // metadata region (memslot.ts): live W u64 | second W u64 | summary S u64 | present W u64 | scratch S u32
    const npages = u32[(s + L.SLOT_NPAGES) >>> 2] + u32[(s + L.SLOT_NPAGES + 4) >>> 2] * TWO32;
    const words = Math.ceil(npages / 64);
    const nsum = Math.ceil(words / 64);
    const meta = u32[(s + L.SLOT_META) >>> 2];
    const second = meta + words * 8;
    const summary = meta + words * 16;
    const scratch = summary + nsum * 8 + words * 8;
    const bytes = words * 8;
    const out = new Uint8Array(bytes);
    c.syncDirtyLog();

    const manual = (u32[(vmAddr + L.VM_MANUAL_PROTECT) >>> 2] & L.KVM_DIRTY_LOG_MANUAL_PROTECT_ENABLE) !== 0;
    if (manual) {
      let count = 0;
      for (let i = 0; i < nsum; i++) {
        const sp = (summary >>> 2) + i * 2;
        if ((i32[sp] | i32[sp + 1]) !== 0) u32[(scratch >>> 2) + count++] = i;
      }
      copyChunks(out, live, scratch, count, bytes, false);
      return out;
    }

    let count = 0;
    c.writeLock();
    c.cacheReset(); // the walk cache lives across words for the whole GET (VM_WALK_CACHE)
    for (let i = 0; i < nsum; i++) {
      const sp = (summary >>> 2) + i * 2;
      if ((i32[sp] | i32[sp + 1]) === 0) continue; // fast skip of empty regions
      let took = false;
      const sumLo = i32[sp] === 0 ? 0 : Atomics.exchange(i32, sp, 0);
      const sumHi = i32[sp + 1] === 0 ? 0 : Atomics.exchange(i32, sp + 1, 0);
      for (let sh = 0; sh < 2; sh++) {
        let sbits = sh === 0 ? sumLo : sumHi;
        while (sbits !== 0) {
          const slow = sbits & -sbits;
          sbits ^= slow;
          const w = i * 64 + sh * 32 + (31 - Math.clz32(slow));
          const wp = (live >>> 2) + w * 2;
          if ((i32[wp] | i32[wp + 1]) === 0) continue;
          const lo = i32[wp] === 0 ? 0 : Atomics.exchange(i32, wp, 0);
          const hi = i32[wp + 1] === 0 ? 0 : Atomics.exchange(i32, wp + 1, 0);
          if ((lo | hi) === 0) continue;
          const dp = (second >>> 2) + w * 2;
          i32[dp] = lo;
          i32[dp + 1] = hi;
          c.rearmMasked(s, asId, w * 64, lo, hi); // enable_log_dirty_pt_masked
          took = true;
        }
      }
      if (took) u32[(scratch >>> 2) + count++] = i;
    }
    c.cacheStore();
    c.writeUnlock();
    if (count > 0) c.flushRemoteTlbsDirtyLog();
    copyChunks(out, second, scratch, count, bytes, true);
    return out;
  }

  /** The host half: copy the listed chunks (64 words = 512 bytes each); re-zero them if asked. */
  function copyChunks(out, src, scratch, count, bytes, zero) {
    const { u8, u32 } = c;
    for (let k = 0; k < count; k++) {
      const at = u32[(scratch >>> 2) + k] * 512;
      const end = Math.min(bytes, at + 512);
      out.set(u8.subarray(src + at, src + end), at);
      if (zero) u8.fill(0, src + at, src + end);
    }
  }

  return getDirtyLog;
}
