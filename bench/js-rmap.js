// js-rmap — the shadow MMU's pte_list (assembly/rmap.ts) in plain JavaScript over a VM's
// shared memory: the baseline bench/rmap.js measures the WASM core's rmap operations
// against, in the same run, and checks before timing (byte-identical memory, same results).
//
// Same layout, same algorithm, same memory effects as the core:
//
//   head (u64)             0 empty; bit 0 clear: the one SPTE's address; bit 0 set:
//                          (head & ~1) is the head pte_list_desc
//   pte_list_desc (128 B)  +0 more u64, +8 spte_count u32, +12 tail_count u32,
//                          +16 sptes[14] u64; tail descriptors are always full
//   descriptor pool        32-byte header: lock u32 @0, free @4, next @8, capacity @12,
//                          used @16, base @20; then `capacity` descriptors at base; a free
//                          descriptor's first u32 links the next free one
//   iterator (8 B)         desc u32 @0 (0 for a bare pointer), pos u32 @4
//
//   poolInit(pool, base, capacity)   pte_list_pool_init
//   poolUsed(pool)                   pte_list_pool_used
//   add(pool, head, sptep)           pte_list_add: the count before the add (1 when a bare
//                                    pointer became a descriptor), -1 if no descriptor
//   remove(pool, head, sptep)        pte_list_remove: 1, or 0 if sptep is not on the list
//   count(head)                      pte_list_count
//   first(head, iter), next(iter)    rmap_get_first / rmap_get_next: an SPTE address, 0 at
//                                    the end
//   rmapWriteProtect(head, iter)     rmap_write_protect(vm, head, pt_protect = false, iter):
//                                    spte_write_protect (clear W) on every SPTE of the list
//                                    through the iterator; true if a W was cleared (a TLB
//                                    flush is due)
//
// Translation choices (as in js-get-dirty-log.js and js-twins.js): u64 fields are two u32
// halves (addresses are below 4 GiB: the core's usize is 32 bits, so it reads the low half of
// an address field and writes the high half as 0); plain loads and stores are typed-array
// accesses (a new descriptor is zeroed with sixteen Float64Array stores of +0.0, all zero
// bits: TypedArray fill on shared memory costs ~35 ns for 128 bytes, the unrolled stores
// ~6); the pool's spinlock is Atomics.compareExchange / Atomics.store, as the core's
// atomic.cmpxchg / atomic.store; spte_write_protect's atomic and-not is Atomics.and on the
// SPTE's low 32-bit half (W is bit 1), after a plain read of it (the core's atomic.load, a
// plain mov on x86). The caller holds whatever lock the list needs (mmu_lock for write in
// the kernel); the debug build's lockdep assertion is not modelled.
//
// The typed-array views are made once; call refresh() after the memory may have grown
// (allocRegion, createVm, a new slot) and before using addresses beyond the old end.

const EXT = 14; // PTE_LIST_EXT
const SPTE_W = 1 << 1;

