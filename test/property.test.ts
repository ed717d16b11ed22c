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
//
// Ring mode (second describe): the same comparison on a dirty-ring VM (256- or 512-entry
// rings, 1–2 vCPUs, with or without KVM_CAP_DIRTY_LOG_RING_WITH_BITMAP): memslot ops,
// guest accesses from either vCPU in address space 0 or SMM, bursts that reach the soft
// limit (ring-full exits), collectDirtyRing per vCPU (exact entry lists),
// KVM_RESET_DIRTY_RINGS (count), harvest + retry of the store that exited, kvm_write_guest
// with and without a vCPU, GET/CLEAR (ENXIO without the bitmap). After every step the
// rings' dirty/reset indices and every un-reset entry (flags, slot, offset) are compared.
// Knobs: DIRTLOG_PROPERTY_RING_RUNS (default 300), _RING_STEPS (40), _SEED, _STATS,
// _RING_PLANT=<PlantedBug> (run the property against a model with that rule flipped: it
// must fail; shows that the random sequences reach the rule).
import fc from "fast-check";
import { describe, expect, it } from "vitest";
import {
  collectDirtyRing,
  createVm,
  KVM_CAP_DIRTY_LOG_RING,
  KVM_CAP_DIRTY_LOG_RING_ACQ_REL,
  KVM_CAP_DIRTY_LOG_RING_WITH_BITMAP,
  KVM_CAP_MANUAL_DIRTY_LOG_PROTECT2,
  KVM_EXIT_DIRTY_RING_FULL,
  KvmError,
  type Vcpu,
  type Vm,
} from "../src/index.js";
import { plantedCore } from "./planted-core.js";
import { ModelError, type PlantedBug, RefModel, type RingEntryView, type Slot } from "./reference-model.js";

const PAGE = 4096;
const LOG = 1;
const RO = 2;
const MIB = 1 << 20;
const GIB = 1 << 30;
const POOL_BYTES = 4 << 20;
const POOL_PAGES = POOL_BYTES / PAGE;
const CHECK_SPTES = !!process.env.DIRTLOG_PROPERTY_SPTE;
/** The MMU the core runs with: each property runs with the TDP MMU, then the shadow MMU. */
let mmu: "tdp" | "shadow" = "tdp";
/** A planted core to run instead of the package's (negative controls). */
let wasm: WebAssembly.Module | undefined;
const SHADOW_RUNS_SHARE = 0.5; // of the runs, for the shadow MMU (its reports must be the same)

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
  | { k: "write"; as: number; gpa: number; value: bigint; cpu?: number }
  | { k: "read"; as: number; gpa: number; cpu?: number }
  | { k: "writes"; as: number; gpas: number[]; value: bigint; cpu?: number }
  | { k: "reads"; as: number; gpas: number[]; cpu?: number }
  | { k: "get"; slot: number }
  | { k: "clear"; slot: number; first: number; num: number; bitmap: Uint8Array }
  | { k: "cap"; cap: number; v: number; flags: number }
  | { k: "host"; slot: number; offset: number; data: Uint8Array }
  // ring mode
  | { k: "strided"; cpu: number; as: number; gpa: number; stride: number; count: number; value: bigint }
  | { k: "collect"; cpu: number }
  | { k: "reset" }
  | { k: "harvest"; retry: boolean }
  | { k: "kwrite"; cpu?: number; as: number; gpa: number; value: bigint };

