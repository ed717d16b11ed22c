// Reference model of dirtlog's semantics in plain TypeScript: slow, small, written from the
// kernel spec (../shared/spec/kvm-tracking.md §1, §2, §5.2–5.6, §9) and the real-kernel
// anchors, for the property test in property.test.ts. No bit tricks: bitmaps are byte
// arrays walked page by page, the page table is a tree of plain objects, slots a Map.
//
// What it models (one VM, no PML, no internal slots; dirty-bitmap mode, or dirty-ring mode
// with or without KVM_CAP_DIRTY_LOG_RING_WITH_BITMAP, see "Dirty ring" below):
//   - two address spaces of memslots: CREATE / MOVE / FLAGS_ONLY / DELETE / no-op, with the
//     kernel's validation order and errno (§1.3), generations (§1.4; a MOVE rejected by the
//     arch max-gfn check has already invalidated and zapped), bitmap lifetime (§1.5) and
//     kvm_mmu_slot_apply_flags (§1.6: eager split + write-protect, nothing with manual
//     protect + INITIALLY_SET, huge-page recovery when logging stops, nothing for read-only
//     slots);
//   - KVM_CAP_MANUAL_DIRTY_LOG_PROTECT2 (§2.2), GET (§2.4) and CLEAR (§2.5) with their checks
//     in order, and the INITIALLY_SET huge-page step of re-arming (§2.6);
//   - a TDP page table per address space (leaves at 4K, 2M, 1G) carrying the
//     (host-writable, MMU-writable, W) triples of §5.2; the fast path (§5.6) and the slow
//     path (§5.5) of guest stores; loads; MMIO exits; zap-all on MOVE/DELETE (§1.4);
//   - a per-page "host page exists" flag: set by guest writes and VMM writes, for a whole
//     frame when it is mapped huge (THP). A read fault maps writable, and logs, iff the host
//     page exists; otherwise it maps the zero page read-only at 4K (not logged). A host-side
//     write (the VMM's, or KVM's own) to a page without a host page zaps the mapping that
//     covers it (copy-on-write, through the mmu notifier) before the page exists.
//
// Conventions shared with the core where the spec is silent (dirtlog's host model):
//   - backed slots: 2 MiB aligned backing, huge mappings up to 2M; unbacked slots: hva = the
//     gpa at CREATE (kept by MOVE), huge mappings up to 1G;
//   - a fault whose target level already holds a table does not collapse it: it maps 4K;
//   - huge-page recovery is the 6.12+ in-place kind (kvm_mmu_recover_huge_pages): a table
//     at a huge level becomes a leaf with the permissions of its first present leaf.
// Not modelled: TLBs (a correct flush protocol is invisible here), the page-table pool's
// capacity (the test keeps clear of it), MMU-notifier invalidations from VMM writes.
//
// Dirty ring (spec §3, anchors "Behaviour observed" / "Two slots on one ring"):
//   - KVM_ENABLE_CAP(DIRTY_LOG_RING / ACQ_REL) with its checks in order (§3.3, no PML: the
//     reserve is 64 entries), WITH_BITMAP (dirtlog offers it on its x86 model: ring enabled,
//     flags 0, no memslot), vCPUs created afterwards get a ring of size/16 entries with
//     soft limit entries − 64 (§3.4);
//   - mark_page_dirty_in_slot routing (§3.8): a logged slot with a running vCPU pushes
//     (as_id << 16 | id, slot-relative offset) to that vCPU's ring; without a vCPU the bitmap
//     gets the bit if the slot has one (WITH_BITMAP), else the report is lost;
//   - push (§3.5) raises the soft-full request at used ≥ soft limit; every guest entry
//     (start of an access, and the re-entry after each fault) exits with
//     KVM_EXIT_DIRTY_RING_FULL while the request is pending and the ring is soft-full (§3.6):
//     the store (or load) that faulted has not retired, its retry after a reset faults again
//     and pushes a duplicate;
//   - the honest collector (§3.9): harvest every DIRTY entry in ring order;
//   - KVM_RESET_DIRTY_RINGS (§3.7): per vCPU in creation order, the harvested prefix is
//     reset with the kernel's coalescing into (slot, offset, 64-bit mask) batches; each batch
//     is re-armed (§2.6) unless its slot is gone or offset + fls(mask) ≥ npages; returns
//     the count, EINVAL without a ring;
//   - GET/CLEAR → ENXIO on a ring VM without WITH_BITMAP (§2.3 step 1); bitmaps exist only
//     when kvm_use_dirty_bitmap (§1.5);
//   - kvm_write_guest / kvm_vcpu_write_guest (§6.4): KVM writes through the memslot mapping
//     (no SPTE, no entry check): EFAULT for no slot or a read-only slot, else the host page
//     exists, the bytes land and the page is marked dirty (ring push with a vCPU, bitmap
//     without).
// Not modelled for the ring: PML, a hard-full ring (used reaching `entries`: the model
// throws), scribbling collectors, kicks.
//
// Conventions: numbers, not bigints, for gfns and page counts (all < 2^53); no bitwise
// operators on values that may exceed 32 bits.

export const PAGE_SIZE = 4096;
export const KVM_MEM_LOG_DIRTY_PAGES = 1;
export const KVM_MEM_READONLY = 2;
export const KVM_DIRTY_LOG_MANUAL_PROTECT_ENABLE = 1;
export const KVM_DIRTY_LOG_INITIALLY_SET = 2;
export const KVM_CAP_MANUAL_DIRTY_LOG_PROTECT2 = 168;
export const KVM_EXIT_MMIO = 6;
export const KVM_EXIT_DIRTY_RING_FULL = 31;
export const KVM_CAP_DIRTY_LOG_RING = 192;
export const KVM_CAP_DIRTY_LOG_RING_ACQ_REL = 223;
export const KVM_CAP_DIRTY_LOG_RING_WITH_BITMAP = 225;
const KVM_DIRTY_RING_RSVD_ENTRIES = 64;
const KVM_DIRTY_RING_MAX_ENTRIES = 65536;

