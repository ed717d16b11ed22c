// Semantics of the faster ring paths (no timing here: speed goals live in bench/):
//   - collectDirtyRing acquires a batch with one Atomics.load (or a WASM count) and reads the
//     ring in place: batches across the ring's end and short batches hand out exactly the
//     pushed entries, in order; a throwing consumer loses nothing;
//   - harvestDirtyRings returns a Float64Array per slot and can refill an earlier result
//     (`into`);
//   - LogMode and harvestDirtyRings harvest each ring in WASM into its vCPU's collect
//     buffer (collectDirtyRingInPlace); a harvest started from onPage, while those buffers
//     are being handed out, takes fresh arrays and does not disturb the one handing out.
import { afterEach, describe, expect, it } from "vitest";
import {
  KVM_CAP_DIRTY_LOG_RING,
  KVM_MEM_LOG_DIRTY_PAGES,
  type Vcpu,
  type Vm,
  collectDirtyRing,
  createVm,
  harvestDirtyRings,
  logMode,
} from "../src/index.js";
import { collectDirtyRingInPlace } from "../src/dirty_ring_collector.js";

const PAGE = 4096;
const BASE = 0x1_0000_0000;
const BASE2 = 0x2_0000_0000;
const vms: Vm[] = [];
afterEach(() => {
  for (const vm of vms.splice(0)) vm.dispose();
});

async function ringVm(entries: number, slots: Array<[number, number, number]> = [[0, BASE, 8192]]): Promise<Vm> {
  const vm = await createVm({ maxMemoryBytes: 64 << 20, mmuPoolBytes: 2 << 20 });
  vms.push(vm);
  vm.enableCap(KVM_CAP_DIRTY_LOG_RING, [entries * 16]);
  for (const [slot, gpa, pages] of slots) {
    vm.setUserMemoryRegion({ slot, flags: KVM_MEM_LOG_DIRTY_PAGES, guestPhysAddr: gpa, memorySize: pages * PAGE, backed: false });
  }
  return vm;
}

/** Write each page once (they must be write-protected: one push each). */
function write(vcpu: Vcpu, gpa: number, pages: number[]): void {
  for (const p of pages) expect(vcpu.writeGuest(gpa + p * PAGE, 1n)).toBe(0);
}

const range = (from: number, n: number, step = 1) => Array.from({ length: n }, (_, i) => from + i * step);

describe("collectDirtyRing reads the ring in place", () => {
  it("hands out exactly the pushed entries in ring order, across the ring's end and batch boundaries", async () => {
    const vm = await ringVm(4096);
    const vcpu = vm.createVcpu(0);
    let next = 0;
    // rounds of different sizes: batches of 1024 start anywhere, laps wrap the 4096 entries
    for (const n of [1, 1023, 1025, 3000, 2500, 4000, 17, 4031, 1024, 2048]) {
      const pages = range(next, n).map((p) => p % 8192);
      next += n;
      write(vcpu, BASE, pages);
      const got: number[] = [];
      expect(collectDirtyRing(vcpu, (slot, offset) => got.push(slot, offset))).toBe(n);
      expect(got).toEqual(pages.flatMap((p) => [0, p]));
      expect(collectDirtyRing(vcpu, () => got.push(-1))).toBe(0); // nothing more published
      expect(vm.resetDirtyRings()).toBe(n);
      const st = vcpu.dirtyRingState;
      expect(st.resetIndex).toBe(st.dirtyIndex);
    }
  });

  it("stops at the first entry that is not exactly DIRTY, even inside a batch whose last entry is DIRTY", async () => {
    const vm = await ringVm(4096);
    const vcpu = vm.createVcpu(0);
    write(vcpu, BASE, range(0, 1024));
    const flags = new Uint32Array(vcpu.dirtyRing.buffer, vcpu.dirtyRing.byteOffset, vcpu.dirtyRing.byteLength >> 2);
    flags[500 * 4] = 0; // a scribbled entry in the middle of the first batch
    let n = 0;
    expect(collectDirtyRing(vcpu, () => n++)).toBe(500);
    expect(n).toBe(500);
    expect(flags[499 * 4]).toBe(2); // RESET
    expect(flags[501 * 4]).toBe(1); // still DIRTY, not handed out
  });

  it("a throwing consumer: the entries before stay harvested, the one it threw on is handed out again", async () => {
    const vm = await ringVm(4096);
    const vcpu = vm.createVcpu(0);
    write(vcpu, BASE, [10, 11, 12, 13, 14]);
    const seen: number[] = [];
    expect(() =>
      collectDirtyRing(vcpu, (_slot, offset) => {
        if (offset === 12) throw new Error("consumer failed");
        seen.push(offset);
      }),
    ).toThrow("consumer failed");
    expect(seen).toEqual([10, 11]);
    const flags = new Uint32Array(vcpu.dirtyRing.buffer, vcpu.dirtyRing.byteOffset, 5 * 4);
    expect([0, 1, 2, 3, 4].map((i) => flags[i * 4])).toEqual([2, 2, 1, 1, 1]);
    expect(collectDirtyRing(vcpu, (_slot, offset) => seen.push(offset))).toBe(3);
    expect(seen).toEqual([10, 11, 12, 13, 14]);
    expect(vm.resetDirtyRings()).toBe(5);
  });
});