/** A plain-JavaScript pte_list / rmap over `memory` (a WebAssembly.Memory, e.g. vm.memory). */
export function createJsRmap(memory) {
  let buffer = null;
  let u32 = null;
  let i32 = null;
  let f64 = null;

  function refresh() {
    const b = memory.buffer;
    if (b !== buffer || b.byteLength !== buffer.byteLength) {
      buffer = b;
      u32 = new Uint32Array(b);
      i32 = new Int32Array(b);
      f64 = new Float64Array(b);
    }
  }
  refresh();

  // ---- the descriptor pool (desc_alloc / desc_free) ----
  function poolInit(pool, base, capacity) {
    const p = pool >>> 2;
    u32.fill(0, p, p + 8); // PTE_POOL_SIZE bytes
    u32[p + 3] = capacity;
    u32[p + 5] = base;
  }

  const poolUsed = (pool) => u32[(pool >>> 2) + 4];

  function descAlloc(pool) {
    const p = pool >>> 2;
    while (Atomics.compareExchange(i32, p, 0, 1) !== 0) {}
    let d = u32[p + 1];
    if (d !== 0) {
      u32[p + 1] = u32[d >>> 2];
    } else {
      const next = u32[p + 2];
      if (next < u32[p + 3]) {
        u32[p + 2] = next + 1;
        d = (u32[p + 5] + next * 128) >>> 0;
      }
    }
    if (d !== 0) u32[p + 4] = u32[p + 4] + 1;
    Atomics.store(i32, p, 0);
    if (d !== 0) zeroDesc(d >>> 3);
    return d;
  }

  /** memory.fill(d, 0, 128): sixteen 8-byte zero stores (+0.0 is all zero bits; 6× faster than fill). */
  function zeroDesc(q) {
    f64[q] = 0;
    f64[q + 1] = 0;
    f64[q + 2] = 0;
    f64[q + 3] = 0;
    f64[q + 4] = 0;
    f64[q + 5] = 0;
    f64[q + 6] = 0;
    f64[q + 7] = 0;
    f64[q + 8] = 0;
    f64[q + 9] = 0;
    f64[q + 10] = 0;
    f64[q + 11] = 0;
    f64[q + 12] = 0;
    f64[q + 13] = 0;
    f64[q + 14] = 0;
    f64[q + 15] = 0;
  }

  function descFree(pool, d) {
    const p = pool >>> 2;
    while (Atomics.compareExchange(i32, p, 0, 1) !== 0) {}
    u32[d >>> 2] = u32[p + 1];
    u32[p + 1] = d;
    u32[p + 4] = u32[p + 4] - 1;
    Atomics.store(i32, p, 0);
  }

  // ---- add / remove / count ----
  function add(pool, head, sptep) {
    const h = head >>> 2;
    const lo = u32[h];
    if ((lo | u32[h + 1]) === 0) {
      u32[h] = sptep;
      u32[h + 1] = 0;
      return 0;
    }
    if ((lo & 1) === 0) {
      const d = descAlloc(pool);
      if (d === 0) return -1;
      const w = d >>> 2;
      u32[w + 4] = lo; // sptes[0]: the bare pointer (usize: the low half)
      u32[w + 5] = 0;
      u32[w + 6] = sptep; // sptes[1]
      u32[w + 7] = 0;
      u32[w + 2] = 2;
      u32[h] = d | 1;
      u32[h + 1] = 0;
      return 1;
    }
    let d = (lo & ~1) >>> 0;
    let w = d >>> 2;
    const count = (u32[w + 3] + u32[w + 2]) >>> 0;
    if (u32[w + 2] === EXT) {
      // tail descriptors are kept full: a new head in front of the full one
      const n = descAlloc(pool);
      if (n === 0) return -1;
      const nw = n >>> 2;
      u32[nw] = d; // more
      u32[nw + 1] = 0;
      u32[nw + 3] = count; // tail_count
      u32[h] = n | 1;
      u32[h + 1] = 0;
      d = n;
      w = nw;
    }
    const c = u32[w + 2];
    u32[w + 4 + 2 * c] = sptep;
    u32[w + 5 + 2 * c] = 0;
    u32[w + 2] = c + 1;
    return count | 0;
  }

  /** pte_list_desc_remove_entry: fill entry i of d with the head's last entry; free an empty head. */
  function descRemoveEntry(pool, h, w, i) {
    const hd = (u32[h] & ~1) >>> 0;
    const hw = hd >>> 2;
    const j = (u32[hw + 2] - 1) >>> 0;
    u32[w + 4 + 2 * i] = u32[hw + 4 + 2 * j];
    u32[w + 5 + 2 * i] = 0;
    u32[hw + 4 + 2 * j] = 0;
    u32[hw + 5 + 2 * j] = 0;
    u32[hw + 2] = j;
    if (j !== 0) return;
    const mlo = u32[hw];
    const mhi = u32[hw + 1];
    if ((mlo | mhi) === 0) {
      u32[h] = 0;
      u32[h + 1] = 0;
    } else {
      u32[h] = mlo | 1;
      u32[h + 1] = mhi;
    }
    descFree(pool, hd);
  }

  function remove(pool, head, sptep) {
    const s = sptep >>> 0;
    const h = head >>> 2;
    const lo = u32[h];
    if ((lo | u32[h + 1]) === 0) return 0;
    if ((lo & 1) === 0) {
      if (lo !== s) return 0;
      u32[h] = 0;
      u32[h + 1] = 0;
      return 1;
    }
    let d = (lo & ~1) >>> 0;
    while (d !== 0) {
      const w = d >>> 2;
      const n = u32[w + 2];
      for (let i = 0; i < n; i++) {
        if (u32[w + 4 + 2 * i] === s) {
          descRemoveEntry(pool, h, w, i);
          return 1;
        }
      }
      d = u32[w]; // more (usize: the low half)
    }
    return 0;
  }

  function count(head) {
    const h = head >>> 2;
    const lo = u32[h];
    if ((lo | u32[h + 1]) === 0) return 0;
    if ((lo & 1) === 0) return 1;
    const w = (lo & ~1) >>> 2;
    return (u32[w + 2] + u32[w + 3]) >>> 0;
  }

  // ---- the iterator ----
  function first(head, iter) {
    const h = head >>> 2;
    const lo = u32[h];
    if ((lo | u32[h + 1]) === 0) return 0;
    const it = iter >>> 2;
    if ((lo & 1) === 0) {
      u32[it] = 0;
      return lo;
    }
    const d = (lo & ~1) >>> 0;
    u32[it] = d;
    u32[it + 1] = 0;
    return u32[(d >>> 2) + 4];
  }

  function next(iter) {
    const it = iter >>> 2;
    let d = u32[it];
    if (d === 0) return 0;
    const pos = u32[it + 1];
    if (pos < EXT - 1) {
      const s = u32[(d >>> 2) + 6 + 2 * pos]; // sptes[pos + 1]
      u32[it + 1] = pos + 1;
      if (s !== 0) return s;
    }
    d = u32[d >>> 2]; // more
    u32[it] = d;
    if (d === 0) return 0;
    u32[it + 1] = 0;
    return u32[(d >>> 2) + 4]; // a tail descriptor is full: entry 0 exists
  }

  // ---- what the MMU does through an rmap ----
  /** rmap_write_protect with pt_protect = false: clear W on every SPTE; true if one had W. */
  function rmapWriteProtect(head, iter) {
    let flush = false;
    for (let sptep = first(head, iter); sptep !== 0; sptep = next(iter)) {
      const p = sptep >>> 2;
      if ((i32[p] & SPTE_W) === 0) continue; // spte_write_protect: nothing to clear
      Atomics.and(i32, p, ~SPTE_W);
      flush = true;
    }
    return flush;
  }

  return { refresh, poolInit, poolUsed, add, remove, count, first, next, rmapWriteProtect };
}
