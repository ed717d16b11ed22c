// Paged guests (vcpu.setPaging): the CPU's walk of the guest's 4-level tables under the TDP
// MMU, and under the shadow MMU the guest's tables shadowed by indirect pages (spec §4.4,
// §4.5, §5.8): upper-level tables write-tracked (guest writes to them emulated, then
// kvm_mmu_track_write drops the entry written, or the whole page on write flooding), leaf
// tables write-protected and going unsync at the guest's first write (synced again at a
// CR3 load or an INVLPG), every leaf on its gfn's rmap. Both MMUs report the same dirty
// pages for the same guest program: the property at the end runs them in lockstep.
import fc from "fast-check";
import { describe, expect, it } from "vitest";
import { errnoOf, pagesOf, vmFactory } from "./helpers.js";
import {
  KVM_CAP_DIRTY_LOG_RING,
  KVM_EXIT_EXCEPTION,
  KVM_EXIT_INTERNAL_ERROR,
  KVM_MEM_LOG_DIRTY_PAGES,
  type LogMode,
  type PageTables,
  type Vcpu,
  type Vm,
  buildPageTables,
  harvestDirtyRings,
  logMode,
} from "../src/index.js";
import * as L from "../src/layout.js";
import { plantedCore } from "./planted-core.js";

const { newVm } = vmFactory();
const PAGE = 4096;
const MIB = 1 << 20;
const LOG = KVM_MEM_LOG_DIRTY_PAGES;
const DATA = 0x4000_0000; // the data's gva (1 GiB)
const TABLES_GVA = 0x8000_0000; // where the guest maps its own page tables (2 GiB)
const TABLES_AT = 3 * MIB; // the tables' offset in slot 0 (gpa 3 MiB)

type Mode = "long" | "32bit";

interface Guest {
  vm: Vm;
  v: Vcpu;
  pt: PageTables;
  mode: Mode;
  /** The gva at which the guest writes the gPTE that lives at gpa `gpteGpa`. */
  gvaOf(gpteGpa: bigint): bigint;
  /**
   * The guest sets the gPTE at gpa `gpteGpa` with one 8-byte store (a 32-bit guest's
   * neighbouring 4-byte gPTE is read and written back unchanged). The exit reason.
   */
  setGpte(gpteGpa: bigint, value: bigint): number;
}

/**
 * A 4 MiB logged slot: 16 data pages at gva DATA → gpa 0x1000, the tables mapped at
 * TABLES_GVA. With `log`, the VM is set up for that tracking mode (capabilities first).
 */
async function guest(
  mmu: "tdp" | "shadow",
  wasm?: WebAssembly.Module,
  mode: Mode = "long",
  log?: LogMode,
): Promise<Guest> {
  const vm = await newVm({ mmu, ...(wasm ? { wasm } : {}) });
  log?.createVmDone(vm);
  vm.setUserMemoryRegion({
    slot: 0,
    flags: log?.slotFlags ?? LOG,
    guestPhysAddr: 0,
    memorySize: 4 * MIB,
    backed: true,
  });
  const pt = buildPageTables(
    vm,
    0,
    TABLES_AT,
    [
      { gva: DATA, gpa: 0x1000, pages: 16 },
      { gva: TABLES_GVA, gpa: TABLES_AT, pages: 16 },
    ],
    { mode },
  );
  const v = vm.createVcpu(0);
  v.setPaging({ cr3: pt.cr3, mode });
  if (log) log.collectDirtyPages(vm, [0], () => {});
  else vm.getDirtyLog(0); // start clean
  const gvaOf = (g: bigint) => BigInt(TABLES_GVA) + g - BigInt(TABLES_AT);
  const setGpte = (g: bigint, value: bigint) => {
    if (mode === "long") return v.writeGuest(gvaOf(g), value);
    const at = g & ~7n;
    const old = v.readGuest(gvaOf(at));
    const next = g === at ? (old & ~0xffff_ffffn) | value : (old & 0xffff_ffffn) | (value << 32n);
    return v.writeGuest(gvaOf(at), next);
  };
  return { vm, v, pt, mode, gvaOf, setGpte };
}

const PRESENT_RW = 0x67n; // P | RW | US | A | D

