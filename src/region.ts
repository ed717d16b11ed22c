// Region allocator for the shared memory: first fit over a sorted free list, growing the
// memory on demand (pages are committed lazily by the OS, so a large region costs nothing
// until it is touched). Host-only: regions are handed out and returned on the thread that
// owns the VM (memslot updates, vCPU creation); the core never allocates regions.
//
// Invariant: every byte of a region handed out is zero (regions are zeroed when freed;
// fresh memory from grow() is zero).

const WASM_PAGE = 65536;

export class RegionAllocator {
  /** Free extents [start, end), sorted by start, never adjacent (coalesced). */
  private free: Array<[number, number]> = [];
  private top: number;

  constructor(
    private readonly memory: WebAssembly.Memory,
    start: number,
    private readonly limit: number,
  ) {
    this.top = start;
  }

  /** A zeroed region of `size` bytes aligned to `align`, or 0 if the memory is full. */
  alloc(size: number, align = 8): number {
    size = Math.ceil(size / 8) * 8;
    for (let i = 0; i < this.free.length; i++) {
      const [s, e] = this.free[i];
      const a = Math.ceil(s / align) * align;
      if (a + size > e) continue;
      const pieces: Array<[number, number]> = [];
      if (a > s) pieces.push([s, a]);
      if (a + size < e) pieces.push([a + size, e]);
      this.free.splice(i, 1, ...pieces);
      return a;
    }
    const a = Math.ceil(this.top / align) * align;
    if (a + size > this.limit) return 0;
    const need = Math.ceil((a + size) / WASM_PAGE) - this.memory.buffer.byteLength / WASM_PAGE;
    if (need > 0) this.memory.grow(need);
    if (a > this.top) this.release(this.top, a - this.top, false);
    this.top = a + size;
    return a;
  }

  /** Return a region; it is zeroed so the next owner finds it clean. */
  release(addr: number, size: number, zero = true): void {
    size = Math.ceil(size / 8) * 8;
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
    this.free.splice(i, 0, [start, end]);
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