const NR_AS = 2;
const KVM_USER_MEM_SLOTS = 32764;
const KVM_MEM_MAX_NR_PAGES = 0x7fffffff;
const KVM_MAX_GFN = 0xf_ffff_ffff; // 4-level TDP: 48-bit guest physical addresses
const U64 = 1n << 64n;

/** A rejected call: errno name as the kernel would return it. */
export class ModelError extends Error {
  constructor(
    readonly errno: string,
    call: string,
  ) {
    super(`${call}: ${errno}`);
  }
}

/**
 * An ioctl structure field of `bits` bits: a value that does not fit could never reach the
 * kernel, so the call is EINVAL before any of the kernel's own checks.
 */
function field(value: number | bigint, bits: 32 | 64, call: string): bigint {
  if (typeof value === "number" && !Number.isInteger(value)) throw new ModelError("EINVAL", call);
  const v = BigInt(value);
  if (v < 0n || v >= 1n << BigInt(bits)) throw new ModelError("EINVAL", call);
  return v;
}

/**
 * Rules that can be flipped on purpose, to show the property test is able to fail.
 *   readFaultNeverReports  a read fault that maps a page writable does not log it
 *   classicGetNoRearm      classic GET returns the bits but does not write-protect
 *   moveZapsOwnAsOnly      MOVE/DELETE zap only the address space of the slot
 *   ringResetNoRearm       KVM_RESET_DIRTY_RINGS frees the entries but re-arms nothing
 *   ringSoftLimitIsSize    the soft limit is the ring size (no reserve): no exit at entries − 64
 *   ringStoreBeforeExit    a store whose fault fills the ring retires before the exit
 */
export type PlantedBug =
  | "readFaultNeverReports"
  | "classicGetNoRearm"
  | "moveZapsOwnAsOnly"
  | "ringResetNoRearm"
  | "ringSoftLimitIsSize"
  | "ringStoreBeforeExit";

export interface ModelOptions {
  plant?: PlantedBug;
  /**
   * false: the MMU maps 4K only, so no host page is ever a THP (dirtlog's shadow MMU; the
   * host page is as large as the mapping that faulted it in). Default true (the TDP MMU).
   */
  hugePages?: boolean;
}

// ---- page table ----
// A leaf: the (H, M, W) triple of spec §5.2. Zero-page / host-read-only mappings are 0 0 0.
interface Leaf {
  kind: "leaf";
  h: boolean;
  m: boolean;
  w: boolean;
}
interface Table {
  kind: "table";
  e: Array<Leaf | Table | undefined>; // 512 entries
}

function newTable(): Table {
  return { kind: "table", e: new Array(512).fill(undefined) };
}
/** Pages covered by one entry at `level` (1 = 4K, 2 = 2M, 3 = 1G, 4 = 512G). */
function span(level: number): number {
  return 512 ** (level - 1);
}
function indexAt(gfn: number, level: number): number {
  return Math.floor(gfn / span(level)) % 512;
}

export interface Slot {
  as: number;
  id: number;
  base: number; // base gfn
  npages: number;
  flags: number;
  backed: boolean;
  /** userspace_addr >> 12, fixed at CREATE (only its residue modulo the huge sizes matters). */
  hvaPfn: number;
  /** Largest mapping level the host backing allows: 2 (THP) backed, 3 unbacked. */
  maxLevel: number;
  /** Live dirty bitmap, ALIGN(npages, 64) / 8 bytes, or null (no bitmap). */
  bitmap: Uint8Array | null;
  /** Host page exists, one byte per page. */
  present: Uint8Array;
  /** Guest bytes of a backed slot, page index → 4 KiB, pages never written are zero. */
  mem: Map<number, Uint8Array> | null;
}

/** One vCPU's dirty ring (struct kvm_dirty_ring plus what the shared entries hold). */
export interface Ring {
  size: number;
  softLimit: number;
  /** Entries pushed and not yet reset, oldest first (dirty_index − reset_index of them). */
  entries: Array<{ slot: number; offset: number }>;
  /** How many of `entries` (a prefix) the collector has harvested (flags RESET). */
  harvested: number;
  /** Free-running dirty_index and reset_index (u32). */
  dirtyIndex: number;
  resetIndex: number;
  /** KVM_REQ_DIRTY_RING_SOFT_FULL pending. */
  softFullReq: boolean;
}

/** A ring entry as userspace reads it: flags (1 DIRTY, 2 RESET), slot, offset. */
export interface RingEntryView {
  flags: number;
  slot: number;
  offset: number;
}

export interface SpteView {
  level: number;
  h: boolean;
  m: boolean;
  w: boolean;
}

export class RefModel {
  /** KVM_CAP_MANUAL_DIRTY_LOG_PROTECT2 args[0]. */
  manual = 0;
  /** kvm->dirty_ring_size in bytes (0: bitmap mode). */
  ringBytes = 0;
  /** kvm->dirty_ring_with_bitmap. */
  withBitmap = false;
  /** One per vCPU, in creation order (empty rings in bitmap mode: `size` 0). */
  readonly rings: Ring[] = [];
  readonly gen: bigint[] = [0n, 1n];
  /** key = as << 16 | id */
  readonly slots = new Map<number, Slot>();
  private readonly roots: Table[] = [newTable(), newTable()];
  private readonly plant?: PlantedBug;
  /** How often each interesting path ran (coverage of the property test). */
  readonly events = new Map<string, number>();
  private ev(name: string): void {
    this.events.set(name, (this.events.get(name) ?? 0) + 1);
  }

  private readonly hugePages: boolean;

  constructor(opts: ModelOptions = {}) {
    this.plant = opts.plant;
    this.hugePages = opts.hugePages ?? true;
  }

