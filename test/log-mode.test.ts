// The LogMode table (src/log_mode.ts): each mode, defined once, harvests exactly the pages
// written since its last harvest, re-arms them before handing them out, and counts the
// kernel events it made (GET, CLEAR, ring entries, RESET).
import { describe, expect, it } from "vitest";
import { type LogMode, createVm, logMode, logModeOf, parseLogMode } from "../src/index.js";
import { SPTE_W, errnoOf } from "./helpers.js";

const SPTE_D = 1n << 9n;

const PAGE = 4096;
const GPA = 0x1_0000_0000;
const PAGES = 1000; // a ragged bitmap end

async function harvestAfter(mode: LogMode, writes: number[]) {
  const vm = await createVm({ maxMemoryBytes: 64 << 20, mmuPoolBytes: 1 << 20, ...mode.vmOptions });
  mode.createVmDone(vm);
  vm.setUserMemoryRegion({ slot: 0, flags: mode.slotFlags, guestPhysAddr: GPA, memorySize: PAGES * PAGE });
  const v = vm.createVcpu(0);
  const first = mode.collectDirtyPages(vm, [0], () => {}); // INITIALLY_SET's full report, if any
  for (const p of writes) expect(v.writeGuest(GPA + p * PAGE, 1)).toBe(0);
  const got: Array<[number, number, number]> = [];
  const counts = mode.collectDirtyPages(vm, [0], (slot, offset, vcpu) => {
    // handed out only after re-arming: the page is write-protected again already (under
    // PML: its D bit is clear again)
    expect(vm.spte(0, GPA + offset * PAGE).spte & (mode.spec.pml ? SPTE_D : SPTE_W)).toBe(0n);
    got.push([slot, offset, vcpu]);
  });
  const again = mode.collectDirtyPages(vm, [0], () => {});
  vm.dispose();
  return { first, got, counts, again };
}

describe("LogMode table", () => {
  const writes = [0, 5, 63, 64, 999, 5];
  const cases: Array<[string, LogMode]> = [
    ["bitmap", parseLogMode("bitmap")],
    ["manual, CLEAR in 256-page chunks", parseLogMode("manual:256")],
    ["manual + INITIALLY_SET", logMode({ kind: "clear-log", initiallySet: true })],
    ["ring:256", parseLogMode("ring:256")],
    ["ring:1024+pml", parseLogMode("ring:1024+pml")],
    ["bitmap+pml", parseLogMode("bitmap+pml")],
  ];
  for (const [name, mode] of cases) {
    it(`${name}: reports exactly the written pages once, re-armed, and nothing the next time`, async () => {
      const r = await harvestAfter(mode, writes);
      const pages = r.got.map(([, p]) => p).sort((a, b) => a - b);
      expect(pages).toEqual([0, 5, 63, 64, 999]);
      expect(r.got.every(([slot]) => slot === 0)).toBe(true);
      expect(r.again.reported).toBe(0);
      expect(r.counts.reported).toBe(5);
      if (mode.spec.kind === "dirty-ring") {
        expect(r.got.every(([, , vcpu]) => vcpu === 0)).toBe(true);
        expect(r.counts).toMatchObject({ ringEntries: 5, ringResets: 5, resetCalls: 1, getCalls: 0 });
      } else {
        expect(r.got.every(([, , vcpu]) => vcpu === -1)).toBe(true);
        expect(r.counts).toMatchObject({ getCalls: 1, bitmapWords: Math.ceil(PAGES / 64), ringEntries: 0 });
      }
      if (mode.spec.kind === "clear-log") {
        // CLEAR only the chunks holding a set bit: pages 0..255 and 768..999 of 1000
        expect(r.counts.clearCalls).toBe(mode.spec.clearChunkPages === 256 ? 2 : 1);
        if (mode.spec.initiallySet) expect(r.first.reported).toBe(PAGES);
      } else {
        expect(r.counts.clearCalls).toBe(0);
      }
    });
  }

  it("names and parses modes as the CLI writes them", () => {
    expect(parseLogMode("bitmap").name).toBe("bitmap");
    expect(parseLogMode("manual:256k").name).toBe("manual:262144");
    expect(parseLogMode("manual").spec.clearChunkPages).toBe(262144);
    expect(parseLogMode("ring:4096").name).toBe("ring:4096");
    expect(parseLogMode("ring:64k+pml").name).toBe("ring:65536+pml");
    expect(parseLogMode("ring").spec.ringEntries).toBe(4096);
    for (const bad of ["ring:4095", "ring:128", "ring:512+pml", "ring:131072", "manual:100", "bitmap:5", "rings", "", "ring:-1"]) {
      expect(errnoOf(() => parseLogMode(bad)), bad).toBe("EINVAL");
    }
    expect(errnoOf(() => logMode({ kind: "toString" as never }))).toBe("EINVAL");
    expect(errnoOf(() => logMode({ kind: "dirty-ring", ringEntries: 4096, extra: 1 } as never))).toBe("EINVAL");
  });

  it("tracking memory: two bitmaps per slot, or ring + private copy per vCPU", () => {
    expect(parseLogMode("bitmap").trackingBytes(1 << 21, 8)).toBe(2 * (1 << 18)); // 8 GiB: 2 × 256 KiB
    expect(parseLogMode("ring:4096").trackingBytes(1 << 21, 8)).toBe(2 * 4096 * 16 * 8);
  });

  it("logModeOf reads the VM's setup", async () => {
    const ring = await createVm({ maxMemoryBytes: 64 << 20, mmuPoolBytes: 1 << 20 });
    parseLogMode("ring:2048").createVmDone(ring);
    expect(logModeOf(ring).name).toBe("ring:2048");
    ring.dispose();
    const manual = await createVm({ maxMemoryBytes: 64 << 20, mmuPoolBytes: 1 << 20 });
    parseLogMode("manual").createVmDone(manual);
    expect(logModeOf(manual).spec.kind).toBe("clear-log");
    manual.dispose();
  });
});

describe("LogMode re-entry", () => {
  it("a bitmap harvest started from inside onPage gets its own buffer (the outer one keeps its pages)", async () => {
    const mode = parseLogMode("bitmap");
    const vm = await createVm({ maxMemoryBytes: 64 << 20, mmuPoolBytes: 1 << 20 });
    mode.createVmDone(vm);
    vm.setUserMemoryRegion({ slot: 0, flags: mode.slotFlags, guestPhysAddr: GPA, memorySize: PAGES * PAGE });
    const v = vm.createVcpu(0);
    for (const p of [1, 2, 900]) v.writeGuest(GPA + p * PAGE, 1);
    const outer: number[] = [];
    const inner: number[] = [];
    mode.collectDirtyPages(vm, [0], (_s, offset) => {
      outer.push(offset);
      if (offset === 1) {
        v.writeGuest(GPA + 500 * PAGE, 1);
        mode.collectDirtyPages(vm, [0], (_t, o) => inner.push(o));
      }
    });
    expect(outer).toEqual([1, 2, 900]);
    expect(inner).toEqual([500]);
    vm.dispose();
  });
});
