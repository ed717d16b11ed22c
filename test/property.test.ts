// Property test: the real dirtlog (WASM core + host) against the plain-TypeScript reference
// model of test/reference-model.ts, step by step, on random sequences of memslot updates,
// guest accesses from normal and SMM vCPUs, VMM writes, GET/CLEAR and manual-protect changes.
// At every step: same errno or success, byte-identical bitmaps, identical read values and
// exit reasons; generations and the logging-slot count after every memslot update; at the
// end reads and writes of a few pages of every slot, then a GET of every slot id in use.
//
// Knobs (environment): DIRTLOG_PROPERTY_RUNS (default 300), _STEPS (max sequence length,
// 40), _SEED, _IDS (slot ids per address space, 4), _STATS=1 (print how often each model
// path ran), _SPTE=1 (also compare the leaf SPTEs of sampled pages: a debugging aid),
// _AVOID=1 (end a run before it hits an already-reported core bug, see KnownBugs).
import fc from "fast-check";
import { describe, expect, it } from "vitest";
import { createVm, KVM_CAP_MANUAL_DIRTY_LOG_PROTECT2, KvmError, type Vcpu, type Vm } from "../src/index.js";
import { ModelError, type PlantedBug, RefModel, type Slot } from "./reference-model.js";

const PAGE = 4096;
const LOG = 1;
const RO = 2;
const MIB = 1 << 20;
const GIB = 1 << 30;
const POOL_BYTES = 4 << 20;
const POOL_PAGES = POOL_BYTES / PAGE;
const CHECK_SPTES = !!process.env.DIRTLOG_PROPERTY_SPTE;

// ---------------------------------------------------------------- concrete steps
type Step =
  | {
      k: "region";
      slot: number;
      flags: number;
      gpa: number | bigint;
      size: number | bigint;
      backed: boolean;
    }
  | { k: "write"; as: number; gpa: number; value: bigint }
  | { k: "read"; as: number; gpa: number }
  | { k: "writes"; as: number; gpas: number[]; value: bigint }
  | { k: "reads"; as: number; gpas: number[] }
  | { k: "get"; slot: number }
  | { k: "clear"; slot: number; first: number; num: number; bitmap: Uint8Array }
  | { k: "cap"; cap: number; v: number; flags: number }
  | { k: "host"; slot: number; offset: number; data: Uint8Array };

function hex(x: number | bigint): string {
  return typeof x === "bigint" ? `0x${x.toString(16)}n` : `0x${x.toString(16)}`;
}
function slotName(s: number): string {
  return `${s >>> 16}:${s & 0xffff}`;
}
function bytesSummary(b: Uint8Array): string {
  const set: number[] = [];
  for (let i = 0; i < b.length * 8 && set.length < 40; i++) if ((b[i >> 3] >> (i & 7)) & 1) set.push(i);
  return `[${b.length} B; bits ${set.join(",")}${set.length === 40 ? ",…" : ""}]`;
}
function showStep(s: Step): string {
  switch (s.k) {
    case "region":
      return `setUserMemoryRegion({slot: ${slotName(s.slot)}, flags: ${s.flags}, gpa: ${hex(s.gpa)}, size: ${hex(s.size)}, backed: ${s.backed}})`;
    case "write":
      return `vcpu(as ${s.as}).writeGuest(${hex(s.gpa)}, ${hex(s.value)})`;
    case "read":
      return `vcpu(as ${s.as}).readGuest(${hex(s.gpa)})`;
    case "writes":
      return `vcpu(as ${s.as}).writeGuest(${hex(s.value)}) at ${s.gpas.map(hex).join(", ")}`;
    case "reads":
      return `vcpu(as ${s.as}).readGuest at ${s.gpas.map(hex).join(", ")}`;
    case "get":
      return `getDirtyLog(${slotName(s.slot)})`;
    case "clear":
      return `clearDirtyLog(${slotName(s.slot)}, first ${s.first}, num ${s.num}, ${bytesSummary(s.bitmap)})`;
    case "cap":
      return `enableCap(${s.cap}, [${s.v}], flags ${s.flags})`;
    case "host":
      return `writeUserMemory(${slotName(s.slot)}, ${hex(s.offset)}, ${s.data.length} bytes)`;
  }
}