describe.each([
  ["tdp", "long"],
  ["shadow", "long"],
  ["tdp", "32bit"],
  ["shadow", "32bit"],
] as const)("a paged guest on the %s MMU (%s)", (mmu, mode) => {
  it("accesses go through the guest's tables: the page reported is the gpa's", async () => {
    const g = await guest(mmu, undefined, mode);
    expect(g.v.writeGuest(DATA + 3 * PAGE + 8, 7n)).toBe(0);
    expect(g.v.readGuest(DATA + 3 * PAGE + 8)).toBe(7n);
    expect(pagesOf(g.vm.getDirtyLog(0))).toEqual([4]); // gpa 0x4000
    expect(g.v.paging).toEqual({ cr3: g.pt.cr3, mode });
    g.v.setPaging(null);
    expect(g.v.readGuest(0x4008)).toBe(7n); // unpaged again: gva = gpa
    expect(g.v.paging).toBeNull();
  });

  it("a gva the tables do not map, or a write through a read-only gPTE, is a guest page fault", async () => {
    const g = await guest(mmu, undefined, mode);
    expect(g.v.writeGuest(DATA + 64 * PAGE, 1n)).toBe(KVM_EXIT_EXCEPTION);
    expect(g.v.faultAddress).toBe(BigInt(DATA + 64 * PAGE));
    expect(g.v.exitReason).toBe(KVM_EXIT_EXCEPTION);
    const leaf = g.pt.leafGpte(DATA + 2 * PAGE) ?? 0n;
    g.vm.writeUserMemory(0, Number(leaf), new Uint8Array([0x65])); // clear R/W (the VMM's write: nothing reported)
    g.v.invlpg(DATA + 2 * PAGE);
    expect(g.v.readGuest(DATA + 2 * PAGE)).toBe(0n);
    expect(g.v.writeGuest(DATA + 2 * PAGE, 1n)).toBe(KVM_EXIT_EXCEPTION);
    expect(pagesOf(g.vm.getDirtyLog(0))).toEqual([]);
    expect(errnoOf(() => g.v.setPaging({ cr3: 0x1001, mode }))).toBe("EINVAL");
    expect(errnoOf(() => g.v.setPaging({ cr3: 0x1000, mode: "pae" as "long" }))).toBe("EINVAL");
    if (mode === "32bit") expect(errnoOf(() => g.v.setPaging({ cr3: 1n << 32n, mode }))).toBe("EINVAL");
  });

  it("the guest remaps a page by writing its own leaf gPTE, then INVLPG: the new gpa is used and reported, and so is the table page", async () => {
    const g = await guest(mmu, undefined, mode);
    expect(g.v.writeGuest(DATA + 5 * PAGE, 5n)).toBe(0); // gpa 0x6000
    const leaf = g.pt.leafGpte(DATA + 5 * PAGE) ?? 0n;
    expect(g.setGpte(leaf, 0x30000n | PRESENT_RW)).toBe(0); // now gpa 0x30000
    g.v.invlpg(DATA + 5 * PAGE);
    expect(g.v.writeGuest(DATA + 5 * PAGE, 9n)).toBe(0);
    expect(g.v.readGuest(DATA + 5 * PAGE)).toBe(9n);
    expect(pagesOf(g.vm.getDirtyLog(0))).toEqual([6, 0x30, Number(leaf >> 12n)]);
    const mem = g.vm.guestMemory(0) as Uint8Array;
    expect(new DataView(mem.buffer, mem.byteOffset).getBigUint64(0x30000, true)).toBe(9n);
    expect(new DataView(mem.buffer, mem.byteOffset).getBigUint64(0x6000, true)).toBe(5n);
  });
});

