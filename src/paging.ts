// Guest page tables for paged guests (assembly/guest_walk.ts walks them): x86-64 4-level
// tables of 8-byte gPTEs, written into a backed memslot through the VMM's mapping (so the
// writes are not reported dirty, as a VMM building a guest's initial tables would).
//
// Every gPTE is built present, writable unless asked otherwise, user, accessed and dirty
// (the model's walker neither sets nor needs A/D). Tables are 4 KiB pages taken in order
// from `tablesAt` in the slot; `buildPageTables` returns the CR3 to load and where each
// table went, so a test can find a gPTE and a guest can write its own page tables.
import { u64 } from "./args.js";
import { KvmError } from "./errors.js";
import type { Vm } from "./vm.js";

/** One mapping: `pages` 4 KiB pages from `gva` to `gpa`. */
export interface GuestMapping {
  gva: number | bigint;
  gpa: number | bigint;
  pages: number;
  /** Default true: the leaf gPTEs allow writes. */
  writable?: boolean;
}

export interface PageTables {
  /** The CR3 to load (vcpu.setPaging({ cr3, mode: "long" })): the PML4's gpa. */
  cr3: bigint;
  /** Every table page, by level (4 = PML4 … 1 = PT): its gpa and the gva range it covers. */
  tables: Array<{ level: number; gpa: bigint; gva: bigint }>;
  /** The gpa of the leaf gPTE (level 1) that maps `gva`, or undefined. */
  leafGpte(gva: number | bigint): bigint | undefined;
}

const P = 1n;
const RW = 2n;
const US = 4n;
const A = 0x20n;
const D = 0x40n;
const PAGE = 4096n;

/**
 * Build page tables in memslot `slot` (backed), table pages from byte `tablesAt` of the slot
 * on: x86-64 4-level tables of 8-byte gPTEs, or with `{ mode: "32bit" }` a 32-bit non-PAE
 * guest's 2-level tables of 1024 4-byte entries (gvas and gpas below 4 GiB). EINVAL for
 * unaligned or out-of-range addresses, an unbacked or missing slot, or tables that do not
 * fit in the slot.
 */
export function buildPageTables(
  vm: Vm,
  slot: number,
  tablesAt: number,
  maps: GuestMapping[],
  options: { mode?: "long" | "32bit" } = {},
): PageTables {
  const call = "buildPageTables";
  const info = vm.memslots().find((m) => m.slot === slot);
  if (!info?.backed) throw new KvmError("EINVAL", call, `memslot ${slot} does not exist or is not backed`);
  if (!Number.isInteger(tablesAt) || tablesAt < 0 || tablesAt % 4096 !== 0) {
    throw new KvmError("EINVAL", call, "tablesAt must be a page-aligned offset into the slot");
  }
  const base = info.guestPhysAddr;
  const limit = info.npages * 4096;
  let next = tablesAt;
  const pages = new Map<bigint, Uint8Array>(); // table gpa → its 4 KiB
  const tables: PageTables["tables"] = [];
  const newTable = (level: number, gva: bigint): bigint => {
    if (next + 4096 > limit) throw new KvmError("EINVAL", call, "the page tables do not fit in the slot");
    const gpa = base + BigInt(next);
    next += 4096;
    pages.set(gpa, new Uint8Array(4096));
    tables.push({ level, gpa, gva });
    return gpa;
  };
  const bits32 = options.mode === "32bit";
  if (options.mode !== undefined && options.mode !== "long" && !bits32) {
    throw new KvmError("EINVAL", call, 'mode must be "long" or "32bit"');
  }
  const size = bits32 ? 4 : 8; // bytes per gPTE
  const levels = bits32 ? 2 : 4;
  const shift = (level: number) => BigInt(12 + (bits32 ? 10 : 9) * (level - 1));
  const mask = bits32 ? 1023n : 511n;
  const dv = (table: bigint) => new DataView(pages.get(table)?.buffer as ArrayBuffer);
  const entry = (table: bigint, index: number) =>
    bits32 ? BigInt(dv(table).getUint32(index * 4, true)) : dv(table).getBigUint64(index * 8, true);
  const setEntry = (table: bigint, index: number, v: bigint) => {
    if (bits32) dv(table).setUint32(index * 4, Number(v), true);
    else dv(table).setBigUint64(index * 8, v, true);
  };
  if (bits32 && base + BigInt(limit) > 1n << 32n)
    throw new KvmError("EINVAL", call, "a 32-bit guest's tables lie below 4 GiB");
  const cr3 = newTable(levels, 0n);
  const leaves = new Map<bigint, bigint>(); // gva page → leaf gPTE gpa
  for (const m of maps) {
    const gva = u64(m.gva, "gva", call);
    const gpa = u64(m.gpa, "gpa", call);
    if (gva % PAGE !== 0n || gpa % PAGE !== 0n) throw new KvmError("EINVAL", call, "gva and gpa must be page-aligned");
    if (!Number.isInteger(m.pages) || m.pages < 0) throw new KvmError("EINVAL", call, "pages must be a count");
    const end = BigInt(m.pages) * PAGE;
    if (bits32 && (gva + end > 1n << 32n || gpa + end > 1n << 32n)) {
      throw new KvmError("EINVAL", call, "a 32-bit guest's gvas and gpas lie below 4 GiB");
    }
    const leafBits = P | US | A | D | (m.writable === false ? 0n : RW);
    for (let i = 0n; i < BigInt(m.pages); i++) {
      const va = gva + i * PAGE;
      let table = cr3;
      for (let level = levels; level > 1; level--) {
        const index = Number((va >> shift(level)) & mask);
        let e = entry(table, index);
        if (!(e & P)) {
          const span = 1n << shift(level);
          const child = newTable(level - 1, va & ~(span - 1n));
          e = child | P | RW | US | A | D;
          setEntry(table, index, e);
        }
        table = e & 0x000f_ffff_ffff_f000n;
      }
      const index = Number((va >> 12n) & mask);
      setEntry(table, index, (gpa + i * PAGE) | leafBits);
      leaves.set(va, table + BigInt(index * size));
    }
  }
  for (const [gpa, bytes] of pages) vm.writeUserMemory(slot, Number(gpa - base), bytes);
  return {
    cr3,
    tables,
    leafGpte: (gva) => leaves.get(u64(gva, "gva", "leafGpte") & ~(PAGE - 1n)),
  };
}