// ---------------------------------------------------------------- abstract ops
// Ops name slots by position in the model's current slot list, so shrinking keeps meaning.
const GPAS = [
  0,
  0x1000,
  0x10000,
  0x100000,
  0x1ff000,
  0x200000,
  0x3ff000,
  0x400000,
  0x600000,
  0x800000,
  GIB,
  2 * GIB,
  3 * GIB,
  4 * GIB,
  4 * GIB + 2 * MIB,
];
const BACKED_SIZES = [0x1000, 0x2000, 0x3000, 0x41000, 0x100000, 0x200000, 0x201000, 0x400000];
const UNBACKED_SIZES = [...BACKED_SIZES, GIB, GIB + 2 * MIB, 2 * GIB, 3 * GIB];

type Target =
  | {
      kind: "slot";
      pick: number;
      page: number;
      off: number;
      otherAs: boolean;
      count: number;
      stride: number;
    }
  | { kind: "raw"; gpa: number; as: number };

type Op =
  | {
      t: "create";
      as: number;
      id: number;
      flags: number;
      gpa: number;
      size: number;
      backed: boolean;
    }
  | {
      t: "big";
      as: number;
      id: number;
      log: boolean;
      gpa: number;
      size: number;
    }
  | { t: "move"; pick: number; gpa: number; toggleLog: boolean }
  | {
      t: "flags";
      pick: number;
      mode: "toggleLog" | "same" | "toggleRo" | "invalid" | "backed" | "resize";
    }
  | { t: "delete"; pick: number; missing: boolean }
  | {
      t: "bad";
      variant: "id" | "as" | "gpa" | "size" | "wrap" | "toobig" | "maxgfn" | "top";
      backed: boolean;
    }
  | { t: "write"; target: Target }
  | { t: "read"; target: Target }
  | { t: "get"; pick: number; raw: boolean; as: number; id: number }
  | {
      t: "clear";
      pick: number;
      first: "zero" | "aligned" | "unaligned" | "end" | "beyond";
      k: number;
      num: "toEnd" | "mult" | "odd" | "zero" | "over";
      m: number;
      bits: "ones" | "random" | "single" | "zeros";
      seed: number;
      short: boolean;
    }
  | { t: "cap"; v: number; flags: number; cap: number }
  | {
      t: "host";
      pick: number;
      page: number;
      off: number;
      len: number;
      beyond: boolean;
    };

const asArb = fc.constantFrom(0, 0, 0, 1);
const MAX_ID = Number(process.env.DIRTLOG_PROPERTY_IDS ?? 4) - 1;
const pageArb = fc.oneof(fc.constantFrom(0, 1, 2, 63, 64, 65, 511, 512, 513, 1023, 1024), fc.nat());
const targetArb: fc.Arbitrary<Target> = fc.oneof(
  {
    weight: 9,
    arbitrary: fc.record({
      kind: fc.constant("slot" as const),
      pick: fc.nat(7),
      page: pageArb,
      off: fc.constantFrom(0, 8, 4088),
      otherAs: fc.constantFrom(false, false, false, false, false, false, false, true),
      // bursts: several pages of one slot (word-level masks, huge frames)
      count: fc.oneof(
        { weight: 3, arbitrary: fc.constant(1) },
        { weight: 1, arbitrary: fc.integer({ min: 2, max: 12 }) },
      ),
      stride: fc.constantFrom(1, 1, 3, 64, 511, 512),
    }),
  },
  {
    weight: 1,
    arbitrary: fc.record({
      kind: fc.constant("raw" as const),
      gpa: fc.constantFrom(...GPAS),
      as: asArb,
    }),
  },
);