describe("the shadow MMU shadows the guest's tables (§4.4, §4.5, §5.8)", () => {
  it("builds one indirect page per guest table walked; a leaf table written by the guest goes unsync (no emulation)", async () => {
    const g = await guest("shadow");
    const before = g.vm.stats.shadowPages;
    expect(g.v.writeGuest(DATA, 1n)).toBe(0);
    expect(g.vm.stats.shadowPages).toBe(before + 3); // below the root (the PML4's page): the PDPT's, PD's and PT's
    expect(g.vm.rmapCount(0, 1)).toBe(1);
    const leaf = g.pt.leafGpte(DATA) ?? 0n;
    expect(g.v.writeGuest(g.gvaOf(leaf) + 8n, 0x31000n | PRESENT_RW)).toBe(0); // the next gPTE: gva DATA + 4096
    expect(g.vm.stats.emulatedWrites).toBe(0n);
    // the gPTE changed for an entry the shadow page had not filled: the next access faults it in
    expect(g.v.writeGuest(DATA + PAGE, 2n)).toBe(0);
    expect(pagesOf(g.vm.getDirtyLog(0))).toContain(0x31);
  });

  it("writes to an upper-level guest table are emulated and drop the entry they changed; a third without a walk zaps the page (write flooding)", async () => {
    const g = await guest("shadow");
    expect(g.v.writeGuest(DATA, 1n)).toBe(0);
    const pd =
      g.pt.tables.find((t) => t.level === 2 && t.gva === BigInt(DATA) - (BigInt(DATA) % (1n << 30n)))?.gpa ?? 0n;
    expect(pd).not.toBe(0n);
    expect(g.v.readGuest(g.gvaOf(pd))).not.toBe(0n); // the tables' own mapping is shadowed too
    const pages = g.vm.stats.shadowPages;
    // PDE 1 of the data's PD (gva DATA + 2 MiB): unused; writing it is emulated
    expect(g.v.writeGuest(g.gvaOf(pd) + 8n, 0n)).toBe(0);
    expect(g.vm.stats.emulatedWrites).toBe(1n);
    expect(g.vm.stats.shadowPages).toBe(pages);
    expect(g.v.writeGuest(g.gvaOf(pd) + 8n, 0n)).toBe(0);
    expect(g.v.writeGuest(g.gvaOf(pd) + 8n, 0n)).toBe(0); // the third since a walk used the PD: zapped
    expect(g.vm.stats.emulatedWrites).toBe(3n);
    expect(g.vm.stats.shadowPages).toBe(pages - 1);
    expect(g.v.readGuest(DATA)).toBe(1n); // the walk builds it again
    expect(g.vm.stats.shadowPages).toBe(pages);
    // every emulated write reported the table page (at each write)
    expect(pagesOf(g.vm.getDirtyLog(0))).toContain(Number(pd >> 12n));
  });

  it("a CR3 load syncs the unsync pages: a gPTE cleared by the guest unmaps its page", async () => {
    const g = await guest("shadow");
    expect(g.v.writeGuest(DATA + 7 * PAGE, 1n)).toBe(0);
    const leaf = g.pt.leafGpte(DATA + 7 * PAGE) ?? 0n;
    expect(g.v.writeGuest(g.gvaOf(leaf), 0n)).toBe(0); // not present any more; the page went unsync
    expect(g.vm.rmapCount(0, 8)).toBe(1); // the stale SPTE is still there until a sync
    g.v.setPaging({ cr3: g.pt.cr3, mode: "long" }); // MOV CR3: sync
    expect(g.vm.rmapCount(0, 8)).toBe(0);
    expect(g.v.writeGuest(DATA + 7 * PAGE, 2n)).toBe(KVM_EXIT_EXCEPTION);
  });

  it("a gfn mapped at two gvas is on its rmap twice; GET re-protects both", async () => {
    const vm = await newVm({ mmu: "shadow" });
    vm.setUserMemoryRegion({ slot: 0, flags: LOG, guestPhysAddr: 0, memorySize: 4 * MIB, backed: true });
    const pt = buildPageTables(vm, 0, TABLES_AT, [
      { gva: DATA, gpa: 0x1000, pages: 4 },
      { gva: DATA + MIB, gpa: 0x1000, pages: 4 },
    ]);
    const v = vm.createVcpu(0);
    v.setPaging({ cr3: pt.cr3, mode: "long" });
    expect(v.writeGuest(DATA, 1n)).toBe(0);
    expect(v.writeGuest(DATA + MIB, 2n)).toBe(0);
    expect(vm.rmapCount(0, 1)).toBe(2);
    expect(pagesOf(vm.getDirtyLog(0))).toContain(1);
    const fast = v.stats.fastFaults;
    expect(v.writeGuest(DATA, 3n)).toBe(0);
    expect(v.writeGuest(DATA + MIB, 4n)).toBe(0);
    expect(v.stats.fastFaults).toBe(fast + 2n); // both SPTEs had lost W
    expect(pagesOf(vm.getDirtyLog(0))).toEqual([1]);
  });

  it("an rmap past RMAP_RECYCLE_THRESHOLD (1000) when an SPTE is added is zapped whole, the new SPTE with it (§5.7)", async () => {
    const vm = await newVm({ mmu: "shadow", mmuPoolBytes: 4 << 20 });
    vm.setUserMemoryRegion({ slot: 0, flags: LOG, guestPhysAddr: 0, memorySize: 4 * MIB, backed: true });
    const pt = buildPageTables(vm, 0, TABLES_AT, [{ gva: DATA, gpa: 0x1000, pages: 1 }]);
    // 1002 gvas for gpa 0x1000: one gPTE after another in the data's leaf tables
    const aliases = buildPageTables(
      vm,
      0,
      TABLES_AT + 16 * PAGE,
      Array.from({ length: 1002 }, (_, i) => ({ gva: DATA + i * PAGE, gpa: 0x1000, pages: 1 })),
    );
    const v = vm.createVcpu(0);
    v.setPaging({ cr3: aliases.cr3, mode: "long" });
    for (let i = 0; i < 1001; i++) expect(v.readGuest(DATA + i * PAGE)).toBe(0n);
    expect(vm.rmapCount(0, 1)).toBe(1001);
    expect(v.writeGuest(DATA + 1001 * PAGE, 5n)).toBe(0); // count before the add: 1001 > 1000
    expect(vm.rmapCount(0, 1)).toBe(1); // zapped, then the access faulted its SPTE back
    expect(v.readGuest(DATA)).toBe(5n);
    expect(pt.cr3).not.toBe(aliases.cr3);
  });

  it("a write that creates the host page drops the zero-page mappings of its other gvas (copy-on-write)", async () => {
    const vm = await newVm({ mmu: "shadow" });
    vm.setUserMemoryRegion({ slot: 0, flags: LOG, guestPhysAddr: 0, memorySize: 4 * MIB, backed: true });
    const pt = buildPageTables(vm, 0, TABLES_AT, [
      { gva: DATA, gpa: 0x1000, pages: 1 },
      { gva: DATA + MIB, gpa: 0x1000, pages: 1 },
    ]);
    const v = vm.createVcpu(0);
    v.setPaging({ cr3: pt.cr3, mode: "long" });
    expect(v.readGuest(DATA + MIB)).toBe(0n); // the zero page, read-only
    expect(v.writeGuest(DATA, 6n)).toBe(0);
    expect(v.readGuest(DATA + MIB)).toBe(6n);
  });

  it("a memslot DELETE zaps every shadow page; the vCPU drops its invalid root at entry; the guest goes on, reported", async () => {
    const g = await guest("shadow");
    expect(g.v.writeGuest(DATA, 1n)).toBe(0);
    const pages = g.vm.stats.shadowPages; // the 2 direct roots, then the PML4's, PDPT's, PD's and PT's pages
    expect(pages).toBe(6);
    g.vm.setUserMemoryRegion({ slot: 1, guestPhysAddr: 1 << 30, memorySize: MIB });
    const zapped = g.vm.stats.mmuShadowZapped;
    g.vm.setUserMemoryRegion({ slot: 1, guestPhysAddr: 1 << 30, memorySize: 0 });
    // the root in use is zapped (emptied, invalid) but stays until its vCPU lets go
    expect(g.vm.stats.mmuShadowZapped - zapped).toBe(4);
    expect(g.vm.stats.shadowPages).toBe(3);
    expect(g.vm.rmapCount(0, 1)).toBe(0);
    expect(g.v.writeGuest(DATA, 2n)).toBe(0); // KVM_REQ_MMU_FREE_OBSOLETE_ROOTS, then a new root
    expect(g.vm.stats.shadowPages).toBe(pages);
    expect(pagesOf(g.vm.getDirtyLog(0))).toEqual([1]);
  });
});

