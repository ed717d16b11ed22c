// Region allocator for the shared memory: first fit over a sorted free list, growing the
// memory on demand (pages are committed lazily by the OS, so a large region costs nothing
// until it is touched). Host-only: regions are handed out and returned on the thread that
// owns the VM (memslot updates, vCPU creation); the core never allocates regions.
//
// Invariant: every byte of a region handed out is zero (regions are zeroed when freed;
// fresh memory from grow() is zero; reset() zeroes what the memory's previous owner may
// have written, before the memory gets a new allocator).

const WASM_PAGE = 65536;

export class RegionAllocator {
  /** Free extents [start, end) below `top`, sorted by start, never adjacent (coalesced). */
  private free: Array<[number, number]> = [];
  /** Regions handed out and not released: address → bytes (rounded up to 8). */
  private readonly live = new Map<number, number>();
  private top: number;
  /** reset() ran: the memory belongs to someone else; alloc fails and release does nothing. */
  private retired = false;

  constructor(
    private readonly memory: WebAssembly.Memory,
    start: number,
    private readonly limit: number,
  ) {
    this.top = start;
  }

  /** A zeroed region of `size` bytes aligned to `align`, or 0 if the memory is full. */
  alloc(size: number, align = 8): number {
    if (this.retired) return 0;
    size = Math.ceil(size / 8) * 8;
    for (let i = 0; i < this.free.length; i++) {
      const [s, e] = this.free[i];
      const a = Math.ceil(s / align) * align;
      if (a + size > e) continue;
      const pieces: Array<[number, number]> = [];
      if (a > s) pieces.push([s, a]);
      if (a + size < e) pieces.push([a + size, e]);
      this.free.splice(i, 1, ...pieces);
      this.live.set(a, size);
      return a;
    }
    const a = Math.ceil(this.top / align) * align;
    if (a + size > this.limit) return 0;
    const need = Math.ceil((a + size) / WASM_PAGE) - this.memory.buffer.byteLength / WASM_PAGE;
    if (need > 0) this.memory.grow(need);
    if (a > this.top) this.release(this.top, a - this.top, false);
    this.top = a + size;
    this.live.set(a, size);
    return a;
  }

  /** Return a region; it is zeroed so the next owner finds it clean. */
  release(addr: number, size: number, zero = true): void {
    if (this.retired) return;
    size = Math.ceil(size / 8) * 8;
    this.live.delete(addr);
    if (zero) new Uint8Array(this.memory.buffer, addr, size).fill(0);
    let end = addr + size;
    let start = addr;
    let i = this.free.findIndex(([s]) => s > addr);
    if (i < 0) i = this.free.length;
    if (i < this.free.length && this.free[i][0] === end) {
      end = this.free[i][1];
      this.free.splice(i, 1);
    }
    if (i > 0 && this.free[i - 1][1] === start) {
      start = this.free[i - 1][0];
      this.free.splice(i - 1, 1);
      i--;
    }
    // free space that reaches the top joins the untouched tail (it is zero too): a large
    // region freed there can be taken again whole, with any alignment
    if (end === this.top) this.top = start;
    else this.free.splice(i, 0, [start, end]);
  }

  /**
   * The memory's owner is done with it: zero every live region over the extents `written`
   * gives for it (by region address; default: the whole region) — the only bytes its owner
   * may have made non-zero — and retire this allocator. Memory outside live regions is
   * already zero (freed regions were zeroed; rollbacks and alignment gaps were never
   * written). Pages outside the extents are not even read, so they stay uncommitted.
   */
  reset(written: Map<number, Array<[number, number]>>): void {
    for (const [addr, size] of this.live) {
      for (const [s, e] of written.get(addr) ?? [[addr, addr + size]]) scrub(this.memory, s, e);
    }
    this.live.clear();
    this.free = [];
    this.retired = true;
  }
}

/**
 * Zero the non-zero 4 KiB pages of [start, end) (rounded out to whole words). A page that
 * is all zero is only read: on most kernels an untouched page then maps the shared zero
 * page, but some commit a page on any touch — hence callers pass only the extents that may
 * have been written.
 */
export function scrub(memory: WebAssembly.Memory, start: number, end: number): void {
  const w = new Int32Array(memory.buffer);
  const last = Math.min(w.length, Math.ceil(end / 4));
  for (let i = Math.floor(start / 4); i < last; ) {
    const e = Math.min(last, (Math.floor(i / 1024) + 1) * 1024); // the end of i's page
    let any = 0;
    for (let k = i; k < e; k++) any |= w[k];
    if (any !== 0) w.fill(0, i, e);
    i = e;
  }
}

/**
 * Allocations that all stay or none do (check first, then act): alloc() each region a call
 * needs; if one fails, every region taken so far goes back and the call fails with
 * nothing changed. `keep()` ends the batch once the call is sure to succeed.
 */
export class RegionBatch {
  private taken: Array<[number, number]> = [];

  constructor(
    private readonly regions: RegionAllocator,
    private readonly onFailure: (what: string, bytes: number) => never,
  ) {}

  alloc(size: number, align: number, what: string): number {
    const a = this.regions.alloc(size, align);
    if (!a) {
      this.rollback();
      this.onFailure(what, size);
    }
    this.taken.push([a, size]);
    return a;
  }

  rollback(): void {
    // nothing was written to them yet: they are still zero
    for (const [a, size] of this.taken.reverse()) this.regions.release(a, size, false);
    this.taken = [];
  }

  keep(): void {
    this.taken = [];
  }
}