const opArb: fc.Arbitrary<Op> = fc.oneof(
  {
    weight: 5,
    arbitrary: fc.record({
      t: fc.constant("create" as const),
      as: asArb,
      id: fc.nat(MAX_ID),
      flags: fc.oneof(
        {
          weight: 16,
          arbitrary: fc.constantFrom(0, 0, 0, LOG, LOG, LOG, RO, LOG | RO),
        },
        { weight: 1, arbitrary: fc.constantFrom(4, 0x10000) },
      ),
      gpa: fc.nat(GPAS.length - 1),
      size: fc.nat(UNBACKED_SIZES.length - 1),
      backed: fc.boolean(),
    }),
  },
  {
    // unbacked, 1 GiB aligned: 1G mappings
    weight: 2,
    arbitrary: fc.record({
      t: fc.constant("big" as const),
      as: asArb,
      id: fc.nat(MAX_ID),
      log: fc.boolean(),
      gpa: fc.constantFrom(GIB, 2 * GIB, 3 * GIB, 4 * GIB, 6 * GIB),
      size: fc.constantFrom(GIB, GIB + 2 * MIB, 2 * GIB, 3 * GIB),
    }),
  },
  {
    weight: 2,
    arbitrary: fc.record({
      t: fc.constant("move" as const),
      pick: fc.nat(7),
      gpa: fc.nat(GPAS.length - 1),
      toggleLog: fc.boolean(),
    }),
  },
  {
    weight: 5,
    arbitrary: fc.record({
      t: fc.constant("flags" as const),
      pick: fc.nat(7),
      mode: fc.constantFrom(
        "toggleLog",
        "toggleLog",
        "toggleLog",
        "toggleLog",
        "toggleLog",
        "same",
        "toggleRo",
        "invalid",
        "backed",
        "resize",
      ),
    }),
  },
  {
    weight: 1,
    arbitrary: fc.record({
      t: fc.constant("delete" as const),
      pick: fc.nat(7),
      missing: fc.boolean(),
    }),
  },
  {
    weight: 1,
    arbitrary: fc.record({
      t: fc.constant("bad" as const),
      variant: fc.constantFrom("id", "as", "gpa", "size", "wrap", "toobig", "maxgfn", "top"),
      backed: fc.boolean(),
    }),
  },
  {
    weight: 14,
    arbitrary: fc.record({
      t: fc.constant("write" as const),
      target: targetArb,
    }),
  },
  {
    weight: 8,
    arbitrary: fc.record({
      t: fc.constant("read" as const),
      target: targetArb,
    }),
  },
  {
    weight: 4,
    arbitrary: fc.record({
      t: fc.constant("get" as const),
      pick: fc.nat(7),
      raw: fc.constantFrom(false, false, false, true),
      as: fc.constantFrom(0, 1, 2),
      id: fc.constantFrom(0, 1, 2, 3, 32764),
    }),
  },
  {
    weight: 5,
    arbitrary: fc.record({
      t: fc.constant("clear" as const),
      pick: fc.nat(7),
      first: fc.constantFrom(
        "zero",
        "zero",
        "zero",
        "zero",
        "aligned",
        "aligned",
        "aligned",
        "unaligned",
        "end",
        "beyond",
      ),
      k: fc.nat(),
      num: fc.constantFrom("toEnd", "toEnd", "toEnd", "toEnd", "mult", "mult", "mult", "odd", "zero", "over"),
      m: fc.nat(8),
      bits: fc.constantFrom("ones", "ones", "ones", "random", "random", "single", "zeros"),
      seed: fc.nat(),
      short: fc.constantFrom(false, false, false, false, false, false, false, true),
    }),
  },
  {
    weight: 3,
    arbitrary: fc.record({
      t: fc.constant("cap" as const),
      v: fc.oneof({ weight: 4, arbitrary: fc.constantFrom(0, 1, 3) }, { weight: 1, arbitrary: fc.nat(7) }),
      flags: fc.constantFrom(0, 0, 0, 0, 0, 0, 0, 1),
      cap: fc.constantFrom(
        KVM_CAP_MANUAL_DIRTY_LOG_PROTECT2,
        KVM_CAP_MANUAL_DIRTY_LOG_PROTECT2,
        KVM_CAP_MANUAL_DIRTY_LOG_PROTECT2,
        166,
      ),
    }),
  },
  {
    weight: 2,
    arbitrary: fc.record({
      t: fc.constant("host" as const),
      pick: fc.nat(7),
      page: pageArb,
      off: fc.constantFrom(0, 5, 8, 4090),
      len: fc.constantFrom(0, 1, 8, 16),
      beyond: fc.constantFrom(false, false, false, false, true),
    }),
  },
);

function slotList(m: RefModel): Slot[] {
  return [...m.slots.values()].sort((a, b) => a.as - b.as || a.id - b.id);
}
function keyOf(s: Slot): number {
  return ((s.as << 16) | s.id) >>> 0;
}
/** Deterministic pseudo-random bytes. */
function prng(seed: number): () => number {
  let x = (seed | 0) ^ 0x9e3779b9;
  return () => {
    x ^= x << 13;
    x ^= x >>> 17;
    x ^= x << 5;
    return (x >>> 0) & 0xff;
  };
}