// ------------------------------------------------------------------ lockstep property
type Op =
  | { t: "write"; page: number; value: number }
  | { t: "read"; page: number }
  | { t: "remap"; page: number; to: number } // the guest writes the gPTE of DATA + page, then INVLPG
  | { t: "unmap"; page: number } // the guest clears the gPTE, then reloads CR3
  | { t: "pd"; index: number } // the guest writes an (unused) PDE of the data's PD: emulated on the shadow MMU
  | { t: "get" }
  | { t: "cr3" }
  | { t: "slot" }; // the VMM adds a memslot and deletes it again: a zap of everything

const opArb: fc.Arbitrary<Op> = fc.oneof(
  { weight: 8, arbitrary: fc.record({ t: fc.constant("write" as const), page: fc.nat(15), value: fc.nat(1000) }) },
  { weight: 3, arbitrary: fc.record({ t: fc.constant("read" as const), page: fc.nat(15) }) },
  {
    weight: 2,
    arbitrary: fc.record({
      t: fc.constant("remap" as const),
      page: fc.nat(15),
      to: fc.integer({ min: 0x20, max: 0x2f }),
    }),
  },
  { weight: 1, arbitrary: fc.record({ t: fc.constant("unmap" as const), page: fc.nat(15) }) },
  { weight: 1, arbitrary: fc.record({ t: fc.constant("pd" as const), index: fc.integer({ min: 1, max: 511 }) }) },
  { weight: 3, arbitrary: fc.constant({ t: "get" as const }) },
  { weight: 1, arbitrary: fc.constant({ t: "cr3" as const }) },
  { weight: 1, arbitrary: fc.constant({ t: "slot" as const }) },
);

/**
 * One op on one guest; the outcome the other MMU must match (exit reason, value, log). A
 * harvest through `log` compares the set of pages reported (a ring also holds one entry per
 * emulated write, which only the shadow MMU makes, for the guest's upper-level tables).
 */
function step(g: Guest, op: Op, log?: LogMode): string {
  switch (op.t) {
    case "write":
      return `w${g.v.writeGuest(DATA + op.page * PAGE + 8, BigInt(op.value))}`;
    case "read": {
      const value = g.v.readGuest(DATA + op.page * PAGE + 8);
      return `r${g.v.exitReason}:${value}`;
    }
    case "remap": {
      const leaf = g.pt.leafGpte(DATA + op.page * PAGE) ?? 0n;
      const r = g.setGpte(leaf, (BigInt(op.to) << 12n) | PRESENT_RW);
      g.v.invlpg(DATA + op.page * PAGE);
      return `m${r}`;
    }
    case "unmap": {
      const leaf = g.pt.leafGpte(DATA + op.page * PAGE) ?? 0n;
      const r = g.setGpte(leaf, 0n);
      g.v.setPaging({ cr3: g.pt.cr3, mode: g.mode });
      return `u${r}`;
    }
    case "pd": {
      // unused entries of the PD above the data: long mode, PDE `index` of the data's PD
      // (the data is PDE 0); 32-bit, two PDEs of the guest's one PD past 513 (PDE 256 maps
      // the data, PDE 512 the tables' own mapping)
      const pd = g.pt.tables.find((t) => t.level === 2)?.gpa ?? 0n;
      const at = g.mode === "long" ? BigInt(op.index * 8) : BigInt(2056 + 8 * (op.index % 250));
      return `p${g.v.writeGuest(g.gvaOf(pd) + at, 0n)}`;
    }
    case "get": {
      if (!log) return `g${pagesOf(g.vm.getDirtyLog(0)).join(",")}`;
      const pages = new Set<number>();
      log.collectDirtyPages(g.vm, [0], (_slot, offset) => pages.add(offset));
      return `g${[...pages].sort((a, b) => a - b).join(",")}`;
    }
    case "cr3":
      g.v.setPaging({ cr3: g.pt.cr3, mode: g.mode });
      return "c";
    case "slot":
      g.vm.setUserMemoryRegion({ slot: 7, guestPhysAddr: 1 << 30, memorySize: MIB });
      g.vm.setUserMemoryRegion({ slot: 7, guestPhysAddr: 1 << 30, memorySize: 0 });
      return "s";
  }
}

/** Run ops on a TDP guest and a shadow guest; the first step whose outcomes differ, or null. */
/**
 * Run ops on a TDP guest and a shadow guest; the first step whose outcomes differ, or null.
 *
 * Every outcome must be equal, with one exception the kernel has too: KVM logs a read
 * fault pessimistically (it maps a page whose host page exists writable, and reports it),
 * and the shadow MMU has one SPTE per gva where the TDP MMU has one per gfn — so a read
 * through a gva whose SPTE the shadow MMU dropped (an alias, a synced gPTE) faults and is
 * reported there and not under the TDP MMU. A harvest may therefore differ by pages that
 * were only read since the last one; every page the program wrote must be in both.
 */
