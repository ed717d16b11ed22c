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
// Offsets come from the generated mirror of assembly/layout.ts (dist/layout.js, made by
// scripts/gen-layout.mjs at build time), so this file does not drift from the core; the
// metadata region follows memslot.ts's header.
import * as LAYOUT from "../dist/layout.js";

/** The core's layout constants (checked for the ones this baseline reads). */
export function coreLayout() {
  const out = { ...LAYOUT };
  for (const name of NEEDED) {
    if (typeof out[name] !== "number") throw new Error(`assembly/layout.ts: ${name} not found`);
  }
  if (out.PT_LEVELS !== 4) throw new Error("js-get-dirty-log walks exactly 4 levels");
  return out;
}

const NEEDED = [
  "VM_SLOTS",
  "VM_WALK_CACHE",
  "VM_ROOT",
  "VM_MANUAL_PROTECT",
  "VM_RING_SIZE",
  "VM_RING_WITH_BITMAP",
  "VM_PML",
  "VM_MMU_LOCK",
  "VM_TLB_FLUSHES",
  "VM_NR_VCPUS",
  "VM_VCPU_TABLE",
  "VM_DEBUG",
  "VM_DEBUG_SKIP_TLB_FLUSH",
  "VCPU_REQUESTS",
  "VCPU_MODE",
  "OUTSIDE_GUEST_MODE",
  "IN_GUEST_MODE",
  "KVM_REQ_TLB_FLUSH",
  "KVM_REQ_KICK",
  "SLOT_SIZE",
  "SLOT_BASE_GFN",
  "SLOT_NPAGES",
  "SLOT_BITMAP",
  "SLOT_META",
  "KVM_NR_AS",
  "KVM_USER_MEM_SLOTS",
  "KVM_DIRTY_LOG_MANUAL_PROTECT_ENABLE",
  "PT_LEVELS",
];