/** A gpa list, runs of equal stride shown as first..last (stride, count). */
function showGpas(g: number[]): string {
  if (g.length <= 12) return g.map(hex).join(", ");
  return `${g.slice(0, 6).map(hex).join(", ")}, … (${g.length} in all) …, ${g.slice(-3).map(hex).join(", ")}`;
}
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
  const cpu = "cpu" in s && s.cpu !== undefined ? `${s.cpu}` : "";
  switch (s.k) {
    case "region":
      return `setUserMemoryRegion({slot: ${slotName(s.slot)}, flags: ${s.flags}, gpa: ${hex(s.gpa)}, size: ${hex(s.size)}, backed: ${s.backed}})`;
    case "write":
      return `vcpu${cpu}(as ${s.as}).writeGuest(${hex(s.gpa)}, ${hex(s.value)})`;
    case "read":
      return `vcpu${cpu}(as ${s.as}).readGuest(${hex(s.gpa)})`;
    case "writes":
      return `vcpu${cpu}(as ${s.as}).writeGuest(${hex(s.value)}) at ${showGpas(s.gpas)}`;
    case "reads":
      return `vcpu${cpu}(as ${s.as}).readGuest at ${showGpas(s.gpas)}`;
    case "strided":
      return `vcpu${cpu}(as ${s.as}).writeStrided(${hex(s.gpa)}, stride ${hex(s.stride)}, count ${s.count}, ${hex(s.value)})`;
    case "collect":
      return `collectDirtyRing(vcpu${cpu})`;
    case "reset":
      return "resetDirtyRings()";
    case "harvest":
      return `harvest: collectDirtyRing of every vCPU, resetDirtyRings()${s.retry ? ", retry the stores that exited DIRTY_RING_FULL" : ""}`;
    case "kwrite":
      return s.cpu === undefined
        ? `vm.kvmWriteGuest(${hex(s.gpa)}, ${hex(s.value)})`
        : `vcpu${cpu}(as ${s.as}).kvmWriteGuest(${hex(s.gpa)}, ${hex(s.value)})`;
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

/** A ring VM's configuration (ring mode of the property). */
interface RingConfig {
  ncpu: number;
  cap: number;
  bytes: number;
  withBitmap: boolean;
}

/** A store that exited KVM_EXIT_DIRTY_RING_FULL before retiring: the VMM retries it. */
interface PendingStore {
  as: number;
  gpa: number;
  value: bigint;
}

class Pair {
  readonly model: RefModel;
  /** Per vCPU (ring mode): the last store that exited DIRTY_RING_FULL, not yet retried. */
  readonly pending: Array<PendingStore | undefined> = [];
  private constructor(
    readonly vm: Vm,
    private readonly vcpus: Vcpu[],
    plant?: PlantedBug,
  ) {
    this.model = new RefModel({ plant, hugePages: vm.mmu === "tdp" });
  }
  get ncpu(): number {
    return this.vcpus.length;
  }
  get ring(): boolean {
    return this.model.ringBytes !== 0;
  }
  /**
   * A ring VM: KVM_CAP_DIRTY_LOG_RING (or ACQ_REL) of cfg.bytes, optionally WITH_BITMAP,
   * then cfg.ncpu vCPUs, each call made on the core and on the model.
   */
  static async createRing(cfg: RingConfig, plant?: PlantedBug): Promise<Pair> {
    const vm = await createVm({ maxMemoryBytes: 256 << 20, mmuPoolBytes: POOL_BYTES, mmu, ...(wasm ? { wasm } : {}) });
    const pair = new Pair(vm, [], plant);
    const both = (what: string, a: () => unknown, b: () => unknown): void => {
      const x = attempt(a);
      const y = attempt(b);
      if (!same(x, y)) throw new Error(`${what}: core ${showOutcome(x)}, model ${showOutcome(y)}`);
    };
    both(
      `enableCap(${cfg.cap}, [${cfg.bytes}])`,
      () => vm.enableCap(cfg.cap, [cfg.bytes]),
      () => pair.model.enableCap(cfg.cap, cfg.bytes),
    );
    if (cfg.withBitmap) {
      both(
        "enableCap(WITH_BITMAP)",
        () => vm.enableCap(KVM_CAP_DIRTY_LOG_RING_WITH_BITMAP, []),
        () => pair.model.enableCap(KVM_CAP_DIRTY_LOG_RING_WITH_BITMAP, 0),
      );
    }
    for (let i = 0; i < cfg.ncpu; i++) {
      pair.vcpus.push(vm.createVcpu(i));
      pair.model.createVcpu();
    }
    return pair;
  }
  /**
   * One vCPU that enters and leaves SMM as the accesses need it; with `smmVcpu`, two
   * vCPUs instead, the second one staying in SMM (address space 1).
   */
  static async create(plant?: PlantedBug, smmVcpu = false): Promise<Pair> {
    const vm = await createVm({
      maxMemoryBytes: 256 << 20,
      mmuPoolBytes: POOL_BYTES,
      mmu,
      ...(wasm ? { wasm } : {}),
    });
    const vcpus = [vm.createVcpu(0)];
    if (smmVcpu) {
      vcpus.push(vm.createVcpu(1));
      vcpus[1].smm = true;
    }
    return new Pair(vm, vcpus, plant);
  }
  /** The vCPU for an access in address space `as` (vCPU `idx` in SMM or not, if given). */
  private cpu(as: number, idx?: number): Vcpu {
    if (idx !== undefined) {
      this.vcpus[idx].smm = as === 1;
      return this.vcpus[idx];
    }
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
          attempt(() => this.cpu(step.as, step.cpu).writeGuest(step.gpa, step.value)),
          attempt(() => model.write(step.as, step.gpa, step.value, step.cpu ?? 0)),
        ];
      case "read":
        return [
          attempt(() => {
            const value = this.cpu(step.as, step.cpu).readGuest(step.gpa);
            return { value, exit: this.cpu(step.as, step.cpu).exitReason };
          }),
          attempt(() => model.read(step.as, step.gpa, step.cpu ?? 0)),
        ];
      case "writes":
        return [
          attempt(() => step.gpas.map((g) => this.cpu(step.as, step.cpu).writeGuest(g, step.value))),
          attempt(() => step.gpas.map((g) => model.write(step.as, g, step.value, step.cpu ?? 0))),
        ];
      case "reads":
        return [
          attempt(() =>
            step.gpas.map((g) => {
              const value = this.cpu(step.as, step.cpu).readGuest(g);
              return { value, exit: this.cpu(step.as, step.cpu).exitReason };
            }),
          ),
          attempt(() => step.gpas.map((g) => model.read(step.as, g, step.cpu ?? 0))),
        ];
      case "strided":
        return [
          attempt(() => {
            const v = this.cpu(step.as, step.cpu);
            const retired = v.writeStrided(step.gpa, step.stride, step.count, step.value);
            return { retired, exit: v.exitReason };
          }),
          attempt(() => {
            let exit = 0;
            let i = 0;
            for (; i < step.count; i++) {
              exit = model.write(step.as, step.gpa + i * step.stride, step.value, step.cpu);
              if (exit) break;
            }
            return { retired: i, exit };
          }),
        ];
      case "collect":
        return [attempt(() => this.collectCore(step.cpu)), attempt(() => model.collect(step.cpu))];
      case "reset":
        return [attempt(() => vm.resetDirtyRings()), attempt(() => model.resetDirtyRings())];
      case "harvest": {
        // as a VMM on KVM_EXIT_DIRTY_RING_FULL: harvest every ring, reset, re-run the
        // stores that did not retire (each a KVM_RUN of the same store)
        const todo = this.pending.map((p, i) => (step.retry && p ? { ...p, cpu: i } : undefined));
        const out: [Outcome, Outcome] = [
          attempt(() => {
            const lists = this.vcpus.map((_v, i) => this.collectCore(i));
            const reset = vm.resetDirtyRings();
            const retries = todo.map((p) => (p ? this.cpu(p.as, p.cpu).writeGuest(p.gpa, p.value) : null));
            return { lists, reset, retries };
          }),
          attempt(() => {
            const lists = this.vcpus.map((_v, i) => model.collect(i));
            const reset = model.resetDirtyRings();
            const retries = todo.map((p) => (p ? model.write(p.as, p.gpa, p.value, p.cpu) : null));
            return { lists, reset, retries };
          }),
        ];
        if (out[1].ok) {
          const { retries } = out[1].value as { retries: Array<number | null> };
          retries.forEach((r, i) => {
            if (r !== null && r !== KVM_EXIT_DIRTY_RING_FULL) this.pending[i] = undefined;
          });
        }
        return out;
      }
      case "kwrite":
        return [
          attempt(() =>
            step.cpu === undefined
              ? vm.kvmWriteGuest(step.gpa, step.value)
              : this.cpu(step.as, step.cpu).kvmWriteGuest(step.gpa, step.value),
          ),
          attempt(() => model.kvmWriteGuest(step.cpu, step.as, step.gpa, step.value)),
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

  /** collectDirtyRing on the core: the (slot, offset) entries in harvest order. */
  private collectCore(idx: number): Array<[number, number]> {
    const list: Array<[number, number]> = [];
    const n = collectDirtyRing(this.vcpus[idx], (slot, offset) => list.push([slot, offset]));
    if (n !== list.length) throw new Error(`collectDirtyRing returned ${n} for ${list.length} entries`);
    return list;
  }

  /** Ring mode: remember the store that exited DIRTY_RING_FULL (the model's result). */
  notePending(step: Step, model: Outcome): void {
    if (!model.ok) return;
    const full = KVM_EXIT_DIRTY_RING_FULL;
    const idx = "cpu" in step && step.cpu !== undefined ? step.cpu : 0;
    if (step.k === "write" && model.value === full) {
      this.pending[idx] = { as: step.as, gpa: step.gpa, value: step.value };
    } else if (step.k === "writes") {
      const i = (model.value as number[]).indexOf(full);
      if (i >= 0) this.pending[idx] = { as: step.as, gpa: step.gpas[i], value: step.value };
    } else if (step.k === "strided") {
      const r = model.value as { retired: number; exit: number };
      if (r.exit === full)
        this.pending[idx] = { as: step.as, gpa: step.gpa + r.retired * step.stride, value: step.value };
    }
  }

  /**
   * Ring mode, after every step: each vCPU's dirty_index and reset_index, and every entry
   * between them (flags DIRTY or RESET, slot, offset) as userspace sees it in the ring.
   */
  checkRings(): string | null {
    for (let i = 0; i < this.vcpus.length; i++) {
      const v = this.vcpus[i];
      const st = v.dirtyRingState;
      const dv = new DataView(v.dirtyRing.buffer, v.dirtyRing.byteOffset, v.dirtyRing.byteLength);
      const entries: RingEntryView[] = [];
      for (let c = st.resetIndex; c !== st.dirtyIndex && entries.length <= st.entries; c = (c + 1) >>> 0) {
        const at = (c & (st.entries - 1)) * 16;
        entries.push({
          flags: dv.getUint32(at, true),
          slot: dv.getUint32(at + 4, true),
          offset: Number(dv.getBigUint64(at + 8, true)),
        });
      }
      const r = this.model.rings[i];
      // (the soft limit itself is not compared: it shows in the exit reasons)
      const core = { dirtyIndex: st.dirtyIndex, resetIndex: st.resetIndex, entries };
      const model = { dirtyIndex: r.dirtyIndex, resetIndex: r.resetIndex, entries: this.model.ringView(i) };
      if (JSON.stringify(core) !== JSON.stringify(model)) {
        let at = 0;
        while (at < core.entries.length && JSON.stringify(core.entries[at]) === JSON.stringify(model.entries[at])) at++;
        return `ring of vcpu${i} (first difference at entry ${at} from reset_index): core ${showRing(core, at)}, model ${showRing(model, at)}`;
      }
    }
    return null;
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

/** A ring state; long entry lists are shown around entry `at` (D = DIRTY, R = RESET). */
function showRing(r: { dirtyIndex: number; resetIndex: number; entries: RingEntryView[] }, at = 0): string {
  const e = r.entries.map(
    (x) => `${x.flags === 1 ? "D" : x.flags === 2 ? "R" : `f${x.flags}`} ${slotName(x.slot)}+${x.offset}`,
  );
  let shown = e;
  if (e.length > 16) {
    const from = Math.max(0, at - 3);
    const to = Math.min(e.length, at + 4);
    shown = [
      ...(from > 0 ? [`…${from}…`] : []),
      ...e.slice(from, to),
      ...(to < e.length ? [`…${e.length - to}…`] : []),
    ];
  }
  return `{dirty_index ${r.dirtyIndex}, reset_index ${r.resetIndex}, ${e.length} entries [${shown.join(", ")}]}`;
}

/**
 * Exploration aid: with DIRTLOG_PROPERTY_AVOID=1 the test steers around a core bug already
 * reported, so the search can look for further ones. Off by default: the property test
 * itself stays honest and fails on it.
 *   B. one vCPU switching between SMM and normal mode keeps its TLB (§1.1): with the knob
 *      on, a second vCPU stays in SMM instead of the first one switching.
 * (A. — classic GET of a bitmap born all-ones under INITIALLY_SET — was fixed in 2e9607d.
 *  C. — guest accesses at gpa ≥ 2^48 went through the SPTE of gpa mod 2^48 (the top-level
 *  index was taken modulo 512), so a store retired into another slot's memory instead of
 *  exiting MMIO; found by the ring property (a writeStrided running past the top of the
 *  space) — was fixed in b7e4384; deterministic regression case in the ring describe.)
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

interface RunStats {
  runs: number;
  steps: number;
  pool: number;
  events: Map<string, number>;
}
const newStats = (): RunStats => ({ runs: 0, steps: 0, pool: 0, events: new Map<string, number>() });
const stats = newStats();

/** Count one run's steps and events; fail the property on a difference. */
function record(st: RunStats, r: { steps: number; stoppedForPool: boolean; failure: string | null }): void {
  st.runs++;
  st.steps += r.steps;
  if (r.stoppedForPool) st.pool++;
  for (const [k, v] of events.pop() ?? []) st.events.set(k, (st.events.get(k) ?? 0) + v);
  if (r.failure) throw new Error(r.failure);
}

/** With DIRTLOG_PROPERTY_STATS set, print how often each path ran. */
function printStats(st: RunStats, what: string): void {
  if (!process.env.DIRTLOG_PROPERTY_STATS) return;
  console.log(st.runs, what, st.steps, "steps", st.pool, "stopped for the pool");
  console.log(
    [...st.events]
      .sort()
      .map(([k, v]) => `${k}: ${v}`)
      .join("\n"),
  );
}

describe("core vs reference model", () => {
  it("agrees with the reference model on random operation sequences", async () => {
    await fc.assert(
      fc.asyncProperty(seqArb, async (ops) => {
        record(stats, await runOps(ops));
      }),
      { numRuns: NUM_RUNS, seed: SEED, endOnFailure: false },
    );
    printStats(stats, "runs");
  });

  it("agrees with the reference model with the shadow MMU (rmaps, 4K mappings): the same reports", async () => {
    mmu = "shadow";
    try {
      const st = newStats();
      await fc.assert(
        fc.asyncProperty(seqArb, async (ops) => {
          record(st, await runOps(ops));
        }),
        { numRuns: Math.ceil(NUM_RUNS * SHADOW_RUNS_SHARE), seed: SEED, endOnFailure: false },
      );
      printStats(st, "shadow-MMU runs");
    } finally {
      mmu = "tdp";
    }
  });

  it.skipIf(process.env.DIRTLOG_CORE === "debug")("the shadow-MMU comparison can fail: a core that puts no SPTE on its rmap re-arms nothing (planted)", async () => {
    const steps: Step[] = [
      { k: "region", slot: 0, flags: LOG, gpa: 0, size: MIB, backed: true },
      { k: "write", as: 0, gpa: 0x3000, value: 1n },
      { k: "get", slot: 0 },
      { k: "write", as: 0, gpa: 0x3000, value: 2n },
      { k: "get", slot: 0 },
    ];
    mmu = "shadow";
    try {
      expect(await runSteps(steps)).toBeNull();
      wasm = plantedCore(
        [{ file: "fault.ts", from: "if (!is_present(old)) kvm_mmu_leaf_installed(", to: "if (false) kvm_mmu_leaf_installed(" }],
        "release",
      );
      expect(await runSteps(steps)).toMatch(/^step 5 getDirtyLog\(0:0\)/);
    } finally {
      mmu = "tdp";
      wasm = undefined;
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

// ================================================================ ring mode
// Abstract ops of a ring sequence: every op of the bitmap property (accesses run on vCPU
// `cpu`), plus logged slots big enough to fill a ring, bursts (writeStrided or a list of
// writes) that reach the soft limit, collect / reset / harvest(+retry), kvm_write_guest
// with and without a vCPU, and the ring caps (errnos; WITH_BITMAP while no slot exists).
type RingOp =
  | { t: "base"; cpu: number; op: Op }
  | { t: "mkslot"; as: number; id: number; gpa: number; size: number; backed: boolean }
  | {
      t: "fill";
      cpu: number;
      pick: number;
      page: number;
      count: number;
      stride: number;
      strided: boolean;
      otherAs: boolean;
    }
  | { t: "collect"; cpu: number }
  | { t: "reset" }
  | { t: "harvest"; retry: boolean }
  | { t: "kwrite"; vcpu: boolean; cpu: number; pick: number; page: number; off: number; otherAs: boolean }
  | { t: "del"; pick: number }
  | { t: "ringcap"; cap: number; v: number; flags: number };

const cpuArb = fc.nat(1);
const ringOpArb: fc.Arbitrary<RingOp> = fc.oneof(
  { weight: 14, arbitrary: fc.record({ t: fc.constant("base" as const), cpu: cpuArb, op: opArb }) },
  {
    weight: 3,
    arbitrary: fc.record({
      t: fc.constant("mkslot" as const),
      as: asArb,
      id: fc.nat(MAX_ID),
      gpa: fc.constantFrom(0, 0x100000, 0x400000, 0x800000, GIB, 4 * GIB),
      size: fc.constantFrom(0x100000, 0x200000, 0x400000),
      backed: fc.boolean(),
    }),
  },
  {
    weight: 5,
    arbitrary: fc.record({
      t: fc.constant("fill" as const),
      cpu: cpuArb,
      pick: fc.nat(7),
      page: pageArb,
      count: fc.oneof(
        { weight: 2, arbitrary: fc.constantFrom(64, 128, 190, 191, 192, 193, 200, 256) },
        { weight: 1, arbitrary: fc.integer({ min: 1, max: 256 }) },
      ),
      stride: fc.constantFrom(1, 1, 1, 1, 2, 3, 64),
      strided: fc.boolean(),
      otherAs: fc.constantFrom(false, false, false, false, false, false, false, true),
    }),
  },
  { weight: 3, arbitrary: fc.record({ t: fc.constant("collect" as const), cpu: cpuArb }) },
  { weight: 2, arbitrary: fc.record({ t: fc.constant("reset" as const) }) },
  {
    weight: 4,
    arbitrary: fc.record({ t: fc.constant("harvest" as const), retry: fc.constantFrom(true, true, true, false) }),
  },
  {
    weight: 2,
    arbitrary: fc.record({
      t: fc.constant("kwrite" as const),
      vcpu: fc.boolean(),
      cpu: cpuArb,
      pick: fc.nat(7),
      page: pageArb,
      off: fc.constantFrom(0, 8, 4088),
      otherAs: fc.constantFrom(false, false, false, true),
    }),
  },
  // delete a slot (mkslot / create may bring the id back with another size or place)
  { weight: 1, arbitrary: fc.record({ t: fc.constant("del" as const), pick: fc.nat(7) }) },
  {
    weight: 1,
    arbitrary: fc.record({
      t: fc.constant("ringcap" as const),
      cap: fc.constantFrom(KVM_CAP_DIRTY_LOG_RING, KVM_CAP_DIRTY_LOG_RING_ACQ_REL, KVM_CAP_DIRTY_LOG_RING_WITH_BITMAP),
      v: fc.constantFrom(0, 2048, 3000, 4096, 8192, 1 << 21, 2 ** 32 + 4096),
      flags: fc.constantFrom(0, 0, 0, 1),
    }),
  },
);

const ringConfigArb: fc.Arbitrary<RingConfig> = fc.record({
  ncpu: fc.constantFrom(1, 2, 2),
  cap: fc.constantFrom(KVM_CAP_DIRTY_LOG_RING, KVM_CAP_DIRTY_LOG_RING, KVM_CAP_DIRTY_LOG_RING_ACQ_REL),
  bytes: fc.constantFrom(4096, 4096, 4096, 8192),
  withBitmap: fc.boolean(),
});

/** Turn a ring op into a concrete step, given the pair's state before it. */
function resolveRing(op: RingOp, pair: Pair, index: number): Step {
  const m = pair.model;
  const slots = slotList(m);
  const pickSlot = (pick: number): Slot | undefined => (slots.length ? slots[pick % slots.length] : undefined);
  const cpuOf = (c: number): number => c % pair.ncpu;
  const value = BigInt.asUintN(64, BigInt(index + 1) * 0x9e3779b97f4a7c15n);
  const implicitSlot: Step = { k: "region", slot: 0, flags: LOG, gpa: 4 * MIB, size: 4 * MIB, backed: index % 2 === 0 };
  switch (op.t) {
    case "base": {
      const step = resolve(op.op, m, index);
      if (step.k === "write" || step.k === "read" || step.k === "writes" || step.k === "reads") {
        return { ...step, cpu: cpuOf(op.cpu) };
      }
      return step;
    }
    case "mkslot":
      return {
        k: "region",
        slot: (op.as << 16) | op.id,
        flags: LOG,
        gpa: op.gpa,
        size: op.size,
        backed: op.backed,
      };
    case "fill": {
      const s = pickSlot(op.pick);
      if (!s) return implicitSlot;
      const as = op.otherAs ? 1 - s.as : s.as;
      const first = op.page % s.npages;
      if (op.strided) {
        const gpa = (s.base + first) * PAGE;
        // (no wrap: from a slot at the top of the space the burst runs past 2^48)
        return { k: "strided", cpu: cpuOf(op.cpu), as, gpa, stride: op.stride * PAGE, count: op.count, value };
      }
      const gpas: number[] = [];
      for (let i = 0; i < op.count; i++) gpas.push((s.base + ((first + i * op.stride) % s.npages)) * PAGE);
      return { k: "writes", cpu: cpuOf(op.cpu), as, gpas, value };
    }
    case "collect":
      return { k: "collect", cpu: cpuOf(op.cpu) };
    case "reset":
      return { k: "reset" };
    case "harvest":
      return { k: "harvest", retry: op.retry };
    case "kwrite": {
      const s = pickSlot(op.pick);
      const gpa = s ? (s.base + (op.page % s.npages)) * PAGE + op.off : 4 * MIB;
      const as = s ? (op.otherAs ? 1 - s.as : s.as) : 0;
      return op.vcpu ? { k: "kwrite", cpu: cpuOf(op.cpu), as, gpa, value } : { k: "kwrite", as: 0, gpa, value };
    }
    case "del": {
      const s = pickSlot(op.pick);
      if (!s) return implicitSlot;
      return { k: "region", slot: keyOf(s), flags: s.flags, gpa: s.base * PAGE, size: 0, backed: s.backed };
    }
    case "ringcap":
      return { k: "cap", cap: op.cap, v: op.v, flags: op.flags };
  }
}

/** Ring mode: run ops on the core and the model; the first disagreement, with the trace. */
async function runRingOps(cfg: RingConfig, ops: RingOp[], plant?: PlantedBug): Promise<RunResult> {
  const pair = await Pair.createRing(cfg, plant);
  const trace: string[] = [];
  const fail = (what: string): RunResult => ({
    failure: `${what}\n  ring VM: ${showConfig(cfg)}\n  after:\n${trace.map((t, i) => `    ${i + 1}. ${t}`).join("\n")}`,
    steps: trace.length,
    stoppedForPool: false,
  });
  const exec = (step: Step, label: string): string | null => {
    trace.push(label === "" ? showStep(step) : `(${label}) ${showStep(step)}`);
    const [core, model] = pair.run(step);
    if (!same(core, model)) return `${showOutcome(core)}, model ${showOutcome(model)}`;
    pair.notePending(step, model);
    const r = pair.checkRings();
    if (r) return `after the step: ${r}`;
    if (step.k === "region" || step.k === "cap") {
      const g = pair.checkGlobals();
      if (g) return g;
    }
    return null;
  };
  try {
    for (let i = 0; i < ops.length; i++) {
      if (pair.vm.stats.pageTablePages + pair.model.splitCostBound() > POOL_PAGES) {
        return { failure: null, steps: trace.length, stoppedForPool: true };
      }
      const step = resolveRing(ops[i], pair, i);
      const d = exec(step, "");
      if (d) return fail(`step ${i + 1}: core ${d}`);
    }
    // Final: harvest; read where each store that exited DIRTY_RING_FULL would have landed
    // (it must not have retired), retry those stores; probe reads then writes of a few
    // pages of every slot from vCPU 0, harvest again, then GET of every slot id in use.
    const d0 = exec({ k: "harvest", retry: false }, "final");
    if (d0) return fail(`final harvest: core ${d0}`);
    for (let c = 0; c < pair.ncpu; c++) {
      const p = pair.pending[c];
      if (!p) continue;
      const d = exec({ k: "read", cpu: c, as: p.as, gpa: p.gpa }, "final, store not retired");
      if (d) return fail(`final read of a store that exited DIRTY_RING_FULL: core ${d}`);
    }
    const d2 = exec({ k: "harvest", retry: true }, "final");
    if (d2) return fail(`final harvest: core ${d2}`);
    const probe = slotList(pair.model);
    const tables = 3 * 10 * probe.length;
    if (pair.vm.stats.pageTablePages + pair.model.splitCostBound() + tables > POOL_PAGES) probe.length = 0;
    for (const s of probe) {
      const pages = [0, 1, 2, 63, 64, 511, 512, 513, 1024, s.npages - 1].filter((p) => p < s.npages);
      const gpas = pages.map((p) => (s.base + p) * PAGE);
      for (const step of [
        { k: "reads" as const, as: s.as, gpas, cpu: 0 },
        { k: "writes" as const, as: s.as, gpas, value: 0x5a5a5a5an, cpu: 0 },
      ]) {
        const d = exec(step, "final");
        if (d) return fail(`final ${step.k}: core ${d}`);
      }
    }
    const d1 = exec({ k: "harvest", retry: true }, "final");
    if (d1) return fail(`final harvest: core ${d1}`);
    const keys = new Set<number>([0, 1, 65536]);
    for (const s of pair.model.slots.values()) keys.add(((s.as << 16) | s.id) >>> 0);
    for (const key of keys) {
      const d = exec({ k: "get", slot: key }, "final");
      if (d) return fail(`final getDirtyLog(${slotName(key)}): core ${d}`);
    }
    const g = pair.checkGlobals();
    if (g) return fail(`final: ${g}`);
    return { failure: null, steps: trace.length, stoppedForPool: false };
  } finally {
    pair.vm.dispose();
    events.push(pair.model.events);
  }
}

function showConfig(cfg: RingConfig): string {
  const cap = cfg.cap === KVM_CAP_DIRTY_LOG_RING ? "DIRTY_LOG_RING" : "DIRTY_LOG_RING_ACQ_REL";
  return `enableCap(${cap}, [${cfg.bytes}]) (${cfg.bytes / 16} entries, soft limit ${cfg.bytes / 16 - 64})${cfg.withBitmap ? ", WITH_BITMAP" : ""}, ${cfg.ncpu} vCPU${cfg.ncpu > 1 ? "s" : ""}`;
}

/** Run explicit concrete steps on a ring VM (deterministic tests). */
async function runRingSteps(cfg: RingConfig, steps: Step[], plant?: PlantedBug): Promise<string | null> {
  const pair = await Pair.createRing(cfg, plant);
  try {
    for (let i = 0; i < steps.length; i++) {
      const [core, model] = pair.run(steps[i]);
      if (!same(core, model))
        return `step ${i + 1} ${showStep(steps[i])}: core ${showOutcome(core)}, model ${showOutcome(model)}`;
      pair.notePending(steps[i], model);
      const r = pair.checkRings() ?? pair.checkGlobals();
      if (r) return `step ${i + 1} ${showStep(steps[i])}: ${r}`;
    }
    return null;
  } finally {
    pair.vm.dispose();
  }
}

const RING_STEPS = Number(process.env.DIRTLOG_PROPERTY_RING_STEPS ?? 40);
const RING_RUNS = Number(process.env.DIRTLOG_PROPERTY_RING_RUNS ?? 300);
const RING_PLANT = process.env.DIRTLOG_PROPERTY_RING_PLANT as PlantedBug | undefined;
const ringSeqArb = fc.array(ringOpArb, { minLength: 1, maxLength: RING_STEPS, size: "max" });

describe("core vs reference model, dirty-ring mode", () => {
  it("agrees with the reference model on random ring-mode operation sequences", async () => {
    const st = newStats();
    await fc.assert(
      fc.asyncProperty(ringConfigArb, ringSeqArb, async (cfg, ops) => {
        record(st, await runRingOps(cfg, ops, RING_PLANT));
      }),
      { numRuns: RING_RUNS, seed: SEED, endOnFailure: false },
    );
    printStats(st, "ring runs");
  });

  it("agrees with the reference model with the shadow MMU: the same ring entries in the same order", async () => {
    mmu = "shadow";
    try {
      const st = newStats();
      await fc.assert(
        fc.asyncProperty(ringConfigArb, ringSeqArb, async (cfg, ops) => {
          record(st, await runRingOps(cfg, ops, RING_PLANT));
        }),
        { numRuns: Math.ceil(RING_RUNS * SHADOW_RUNS_SHARE), seed: SEED, endOnFailure: false },
      );
      printStats(st, "shadow-MMU ring runs");
    } finally {
      mmu = "tdp";
    }
  });

  it("guest accesses above the 48-bit guest physical space exit MMIO and never alias low memory (bug C, fixed)", async () => {
    // No memslot can reach above 2^48 (§1.3 step 9); an access there finds no slot: MMIO,
    // whether or not gpa mod 2^48 happens to be mapped. Bitmap VM, then ring VM.
    const steps: Step[] = [
      { k: "region", slot: 0, flags: LOG, gpa: 0, size: PAGE, backed: true },
      { k: "write", cpu: 0, as: 0, gpa: 0, value: 0x1111n },
      { k: "write", cpu: 0, as: 0, gpa: 2 ** 48, value: 0x2222n },
      { k: "read", cpu: 0, as: 0, gpa: 0 },
    ];
    expect(await runSteps(steps)).toBeNull();
    expect(
      await runRingSteps({ ncpu: 1, cap: KVM_CAP_DIRTY_LOG_RING, bytes: 4096, withBitmap: false }, steps),
    ).toBeNull();
  });

  it("catches planted differences in the ring rules (the model run with one rule flipped)", async () => {
    const base = 4 * MIB;
    const cfg: RingConfig = { ncpu: 1, cap: KVM_CAP_DIRTY_LOG_RING, bytes: 4096, withBitmap: false };
    const logged = (backed: boolean): Step => ({ k: "region", slot: 0, flags: LOG, gpa: base, size: MIB, backed });
    const cases: Array<{ plant: PlantedBug; steps: Step[]; at: RegExp }> = [
      {
        // the reset re-arms the harvested page: its next write faults and is pushed again
        plant: "ringResetNoRearm",
        steps: [
          logged(false),
          { k: "write", cpu: 0, as: 0, gpa: base, value: 1n },
          { k: "harvest", retry: false },
          { k: "write", cpu: 0, as: 0, gpa: base, value: 2n },
          { k: "collect", cpu: 0 },
        ],
        at: /^step 4 .*ring of vcpu0/,
      },
      {
        // 256 entries: the 192nd push exits (soft limit entries − 64), the store not retired
        plant: "ringSoftLimitIsSize",
        steps: [
          logged(false),
          { k: "strided", cpu: 0, as: 0, gpa: base, stride: PAGE, count: 200, value: 3n },
          { k: "harvest", retry: true },
          { k: "collect", cpu: 0 },
        ],
        at: /^step 2 vcpu0\(as 0\)\.writeStrided/,
      },
      {
        // the store that took the ring-full exit did not reach memory
        plant: "ringStoreBeforeExit",
        steps: [
          logged(true),
          { k: "strided", cpu: 0, as: 0, gpa: base, stride: PAGE, count: 192, value: 4n },
          { k: "harvest", retry: false },
          { k: "read", cpu: 0, as: 0, gpa: base + 191 * PAGE },
        ],
        at: /^step 4 vcpu0\(as 0\)\.readGuest/,
      },
    ];
    for (const c of cases) {
      expect(await runRingSteps(cfg, c.steps), c.plant).toBeNull(); // the honest model agrees
      const flipped = await runRingSteps(cfg, c.steps, c.plant);
      if (process.env.DIRTLOG_PROPERTY_STATS) console.log(`${c.plant}: ${flipped}`);
      expect(flipped, c.plant).toMatch(c.at); // the flipped one does not
    }
  });
});