async function lockstep(
  ops: Op[],
  shadowWasm?: WebAssembly.Module,
  mode: Mode = "long",
  log?: LogMode,
): Promise<string | null> {
  const tdp = await guest("tdp", undefined, mode, log);
  const shadow = await guest("shadow", shadowWasm, mode, log);
  // the guest's mapping (both guests see the same tables): data page → gfn
  const map = new Map<number, number>(Array.from({ length: 16 }, (_, p) => [p, 1 + p]));
  const pd = Number((tdp.pt.tables.find((t) => t.level === 2)?.gpa ?? 0n) >> 12n);
  const leafGfn = (p: number) => Number((tdp.pt.leafGpte(DATA + p * PAGE) ?? 0n) >> 12n);
  let written = new Set<number>();
  let read = new Set<number>();
  for (const [i, op] of [...ops, { t: "get" } as Op].entries()) {
    const a = step(tdp, op, log);
    const b = step(shadow, op, log);
    const at = `step ${i + 1} ${JSON.stringify(op)}: tdp ${a}, shadow ${b}`;
    if (op.t !== "get") {
      if (a !== b) return at;
      const ok = a.endsWith("0") || a === "c" || a === "s" || a.startsWith("r0:");
      if (op.t === "write" && ok) written.add(map.get(op.page) ?? -1);
      if (op.t === "read" && ok) read.add(map.get(op.page) ?? -1);
      if ((op.t === "remap" || op.t === "unmap") && ok) {
        written.add(leafGfn(op.page));
        if (op.t === "remap") map.set(op.page, op.to);
        else map.delete(op.page);
      }
      if (op.t === "pd" && ok) written.add(pd);
      continue;
    }
    if (a === b) {
      written = new Set();
      read = new Set();
      continue;
    }
    const pa = new Set(a.slice(1).split(",").filter(Boolean).map(Number));
    const pb = new Set(b.slice(1).split(",").filter(Boolean).map(Number));
    for (const w of written) if (w >= 0 && (!pa.has(w) || !pb.has(w))) return `${at} (page ${w} was written)`;
    for (const x of [...pa, ...pb]) {
      if (pa.has(x) !== pb.has(x) && (!read.has(x) || written.has(x))) return `${at} (page ${x} was not only read)`;
    }
    written = new Set();
    read = new Set();
  }
  return null;
}

describe("the TDP and shadow MMUs report the same pages for the same guest program", () => {
  it.each(["long", "32bit"] as const)(
    "random %s-mode programs: data writes and reads, the guest remapping and unmapping its pages, PDE writes, GETs, CR3 loads, memslot changes",
    async (mode) => {
      await fc.assert(
        fc.asyncProperty(fc.array(opArb, { minLength: 1, maxLength: 40 }), async (ops) => {
          const diff = await lockstep(ops, undefined, mode);
          if (diff) throw new Error(diff);
        }),
        { numRuns: Number(process.env.DIRTLOG_PAGING_RUNS ?? 150) },
      );
    },
  );

  it.each([
    ["clear-log (manual protect + INITIALLY_SET, CLEAR)", logMode({ kind: "clear-log", initiallySet: true })],
    ["dirty-ring 4096 (collect + reset)", logMode({ kind: "dirty-ring", ringEntries: 4096 })],
  ] as const)("the same in %s, both paging modes", async (_name, log) => {
    await fc.assert(
      fc.asyncProperty(
        fc.constantFrom<Mode>("long", "32bit"),
        fc.array(opArb, { minLength: 1, maxLength: 40 }),
        async (mode, ops) => {
          const diff = await lockstep(ops, undefined, mode, log);
          if (diff) throw new Error(diff);
        },
      ),
      { numRuns: Number(process.env.DIRTLOG_PAGING_RUNS ?? 150) },
    );
  });

  it("the same ring entries in the same order for a program without page-table writes", async () => {
    const entries = async (mmu: "tdp" | "shadow") => {
      const vm = await newVm({ mmu });
      vm.enableCap(KVM_CAP_DIRTY_LOG_RING, [4096 * 16]);
      vm.setUserMemoryRegion({ slot: 0, flags: LOG, guestPhysAddr: 0, memorySize: 4 * MIB, backed: true });
      const pt = buildPageTables(vm, 0, TABLES_AT, [{ gva: DATA, gpa: 0x1000, pages: 64 }]);
      const v = vm.createVcpu(0);
      v.setPaging({ cr3: pt.cr3, mode: "long" });
      const out: number[] = [];
      let seed = 11;
      for (let round = 0; round < 5; round++) {
        for (let k = 0; k < 100; k++) {
          seed = (seed * 1103515245 + 12345) & 0x7fffffff;
          expect(v.writeGuest(DATA + (seed % 64) * PAGE, BigInt(k))).toBe(0);
        }
        out.push(...(harvestDirtyRings(vm).offsets.get(0) ?? []), -1);
      }
      return out;
    };
    expect(await entries("shadow")).toEqual(await entries("tdp"));
  });

  it.skipIf(process.env.DIRTLOG_CORE === "debug")(
    "fails for a shadow MMU that does not sync the unsync pages at INVLPG (planted core)",
    async () => {
      const ops: Op[] = [
        { t: "write", page: 3, value: 1 },
        { t: "remap", page: 3, to: 0x25 },
        { t: "write", page: 3, value: 2 },
      ];
      expect(await lockstep(ops)).toBeNull();
      const wasm = plantedCore(
        [{ file: "fault.ts", from: "(w & 7) == 1 && shadow_sync_one(vm, w & ~7)", to: "false" }],
        "release",
      );
      expect(await lockstep(ops, wasm)).toMatch(/^step 4/);
    },
  );
});