// SPTE bits (assembly/spte.ts), all in the low 32 bits
const SPTE_W = 1 << 1;
const SPTE_PS = 1 << 7;
const SPTE_D = 1 << 9;
const SPTE_MMU_PRESENT = 1 << 11;
// mmu_lock word (assembly/mmu_lock.ts)
const LOCK_WRITER = 0x8000_0000 | 0;
const LOCK_WAITING = 0x4000_0000;
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
export function createJsGetDirtyLog(vm, layout = coreLayout()) {
  const L = layout;
  let buffer = null;
  let i32 = null; // atomics and plain reads of 32-bit halves
  let u32 = null; // unsigned reads of addresses and sizes
  let u8 = null;
  let u64 = null; // the TLB flush counter only

  function views() {
    const b = vm.memory.buffer;
    if (b !== buffer || b.byteLength !== buffer.byteLength) {
      buffer = b;
      i32 = new Int32Array(b);
      u32 = new Uint32Array(b);
      u8 = new Uint8Array(b);
      u64 = new BigUint64Array(b);
    }
  }

  function writeLock(p) {
    for (;;) {
      const v = Atomics.load(i32, p);
      if ((v === 0 || v === LOCK_WAITING) && Atomics.compareExchange(i32, p, v, LOCK_WRITER) === v) return;
      if ((v & LOCK_WAITING) === 0) Atomics.or(i32, p, LOCK_WAITING);
    }
  }

  /** The vCPU blocks (vm->vcpu_array), as u32 addresses. */
  function vcpuBlocks(vmAddr) {
    const table = u32[(vmAddr + L.VM_VCPU_TABLE) >>> 2] >>> 2;
    const n = Atomics.load(i32, (vmAddr + L.VM_NR_VCPUS) >>> 2);
    return u32.subarray(table, table + n);
  }

  /** kvm_arch_sync_dirty_log: with PML, kick every vCPU so its buffer drains at its exit. */
  function syncDirtyLog(vmAddr) {
    if (u32[(vmAddr + L.VM_PML) >>> 2] === 0) return;
    for (const vcpu of vcpuBlocks(vmAddr)) Atomics.or(i32, (vcpu + L.VCPU_REQUESTS) >>> 2, 1 << L.KVM_REQ_KICK);
  }

  /** kvm_flush_remote_tlbs (tlb.ts flush_remote_tlbs_dirty_log, the flush after GET): request on every vCPU, then wait. */
  function flushRemoteTlbs(vmAddr) {
    Atomics.add(u64, (vmAddr + L.VM_TLB_FLUSHES) >>> 3, 1n);
    if ((u32[(vmAddr + L.VM_DEBUG) >>> 2] & L.VM_DEBUG_SKIP_TLB_FLUSH) !== 0) return;
    const req = 1 << L.KVM_REQ_TLB_FLUSH;
    const vcpus = vcpuBlocks(vmAddr);
    for (const vcpu of vcpus) Atomics.or(i32, (vcpu + L.VCPU_REQUESTS) >>> 2, req);
    for (const vcpu of vcpus) {
      for (;;) {
        const mode = Atomics.load(i32, (vcpu + L.VCPU_MODE) >>> 2);
        if (mode === L.OUTSIDE_GUEST_MODE) break;
        if (mode === L.IN_GUEST_MODE && (Atomics.load(i32, (vcpu + L.VCPU_REQUESTS) >>> 2) & req) === 0) break;
      }
    }
  }

  /**
   * tdp_walk (4 levels) to the 4K leaf table of gfn: its i32 index, or -1 when a level is
   * absent or a huge leaf. Index at level L = (gfn >> 9(L-1)) & 511; `x & 511` on a double
   * keeps the low bits (ToInt32 is modular), so gfns above 2^32 work.
   */
  function leafTable(root, gfn) {
    let e = i32[(root >>> 2) + ((gfn / 134217728) & 511) * 2];
    if ((e & SPTE_MMU_PRESENT) === 0 || (e & SPTE_PS) !== 0) return -1;
    e = i32[((e & ~0xfff) >>> 2) + ((gfn / 262144) & 511) * 2];
    if ((e & SPTE_MMU_PRESENT) === 0 || (e & SPTE_PS) !== 0) return -1;
    e = i32[((e & ~0xfff) >>> 2) + ((gfn / 512) & 511) * 2];
    if ((e & SPTE_MMU_PRESENT) === 0 || (e & SPTE_PS) !== 0) return -1;
    return (e & ~0xfff) >>> 2;
  }

  function getDirtyLog(slotId) {
    views();
    slotId >>>= 0;
    const vmAddr = vm.addr;
    if (u32[(vmAddr + L.VM_RING_SIZE) >>> 2] !== 0 && u32[(vmAddr + L.VM_RING_WITH_BITMAP) >>> 2] === 0) {
      throw new DirtyLogError("ENXIO", 6);
    }
    const asId = slotId >>> 16;
    const id = slotId & 0xffff;
    if (asId >= L.KVM_NR_AS || id >= L.KVM_USER_MEM_SLOTS) throw new DirtyLogError("EINVAL", 22);
    const s = u32[(vmAddr + L.VM_SLOTS) >>> 2] + ((asId << 15) | id) * L.SLOT_SIZE;
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
    syncDirtyLog(vmAddr);

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

    const baseGfn = u32[(s + L.SLOT_BASE_GFN) >>> 2] + u32[(s + L.SLOT_BASE_GFN + 4) >>> 2] * TWO32;
    const bit = u32[(vmAddr + L.VM_PML) >>> 2] === 0 ? SPTE_W : SPTE_D;
    const root = u32[(vmAddr + L.VM_ROOT + asId * 4) >>> 2];
    const lock = (vmAddr + L.VM_MMU_LOCK) >>> 2;
    let count = 0;
    // the walk cache lives across words for the whole GET (the core's VM_WALK_CACHE)
    let key = -1;
    let table = -1;
    writeLock(lock);
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
          // enable_log_dirty_pt_masked → tdp_clear_dirty_masked: one walk per leaf table
          const gfn0 = baseGfn + w * 64;
          for (let h = 0; h < 2; h++) {
            let bits = h === 0 ? lo : hi;
            while (bits !== 0) {
              const low = bits & -bits;
              bits ^= low;
              const g = gfn0 + h * 32 + (31 - Math.clz32(low));
              const off = g & 511;
              if (g - off !== key) {
                key = g - off;
                table = leafTable(root, g);
              }
              if (table < 0) continue;
              const p = table + off * 2;
              if ((i32[p] & bit) !== 0) Atomics.and(i32, p, ~bit);
            }
          }
          took = true;
        }
      }
      if (took) u32[(scratch >>> 2) + count++] = i;
    }
    if (key >= 0) {
      // leave the cache as the core does: u64 ((gfn >> 9) << 1 | as) + 1, u32 table address
      const tag = (key / 512) * 2 + asId + 1;
      u32[(vmAddr + L.VM_WALK_CACHE) >>> 2] = tag % TWO32;
      u32[(vmAddr + L.VM_WALK_CACHE + 4) >>> 2] = Math.floor(tag / TWO32);
      u32[(vmAddr + L.VM_WALK_CACHE + 8) >>> 2] = table < 0 ? 0 : table * 4;
    } else {
      u32[(vmAddr + L.VM_WALK_CACHE) >>> 2] = 0;
      u32[(vmAddr + L.VM_WALK_CACHE + 4) >>> 2] = 0;
    }
    Atomics.store(i32, lock, 0);
    if (count > 0) flushRemoteTlbs(vmAddr);
    copyChunks(out, second, scratch, count, bytes, true);
    return out;
  }

  /** The host half: copy the listed chunks (64 words = 512 bytes each); re-zero them if asked. */
  function copyChunks(out, src, scratch, count, bytes, zero) {
    for (let k = 0; k < count; k++) {
      const at = u32[(scratch >>> 2) + k] * 512;
      const end = Math.min(bytes, at + 512);
      out.set(u8.subarray(src + at, src + end), at);
      if (zero) u8.fill(0, src + at, src + end);
    }
  }

  return getDirtyLog;
}