describe("harvestDirtyRings", () => {
  it("returns a Float64Array per slot in harvest order (vCPUs in creation order)", async () => {
    const vm = await ringVm(4096, [
      [0, BASE, 8192],
      [1, BASE2, 64],
    ]);
    const [a, b] = [vm.createVcpu(0), vm.createVcpu(1)];
    write(a, BASE, [5, 6]);
    write(a, BASE2, [3]);
    write(a, BASE, [7]);
    write(b, BASE, [1, 2]);
    write(b, BASE2, [4]);
    const h = harvestDirtyRings(vm);
    expect(h.entries).toBe(7);
    expect(h.reset).toBe(7);
    expect([...h.offsets.keys()]).toEqual([0, 1]);
    expect([...(h.offsets.get(0) ?? [])]).toEqual([5, 6, 7, 1, 2]);
    expect([...(h.offsets.get(1) ?? [])]).toEqual([3, 4]);
    expect(h.offsets.get(0)).toBeInstanceOf(Float64Array);
  });

  it("`into` refills an earlier result in place: same buffers, new contents, slots without entries removed", async () => {
    const vm = await ringVm(4096, [
      [0, BASE, 8192],
      [1, BASE2, 64],
    ]);
    const vcpu = vm.createVcpu(0);
    write(vcpu, BASE, range(0, 3000));
    write(vcpu, BASE2, [1, 2]);
    const h1 = harvestDirtyRings(vm);
    const list0 = h1.offsets.get(0);
    expect(list0).toHaveLength(3000);
    expect([...(h1.offsets.get(1) ?? [])]).toEqual([1, 2]);
    write(vcpu, BASE, range(100, 40, 7));
    const h2 = harvestDirtyRings(vm, { into: h1 });
    expect(h2).toBe(h1);
    expect(h2.entries).toBe(40);
    expect(h2.reset).toBe(40);
    expect(h2.offsets.get(0)?.buffer).toBe(list0?.buffer); // no new allocation: a view of the same buffer
    expect([...(h2.offsets.get(0) ?? [])]).toEqual(range(100, 40, 7));
    expect(h2.offsets.has(1)).toBe(false);
    // and growing again, past the ring's end
    write(vcpu, BASE, range(3000, 4000));
    const h3 = harvestDirtyRings(vm, { into: h2 });
    expect([...(h3.offsets.get(0) ?? [])]).toEqual(range(3000, 4000));
    expect(h3.reset).toBe(4000);
  });

  it("harvests at most one lap per ring and leaves nothing published behind", async () => {
    const vm = await ringVm(4096);
    const vcpu = vm.createVcpu(0);
    write(vcpu, BASE, range(0, 4000));
    const h = harvestDirtyRings(vm, { kick: false });
    expect(h.entries).toBe(4000);
    expect(collectDirtyRing(vcpu, () => {})).toBe(0);
    expect(vcpu.dirtyRingState).toMatchObject({ dirtyIndex: 4000, resetIndex: 4000 });
  });
});

