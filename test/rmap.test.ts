// The pte_list behind every rmap (spec §5.7; mmu.c pte_list_add, pte_list_remove,
// pte_list_desc_remove_entry, rmap_get_first / rmap_get_next), driven over raw memory:
// the head's encoding, the 128-byte descriptor layout, add's return values, how a removal
// keeps tail descriptors full, and the iterator's order.
import { describe, expect, it } from "vitest";
import { vmFactory } from "./helpers.js";
import type { Vm } from "../src/index.js";
import { plantedCore } from "./planted-core.js";

const { newVm } = vmFactory();
const EXT = 14;
const DESC = 128;

interface List {
  vm: Vm;
  pool: number;
  head: number;
  iter: number;
  add(sptep: number): number;
  remove(sptep: number): boolean;
  count(): number;
  /** The head word (u64) as a number. */
  val(): number;
  /** [more, spte_count, tail_count, sptes[0..count)] of the descriptor at d. */
  desc(d: number): { more: number; count: number; tail: number; sptes: number[] };
  walk(): number[];
  used(): number;
}

async function list(capacity = 64, wasm?: WebAssembly.Module): Promise<List> {
  const vm = await newVm(wasm ? { wasm } : {});
  const pool = vm.allocRegion(32 + capacity * DESC, 64);
  const head = vm.allocRegion(16, 8);
  const iter = vm.allocRegion(16, 8);
  vm.raw.pte_list_pool_init(pool, pool + 32, capacity);
  const dv = () => new DataView(vm.memory.buffer);
  return {
    vm,
    pool,
    head,
    iter,
    add: (s) => vm.raw.pte_list_add(pool, head, s),
    remove: (s) => vm.raw.pte_list_remove(pool, head, s) !== 0,
    count: () => vm.raw.pte_list_count(head),
    val: () => Number(dv().getBigUint64(head, true)),
    desc(d) {
      const v = dv();
      const count = v.getUint32(d + 8, true);
      const sptes = Array.from({ length: EXT }, (_, i) => Number(v.getBigUint64(d + 16 + 8 * i, true)));
      return {
        more: Number(v.getBigUint64(d, true)),
        count,
        tail: v.getUint32(d + 12, true),
        sptes: sptes.slice(0, count),
      };
    },
    walk() {
      const out: number[] = [];
      for (let s = vm.raw.rmap_get_first(head, iter); s !== 0; s = vm.raw.rmap_get_next(iter)) out.push(s >>> 0);
      return out;
    },
    used: () => vm.raw.pte_list_pool_used(pool),
  };
}

/** Distinct 8-aligned "SPTE addresses" (never dereferenced by the list). */
const sp = (i: number) => 0x10_0000 + 8 * i;

describe("pte_list_add", () => {
  it("empty → the bare pointer (bit 0 clear); a second entry → a descriptor (head | 1) holding both", async () => {
    const l = await list();
    expect(l.add(sp(0))).toBe(0);
    expect(l.val()).toBe(sp(0));
    expect(l.used()).toBe(0);
    expect(l.add(sp(1))).toBe(1); // the kernel's count: 1 when a single entry became a descriptor
    expect(l.val() & 1).toBe(1);
    expect(l.desc(l.val() - 1)).toEqual({ more: 0, count: 2, tail: 0, sptes: [sp(0), sp(1)] });
    expect(l.count()).toBe(2);
  });

  it("returns the count before the add; a full head (14) gets a new head in front, whose tail_count is 14", async () => {
    const l = await list();
    for (let i = 0; i < EXT; i++) expect(l.add(sp(i))).toBe(i === 0 ? 0 : i === 1 ? 1 : i);
    const first = l.val() - 1;
    expect(l.desc(first).count).toBe(EXT);
    expect(l.add(sp(EXT))).toBe(EXT);
    const head = l.val() - 1;
    expect(head).not.toBe(first);
    expect(l.desc(head)).toEqual({ more: first, count: 1, tail: EXT, sptes: [sp(EXT)] });
    for (let i = EXT + 1; i < 40; i++) expect(l.add(sp(i))).toBe(i);
    expect(l.count()).toBe(40);
    expect(l.used()).toBe(3); // 14 + 14 + 12
    // tail descriptors are full; only the head may be partly used
    const h = l.desc(l.val() - 1);
    expect([h.count, h.tail, l.desc(h.more).count, l.desc(h.more).tail]).toEqual([12, 28, EXT, EXT]);
  });

  it("fails with nothing changed when the descriptor pool is exhausted", async () => {
    const l = await list(1);
    l.add(sp(0));
    expect(l.add(sp(1))).toBe(1);
    for (let i = 2; i < EXT; i++) l.add(sp(i));
    const before = l.val();
    expect(l.add(sp(99))).toBe(-1);
    expect(l.val()).toBe(before);
    expect(l.count()).toBe(EXT);
  });
});