/** Turn an abstract op into a concrete step, given the model's state before it. */
function resolve(op: Op, m: RefModel, index: number): Step {
  const slots = slotList(m);
  const pickSlot = (pick: number): Slot | undefined => (slots.length ? slots[pick % slots.length] : undefined);
  const access = (t: Target): { as: number; gpas: number[] } => {
    if (t.kind === "raw") return { as: t.as, gpas: [t.gpa] };
    const s = pickSlot(t.pick) as Slot;
    const gpas: number[] = [];
    for (let i = 0; i < t.count; i++) gpas.push((s.base + ((t.page + i * t.stride) % s.npages)) * PAGE + t.off);
    return { as: t.otherAs ? 1 - s.as : s.as, gpas };
  };
  // an access with no slot to aim at creates one instead (a logged or plain 4 MiB slot)
  if ((op.t === "write" || op.t === "read") && op.target.kind === "slot" && slots.length === 0) {
    const flags = op.target.page & 1 ? LOG : 0;
    return {
      k: "region",
      slot: 0,
      flags,
      gpa: 4 * MIB,
      size: 4 * MIB,
      backed: (op.target.page & 2) === 0,
    };
  }
  switch (op.t) {
    case "create": {
      const sizes = op.backed ? BACKED_SIZES : UNBACKED_SIZES;
      return {
        k: "region",
        slot: (op.as << 16) | op.id,
        flags: op.flags,
        gpa: GPAS[op.gpa],
        size: sizes[op.size % sizes.length],
        backed: op.backed,
      };
    }
    case "big":
      return {
        k: "region",
        slot: (op.as << 16) | op.id,
        flags: op.log ? LOG : 0,
        gpa: op.gpa,
        size: op.size,
        backed: false,
      };
    case "move": {
      const s = pickSlot(op.pick);
      if (!s)
        return resolve(
          {
            t: "create",
            as: 0,
            id: 0,
            flags: LOG,
            gpa: op.gpa,
            size: 0,
            backed: true,
          },
          m,
          index,
        );
      return {
        k: "region",
        slot: keyOf(s),
        flags: op.toggleLog ? s.flags ^ LOG : s.flags,
        gpa: GPAS[op.gpa],
        size: s.npages * PAGE,
        backed: s.backed,
      };
    }
    case "flags": {
      const s = pickSlot(op.pick);
      if (!s) return { k: "get", slot: 0 };
      const step = {
        k: "region" as const,
        slot: keyOf(s),
        flags: s.flags,
        gpa: s.base * PAGE,
        size: s.npages * PAGE,
        backed: s.backed,
      };
      if (op.mode === "toggleLog") step.flags ^= LOG;
      else if (op.mode === "toggleRo") step.flags ^= RO;
      else if (op.mode === "invalid") step.flags |= 8;
      else if (op.mode === "backed") step.backed = !s.backed;
      else if (op.mode === "resize") step.size += PAGE;
      return step;
    }
    case "delete": {
      const s = pickSlot(op.pick);
      if (op.missing || !s) {
        const taken = new Set(slots.map(keyOf));
        let key = 0;
        for (const k of [3, 2, 65539, 1, 0]) if (!taken.has(k)) key = k;
        return {
          k: "region",
          slot: key,
          flags: 0,
          gpa: 0,
          size: 0,
          backed: false,
        };
      }
      return {
        k: "region",
        slot: keyOf(s),
        flags: s.flags,
        gpa: s.base * PAGE,
        size: 0,
        backed: s.backed,
      };
    }
    case "bad": {
      const base = {
        k: "region" as const,
        slot: 2,
        flags: LOG,
        gpa: 0x800000 as number | bigint,
        size: 0x2000 as number | bigint,
        backed: op.backed,
      };
      switch (op.variant) {
        case "id":
          return { ...base, slot: 32764 };
        case "as":
          return { ...base, slot: (2 << 16) | 1 };
        case "gpa":
          return { ...base, gpa: 0x800800 };
        case "size":
          return { ...base, size: 0x1800 };
        case "wrap":
          return { ...base, gpa: (1n << 64n) - 4096n, backed: false };
        case "toobig":
          return { ...base, size: 1n << 43n, backed: false };
        case "maxgfn":
          return { ...base, gpa: (1n << 48n) - 4096n, backed: false };
        case "top":
          return { ...base, gpa: (1n << 48n) - 8192n, backed: false };
      }
      break;
    }
    case "write": {
      const a = access(op.target);
      const value = BigInt.asUintN(64, BigInt(index + 1) * 0x9e3779b97f4a7c15n);
      if (a.gpas.length > 1) return { k: "writes", as: a.as, gpas: a.gpas, value };
      return { k: "write", as: a.as, gpa: a.gpas[0], value };
    }
    case "read": {
      const a = access(op.target);
      if (a.gpas.length > 1) return { k: "reads", as: a.as, gpas: a.gpas };
      return { k: "read", as: a.as, gpa: a.gpas[0] };
    }
    case "get": {
      const s = pickSlot(op.pick);
      if (op.raw || !s) return { k: "get", slot: (op.as << 16) | op.id };
      return { k: "get", slot: keyOf(s) };
    }
    case "clear": {
      const s = pickSlot(op.pick);
      const slot = s ? keyOf(s) : 0;
      const npages = s ? s.npages : 64;
      let first: number;
      switch (op.first) {
        case "zero":
          first = 0;
          break;
        case "aligned":
          first = 64 * (op.k % (Math.floor(npages / 64) + 1));
          break;
        case "unaligned":
          first = 1 + 64 * (op.k % (Math.floor(npages / 64) + 1));
          break;
        case "end":
          first = npages;
          break;
        case "beyond":
          first = Math.ceil(npages / 64) * 64 + 64;
          break;
      }
      let num: number;
      switch (op.num) {
        case "toEnd":
          num = npages - first;
          break;
        case "mult":
          num = 64 * op.m;
          break;
        case "odd":
          num = 1 + 64 * op.m;
          break;
        case "zero":
          num = 0;
          break;
        case "over":
          num = npages - first + 64;
          break;
      }
      const num32 = Number(BigInt.asUintN(32, BigInt(num)));
      let n = Math.min(Math.ceil(num32 / 64) * 8, 1 << 20);
      const bitmap = new Uint8Array(n);
      const rnd = prng(op.seed);
      if (op.bits === "ones") bitmap.fill(0xff);
      else if (op.bits === "random") for (let i = 0; i < n; i++) bitmap[i] = rnd() & rnd();
      else if (op.bits === "single" && num32 > 0) {
        const b = op.seed % num32;
        bitmap[b >> 3] |= 1 << (b & 7);
      }
      if (op.short && n > 0) n -= 1;
      return { k: "clear", slot, first, num, bitmap: bitmap.subarray(0, n) };
    }
    case "cap":
      return { k: "cap", cap: op.cap, v: op.v, flags: op.flags };
    case "host": {
      const s = pickSlot(op.pick);
      if (!s)
        return {
          k: "host",
          slot: 0,
          offset: 0,
          data: new Uint8Array(1).fill(1),
        };
      const data = new Uint8Array(op.len);
      for (let i = 0; i < op.len; i++) data[i] = ((index * 31 + i * 7) & 0xff) | 1;
      const offset = op.beyond ? s.npages * PAGE - 4 : (op.page % s.npages) * PAGE + op.off;
      return { k: "host", slot: keyOf(s), offset, data };
    }
  }
  throw new Error("unreachable");
}