describe("LogMode ring harvest", () => {
  it("hands out every entry after the reset, with its vCPU, harvest after harvest", async () => {
    const mode = logMode({ kind: "dirty-ring", ringEntries: 4096 });
    const vm = await ringVm(4096);
    const [a, b] = [vm.createVcpu(0), vm.createVcpu(1)];
    for (let round = 0; round < 3; round++) {
      const pa = range(round * 100, 2000 + round * 500).map((p) => p % 8192);
      const pb = range(5000 + round, 300, 3);
      write(a, BASE, pa);
      write(b, BASE, pb);
      const got: Array<[number, number, number]> = [];
      const c = mode.collectDirtyPages(vm, [0], (slot, offset, v) => {
        // re-armed before it is handed out
        expect(a.vm.spte(0, BASE + offset * PAGE).spte & 2n).toBe(0n);
        got.push([slot, offset, v]);
      });
      expect(c.ringEntries).toBe(pa.length + pb.length);
      expect(c.ringResets).toBe(pa.length + pb.length);
      expect(got).toEqual([...pa.map((p) => [0, p, 0]), ...pb.map((p) => [0, p, 1])]);
    }
  });

  it("a harvest started from onPage does not disturb the one handing out", async () => {
    const mode = logMode({ kind: "dirty-ring", ringEntries: 4096 });
    const vm = await ringVm(4096);
    const vcpu = vm.createVcpu(0);
    write(vcpu, BASE, range(0, 50));
    const outer: number[] = [];
    const inner: number[] = [];
    mode.collectDirtyPages(vm, [0], (_slot, offset) => {
      outer.push(offset);
      if (offset === 10) {
        write(vcpu, BASE, [7000, 7001]);
        mode.collectDirtyPages(vm, [0], (_s, o) => inner.push(o));
      }
    });
    expect(outer).toEqual(range(0, 50));
    expect(inner).toEqual([7000, 7001]);
  });

  it("harvestDirtyRings started from onPage takes fresh arrays: the collect buffers being handed out stay intact", async () => {
    const mode = logMode({ kind: "dirty-ring", ringEntries: 4096 });
    const vm = await ringVm(4096);
    const [a, b] = [vm.createVcpu(0), vm.createVcpu(1)];
    write(a, BASE, range(0, 40));
    write(b, BASE, range(100, 40));
    const outer: Array<[number, number]> = [];
    let inner: number[] = [];
    mode.collectDirtyPages(vm, [0], (_slot, offset, v) => {
      outer.push([offset, v]);
      if (offset === 5) {
        // both rings push again: the nested harvest must not write into vCPU 1's buffer,
        // whose 40 entries the outer harvest has not handed out yet
        write(a, BASE, range(3000, 30));
        write(b, BASE, range(4000, 30));
        inner = [...(harvestDirtyRings(vm).offsets.get(0) ?? [])];
      }
    });
    expect(outer).toEqual([...range(0, 40).map((p) => [p, 0]), ...range(100, 40).map((p) => [p, 1])]);
    expect(inner).toEqual([...range(3000, 30), ...range(4000, 30)]);
  });

  it("the in-place collect stops at the first entry that is not exactly DIRTY and resumes there once it is", async () => {
    const vm = await ringVm(4096);
    const vcpu = vm.createVcpu(0);
    write(vcpu, BASE, range(0, 10));
    const words = new Uint32Array(vcpu.dirtyRing.buffer, vcpu.dirtyRing.byteOffset, 4096 * 4);
    words[6 * 4] = 3; // a scribbled flags word on entry 6
    const first = collectDirtyRingInPlace(vcpu);
    expect([...first.offsets]).toEqual(range(0, 6));
    expect([...first.slots]).toEqual(Array(6).fill(0));
    expect([0, 1, 5, 6, 7, 9].map((e) => words[e * 4])).toEqual([2, 2, 2, 3, 1, 1]); // RESET up to 5 only
    words[6 * 4] = 1;
    const second = collectDirtyRingInPlace(vcpu);
    expect([...second.offsets]).toEqual(range(6, 4));
    expect(collectDirtyRingInPlace(vcpu).n).toBe(0);
    expect(vm.resetDirtyRings()).toBe(10);
    expect(vcpu.dirtyRingState).toMatchObject({ dirtyIndex: 10, resetIndex: 10 });
  });
});