  // ------------------------------------------------------------------ helpers
  private logged(s: Slot): boolean {
    return (s.flags & KVM_MEM_LOG_DIRTY_PAGES) !== 0;
  }
  private readonly_(s: Slot): boolean {
    return (s.flags & KVM_MEM_READONLY) !== 0;
  }

  /** __gfn_to_memslot. */
  slotAt(as: number, gfn: number): Slot | undefined {
    for (const s of this.slots.values()) {
      if (s.as === as && gfn >= s.base && gfn < s.base + s.npages) return s;
    }
    return undefined;
  }

  /** Number of logged slots (nr_memslots_dirty_logging). */
  get nrLogging(): number {
    let n = 0;
    for (const s of this.slots.values()) if (this.logged(s)) n++;
    return n;
  }

  private bitmapBytes(npages: number): number {
    return Math.ceil(npages / 64) * 8;
  }
  private testBit(b: Uint8Array, p: number): boolean {
    return (b[p >> 3] & (1 << (p & 7))) !== 0;
  }
  private setBit(b: Uint8Array, p: number): void {
    b[p >> 3] |= 1 << (p & 7);
  }
  private clearBit(b: Uint8Array, p: number): void {
    b[p >> 3] &= ~(1 << (p & 7));
  }

  /** kvm_use_dirty_bitmap (§3.3). */
  get useDirtyBitmap(): boolean {
    return this.ringBytes === 0 || this.withBitmap;
  }

  /**
   * mark_page_dirty_in_slot (§3.8): only logged slots; on a ring VM a running vCPU (`cpu`)
   * pushes to its ring; otherwise the bitmap, if the slot has one; otherwise lost.
   */
  private markDirty(s: Slot, gfn: number, cpu?: number): void {
    if (!this.logged(s)) return;
    if (this.ringBytes !== 0 && cpu !== undefined) {
      this.push(cpu, ((s.as << 16) | s.id) >>> 0, gfn - s.base);
      if (s.as === 1) this.ev("ring push (SMM slot)");
      return;
    }
    if (s.bitmap) {
      if (this.ringBytes !== 0) this.ev("ring VM: bitmap set (no vCPU, WITH_BITMAP)");
      this.setBit(s.bitmap, gfn - s.base);
    } else if (this.ringBytes !== 0) this.ev("ring: lost (no vCPU, no bitmap)");
  }

  // ------------------------------------------------------------------ dirty ring
  /** KVM_CREATE_VCPU: a ring of ringBytes / 16 entries on a ring VM. Returns the index. */
  createVcpu(): number {
    const size = this.ringBytes / 16;
    const soft = this.plant === "ringSoftLimitIsSize" ? size : size - KVM_DIRTY_RING_RSVD_ENTRIES;
    this.rings.push({
      size,
      softLimit: size ? soft : 0,
      entries: [],
      harvested: 0,
      dirtyIndex: 0,
      resetIndex: 0,
      softFullReq: false,
    });
    return this.rings.length - 1;
  }

  /** kvm_dirty_ring_push (§3.5). */
  private push(cpu: number, slot: number, offset: number): void {
    const r = this.rings[cpu];
    if (r.entries.length >= r.size) throw new Error("model: push into a hard-full ring (not modelled)");
    r.entries.push({ slot, offset });
    r.dirtyIndex = (r.dirtyIndex + 1) >>> 0;
    this.ev("ring push");
    if (r.dirtyIndex % r.size === 0) this.ev("ring wrapped");
    if (r.entries.length > r.softLimit) this.ev("ring push past the soft limit");
    if (r.entries.length >= r.softLimit) {
      if (!r.softFullReq) this.ev("ring soft-full request");
      r.softFullReq = true;
    }
  }

  /**
   * vcpu_enter_guest → kvm_dirty_ring_check_request (§3.6): exit while the request is
   * pending and the ring is still soft-full; else the request is consumed.
   */
  private enterGuest(cpu: number): number {
    const r = this.rings[cpu];
    if (!r?.softFullReq) return 0;
    if (r.entries.length >= r.softLimit) {
      this.ev("ring-full exit");
      return KVM_EXIT_DIRTY_RING_FULL;
    }
    r.softFullReq = false;
    return 0;
  }

  /** The ring's entries from reset_index to dirty_index as userspace sees their flags. */
  ringView(cpu: number): RingEntryView[] {
    const r = this.rings[cpu];
    return r.entries.map((e, i) => ({ flags: i < r.harvested ? 2 : 1, slot: e.slot, offset: e.offset }));
  }

  /** The collector (§3.9): every DIRTY entry in ring order, now RESET. */
  collect(cpu: number): Array<[number, number]> {
    const r = this.rings[cpu];
    if (!r || r.size === 0) return [];
    const out = r.entries.slice(r.harvested).map((e): [number, number] => [e.slot, e.offset]);
    r.harvested = r.entries.length;
    if (out.length) this.ev("ring collect (non-empty)");
    return out;
  }

  /** KVM_RESET_DIRTY_RINGS (§3.7). */
  resetDirtyRings(): number {
    if (this.ringBytes === 0) throw new ModelError("EINVAL", "KVM_RESET_DIRTY_RINGS");
    let total = 0;
    for (const r of this.rings) {
      const batch = r.entries.splice(0, r.harvested);
      r.harvested = 0;
      r.resetIndex = (r.resetIndex + batch.length) >>> 0;
      total += batch.length;
      // kvm_dirty_ring_reset's coalescing: forward within 64 pages, or backward when no
      // set bit falls off the top of the 64-bit mask.
      let curSlot = 0;
      let curOff = 0;
      let mask = 0n;
      for (const e of batch) {
        if (mask !== 0n && e.slot === curSlot) {
          const d = e.offset - curOff;
          if (d >= 0 && d < 64) {
            mask |= 1n << BigInt(d);
            continue;
          }
          if (d > -64 && d < 0 && BigInt.asUintN(64, mask << BigInt(-d)) >> BigInt(-d) === mask) {
            curOff = e.offset;
            mask = BigInt.asUintN(64, mask << BigInt(-d)) | 1n;
            this.ev("ring reset: backward coalesce");
            continue;
          }
        }
        this.resetGfn(curSlot, curOff, mask);
        curSlot = e.slot;
        curOff = e.offset;
        mask = 1n;
      }
      this.resetGfn(curSlot, curOff, mask);
    }
    if (total) this.ev("ring reset (non-empty)");
    return total;
  }