describe("a 32-bit guest on the shadow MMU: one 1024-entry guest table, several shadow pages told apart by role.quadrant (§5.8)", () => {
  it("the guest PD's quarters are 4 pages (quadrants 0-3 below the PAE root); a guest PT's halves 2 (quadrants 0-1)", async () => {
    const vm = await newVm({ mmu: "shadow" });
    vm.setUserMemoryRegion({ slot: 0, flags: LOG, guestPhysAddr: 0, memorySize: 4 * MIB, backed: true });
    const pt = buildPageTables(
      vm,
      0,
      TABLES_AT,
      [
        { gva: 0x0010_0000, gpa: 0x1000, pages: 1 }, // quarter 0
        { gva: DATA, gpa: 0x2000, pages: 1 }, // quarter 1, the first half of its guest PT
        { gva: DATA + 2 * MIB, gpa: 0x3000, pages: 1 }, // the same guest PT, second half
      ],
      { mode: "32bit" },
    );
    expect(pt.tables.map((t) => t.level)).toEqual([2, 1, 1]); // one PD, two PTs
    const v = vm.createVcpu(0);
    v.setPaging({ cr3: pt.cr3, mode: "32bit" });
    // 2 direct roots, the vCPU's pml4_root and pae_root, and the PD's 4 quarters (one page
    // each, quadrants 0-3, the PAE roots of mmu_alloc_shadow_roots)
    const base = vm.stats.shadowPages;
    expect(base).toBe(2 + 2 + 4);
    expect(v.writeGuest(0x0010_0000, 1n)).toBe(0); // below quarter 0: the first PT, quadrant 0
    expect(vm.stats.shadowPages).toBe(base + 1);
    expect(v.writeGuest(DATA, 2n)).toBe(0); // below quarter 1: the second PT, quadrant 0
    expect(vm.stats.shadowPages).toBe(base + 2);
    expect(v.writeGuest(DATA + 2 * MIB, 3n)).toBe(0); // the same guest PT, quadrant 1
    expect(vm.stats.shadowPages).toBe(base + 3);
    expect(pagesOf(vm.getDirtyLog(0))).toEqual([1, 2, 3]);
    // a CR3 load of a 32-bit guest frees its special roots and makes new ones over the same quarters
    v.setPaging({ cr3: pt.cr3, mode: "32bit" });
    expect(vm.stats.shadowPages).toBe(base + 3);
    v.setPaging(null);
    expect(vm.stats.shadowPages).toBe(base + 3 - 2);
  });

  it("an 8-byte write to a 4-byte-gPTE table is misaligned: the pages shadowing it are zapped whole (detect_write_misaligned)", async () => {
    const g = await guest("shadow", undefined, "32bit");
    expect(g.v.writeGuest(DATA, 1n)).toBe(0);
    expect(g.v.readGuest(g.gvaOf(g.pt.cr3))).toBeGreaterThanOrEqual(0n); // the tables' own mapping shadowed
    const pages = g.vm.stats.shadowPages;
    // the guest writes two PDEs past its mappings (4-byte gPTEs: 8 bytes span two): emulated, and
    // every page shadowing the PD (its 4 quarters) goes
    expect(g.v.writeGuest(g.gvaOf(g.pt.cr3) + 2056n, 0n)).toBe(0);
    expect(g.vm.stats.emulatedWrites).toBe(1n);
    expect(g.vm.stats.shadowPages).toBe(pages - 4);
    expect(g.v.readGuest(DATA)).toBe(1n); // walks rebuild the quarters they need (1 and 2)
    expect(g.v.readGuest(g.gvaOf(g.pt.cr3))).toBeGreaterThanOrEqual(0n);
    expect(g.vm.stats.shadowPages).toBe(pages - 2);
  });
});

describe("CR3 loads sync what went unsync, whatever the paging mode", () => {
  it.each(["long", "32bit"] as const)(
    "%s: the guest clears a gPTE and reloads CR3: the page is gone (tdp and shadow)",
    async (mode) => {
      for (const mmu of ["tdp", "shadow"] as const) {
        const g = await guest(mmu, undefined, mode);
        expect(g.v.writeGuest(DATA + 3 * PAGE, 1n)).toBe(0);
        expect(g.setGpte(g.pt.leafGpte(DATA + 3 * PAGE) ?? 0n, 0n)).toBe(0);
        g.v.setPaging({ cr3: g.pt.cr3, mode });
        expect(g.v.writeGuest(DATA + 3 * PAGE, 2n)).toBe(KVM_EXIT_EXCEPTION);
      }
    },
  );
});

describe("paging in SMM: the vCPU's tables and pages come from address space 1 (kvm_smm_changed resets the MMU context)", () => {
  it.each(["long", "32bit"] as const)(
    "%s: TDP and shadow report an SMM write in the SMM slot, and a normal one in slot 0",
    async (mode) => {
      for (const mmu of ["tdp", "shadow"] as const) {
        const vm = await newVm({ mmu });
        const SMM = (1 << 16) | 0;
        for (const slot of [0, SMM]) {
          vm.setUserMemoryRegion({ slot, flags: LOG, guestPhysAddr: 0, memorySize: 4 * MIB, backed: true });
        }
        // the same layout in both spaces: DATA → gpa 0x1000 (normal), → 0x2000 (SMM)
        const normal = buildPageTables(vm, 0, TABLES_AT, [{ gva: DATA, gpa: 0x1000, pages: 1 }], { mode });
        const smm = buildPageTables(vm, SMM, TABLES_AT, [{ gva: DATA, gpa: 0x2000, pages: 1 }], { mode });
        expect(smm.cr3).toBe(normal.cr3);
        const v = vm.createVcpu(0);
        v.setPaging({ cr3: normal.cr3, mode });
        for (const slot of [0, SMM]) vm.getDirtyLog(slot);
        expect(v.writeGuest(DATA, 1n)).toBe(0);
        v.smm = true;
        expect(v.readGuest(DATA)).toBe(0n); // SMM's own page
        expect(v.writeGuest(DATA, 2n)).toBe(0);
        v.smm = false;
        expect(v.readGuest(DATA)).toBe(1n);
        expect(pagesOf(vm.getDirtyLog(0))).toEqual([1]);
        expect(pagesOf(vm.getDirtyLog(SMM))).toEqual([2]);
        v.smm = true;
        expect(v.readGuest(DATA)).toBe(2n);
      }
    },
  );

  it.skipIf(process.env.DIRTLOG_CORE === "debug")(
    "a shadow MMU that keeps the root across SMM entry writes the normal page (planted)",
    async () => {
      const wasm = plantedCore(
        [{ file: "x86.ts", from: "    kvm_mmu_reset_context(vm, vcpu);\n", to: "\n" }],
        "release",
      );
      const vm = await newVm({ mmu: "shadow", wasm });
      const SMM = (1 << 16) | 0;
      for (const slot of [0, SMM])
        vm.setUserMemoryRegion({ slot, flags: LOG, guestPhysAddr: 0, memorySize: 4 * MIB, backed: true });
      const pt = buildPageTables(vm, 0, TABLES_AT, [{ gva: DATA, gpa: 0x1000, pages: 1 }]);
      buildPageTables(vm, SMM, TABLES_AT, [{ gva: DATA, gpa: 0x2000, pages: 1 }]);
      const v = vm.createVcpu(0);
      v.setPaging({ cr3: pt.cr3, mode: "long" });
      expect(v.writeGuest(DATA, 1n)).toBe(0);
      v.smm = true;
      expect(v.writeGuest(DATA, 2n)).toBe(0);
      expect(pagesOf(vm.getDirtyLog(SMM))).not.toEqual([2]);
    },
  );
});

