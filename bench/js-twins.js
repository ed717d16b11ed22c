// js-twins — plain-JavaScript twins of the core's harvest paths, over a VM's shared memory:
// the baselines bench/micro.js measures the WASM core against, in the same run. (The GET
// twin is bench/js-get-dirty-log.js.) Each twin has the same algorithm and the same memory
// effects as the core path it mirrors, and bench/micro.js checks that before timing:
//
//   createJsClearDirtyLog(vm)    Vm.clearDirtyLog + kvm_clear_dirty_log_check/kvm_clear_dirty_log
//                                (assembly/dirty_bitmap.ts): copy the caller's bitmap into the
//                                second bitmap, then under mmu_lock for write, per non-zero
//                                word: zero it, and-not the live word, re-arm the bits that
//                                were set; one remote TLB flush if any
//   createJsCollectDirtyRing(v)  userspace collect (what collectDirtyRing does in WASM, see
//                                assembly/ring_reaper.ts): a plain Uint32Array scan from the
//                                collector's fetch index; read flags, stop unless DIRTY, read
//                                slot and offset, call onEntry, write RESET
//   createJsCollectDirtyRingInto(v)  the bulk collect (collectDirtyRingInto, whose batches run
//                                in WASM: dirty_ring_collect in assembly/ring_reaper.ts): the
//                                same scan, appending (slot, offset) to typed arrays
//   createJsResetDirtyRings(vm)  KVM_RESET_DIRTY_RINGS (assembly/dirty_ring.ts): per vCPU, walk
//                                from reset_index while entries are harvested (private-copy
//                                tags past dirty_index), zero each entry, coalesce (slot,
//                                offset) into 64-page masks forward or backward, re-arm each
//                                batch under mmu_lock for write; one remote TLB flush if any
//
// Translation choices (as in js-get-dirty-log.js): 64-bit words are two Int32Array halves;
// read-modify-writes are Atomics; the core's atomic loads (a plain mov on x86) are plain
// typed-array reads (Node 20 does not inline Atomics.load); the core's atomic stores are
// Atomics.store. Re-arming is tdp_clear_dirty_masked: clear W (D under PML) on the 4K SPTE,
// one 4-level walk per 512-page leaf table, through the VM's walk cache (left in memory as
// the core leaves it). Offsets come from dist/layout.js (generated from assembly/layout.ts).
import * as LAYOUT from "../dist/layout.js";

const L = { ...LAYOUT };

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
  "VCPU_RING",
  "VCPU_RING_PRIV",
  "VCPU_RING_ENTRIES",
  "VCPU_DIRTY_INDEX",
  "VCPU_RESET_INDEX",
  "OUTSIDE_GUEST_MODE",
  "IN_GUEST_MODE",
  "KVM_REQ_TLB_FLUSH",
  "KVM_REQ_KICK",
  "KVM_DIRTY_GFN_F_DIRTY",
  "KVM_DIRTY_GFN_F_RESET",
  "SLOT_SIZE",
  "SLOT_BASE_GFN",
  "SLOT_NPAGES",
  "SLOT_ACTIVE",
  "SLOT_BITMAP",
  "SLOT_META",
  "KVM_NR_AS",
  "KVM_USER_MEM_SLOTS",
  "KVM_DIRTY_LOG_MANUAL_PROTECT_ENABLE",
  "KVM_DIRTY_LOG_INITIALLY_SET",
  "PT_LEVELS",
];
for (const name of NEEDED) {
  if (typeof L[name] !== "number") throw new Error(`assembly/layout.ts: ${name} not found`);
}
if (L.PT_LEVELS !== 4) throw new Error("js-twins walks exactly 4 levels");