describe("pte_list_remove", () => {
  it("fills the hole with the head's last entry, keeping tail descriptors full; an emptied head is freed", async () => {
    const l = await list();
    for (let i = 0; i < EXT + 2; i++) l.add(sp(i)); // tail [0..13], head [14, 15]
    const tail = l.desc(l.val() - 1).more;
    expect(l.remove(sp(3))).toBe(true);
    expect(l.desc(tail).sptes[3]).toBe(sp(15)); // the head's last entry moved into the tail
    expect(l.desc(l.val() - 1).sptes).toEqual([sp(14)]);
    expect(l.remove(sp(14))).toBe(true); // the head empties: freed, the list starts at the tail
    expect(l.val()).toBe(tail + 1);
    expect(l.used()).toBe(1);
    expect(l.count()).toBe(EXT);
  });

  it("a list of one that was a descriptor stays a descriptor; removing the last empties the head", async () => {
    const l = await list();
    l.add(sp(0));
    l.add(sp(1));
    expect(l.remove(sp(0))).toBe(true);
    expect(l.val() & 1).toBe(1);
    expect(l.desc(l.val() - 1).sptes).toEqual([sp(1)]);
    expect(l.remove(sp(1))).toBe(true);
    expect(l.val()).toBe(0);
    expect(l.used()).toBe(0);
  });

  it("an SPTE that is not on the list: false, nothing changes (the kernel's KVM_BUG_ON_DATA_CORRUPTION)", async () => {
    const l = await list();
    expect(l.remove(sp(0))).toBe(false);
    l.add(sp(0));
    expect(l.remove(sp(1))).toBe(false);
    expect(l.val()).toBe(sp(0));
    l.add(sp(1));
    expect(l.remove(sp(2))).toBe(false);
    expect(l.count()).toBe(2);
  });
});

describe("for_each_rmap_spte", () => {
  it("visits the bare pointer; a descriptor chain head first, each in slot order; nothing twice", async () => {
    const l = await list();
    expect(l.walk()).toEqual([]);
    l.add(sp(0));
    expect(l.walk()).toEqual([sp(0)]);
    for (let i = 1; i < 31; i++) l.add(sp(i));
    // head [28, 29, 30], then [14..27], then [0..13]
    const want = [
      28,
      29,
      30,
      ...Array.from({ length: 14 }, (_, i) => 14 + i),
      ...Array.from({ length: 14 }, (_, i) => i),
    ];
    expect(l.walk()).toEqual(want.map(sp));
    // a random sequence of adds and removes keeps the set exact
    const live = new Set(want.map(sp));
    let seed = 7;
    for (let k = 0; k < 400; k++) {
      seed = (seed * 1103515245 + 12345) & 0x7fffffff;
      const s = sp(seed % 60);
      if (live.has(s)) {
        expect(l.remove(s)).toBe(true);
        live.delete(s);
      } else {
        l.add(s);
        live.add(s);
      }
      const seen = l.walk();
      expect(seen.length).toBe(live.size);
      expect(new Set(seen)).toEqual(live);
      expect(l.count()).toBe(live.size);
    }
  });

  it.skipIf(process.env.DIRTLOG_CORE === "debug")(
    "these checks fail for a list that leaves holes in tail descriptors (planted core)",
    async () => {
      const wasm = plantedCore(
        [{ file: "rmap.ts", from: "set_desc_spte(d, i, desc_spte(head_desc, j));", to: "set_desc_spte(d, i, 0);" }],
        "release",
      );
      const l = await list(64, wasm);
      for (let i = 0; i < EXT + 2; i++) l.add(sp(i));
      l.remove(sp(3));
      // the walk stops at the hole: entries after it are lost to every rmap user
      expect(l.walk().length).toBeLessThan(l.count());
    },
  );
});