  /** kvm_reset_dirty_gfn: re-arm a batch unless its slot is gone or it reaches past the end. */
  private resetGfn(slot: number, offset: number, mask: bigint): void {
    if (mask === 0n) return;
    const as = slot >>> 16;
    const id = slot & 0xffff;
    if (as >= NR_AS || id >= KVM_USER_MEM_SLOTS) return;
    const s = this.slots.get((as << 16) | id);
    if (!s) {
      this.ev("ring reset: slot gone");
      return;
    }
    const pages: number[] = [];
    for (let i = 0; i < 64; i++) if ((mask >> BigInt(i)) & 1n) pages.push(offset + i);
    if (pages[pages.length - 1] >= s.npages) {
      this.ev("ring reset: batch beyond slot end");
      return;
    }
    if (this.plant === "ringResetNoRearm") return;
    this.ev(`ring reset re-arm${this.logged(s) ? "" : " (slot not logged)"}${pages.length > 1 ? " (batch)" : ""}`);
    this.rearm(s, pages);
  }

  /**
   * kvm_write_guest (cpu undefined: no running vCPU, address space 0) or
   * kvm_vcpu_write_guest (`cpu` in address space `as`), 8 bytes (§6.4).
   */
  kvmWriteGuest(cpu: number | undefined, as: number, gpa: number, value: bigint): void {
    const gfn = Math.floor(gpa / PAGE_SIZE);
    const s = this.slotAt(cpu === undefined ? 0 : as, gfn);
    if (!s || this.readonly_(s)) throw new ModelError("EFAULT", "kvm_write_guest");
    this.hostFaultIn(s, gfn - s.base, gfn - s.base + 1);
    this.memStore(s, gpa, value);
    this.markDirty(s, gfn, cpu);
  }

  // ------------------------------------------------------------------ page table
  /** The leaf covering gfn (or the non-present entry) and its level. */
  private walk(as: number, gfn: number): { leaf: Leaf | undefined; level: number; table: Table; idx: number } {
    let table = this.roots[as];
    let level = 4;
    // Nothing is mapped above the 48-bit guest physical space (no memslot can reach it,
    // §1.3 step 9): such a gfn never aliases a lower one; its fault finds no slot (MMIO).
    if (gfn > KVM_MAX_GFN) return { leaf: undefined, level, table, idx: -1 };
    for (;;) {
      const idx = indexAt(gfn, level);
      const e = table.e[idx];
      if (e === undefined || e.kind === "leaf") return { leaf: e, level, table, idx };
      table = e;
      level--;
    }
  }

  /** What the model maps at gfn (for debugging against vm.spte()). */
  spte(as: number, gfn: number): SpteView | undefined {
    const w = this.walk(as, gfn);
    return w.leaf ? { level: w.level, h: w.leaf.h, m: w.leaf.m, w: w.leaf.w } : undefined;
  }

  /** Page-table pages in use (two roots + every table), as the core's pool counts them. */
  tablePages(): number {
    const count = (t: Table): number => {
      let n = 1;
      for (const e of t.e) if (e && e.kind === "table") n += count(e);
      return n;
    };
    return count(this.roots[0]) + count(this.roots[1]);
  }

  /** Pages an operation could take from the pool at most (eager/INITIALLY_SET splits). */
  splitCostBound(): number {
    let n = 0;
    const visit = (t: Table, level: number): void => {
      for (const e of t.e) {
        if (!e) continue;
        if (e.kind === "table") visit(e, level - 1);
        else if (level === 3) n += 513;
        else if (level === 2) n += 1;
      }
    };
    for (const r of this.roots) visit(r, 4);
    return n + 8;
  }

  /** A huge leaf becomes a table of 512 children with the same permissions. */
  private split(table: Table, idx: number): Table {
    const leaf = table.e[idx] as Leaf;
    this.ev("split");
    const child = newTable();
    for (let i = 0; i < 512; i++) child.e[i] = { kind: "leaf", h: leaf.h, m: leaf.m, w: leaf.w };
    table.e[idx] = child;
    return child;
  }

  /**
   * The entry where a fault for gfn installs its leaf, at level `target` if possible:
   * tables are created on the way and huge leaves above the target are split. As in the
   * core's TDP walk, a table already present at the target level is not collapsed: the
   * fault then maps 4K below it.
   */
  private entryFor(as: number, gfn: number, target: number): { table: Table; idx: number; level: number } {
    let table = this.roots[as];
    let level = 4;
    for (;;) {
      const idx = indexAt(gfn, level);
      const e = table.e[idx];
      if (level === target) {
        if (e === undefined || e.kind === "leaf") return { table, idx, level };
        target = 1;
      }
      if (e === undefined) {
        table.e[idx] = newTable();
        continue;
      }
      if (e.kind === "leaf") {
        this.split(table, idx);
        continue;
      }
      table = e;
      level--;
    }
  }

  /** Visit every leaf overlapping [start, end) with its level and first gfn. */
  private leavesIn(
    as: number,
    start: number,
    end: number,
    fn: (leaf: Leaf, level: number, gfn: number, table: Table, idx: number) => void,
  ): void {
    const visit = (t: Table, level: number, base: number): void => {
      const sp = span(level);
      for (let i = 0; i < 512; i++) {
        const g = base + i * sp;
        if (g + sp <= start || g >= end) continue;
        const e = t.e[i];
        if (!e) continue;
        if (e.kind === "table") visit(e, level - 1, g);
        else fn(e, level, g, t, i);
      }
    };
    visit(this.roots[as], 4, 0);
  }