// ---------------------------------------------------------------- running a step on both
type Outcome = { ok: true; value: unknown } | { ok: false; errno: string };

function attempt(fn: () => unknown): Outcome {
  try {
    return { ok: true, value: fn() };
  } catch (e) {
    if (e instanceof KvmError || e instanceof ModelError) return { ok: false, errno: e.errno };
    throw e;
  }
}

function showOutcome(o: Outcome): string {
  if (!o.ok) return o.errno;
  const v = o.value;
  if (v instanceof Uint8Array) return bytesSummary(v);
  if (typeof v === "bigint") return hex(v);
  if (v && typeof v === "object") return JSON.stringify(v, (_k, x) => (typeof x === "bigint" ? hex(x) : x));
  return String(v);
}

function same(a: Outcome, b: Outcome): boolean {
  if (a.ok !== b.ok) return false;
  if (!a.ok || !b.ok) return (a as { errno: string }).errno === (b as { errno: string }).errno;
  const x = a.value;
  const y = b.value;
  if (x instanceof Uint8Array && y instanceof Uint8Array) {
    if (x.length !== y.length) return false;
    for (let i = 0; i < x.length; i++) if (x[i] !== y[i]) return false;
    return true;
  }
  if (x && typeof x === "object" && y && typeof y === "object")
    return JSON.stringify(x, big) === JSON.stringify(y, big);
  return x === y;
}
function big(_k: string, x: unknown): unknown {
  return typeof x === "bigint" ? x.toString() : x;
}