// SPTE bits (assembly/spte.ts), all in the low 32 bits
const SPTE_W = 1 << 1;
const SPTE_PS = 1 << 7;
const SPTE_D = 1 << 9;
const SPTE_MMU_PRESENT = 1 << 11;
// mmu_lock word (assembly/mmu_lock.ts)
const LOCK_WRITER = 0x8000_0000 | 0;
const LOCK_WAITING = 0x4000_0000;
const TWO32 = 2 ** 32;
const DIRTY = L.KVM_DIRTY_GFN_F_DIRTY;
const RESET = L.KVM_DIRTY_GFN_F_RESET;

/**
 * The pieces every twin shares, over one VM's memory: typed views (refreshed if the memory
 * grew), mmu_lock, the remote TLB flush, and re-arming through the walk cache.
 */
export function twinCore(vm) {
  const c = { i32: null, u32: null, u8: null, u64: null };
  let buffer = null;
  c.views = () => {
    const b = vm.memory.buffer;
    if (b !== buffer || b.byteLength !== buffer.byteLength) {
      buffer = b;
      c.i32 = new Int32Array(b);
      c.u32 = new Uint32Array(b);
      c.u8 = new Uint8Array(b);
      c.u64 = new BigUint64Array(b);
    }
  };
  c.views();

  c.writeLock = () => {
    const i32 = c.i32;
    const p = (vm.addr + L.VM_MMU_LOCK) >>> 2;
    for (;;) {
      const v = Atomics.load(i32, p);
      if ((v === 0 || v === LOCK_WAITING) && Atomics.compareExchange(i32, p, v, LOCK_WRITER) === v) return;
      if ((v & LOCK_WAITING) === 0) Atomics.or(i32, p, LOCK_WAITING);
    }
  };
  c.writeUnlock = () => Atomics.store(c.i32, (vm.addr + L.VM_MMU_LOCK) >>> 2, 0);

  /** kvm_arch_sync_dirty_log: with PML, kick every vCPU (a request bit, no wait) so its buffer drains. */
  c.syncDirtyLog = () => {
    const { i32, u32 } = c;
    const a = vm.addr;
    if (u32[(a + L.VM_PML) >>> 2] === 0) return;
    const table = u32[(a + L.VM_VCPU_TABLE) >>> 2] >>> 2;
    const n = u32[(a + L.VM_NR_VCPUS) >>> 2];
    for (let k = 0; k < n; k++) Atomics.or(i32, (u32[table + k] + L.VCPU_REQUESTS) >>> 2, 1 << L.KVM_REQ_KICK);
  };

  /** tlb.ts flush_remote_tlbs_dirty_log: count; unless skipped, request on every vCPU and wait. */
  c.flushRemoteTlbsDirtyLog = () => {
    const { i32, u32, u64 } = c;
    const a = vm.addr;
    Atomics.add(u64, (a + L.VM_TLB_FLUSHES) >>> 3, 1n);
    if ((u32[(a + L.VM_DEBUG) >>> 2] & L.VM_DEBUG_SKIP_TLB_FLUSH) !== 0) return;
    const req = 1 << L.KVM_REQ_TLB_FLUSH;
    const table = u32[(a + L.VM_VCPU_TABLE) >>> 2] >>> 2;
    const vcpus = u32.subarray(table, table + Atomics.load(i32, (a + L.VM_NR_VCPUS) >>> 2));
    for (const v of vcpus) Atomics.or(i32, (v + L.VCPU_REQUESTS) >>> 2, req);
    for (const v of vcpus) {
      for (;;) {
        const mode = Atomics.load(i32, (v + L.VCPU_MODE) >>> 2);
        if (mode === L.OUTSIDE_GUEST_MODE) break;
        if (mode === L.IN_GUEST_MODE && (Atomics.load(i32, (v + L.VCPU_REQUESTS) >>> 2) & req) === 0) break;
      }
    }
  };

  /** tdp_walk to gfn's 4K leaf table: its i32 index, or -1 (a level absent, or a huge leaf). */
  // (the walk's level-2 table, a byte address, 0 when the walk did not reach one)
  let walkPd = 0;
  function leafTable(root, gfn) {
    const i32 = c.i32;
    walkPd = 0;
    let e = i32[(root >>> 2) + ((gfn / 134217728) & 511) * 2];
    if ((e & SPTE_MMU_PRESENT) === 0 || (e & SPTE_PS) !== 0) return -1;
    e = i32[((e & ~0xfff) >>> 2) + ((gfn / 262144) & 511) * 2];
    if ((e & SPTE_MMU_PRESENT) === 0 || (e & SPTE_PS) !== 0) return -1;
    walkPd = (e & ~0xfff) >>> 0;
    return pdeTable(walkPd, gfn);
  }
  /** The leaf table the PDE of gfn in the level-2 table at byte address pd points to (i32 index), or -1. */
  function pdeTable(pd, gfn) {
    const e = c.i32[(pd >>> 2) + ((gfn / 512) & 511) * 2];
    if ((e & SPTE_MMU_PRESENT) === 0 || (e & SPTE_PS) !== 0) return -1;
    return (e & ~0xfff) >>> 2;
  }

  // The walk cache (VM_WALK_CACHE: u64 tag = (gfn >> 9) << 1 | as) + 1, u32 leaf table,
  // u32 level-2 table of the last full walk), held in locals between cacheReset() and
  // cacheStore() like the core holds it in memory: the first gfn of the cached leaf table
  // (-1: none), its address space, the table; the level-2 table and whether a walk set it.
  let key = -1;
  let keyAs = 0;
  let table = -1;
  let pd = 0;
  let pdWalked = false;
  let touched = false;
  c.cacheReset = () => {
    key = -1;
    touched = true;
  };
  /** Leave the cache in memory as the core does (the table word only if a walk happened). */
  c.cacheStore = () => {
    const u32 = c.u32;
    const p = (vm.addr + L.VM_WALK_CACHE) >>> 2;
    const tag = key < 0 ? 0 : (key / 512) * 2 + keyAs + 1;
    u32[p] = tag % TWO32;
    u32[p + 1] = Math.floor(tag / TWO32);
    if (tag !== 0) u32[p + 2] = table < 0 ? 0 : table * 4;
    if (pdWalked) u32[p + 3] = pd;
    pdWalked = false;
    touched = false;
  };
  /**
   * enable_log_dirty_pt_masked → tdp_clear_dirty_masked for the mask (lo, hi halves) at
   * slot offset `offset` of the slot at s: clear W (D under PML) of each page's 4K SPTE,
   * one walk per 512-page leaf table.
   */
  c.rearmMasked = (s, asId, offset, lo, hi) => {
    const { i32, u32 } = c;
    const a = vm.addr;
    if ((u32[(a + L.VM_MANUAL_PROTECT) >>> 2] & L.KVM_DIRTY_LOG_INITIALLY_SET) !== 0) {
      throw new Error("js-twins: INITIALLY_SET (huge-page splitting on re-arm) is not mirrored");
    }
    if (!touched) throw new Error("js-twins: re-arm outside a cacheReset()/cacheStore() bracket");
    const gfn = u32[(s + L.SLOT_BASE_GFN) >>> 2] + u32[(s + L.SLOT_BASE_GFN + 4) >>> 2] * TWO32 + offset;
    const bit = u32[(a + L.VM_PML) >>> 2] === 0 ? SPTE_W : SPTE_D;
    const root = u32[(a + L.VM_ROOT + asId * 4) >>> 2];
    for (let h = 0; h < 2; h++) {
      let bits = h === 0 ? lo : hi;
      while (bits !== 0) {
        const low = bits & -bits;
        bits ^= low;
        const g = gfn + h * 32 + (31 - Math.clz32(low));
        const off = g & 511;
        if (g - off !== key || asId !== keyAs) {
          // the same address space and 1 GiB as the last lookup: one PDE load (tdp_leaf_table_fill)
          const sameGiB = key >= 0 && asId === keyAs && Math.floor(key / 262144) === Math.floor(g / 262144);
          key = g - off;
          keyAs = asId;
          if (sameGiB && pd !== 0) {
            table = pdeTable(pd, g);
          } else {
            table = leafTable(root, g);
            pd = walkPd;
            pdWalked = true;
          }
        }
        if (table < 0) continue;
        const p = table + off * 2;
        if ((i32[p] & bit) !== 0) Atomics.and(i32, p, ~bit);
      }
    }
  };

  /** The slot block of slot id (as_id << 16 | id). */
  c.slotPtr = (slot) => c.u32[(vm.addr + L.VM_SLOTS) >>> 2] + (((slot >>> 16) << 15) | (slot & 0xffff)) * L.SLOT_SIZE;
  return c;
}