  /** Eager split: every huge leaf overlapping [start, end) down to 4K (children in range). */
  private splitRange(as: number, start: number, end: number): void {
    for (const level of [3, 2]) {
      const todo: Array<[Table, number]> = [];
      this.leavesIn(as, start, end, (_l, lv, _g, t, i) => {
        if (lv === level) todo.push([t, i]);
      });
      for (const [t, i] of todo) this.split(t, i);
    }
  }

  /** Dirty-log write protection of a range: clear W on every leaf (M kept: state 1 1 0). */
  private wrprotRange(as: number, start: number, end: number): void {
    this.leavesIn(as, start, end, (leaf) => {
      leaf.w = false;
    });
  }

  /** Shadow-style write protection of the leaf covering gfn if its level >= minLevel. */
  private writeProtectGfn(as: number, gfn: number, minLevel: number): void {
    const w = this.walk(as, gfn);
    if (w.leaf && w.level >= minLevel) {
      w.leaf.w = false;
      w.leaf.m = false;
    }
  }

  /**
   * A host-side write touches slot pages [first, last): each without a host page gets one by
   * copy-on-write, and the mmu notifier first zaps the leaf covering it (its zero-page
   * mapping, or a read-only slot's mapping, at whatever level) so that the guest's next
   * access faults and sees the new page (mmu_notifier.ts host_fault_in).
   */
  private hostFaultIn(s: Slot, first: number, last: number): void {
    for (let p = first; p < last; p++) {
      if (s.present[p]) continue;
      const w = this.walk(s.as, s.base + p);
      if (w.leaf) w.table.e[w.idx] = undefined;
      s.present[p] = 1;
    }
  }

  /** kvm_mmu_zap_all_fast: every mapping of the VM, both address spaces. */
  private zapAll(as: number): void {
    for (let a = 0; a < NR_AS; a++) {
      if (this.plant === "moveZapsOwnAsOnly" && a !== as) continue;
      this.roots[a] = newTable();
    }
  }

  // ------------------------------------------------------------------ huge pages
  /**
   * lpage_info + host mapping level: a mapping of `level` at gfn's frame is allowed iff the
   * backing allows that level, the frame lies inside the slot and base_gfn ≡ hva >> 12
   * modulo the frame size (spec §1.7).
   */
  private levelAllowed(s: Slot, gfn: number, level: number): boolean {
    if (level > s.maxLevel) return false;
    const sp = span(level);
    const frame = gfn - (gfn % sp);
    if (frame < s.base || frame + sp > s.base + s.npages) return false;
    return s.base % sp === s.hvaPfn % sp;
  }

  /** kvm_mmu_hugepage_adjust: never huge while dirty-logged (§4.3, §9.4). */
  private maxMappingLevel(s: Slot, gfn: number): number {
    if (this.logged(s)) return 1;
    if (this.levelAllowed(s, gfn, 3)) return 3;
    if (this.levelAllowed(s, gfn, 2)) return 2;
    return 1;
  }

  // ------------------------------------------------------------------ KVM_ENABLE_CAP
  enableCap(cap: number, arg0: number | bigint, flags = 0): void {
    const call = "KVM_ENABLE_CAP";
    field(arg0, 64, call);
    field(flags, 32, call);
    if (cap === KVM_CAP_DIRTY_LOG_RING || cap === KVM_CAP_DIRTY_LOG_RING_ACQ_REL) {
      // §3.3: args[0] reaches a u32 size; flags are not checked
      const size = Number(BigInt.asUintN(32, BigInt(arg0)));
      if (size === 0 || (size & (size - 1)) !== 0) throw new ModelError("EINVAL", call);
      if (size < KVM_DIRTY_RING_RSVD_ENTRIES * 16 || size < PAGE_SIZE) throw new ModelError("EINVAL", call);
      if (size > KVM_DIRTY_RING_MAX_ENTRIES * 16) throw new ModelError("E2BIG", call);
      if (this.ringBytes !== 0) throw new ModelError("EINVAL", call);
      if (this.rings.length !== 0) throw new ModelError("EINVAL", call);
      this.ringBytes = size;
      return;
    }
    if (cap === KVM_CAP_DIRTY_LOG_RING_WITH_BITMAP) {
      if (this.ringBytes === 0 || flags !== 0) throw new ModelError("EINVAL", call);
      if (this.slots.size !== 0) throw new ModelError("EINVAL", call);
      this.withBitmap = true;
      return;
    }
    if (cap !== KVM_CAP_MANUAL_DIRTY_LOG_PROTECT2) throw new ModelError("EINVAL", call);
    const v = BigInt.asUintN(64, BigInt(arg0));
    // flags must be 0; args[0] ⊆ {ENABLE}, plus INITIALLY_SET only with ENABLE: 0, 1, 3.
    if (flags !== 0 || (v !== 0n && v !== 1n && v !== 3n)) throw new ModelError("EINVAL", call);
    this.manual = Number(v);
  }