class Pair {
  readonly model: RefModel;
  private constructor(
    readonly vm: Vm,
    private readonly vcpus: Vcpu[],
    plant?: PlantedBug,
  ) {
    this.model = new RefModel({ plant });
  }
  /**
   * One vCPU that enters and leaves SMM as the accesses need it; with `smmVcpu`, two
   * vCPUs instead, the second one staying in SMM (address space 1).
   */
  static async create(plant?: PlantedBug, smmVcpu = false): Promise<Pair> {
    const vm = await createVm({
      maxMemoryBytes: 256 << 20,
      mmuPoolBytes: POOL_BYTES,
    });
    const vcpus = [vm.createVcpu(0)];
    if (smmVcpu) {
      vcpus.push(vm.createVcpu(1));
      vcpus[1].smm = true;
    }
    return new Pair(vm, vcpus, plant);
  }
  /** The vCPU for an access in address space `as`. */
  private cpu(as: number): Vcpu {
    if (this.vcpus.length > 1) return this.vcpus[as];
    this.vcpus[0].smm = as === 1;
    return this.vcpus[0];
  }

  run(step: Step): [Outcome, Outcome] {
    const { vm, model } = this;
    switch (step.k) {
      case "region":
        return [
          attempt(() =>
            vm.setUserMemoryRegion({
              slot: step.slot,
              flags: step.flags,
              guestPhysAddr: step.gpa,
              memorySize: step.size,
              backed: step.backed,
            }),
          ),
          attempt(() =>
            model.setUserMemoryRegion({
              slot: step.slot,
              flags: step.flags,
              guestPhysAddr: step.gpa,
              memorySize: step.size,
              backed: step.backed,
            }),
          ),
        ];
      case "write":
        return [
          attempt(() => this.cpu(step.as).writeGuest(step.gpa, step.value)),
          attempt(() => model.write(step.as, step.gpa, step.value)),
        ];
      case "read":
        return [
          attempt(() => {
            const value = this.cpu(step.as).readGuest(step.gpa);
            return { value, exit: this.cpu(step.as).exitReason };
          }),
          attempt(() => model.read(step.as, step.gpa)),
        ];
      case "writes":
        return [
          attempt(() => step.gpas.map((g) => this.cpu(step.as).writeGuest(g, step.value))),
          attempt(() => step.gpas.map((g) => model.write(step.as, g, step.value))),
        ];
      case "reads":
        return [
          attempt(() =>
            step.gpas.map((g) => {
              const value = this.cpu(step.as).readGuest(g);
              return { value, exit: this.cpu(step.as).exitReason };
            }),
          ),
          attempt(() => step.gpas.map((g) => model.read(step.as, g))),
        ];
      case "get":
        return [attempt(() => vm.getDirtyLog(step.slot)), attempt(() => model.getDirtyLog(step.slot))];
      case "clear":
        return [
          attempt(() => vm.clearDirtyLog(step.slot, step.first, step.num, step.bitmap)),
          attempt(() => model.clearDirtyLog(step.slot, step.first, step.num, step.bitmap)),
        ];
      case "cap":
        return [
          attempt(() => vm.enableCap(step.cap, [step.v], step.flags)),
          attempt(() => model.enableCap(step.cap, step.v, step.flags)),
        ];
      case "host":
        return [
          attempt(() => vm.writeUserMemory(step.slot, step.offset, step.data)),
          attempt(() => model.writeUserMemory(step.slot, step.offset, step.data)),
        ];
    }
  }

  /**
   * Debug aid (DIRTLOG_PROPERTY_SPTE=1): compare the leaf mapping a few pages of every
   * slot (level, MMU-writable, W) with the core's SPTEs. Not part of the property: the
   * mapping structure is not KVM's contract (read-only slots legitimately differ, §1.6).
   */
  checkSptes(): string | null {
    for (const s of this.model.slots.values()) {
      if (s.flags & RO) continue;
      for (const p of [0, 1, 5, 63, 64, 511, 512, 513, 1024, 262143, 262144, s.npages - 1]) {
        if (p >= s.npages) continue;
        const gfn = s.base + p;
        const m = this.model.spte(s.as, gfn);
        const c = this.vm.spte(s.as, BigInt(gfn) * 4096n);
        const cv = c.level
          ? {
              level: c.level,
              m: (c.spte & (1n << 58n)) !== 0n,
              w: (c.spte & 2n) !== 0n,
            }
          : undefined;
        const mv = m ? { level: m.level, m: m.m, w: m.w } : undefined;
        if (JSON.stringify(cv) !== JSON.stringify(mv)) {
          return `spte ${s.as}:${hex(gfn)} (slot ${s.id} page ${p}): core ${JSON.stringify(cv)}, model ${JSON.stringify(mv)}`;
        }
      }
    }
    return null;
  }