/**
 * A JS Vm.clearDirtyLog for `vm`: clearDirtyLog(slot, firstPage, numPages, bitmap). The
 * checks are the core's (ENXIO, EINVAL, ENOENT become thrown Errors); PML kicks as
 * kvm_arch_sync_dirty_log does.
 */
export function createJsClearDirtyLog(vm) {
  const c = twinCore(vm);
  return function clearDirtyLog(slot, firstPage, numPages, bitmap) {
    c.views();
    const { i32, u32, u8 } = c;
    const a = vm.addr;
    if (u32[(a + L.VM_RING_SIZE) >>> 2] !== 0 && u32[(a + L.VM_RING_WITH_BITMAP) >>> 2] === 0) throw new Error("ENXIO");
    const asId = slot >>> 16;
    if (asId >= L.KVM_NR_AS || (slot & 0xffff) >= L.KVM_USER_MEM_SLOTS) throw new Error("EINVAL: slot id");
    if (firstPage % 64 !== 0) throw new Error("EINVAL: first page");
    const s = c.slotPtr(slot);
    const live = u32[(s + L.SLOT_BITMAP) >>> 2];
    if (live === 0) throw new Error("ENOENT");
    const npages = u32[(s + L.SLOT_NPAGES) >>> 2] + u32[(s + L.SLOT_NPAGES + 4) >>> 2] * TWO32;
    if (firstPage > npages || numPages > npages - firstPage || (numPages < npages - firstPage && numPages % 64 !== 0)) {
      throw new Error("EINVAL: range");
    }
    c.syncDirtyLog();
    // metadata region (memslot.ts): live W u64 | second W u64 | …
    const words = Math.ceil(npages / 64);
    const second = u32[(s + L.SLOT_META) >>> 2] + words * 8;
    const n = Math.ceil(numPages / 64);
    if (!(bitmap instanceof Uint8Array) || bitmap.byteLength < n * 8) throw new Error("EFAULT");
    u8.set(bitmap.subarray(0, n * 8), second + firstPage / 8);
    let flush = false;
    c.writeLock();
    c.cacheReset();
    const w0 = firstPage / 64;
    for (let w = w0; w < w0 + n; w++) {
      const up = (second >>> 2) + w * 2;
      const ulo = i32[up];
      const uhi = i32[up + 1];
      if ((ulo | uhi) === 0) continue;
      i32[up] = 0;
      i32[up + 1] = 0;
      const lp = (live >>> 2) + w * 2;
      const lo = ulo === 0 ? 0 : Atomics.and(i32, lp, ~ulo) & ulo;
      const hi = uhi === 0 ? 0 : Atomics.and(i32, lp + 1, ~uhi) & uhi;
      if ((lo | hi) === 0) continue;
      flush = true;
      c.rearmMasked(s, asId, w * 64, lo, hi);
    }
    c.cacheStore();
    c.writeUnlock();
    if (flush) c.flushRemoteTlbsDirtyLog();
  };
}