describe("the descriptor pool is asked only for what a fault takes (mmu_topup_memory_caches)", () => {
  /**
   * vCPU 0 (paged) maps pages through two aliases each until the pte_list pool has fewer
   * than two descriptors free (each such rmap holds two SPTEs: a descriptor); then vCPU 1,
   * unpaged, writes a page no SPTE maps yet: its rmap_add takes no descriptor.
   */
  async function fillThenFault(wasm?: WebAssembly.Module) {
    const vm = await newVm({ mmu: "shadow", mmuPoolBytes: 2 * MIB, ...(wasm ? { wasm } : {}) });
    vm.setUserMemoryRegion({ slot: 0, guestPhysAddr: 0, memorySize: 64 * MIB, backed: true });
    const N = 4096;
    const pt = buildPageTables(vm, 0, 32 * MIB, [
      { gva: DATA, gpa: 0, pages: N },
      { gva: DATA + 16 * MIB, gpa: 0, pages: N },
    ]);
    const v = vm.createVcpu(0);
    v.setPaging({ cr3: pt.cr3, mode: "long" });
    const dv = () => new DataView(vm.memory.buffer);
    const pool = dv().getUint32(vm.addr + L.VM_PTE_POOL, true);
    const free = () => dv().getUint32(pool + 12, true) - vm.raw.pte_list_pool_used(pool);
    let k = 0;
    while (free() >= 2 && k < N) {
      expect(v.readGuest(DATA + k * PAGE)).toBe(0n);
      expect(v.readGuest(DATA + 16 * MIB + k * PAGE)).toBe(0n);
      k++;
    }
    expect(free()).toBeLessThan(2);
    expect(vm.rmapCount(0, k - 1)).toBe(2);
    const unpaged = vm.createVcpu(1);
    return unpaged.writeGuest(40 * MIB, 1n);
  }

  it("a full pool does not stop a fault whose rmap is empty", async () => {
    expect(await fillThenFault()).toBe(0);
  });

  it.skipIf(process.env.DIRTLOG_CORE === "debug")(
    "a core that always asks for two fails it with KVM_EXIT_INTERNAL_ERROR (planted)",
    async () => {
      const wasm = plantedCore(
        [{ file: "mmu.ts", from: "|| !pte_list_add_needs_desc(gfn_to_rmap(slot, gfn))", to: "" }],
        "release",
      );
      expect(await fillThenFault(wasm)).toBe(KVM_EXIT_INTERNAL_ERROR);
    },
  );
});

describe("mmu_sync_children syncs in batches of KVM_PAGE_ARRAY_NR = 16 (spec §5.8)", () => {
  const N = 40; // guest leaf tables under one PD
  /** 40 guest PTs gone unsync, each with its gPTE rewritten to a new gpa; then a CR3 load. */
  async function unsyncForty(wasm?: WebAssembly.Module) {
    const vm = await newVm({ mmu: "shadow", ...(wasm ? { wasm } : {}) });
    vm.setUserMemoryRegion({ slot: 0, flags: LOG, guestPhysAddr: 0, memorySize: 4 * MIB, backed: true });
    const maps = Array.from({ length: N }, (_, k) => ({ gva: DATA + k * 2 * MIB, gpa: (k + 1) * PAGE, pages: 1 }));
    const pt = buildPageTables(vm, 0, TABLES_AT, [...maps, { gva: TABLES_GVA, gpa: TABLES_AT, pages: 64 }]);
    const v = vm.createVcpu(0);
    v.setPaging({ cr3: pt.cr3, mode: "long" });
    const gvaOf = (g: bigint) => BigInt(TABLES_GVA) + g - BigInt(TABLES_AT);
    for (const m of maps) expect(v.writeGuest(m.gva, 1n)).toBe(0); // a shadow page per PT
    for (const [k, m] of maps.entries()) {
      // the guest points its gPTE at gpa 0x100000 + k pages: its PT goes unsync
      expect(v.writeGuest(gvaOf(pt.leafGpte(m.gva) ?? 0n), BigInt(0x10_0000 + k * PAGE) | PRESENT_RW)).toBe(0);
    }
    expect(vm.stats.mmuUnsync).toBe(N);
    vm.getDirtyLog(0);
    const walks = () => new DataView(vm.memory.buffer).getUint32(vm.addr + L.VM_MMU_SYNC_WALKS, true);
    const before = walks();
    v.setPaging({ cr3: pt.cr3, mode: "long" }); // the reload syncs them all
    const batches = walks() - before;
    for (const m of maps) expect(v.writeGuest(m.gva, 2n)).toBe(0);
    return { vm, batches };
  }

  it("40 unsync pages below one PD: 4 walks of root, PDPT, PD and 13 pages; all synced", async () => {
    const { vm, batches } = await unsyncForty();
    expect(batches).toBe(4); // 13 + 13 + 13 + 1
    expect(vm.stats.mmuUnsync).toBe(0);
    // every write went to the new gpa: each page was synced (no INVLPG was made)
    expect(pagesOf(vm.getDirtyLog(0))).toEqual(Array.from({ length: N }, (_, k) => 0x100 + k));
  });

  it.skipIf(process.env.DIRTLOG_CORE === "debug")("a core with batches of 8 walks 8 times (planted)", async () => {
    const wasm = plantedCore(
      [{ file: "layout.ts", from: "KVM_PAGE_ARRAY_NR: u32 = 16;", to: "KVM_PAGE_ARRAY_NR: u32 = 8;" }],
      "release",
    );
    const { vm, batches } = await unsyncForty(wasm);
    expect(batches).toBe(8); // 5 pages a batch
    expect(vm.stats.mmuUnsync).toBe(0);
  });
});