  // ------------------------------------------------------------------ memslots
  setUserMemoryRegion(r: {
    slot: number;
    flags: number;
    guestPhysAddr: number | bigint;
    memorySize: number | bigint;
    backed: boolean;
  }): void {
    const call = "KVM_SET_USER_MEMORY_REGION";
    const slotArg = Number(field(r.slot, 32, call));
    const flags = Number(field(r.flags, 32, call));
    const gpa = field(r.guestPhysAddr, 64, call);
    const size = field(r.memorySize, 64, call);
    const as = slotArg >>> 16;
    const id = slotArg & 0xffff;
    // §1.3, in order (all EINVAL up to the overlap check)
    if (flags & ~(KVM_MEM_LOG_DIRTY_PAGES | KVM_MEM_READONLY)) throw new ModelError("EINVAL", call);
    if (id >= KVM_USER_MEM_SLOTS) throw new ModelError("EINVAL", call);
    if (size % 4096n !== 0n || gpa % 4096n !== 0n) throw new ModelError("EINVAL", call);
    if (as >= NR_AS) throw new ModelError("EINVAL", call);
    if (gpa + size >= U64) throw new ModelError("EINVAL", call);
    const npagesBig = size / 4096n;
    if (npagesBig > BigInt(KVM_MEM_MAX_NR_PAGES)) throw new ModelError("EINVAL", call);
    const npages = Number(npagesBig);
    const baseBig = gpa / 4096n;
    const key = (as << 16) | id;
    const old = this.slots.get(key);

    if (npages === 0) {
      if (!old) throw new ModelError("EINVAL", call);
      // DELETE: INVALID copy published, zap-all, then the removal published.
      this.gen[as] += 4n;
      this.zapAll(as);
      this.slots.delete(key);
      this.ev("DELETE");
      return;
    }

    let change: "create" | "move" | "flags";
    if (!old) {
      change = "create";
    } else {
      if (npages !== old.npages || ((flags ^ old.flags) & KVM_MEM_READONLY) !== 0 || r.backed !== old.backed) {
        throw new ModelError("EINVAL", call);
      }
      if (baseBig !== BigInt(old.base)) change = "move";
      else if (flags !== old.flags) change = "flags";
      else return; // nothing to do: no swap, generation unchanged
    }
    if (change !== "flags") {
      // EEXIST: another id of the same address space meets [base, base + npages)
      const end = baseBig + npagesBig;
      for (const s of this.slots.values()) {
        if (s.as !== as || s.id === id) continue;
        if (BigInt(s.base) < end && BigInt(s.base + s.npages) > baseBig) throw new ModelError("EEXIST", call);
      }
      if (baseBig + npagesBig - 1n > BigInt(KVM_MAX_GFN)) {
        // x86 kvm_arch_prepare_memory_region. A MOVE has already been through
        // kvm_invalidate_memslot (INVALID copy published, zap-all) when it fails here;
        // kvm_set_memslot then re-publishes the old slot: two swaps, old slot kept.
        if (change === "move") {
          this.ev("MOVE rejected (max gfn)");
          this.gen[as] += 4n;
          this.zapAll(as);
        }
        throw new ModelError("EINVAL", call);
      }
    }
    const base = Number(baseBig);

    if (change === "create") {
      const s: Slot = {
        as,
        id,
        base,
        npages,
        flags,
        backed: r.backed,
        // dirtlog's backing is 2 MiB aligned; an unbacked slot's hva is its gpa at CREATE
        hvaPfn: r.backed ? 0 : base,
        maxLevel: !this.hugePages ? 1 : r.backed ? 2 : 3,
        bitmap: null,
        present: new Uint8Array(npages),
        mem: r.backed ? new Map() : null,
      };
      this.updateBitmap(s);
      this.slots.set(key, s);
      this.ev("CREATE");
      this.gen[as] += 2n;
      return;
    }
    const s = old as Slot;
    if (change === "move") {
      this.ev(`MOVE${s.bitmap ? " with bitmap" : ""}`);
      this.gen[as] += 4n;
      this.zapAll(as);
      s.base = base;
      s.flags = flags;
      this.updateBitmap(s); // bits keep their slot offsets (§1.5)
      return;
    }
    // FLAGS_ONLY
    const wasLogged = this.logged(s);
    this.ev(`FLAGS_ONLY logging ${wasLogged ? "off" : "on"}${this.readonly_(s) ? " (RO)" : ""}`);
    s.flags = flags;
    this.updateBitmap(s);
    this.gen[as] += 2n;
    const nowLogged = this.logged(s);
    // §1.6 step 2: nothing for read-only slots
    if (wasLogged !== nowLogged && !this.readonly_(s)) this.applyFlags(s, nowLogged);
  }

  /** kvm_prepare_memory_region / commit: keep, drop or allocate the bitmap (§1.5). */
  private updateBitmap(s: Slot): void {
    if (!this.logged(s)) {
      s.bitmap = null;
      return;
    }
    if (s.bitmap) return; // reused, bits preserved
    if (!this.useDirtyBitmap) return; // ring-only VM: no bitmap
    s.bitmap = new Uint8Array(this.bitmapBytes(s.npages));
    if (this.manual & KVM_DIRTY_LOG_INITIALLY_SET) for (let p = 0; p < s.npages; p++) this.setBit(s.bitmap, p);
  }

  /** kvm_mmu_slot_apply_flags for a FLAGS_ONLY change toggling dirty logging (§1.6). */
  private applyFlags(s: Slot, logging: boolean): void {
    const start = s.base;
    const end = s.base + s.npages;
    if (!logging) {
      this.recoverHugePages(s);
      return;
    }
    if (this.manual & KVM_DIRTY_LOG_INITIALLY_SET) return; // all pages already count as dirty
    this.splitRange(s.as, start, end); // eager_page_split
    this.wrprotRange(s.as, start, end);
  }