/**
 * A JS userspace collector for one vCPU's ring (its own fetch index, starting at the ring's
 * reset index, or `cursor.fetch` shared with another twin collector of the same ring):
 * collect(onEntry) calls onEntry(slot, offset) per published entry in ring order, marks it
 * RESET, and returns the count. `fetch()` is its fetch index.
 */
export function createJsCollectDirtyRing(vcpu, cursor = { fetch: vcpu.dirtyRingState.resetIndex }) {
  const ring = vcpu.dirtyRing;
  if (ring.byteLength === 0) throw new Error("the VM has no dirty ring");
  const w = new Uint32Array(ring.buffer, ring.byteOffset, ring.byteLength >> 2);
  const i32 = new Int32Array(ring.buffer, ring.byteOffset, ring.byteLength >> 2);
  const mask = ring.byteLength / 16 - 1;
  function collect(onEntry) {
    const fetch = cursor.fetch;
    let n = 0;
    let e = 0;
    for (;;) {
      e = ((fetch + n) & mask) << 2;
      if (w[e] !== DIRTY) break;
      onEntry(w[e + 1], w[e + 2] + w[e + 3] * TWO32);
      w[e] = RESET;
      n++;
    }
    // release the RESETs (as the WASM reaper does with its last store)
    if (n !== 0) Atomics.store(i32, ((fetch + n - 1) & mask) << 2, RESET);
    cursor.fetch = (fetch + n) >>> 0;
    return n;
  }
  collect.fetch = () => cursor.fetch;
  return collect;
}