describe("an unsync page found in the hash is synced before it is linked again (__kvm_mmu_find_shadow_page)", () => {
  it("32-bit: the guest remaps a page while the PD's pages are zapped (its INVLPG reaches nothing): the new mapping is used", async () => {
    // the counterexample the lockstep property found
    const ops: Op[] = [
      { t: "write", page: 1, value: 0 },
      { t: "pd", index: 1 },
      { t: "remap", page: 1, to: 32 },
      { t: "write", page: 0, value: 0 },
      { t: "write", page: 1, value: 0 },
    ];
    expect(await lockstep(ops, undefined, "32bit", logMode({ kind: "dirty-ring", ringEntries: 4096 }))).toBeNull();
    expect(await lockstep(ops, undefined, "32bit")).toBeNull();
  });

  it.skipIf(process.env.DIRTLOG_CORE === "debug")(
    "and the counterexample fails without that sync (planted core)",
    async () => {
      const wasm = plantedCore(
        [
          {
            file: "shadow.ts",
            from: "if (load<u32>(sp + SP_UNSYNC) != 0 && kvm_sync_page(vm, sp))",
            to: "if (false)",
          },
        ],
        "release",
      );
      const ops: Op[] = [
        { t: "write", page: 1, value: 0 },
        { t: "pd", index: 1 },
        { t: "remap", page: 1, to: 32 },
        { t: "write", page: 0, value: 0 },
        { t: "write", page: 1, value: 0 },
      ];
      expect(await lockstep(ops, wasm, "32bit")).toMatch(/page 32 was written/);
    },
  );
});

describe("misuse of the paging and write-tracking calls: KvmError, nothing changed", () => {
  it("wrong types and ranges are EINVAL; a vCPU whose loop runs is EBUSY (no paging, no tracking enabled); after dispose everything is EBADF", async () => {
    const vm = await newVm({ mmu: "shadow" });
    vm.setUserMemoryRegion({ slot: 0, flags: LOG, guestPhysAddr: 0, memorySize: 4 * MIB, backed: true });
    const pt = buildPageTables(vm, 0, TABLES_AT, [{ gva: DATA, gpa: 0x1000, pages: 16 }]);
    const v = vm.createVcpu(0);
    expect(errnoOf(() => v.setPaging("long" as unknown as null))).toBe("EINVAL");
    expect(errnoOf(() => v.setPaging({ cr3: pt.cr3, mode: "long", pcid: 1 } as unknown as null))).toBe("EINVAL");
    expect(errnoOf(() => v.setPaging({ cr3: -4096, mode: "long" }))).toBe("EINVAL");
    expect(errnoOf(() => v.invlpg("0" as unknown as number))).toBe("EINVAL");
    expect(errnoOf(() => vm.rmapCount(2, 0))).toBe("EINVAL");
    expect(errnoOf(() => vm.writeTrackAddGfn(1.5))).toBe("EINVAL");
    expect(() => buildPageTables(vm, 0, 4095, [])).toThrow(/page-aligned/);
    expect(() => buildPageTables(vm, 0, TABLES_AT, [{ gva: DATA + 1, gpa: 0, pages: 1 }])).toThrow(/page-aligned/);
    expect(() => buildPageTables(vm, 0, 0, [{ gva: 1n << 32n, gpa: 0, pages: 1 }], { mode: "32bit" })).toThrow(/4 GiB/);
    v.setWorkload({ pattern: "sequential", gpa: 0x1000, pages: 16, batch: 0xffff_ffff });
    await v.startLoop();
    expect(errnoOf(() => v.setPaging({ cr3: pt.cr3, mode: "long" }))).toBe("EBUSY");
    expect(errnoOf(() => v.invlpg(DATA))).toBe("EBUSY");
    await v.pause();
    expect(v.paging).toBeNull();
    expect(vm.writeTrackCount(1)).toBe(0); // tracking was not enabled by the refused call
    expect(errnoOf(() => vm.writeTrackAddGfn(1))).toBe("ENXIO");
    await vm.close();
    for (const call of [
      () => v.setPaging(null),
      () => v.invlpg(DATA),
      () => v.faultAddress,
      () => vm.rmapCount(0, 1),
      () => vm.registerPageTrackNotifier({}),
      () => vm.writeTrackAddGfn(1),
      () => vm.writeTrackCount(1),
    ]) {
      expect(errnoOf(call)).toBe("EBADF");
    }
  });
});