  /** Invariants compared after memslot updates and at the end. */
  checkGlobals(): string | null {
    for (const as of [0, 1]) {
      const c = this.vm.generation(as);
      const m = this.model.generation(as);
      if (c !== m) return `generation(${as}): core ${c}, model ${m}`;
    }
    const c = this.vm.stats.memslotsDirtyLogging;
    if (c !== this.model.nrLogging) return `memslotsDirtyLogging: core ${c}, model ${this.model.nrLogging}`;
    return null;
  }
}

/**
 * Exploration aid: with DIRTLOG_PROPERTY_AVOID=1 the test steers around a core bug already
 * reported, so the search can look for further ones. Off by default: the property test
 * itself stays honest and fails on it.
 *   B. one vCPU switching between SMM and normal mode keeps its TLB (§1.1): with the knob
 *      on, a second vCPU stays in SMM instead of the first one switching.
 * (A. — classic GET of a bitmap born all-ones under INITIALLY_SET — was fixed in 2e9607d.)
 */
class KnownBugs {
  readonly on = !!process.env.DIRTLOG_PROPERTY_AVOID;
}

interface RunResult {
  failure: string | null;
  steps: number;
  stoppedForPool: boolean;
}

/** Run ops on the core and on the model; the first disagreement, with the trace so far. */
async function runOps(ops: Op[], plant?: PlantedBug): Promise<RunResult> {
  const avoid = new KnownBugs();
  const pair = await Pair.create(plant, avoid.on);
  const trace: string[] = [];
  const fail = (what: string): RunResult => ({
    failure: `${what}\n  after:\n${trace.map((t, i) => `    ${i + 1}. ${t}`).join("\n")}`,
    steps: trace.length,
    stoppedForPool: false,
  });
  try {
    for (let i = 0; i < ops.length; i++) {
      // Keep clear of the page-table pool's capacity (a core resource limit, not KVM
      // semantics): stop the sequence if the next step could exhaust it.
      if (pair.vm.stats.pageTablePages + pair.model.splitCostBound() > POOL_PAGES) {
        return { failure: null, steps: trace.length, stoppedForPool: true };
      }
      const step = resolve(ops[i], pair.model, i);
      trace.push(showStep(step));
      const [core, model] = pair.run(step);
      if (!same(core, model)) return fail(`step ${i + 1}: core ${showOutcome(core)}, model ${showOutcome(model)}`);
      if (step.k === "region" || step.k === "cap") {
        const g = pair.checkGlobals();
        if (g) return fail(`step ${i + 1}: ${g}`);
      }
      if (CHECK_SPTES) {
        const d = pair.checkSptes();
        if (d) return fail(`step ${i + 1}: ${d}`);
      }
    }
    // Final probe: reads, then writes, of a few pages of every slot (turns any difference
    // in mapping state into a difference in reports), then GET of every slot id in use.
    const probe = slotList(pair.model);
    const tables = 3 * 10 * probe.length; // new tables the probe's faults may need at most
    if (pair.vm.stats.pageTablePages + pair.model.splitCostBound() + tables > POOL_PAGES) probe.length = 0;
    for (const s of probe) {
      const pages = [0, 1, 2, 63, 64, 511, 512, 513, 1024, s.npages - 1].filter((p) => p < s.npages);
      const gpas = pages.map((p) => (s.base + p) * PAGE);
      for (const step of [
        { k: "reads" as const, as: s.as, gpas },
        { k: "writes" as const, as: s.as, gpas, value: 0x5a5a5a5an },
      ]) {
        trace.push(`(final) ${showStep(step)}`);
        const [core, model] = pair.run(step);
        if (!same(core, model)) return fail(`final ${step.k}: core ${showOutcome(core)}, model ${showOutcome(model)}`);
      }
    }
    const keys = new Set<number>([0, 1, 65536]);
    for (const s of pair.model.slots.values()) keys.add(((s.as << 16) | s.id) >>> 0);
    for (const key of keys) {
      const core = attempt(() => pair.vm.getDirtyLog(key));
      const model = attempt(() => pair.model.getDirtyLog(key));
      if (!same(core, model))
        return fail(`final getDirtyLog(${slotName(key)}): core ${showOutcome(core)}, model ${showOutcome(model)}`);
    }
    const g = pair.checkGlobals();
    if (g) return fail(`final: ${g}`);
    return { failure: null, steps: trace.length, stoppedForPool: false };
  } finally {
    pair.vm.dispose();
    events.push(pair.model.events);
  }
}
/** The model's path counters of every run (printed with DIRTLOG_PROPERTY_STATS). */
const events: Array<Map<string, number>> = [];