/**
 * A JS bulk collector for one vCPU's ring (the twin of collectDirtyRingInto, whose batches
 * run in WASM, assembly/ring_reaper.ts dirty_ring_collect; fetch index as for
 * createJsCollectDirtyRing): collectInto(out) appends each
 * published entry's slot and offset to out.slots / out.offsets (a RingEntries: reserve(k)
 * makes room) in ring order, marks it RESET, and returns the count. Same batching as the
 * library: at most `batch` entries per pass and never across the ring's end, the RESETs of
 * a pass released by one Atomics.store.
 */
export function createJsCollectDirtyRingInto(vcpu, cursor = { fetch: vcpu.dirtyRingState.resetIndex }, batch = 1024) {
  const ring = vcpu.dirtyRing;
  if (ring.byteLength === 0) throw new Error("the VM has no dirty ring");
  const w = new Uint32Array(ring.buffer, ring.byteOffset, ring.byteLength >> 2);
  const entries = ring.byteLength / 16;
  function collectInto(out) {
    let fetch = cursor.fetch;
    let total = 0;
    for (;;) {
      const room = entries - (fetch & (entries - 1));
      const max = room < batch ? room : batch;
      out.reserve(max);
      const { slots, offsets } = out;
      const first = (fetch & (entries - 1)) << 2;
      const end = first + (max << 2);
      let at = out.n;
      let e = first;
      for (; e < end && w[e] === DIRTY; e += 4, at++) {
        slots[at] = w[e + 1];
        offsets[at] = w[e + 2] + w[e + 3] * TWO32;
        w[e] = RESET;
      }
      const n = (e - first) >> 2;
      if (n !== 0) Atomics.store(w, e - 4, RESET);
      out.n = at;
      fetch = (fetch + n) >>> 0;
      cursor.fetch = fetch;
      total += n;
      if (n < max) return total;
    }
  }
  collectInto.fetch = () => cursor.fetch;
  return collectInto;
}