  /**
   * Logging turned off: kvm_mmu_recover_huge_pages (6.12+; spec §1.6 step 3, §5.9). Pre-order
   * over the slot's range, every table at the 1G or 2M level whose frame may be mapped huge
   * (frame inside the slot, congruent, allowed by the backing) is replaced in place by a
   * huge leaf with the permissions of the first present leaf below it (make_huge_spte);
   * a table with no leaf is left alone. Nothing is unmapped. The huge host page behind a
   * recovered frame exists (THP), as for a huge fault.
   */
  private recoverHugePages(s: Slot): void {
    const start = s.base;
    const end = s.base + s.npages;
    const firstLeaf = (t: Table): Leaf | undefined => {
      for (const e of t.e) {
        if (!e) continue;
        if (e.kind === "leaf") return e;
        const l = firstLeaf(e);
        if (l) return l;
      }
      return undefined;
    };
    const visit = (t: Table, level: number, base: number): void => {
      const sp = span(level);
      for (let i = 0; i < 512; i++) {
        const g = base + i * sp;
        const e = t.e[i];
        if (!e || e.kind === "leaf" || g + sp <= start || g >= end) continue;
        if (level <= 3 && this.levelAllowed(s, g, level)) {
          const leaf = firstLeaf(e);
          if (leaf) {
            t.e[i] = { kind: "leaf", h: leaf.h, m: leaf.m, w: leaf.w };
            s.present.fill(1, g - s.base, g - s.base + sp);
            this.ev(`recover ${level === 3 ? "1G" : "2M"} (logging off)`);
            continue;
          }
        }
        if (level > 2) visit(e, level - 1, g);
      }
    };
    visit(this.roots[s.as], 4, 0);
  }

  generation(as: number): bigint {
    return this.gen[as];
  }

  // ------------------------------------------------------------------ dirty log
  /** Common checks of GET/CLEAR (§2.3): EINVAL for the id, ENOENT without a bitmap. */
  private dirtyLogSlot(slotArg: number, call: string, firstPage?: bigint): Slot {
    if (!this.useDirtyBitmap) {
      this.ev("GET/CLEAR ENXIO");
      throw new ModelError("ENXIO", call); // §2.3 step 1
    }
    const as = slotArg >>> 16;
    const id = slotArg & 0xffff;
    if (as >= NR_AS || id >= KVM_USER_MEM_SLOTS) throw new ModelError("EINVAL", call);
    if (firstPage !== undefined && firstPage % 64n !== 0n) throw new ModelError("EINVAL", call);
    const s = this.slots.get((as << 16) | id);
    if (!s?.bitmap) throw new ModelError("ENOENT", call);
    return s;
  }

  /**
   * kvm_arch_mmu_enable_log_dirty_pt_masked (§2.6) for the pages of one 64-bit word:
   * `pages` are slot offsets, all in word `offset / 64`, ascending.
   */
  private rearm(s: Slot, pages: number[]): void {
    if (pages.length === 0) return;
    if (this.manual & KVM_DIRTY_LOG_INITIALLY_SET) {
      this.ev("re-arm with INITIALLY_SET step");
      const start = s.base + pages[0];
      const end = s.base + pages[pages.length - 1];
      this.splitRange(s.as, start, end + 1);
      this.writeProtectGfn(s.as, start, 2);
      if (Math.floor(start / 512) !== Math.floor(end / 512)) this.writeProtectGfn(s.as, end, 2);
    }
    // no PML: clear W on the 4K leaves (huge leaves are skipped)
    for (const p of pages) {
      const w = this.walk(s.as, s.base + p);
      if (w.leaf && w.level === 1) w.leaf.w = false;
    }
  }

  /** KVM_GET_DIRTY_LOG (§2.4). */
  getDirtyLog(slotArg: number): Uint8Array {
    const s = this.dirtyLogSlot(slotArg >>> 0, "KVM_GET_DIRTY_LOG");
    const bitmap = s.bitmap as Uint8Array;
    if (this.manual & KVM_DIRTY_LOG_MANUAL_PROTECT_ENABLE) {
      this.ev("GET manual");
      return bitmap.slice();
    }
    this.ev("GET classic");
    const out = new Uint8Array(bitmap.length);
    for (let w = 0; w < bitmap.length / 8; w++) {
      const pages: number[] = [];
      for (let p = w * 64; p < w * 64 + 64; p++) if (this.testBit(bitmap, p)) pages.push(p);
      if (pages.length === 0) continue;
      for (const p of pages) {
        this.clearBit(bitmap, p);
        this.setBit(out, p);
      }
      if (this.plant !== "classicGetNoRearm") this.rearm(s, pages);
    }
    return out;
  }

  /** KVM_CLEAR_DIRTY_LOG (§2.5). `user` is the userspace buffer. */
  clearDirtyLog(slotArg: number, firstPage: number | bigint, numPages: number | bigint, user: Uint8Array): void {
    const call = "KVM_CLEAR_DIRTY_LOG";
    const slot = Number(field(slotArg, 32, call));
    const first = field(firstPage, 64, call);
    const num = field(numPages, 32, call); // __u32 num_pages
    const s = this.dirtyLogSlot(slot, call, first);
    const npages = BigInt(s.npages);
    if (first > npages || num > npages - first || (num < npages - first && num % 64n !== 0n)) {
      throw new ModelError("EINVAL", call);
    }
    const n = Number((num + 63n) / 64n) * 8;
    if (user.byteLength < n) throw new ModelError("EFAULT", call);
    const bitmap = s.bitmap as Uint8Array;
    const f = Number(first);
    for (let k = 0; k < n / 8; k++) {
      const pages: number[] = [];
      for (let i = 0; i < 64; i++) {
        const bit = k * 64 + i;
        if (!this.testBit(user, bit)) continue;
        const p = f + bit;
        if (p < s.npages && this.testBit(bitmap, p)) pages.push(p);
      }
      for (const p of pages) this.clearBit(bitmap, p);
      if (pages.length) this.ev("CLEAR re-arm");
      this.rearm(s, pages);
    }
  }

  // ------------------------------------------------------------------ guest accesses
  private memValue(s: Slot, gpa: number): bigint {
    if (!s.mem) return 0n;
    const off = gpa - s.base * PAGE_SIZE;
    const page = s.mem.get(Math.floor(off / PAGE_SIZE));
    if (!page) return 0n;
    return new DataView(page.buffer, page.byteOffset).getBigUint64(off % PAGE_SIZE, true);
  }
  private memPage(s: Slot, index: number): Uint8Array {
    const mem = s.mem as Map<number, Uint8Array>;
    let page = mem.get(index);
    if (!page) {
      page = new Uint8Array(PAGE_SIZE);
      mem.set(index, page);
    }
    return page;
  }
  private memStore(s: Slot, gpa: number, value: bigint): void {
    if (!s.mem) return;
    const off = gpa - s.base * PAGE_SIZE;
    const page = this.memPage(s, Math.floor(off / PAGE_SIZE));
    new DataView(page.buffer, page.byteOffset).setBigUint64(off % PAGE_SIZE, value, true);
  }