/** Run explicit concrete steps (for the deterministic tests). */
async function runSteps(steps: Step[], plant?: PlantedBug): Promise<string | null> {
  const pair = await Pair.create(plant);
  try {
    for (let i = 0; i < steps.length; i++) {
      const [core, model] = pair.run(steps[i]);
      if (!same(core, model))
        return `step ${i + 1} ${showStep(steps[i])}: core ${showOutcome(core)}, model ${showOutcome(model)}`;
      const g = pair.checkGlobals();
      if (g) return `step ${i + 1} ${showStep(steps[i])}: ${g}`;
    }
    return null;
  } finally {
    pair.vm.dispose();
  }
}

// ---------------------------------------------------------------- tests
const MAX_STEPS = Number(process.env.DIRTLOG_PROPERTY_STEPS ?? 40);
const seqArb = fc.array(opArb, {
  minLength: 1,
  maxLength: MAX_STEPS,
  size: "max",
});
const NUM_RUNS = Number(process.env.DIRTLOG_PROPERTY_RUNS ?? 300);
const SEED = process.env.DIRTLOG_PROPERTY_SEED ? Number(process.env.DIRTLOG_PROPERTY_SEED) : undefined;

const stats = { runs: 0, steps: 0, pool: 0, events: new Map<string, number>() };

describe("core vs reference model", () => {
  it("agrees with the reference model on random operation sequences", async () => {
    await fc.assert(
      fc.asyncProperty(seqArb, async (ops) => {
        const r = await runOps(ops);
        stats.runs++;
        stats.steps += r.steps;
        if (r.stoppedForPool) stats.pool++;
        for (const [k, v] of events.pop() ?? []) stats.events.set(k, (stats.events.get(k) ?? 0) + v);
        if (r.failure) throw new Error(r.failure);
      }),
      { numRuns: NUM_RUNS, seed: SEED, endOnFailure: false },
    );
    if (process.env.DIRTLOG_PROPERTY_STATS) {
      console.log(stats.runs, "runs", stats.steps, "steps", stats.pool, "stopped for the pool");
      console.log(
        [...stats.events]
          .sort()
          .map(([k, v]) => `${k}: ${v}`)
          .join("\n"),
      );
    }
  });

  it("catches planted differences (the model run with one rule flipped)", async () => {
    const base = 4 * MIB;
    const cases: Array<{ plant: PlantedBug; steps: Step[]; at: RegExp }> = [
      {
        // a read fault on a page whose host page exists maps it writable and logs it
        plant: "readFaultNeverReports",
        steps: [
          {
            k: "region",
            slot: 0,
            flags: LOG,
            gpa: base,
            size: 2 * MIB,
            backed: true,
          },
          {
            k: "host",
            slot: 0,
            offset: 3 * PAGE,
            data: new Uint8Array([1, 2, 3]),
          },
          { k: "read", as: 0, gpa: base + 3 * PAGE },
          { k: "get", slot: 0 },
        ],
        at: /^step 4 getDirtyLog/,
      },
      {
        // classic GET re-arms: the next write is reported again
        plant: "classicGetNoRearm",
        steps: [
          {
            k: "region",
            slot: 0,
            flags: LOG,
            gpa: base,
            size: 64 * PAGE,
            backed: false,
          },
          { k: "write", as: 0, gpa: base, value: 1n },
          { k: "get", slot: 0 },
          { k: "write", as: 0, gpa: base, value: 2n },
          { k: "get", slot: 0 },
        ],
        at: /^step 5 getDirtyLog/,
      },
      {
        // DELETE zaps the SMM address space too: the next read refaults and is logged
        plant: "moveZapsOwnAsOnly",
        steps: [
          {
            k: "region",
            slot: 1 << 16,
            flags: LOG,
            gpa: base,
            size: 64 * PAGE,
            backed: true,
          },
          { k: "write", as: 1, gpa: base, value: 1n },
          { k: "get", slot: 1 << 16 },
          { k: "region", slot: 0, flags: 0, gpa: 0, size: PAGE, backed: true },
          { k: "region", slot: 0, flags: 0, gpa: 0, size: 0, backed: true },
          { k: "read", as: 1, gpa: base },
          { k: "get", slot: 1 << 16 },
        ],
        at: /^step 7 getDirtyLog/,
      },
    ];
    for (const c of cases) {
      expect(await runSteps(c.steps), c.plant).toBeNull(); // the honest model agrees
      expect(await runSteps(c.steps, c.plant), c.plant).toMatch(c.at); // the flipped one does not
    }
  });
});