/** A JS vm.resetDirtyRings() for `vm`: returns the number of entries reset. */
export function createJsResetDirtyRings(vm) {
  const c = twinCore(vm);

  /** kvm_reset_dirty_gfn: re-arm a (slot, offset, mask) batch unless it no longer fits. */
  function resetGfn(slot, offset, lo, hi) {
    if ((lo | hi) === 0) return;
    const asId = slot >>> 16;
    if (asId >= L.KVM_NR_AS || (slot & 0xffff) >= L.KVM_USER_MEM_SLOTS) return;
    const s = c.slotPtr(slot);
    const u32 = c.u32;
    if (u32[(s + L.SLOT_ACTIVE) >>> 2] === 0) return;
    const npages = u32[(s + L.SLOT_NPAGES) >>> 2] + u32[(s + L.SLOT_NPAGES + 4) >>> 2] * TWO32;
    const fls = hi !== 0 ? 63 - Math.clz32(hi) : 31 - Math.clz32(lo);
    if (offset >= npages || fls >= npages - offset) return;
    c.rearmMasked(s, asId, offset, lo, hi);
  }

  /** kvm_dirty_ring_reset for the vCPU block at v. */
  function resetOne(v) {
    const { i32, u32 } = c;
    const ring = u32[(v + L.VCPU_RING) >>> 2];
    if (ring === 0) return 0;
    const priv = u32[(v + L.VCPU_RING_PRIV) >>> 2];
    const entries = u32[(v + L.VCPU_RING_ENTRIES) >>> 2];
    const sizeMask = entries - 1;
    const dirty = u32[(v + L.VCPU_DIRTY_INDEX) >>> 2];
    const resetIndex = (v + L.VCPU_RESET_INDEX) >>> 2;
    let index = u32[resetIndex];
    let count = 0;
    let curSlot = 0;
    let curOffset = 0;
    let lo = 0; // the 64-bit mask as two halves
    let hi = 0;
    c.writeLock();
    c.cacheReset();
    while (count < entries) {
      const at = (index & sizeMask) * 16;
      const e = (ring + at) >>> 2;
      const flags = i32[e];
      if (flags === DIRTY) break; // not harvested yet
      // past the last push seen: walk it only if its private tag says it was pushed (a push
      // publishes its flags just before it advances dirty_index)
      if (((index - dirty) | 0) >= 0 && ((flags & RESET) === 0 || u32[(priv + at) >>> 2] !== ~index >>> 0)) break;
      const p = (priv + at) >>> 2;
      const nextSlot = u32[p + 1];
      const nextOffset = u32[p + 2] + u32[p + 3] * TWO32;
      Atomics.store(i32, e, 0);
      index = (index + 1) >>> 0;
      Atomics.store(u32, resetIndex, index);
      count++;
      if ((lo | hi) !== 0 && nextSlot === curSlot) {
        const delta = nextOffset - curOffset;
        if (delta >= 0 && delta < 64) {
          if (delta < 32) lo |= 1 << delta;
          else hi |= 1 << (delta - 32);
          continue;
        }
        // backwards: shift the window down only if no set bit falls off the top
        const d = -delta;
        if (d > 0 && d < 64) {
          const fls = hi !== 0 ? 63 - Math.clz32(hi) : 31 - Math.clz32(lo);
          if (fls + d < 64) {
            // (lo, hi) <<= d, then | 1
            if (d >= 32) {
              hi = lo << (d - 32);
              lo = 0;
            } else {
              hi = (hi << d) | (lo >>> (32 - d));
              lo <<= d;
            }
            lo |= 1;
            curOffset = nextOffset;
            continue;
          }
        }
      }
      resetGfn(curSlot, curOffset, lo, hi);
      curSlot = nextSlot;
      curOffset = nextOffset;
      lo = 1;
      hi = 0;
    }
    resetGfn(curSlot, curOffset, lo, hi);
    c.cacheStore();
    c.writeUnlock();
    return count;
  }

  return function resetDirtyRings() {
    c.views();
    const u32 = c.u32;
    const a = vm.addr;
    if (u32[(a + L.VM_RING_SIZE) >>> 2] === 0) throw new Error("EINVAL: the VM has no dirty ring");
    const table = u32[(a + L.VM_VCPU_TABLE) >>> 2] >>> 2;
    const n = u32[(a + L.VM_NR_VCPUS) >>> 2];
    let total = 0;
    for (let k = 0; k < n; k++) total += resetOne(u32[table + k]);
    if (total !== 0) c.flushRemoteTlbsDirtyLog();
    return total;
  };
}