  /**
   * Slow page fault (§5.5): map gfn at the allowed level. A write, or a read of a page
   * whose host page exists, installs a writable SPTE (1 1 1), which sets the host pages of
   * the whole frame (THP) and is logged in a dirty-logged slot; any other read maps the
   * zero page read-only at 4K (0 0 0). Returns an exit reason or 0 (walk again).
   */
  private slowFault(as: number, gpa: number, write: boolean, cpu: number): number {
    const gfn = Math.floor(gpa / PAGE_SIZE);
    const s = this.slotAt(as, gfn);
    if (!s) {
      this.ev("MMIO (no slot)");
      return KVM_EXIT_MMIO;
    }
    const ro = this.readonly_(s);
    if (write && ro) {
      this.ev("MMIO (read-only slot)");
      return KVM_EXIT_MMIO;
    }
    const writable = !ro && (write || s.present[gfn - s.base] === 1);
    let level = this.maxMappingLevel(s, gfn);
    if (!writable && !ro) level = 1; // the shared zero page is 4K
    const at = this.entryFor(as, gfn, level);
    const old = at.table.e[at.idx];
    if (old && old.kind === "leaf" && (!write || old.w)) return 0;
    // read-only slot: host mapping read-only (0 0 0); zero page: also 0 0 0
    at.table.e[at.idx] = {
      kind: "leaf",
      h: writable,
      m: writable,
      w: writable,
    };
    this.ev(
      `map ${["", "4K", "2M", "1G"][at.level]} ${writable ? "writable" : "read-only"} (${write ? "write" : "read"})`,
    );
    if (write && at.level < level) this.ev("map below target (table kept)");
    if (writable) {
      const sp = span(at.level);
      const frame = gfn - (gfn % sp);
      s.present.fill(1, frame - s.base, frame - s.base + sp);
      if (write || this.plant !== "readFaultNeverReports") this.markDirty(s, gfn, cpu);
      if (!write && this.logged(s)) this.ev("read fault reported");
    }
    return 0;
  }

  /**
   * One 8-byte guest store from vCPU `cpu` in address space `as` (one KVM_RUN); returns the
   * exit reason. Every fault is a VM exit and re-enters (enterGuest), where a soft-full ring
   * exits before the store retires.
   */
  write(as: number, gpa: number, value: bigint, cpu = 0): number {
    const gfn = Math.floor(gpa / PAGE_SIZE);
    let r = this.enterGuest(cpu);
    if (r) return r;
    for (let tries = 0; tries < 8; tries++) {
      const w = this.walk(as, gfn);
      if (w.leaf) {
        if (w.leaf.w) {
          const s = this.slotAt(as, gfn) as Slot;
          this.memStore(s, gpa, value);
          return 0;
        }
        if (w.leaf.m) {
          // fast_page_fault (§5.6): lockless W restore, refused for huge SPTEs of a
          // dirty-logged slot; the cmpxchg winner logs the page.
          const s = this.slotAt(as, gfn);
          if (s && (w.level === 1 || !this.logged(s))) {
            this.ev(`fast fault${this.logged(s) ? " (logged)" : ""}`);
            w.leaf.w = true;
            this.markDirty(s, gfn, cpu);
            r = this.enterGuest(cpu);
            if (r && this.plant === "ringStoreBeforeExit") this.memStore(s, gpa, value);
            if (r) return r;
            continue;
          }
        }
      }
      r = this.slowFault(as, gpa, true, cpu);
      if (r) return r;
      r = this.enterGuest(cpu);
      if (r && this.plant === "ringStoreBeforeExit") {
        const s = this.slotAt(as, gfn);
        if (s) this.memStore(s, gpa, value);
      }
      if (r) return r;
    }
    throw new Error("model: write did not converge");
  }

  /**
   * One 8-byte guest load (one KVM_RUN); reads of mapped pages never fault (and never
   * report). An exit (MMIO, ring full) reads 0.
   */
  read(as: number, gpa: number, cpu = 0): { value: bigint; exit: number } {
    const gfn = Math.floor(gpa / PAGE_SIZE);
    let r = this.enterGuest(cpu);
    if (r) return { value: 0n, exit: r };
    for (let tries = 0; tries < 8; tries++) {
      const w = this.walk(as, gfn);
      if (w.leaf) {
        const s = this.slotAt(as, gfn) as Slot;
        return { value: this.memValue(s, gpa), exit: 0 };
      }
      r = this.slowFault(as, gpa, false, cpu);
      if (!r) r = this.enterGuest(cpu);
      if (r) return { value: 0n, exit: r };
    }
    throw new Error("model: read did not converge");
  }

  /** The VMM writes through its mapping: host pages exist, bytes land; nothing reported. */
  writeUserMemory(slotArg: number, offset: number, data: Uint8Array): void {
    const call = "writeUserMemory";
    const key = slotArg >>> 0;
    const s = this.slots.get(key);
    if (!s || !Number.isInteger(offset) || offset < 0) throw new ModelError("EINVAL", call);
    const first = Math.floor(offset / PAGE_SIZE);
    const last = Math.ceil((offset + data.byteLength) / PAGE_SIZE);
    if (first > s.npages || last - first > s.npages - first) throw new ModelError("EINVAL", call);
    this.hostFaultIn(s, first, last);
    if (!s.mem) return;
    for (let i = 0; i < data.byteLength; i++) {
      const o = offset + i;
      this.memPage(s, Math.floor(o / PAGE_SIZE))[o % PAGE_SIZE] = data[i];
    }
  }
}
