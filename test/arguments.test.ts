// Arguments: validate, never coerce (issue §4). For every public call, bad values of each
// class — wrong type, string numbers, arrays, null/undefined, a missing required field,
// fractions, NaN/Infinity, negatives, values beyond the ioctl field (u32 slot/flags/count,
// u64 addresses and sizes) — must be rejected with EINVAL (EFAULT for a bad CLEAR bitmap,
// as the kernel), in a KvmError whose message starts with the call and whose reason names
// the field, and must leave the VM exactly as it was: memslots, generations, the VM and
// vCPU control blocks, each slot's metadata (dirty bitmaps, host-present map) and guest
// bytes — and the dirty bits, checked at the end by one valid KVM_GET_DIRTY_LOG (a bad
// GET must not have consumed them). Helpers with bad options reject promptly instead of
// hanging, and after dispose() every call throws EBADF.
import { describe, expect, it } from "vitest";
import * as dist from "../dist/index.js";
import * as L from "../src/layout.js";
import {
  ERRNO,
  type ErrnoName,
  IDENTITY_PAGETABLE_PRIVATE_MEMSLOT,
  KVM_CAP_DIRTY_LOG_RING,
  KVM_CAP_DIRTY_LOG_RING_WITH_BITMAP,
  KVM_CAP_MANUAL_DIRTY_LOG_PROTECT2,
  KVM_DIRTY_LOG_MANUAL_PROTECT_ENABLE,
  KVM_MEM_LOG_DIRTY_PAGES,
  type KvmError,
  type Vcpu,
  type Vm,
  createVm,
  hashMemory,
} from "../src/index.js";
import { pagesOf, vmFactory } from "./helpers.js";

const PAGE = 4096;
const LOG = KVM_MEM_LOG_DIRTY_PAGES;
const RING = KVM_CAP_DIRTY_LOG_RING;
const MP2 = KVM_CAP_MANUAL_DIRTY_LOG_PROTECT2;
/** Slot 0: logged, backed, 128 pages; pages DIRTY are dirty (written by vCPU 0). */
const GPA0 = 0x10_0000;
const SLOT0_PAGES = 128;
const DIRTY = [1, 3, 64, 127];
/** Slot 1: unlogged, unbacked, 64 pages. */
const GPA1 = 0x4000_0000;
/** Nothing maps this: a coerced value that creates a slot shows up in memslots(). */
const FREE_GPA = 0x8000_0000;
const U64 = 1n << 64n;

// ---- bad values by class ----
/** A required field left out of its object (or a required argument left out). */
const MISSING = Symbol("missing");
const WRONG_TYPES: unknown[] = [null, true, {}, [0], "0", "7", "4096", "0x5000", Symbol("s"), () => 0];
const FRACTIONS: unknown[] = [0.5, 1.5, 4096.5, -0.25];
const NON_FINITE: unknown[] = [Number.NaN, Number.POSITIVE_INFINITY, Number.NEGATIVE_INFINITY];
const NEGATIVE: unknown[] = [-1, -4096, -(2 ** 53), -1n, -(2n ** 64n)];
const BEYOND_U32: unknown[] = [2 ** 32, 2 ** 32 + 1, 2n ** 32n, 2n ** 32n + 64n, 2 ** 53];
const BEYOND_U64: unknown[] = [2 ** 64, 2n ** 64n, 2n ** 64n + 0x5000n, 2n ** 64n + BigInt(GPA0), 2n ** 65n];
/** Numbers, never coerced: shared by every numeric class. */
const NOT_A_NUMBER = [...WRONG_TYPES, ...FRACTIONS, ...NON_FINITE, ...NEGATIVE];
/** A u32 field (number or bigint accepted when valid). */
const U32_OPTIONAL = [...NOT_A_NUMBER, ...BEYOND_U32];
const U32_REQUIRED = [undefined, ...U32_OPTIONAL];
/** A u64 field. */
const U64_OPTIONAL = [...NOT_A_NUMBER, ...BEYOND_U64];
const U64_REQUIRED = [undefined, ...U64_OPTIONAL];
/** A JS integer (ids, counts, address-space ids): numbers only. */
const INT_OPTIONAL = [...WRONG_TYPES, ...FRACTIONS, ...NON_FINITE, -1, -(2 ** 31)];
const INT_REQUIRED = [undefined, ...INT_OPTIONAL];
const BOOL_BAD: unknown[] = [null, 0, 1, "true", "false", "no", [true], {}];

// ---- VMs ----
const { newVm, track } = vmFactory();

type FixtureKind = "classic" | "manual" | "bare";
interface Fixture {
  vm: Vm;
  vcpu: Vcpu;
  kind: FixtureKind;
}

/**
 * classic: slot 0 (logged, backed) with DIRTY pages dirty, slot 1 (unlogged, unbacked),
 * vCPU 0 with a sequential workload set, iteration 7. manual: the same with
 * MANUAL_DIRTY_LOG_PROTECT2 enabled. bare: a VM with nothing in it (a coerced
 * enableCap or setIdentityMapAddr would take effect there).
 */
async function fixture(kind: FixtureKind = "classic"): Promise<Fixture> {
  const vm = await newVm();
  if (kind === "bare") return { vm, vcpu: undefined as unknown as Vcpu, kind };
  if (kind === "manual") vm.enableCap(MP2, [KVM_DIRTY_LOG_MANUAL_PROTECT_ENABLE]);
  vm.setUserMemoryRegion({ slot: 0, flags: LOG, guestPhysAddr: GPA0, memorySize: SLOT0_PAGES * PAGE, backed: true });
  vm.setUserMemoryRegion({ slot: 1, guestPhysAddr: GPA1, memorySize: 64 * PAGE });
  const vcpu = vm.createVcpu(0);
  for (const p of DIRTY) expect(vcpu.writeGuest(GPA0 + p * PAGE, 0xd1e7n + BigInt(p))).toBe(0);
  vcpu.setWorkload({ pattern: "sequential", gpa: GPA0 + 8 * PAGE, pages: 8, batch: 4 });
  vm.iteration = 7n;
  return { vm, vcpu, kind };
}

/** The dirty bits of slot 0 must still be exactly DIRTY (one valid GET, after everything). */
function expectDirtyBitsKept(f: Fixture): void {
  if (f.kind === "bare") return;
  expect(pagesOf(f.vm.getDirtyLog(0))).toEqual(DIRTY);
}

const json = (x: unknown) => JSON.stringify(x, (_k, v) => (typeof v === "bigint" ? `${v}n` : v));

/** Everything a rejected call could have changed, as comparable strings. */
function snapshot(vm: Vm): Record<string, string> {
  const u8 = vm.u8();
  const dv = new DataView(vm.memory.buffer);
  const block = u8.slice(vm.addr, vm.addr + L.VM_SIZE);
  block.fill(0, L.VM_ERR_REASON, L.VM_ERR_REASON + 4); // the words of the last error
  const table = dv.getUint32(vm.addr + L.VM_SLOTS, true);
  const out: Record<string, string> = {
    generations: json([vm.generation(0), vm.generation(1)]),
    caps: json([vm.dirtyRingSize, vm.manualDirtyLogProtect]),
    iteration: json(vm.iteration),
    stats: json(vm.stats),
    vmBlock: hashMemory(block),
    vcpus: json(vm.vcpuList.map((v) => [v.id, hashMemory(u8.slice(v.addr, v.addr + L.VCPU_SIZE))])),
  };
  for (const s of vm.memslots().sort((a, b) => a.slot - b.slot)) {
    const entry = table + ((s.slot >>> 16) * 32768 + (s.slot & 0xffff)) * L.SLOT_SIZE;
    const meta = dv.getUint32(entry + L.SLOT_META, true);
    const metaBytes = Number(vm.raw.memslot_meta_bytes(BigInt(s.npages)));
    const mem = vm.guestMemory(s.slot);
    out[`slot ${s.slot}`] = json({
      ...s,
      entry: hashMemory(u8.slice(entry, entry + L.SLOT_SIZE)),
      meta: hashMemory(u8.slice(meta, meta + metaBytes)),
      bytes: mem ? hashMemory(mem) : "",
    });
  }
  return out;
}

function changes(before: Record<string, string>, after: Record<string, string>): string[] {
  const keys = new Set([...Object.keys(before), ...Object.keys(after)]);
  return [...keys].filter((k) => before[k] !== after[k]).map((k) => `${k}: ${before[k]} -> ${after[k]}`);
}

function label(v: unknown): string {
  if (v === MISSING) return "(missing)";
  if (typeof v === "bigint") return `${v}n`;
  if (typeof v === "string") return JSON.stringify(v);
  if (typeof v === "symbol" || typeof v === "function") return String(v);
  if (typeof v === "number") return Object.is(v, -0) ? "-0" : String(v);
  if (v === null || v === undefined) return String(v);
  if (Array.isArray(v)) return `[${v.map(label).join(", ")}]`;
  if (ArrayBuffer.isView(v)) return `${v.constructor.name}(${v.byteLength} bytes)`;
  const ctor = (v as { constructor?: { name?: string } }).constructor?.name;
  return ctor === "Object" ? json(v) : (ctor ?? "Object.create(null)");
}

/** `base` with `key` set to v, or left out when v is MISSING. */
function withField<T extends object>(base: T, key: string, v: unknown): T {
  const o = { ...base } as Record<string, unknown>;
  if (v === MISSING) delete o[key];
  else o[key] = v;
  return o as T;
}

const NO_THROW = Symbol("no throw");
function thrown(fn: () => unknown): unknown {
  try {
    fn();
  } catch (e) {
    return e;
  }
  return NO_THROW;
}

function fieldPattern(field: string): RegExp {
  return new RegExp(`(^|[^\\w])${field.replace(/[[\]().*+?^$|\\]/g, "\\$&")}([^\\w]|$)`);
}

interface Expected {
  errno: ErrnoName;
  /** The exact call, or (prefix) what it starts with: KVM_ENABLE_CAP(<cap name>). */
  call: string;
  prefix?: boolean;
  /** Word(s) the reason must name. */
  field: string;
}

/** What is wrong with `e` as the rejection `x`, or undefined. */
function problem(e: unknown, x: Expected): string | undefined {
  if (e === NO_THROW) return "accepted (no error)";
  if (!(e instanceof Error) || e.name !== "KvmError") return `threw ${String(e)} (not a KvmError)`;
  const k = e as KvmError;
  const callOk = x.prefix ? k.call?.startsWith(x.call) : k.call === x.call;
  const ok =
    k.errno === x.errno &&
    k.code === ERRNO[x.errno] &&
    callOk &&
    k.message.startsWith(`${k.call}: ${x.errno}: `) &&
    fieldPattern(x.field).test(k.reason);
  return ok ? undefined : `threw "${k.message}" (want ${x.call}${x.prefix ? "…" : ""}: ${x.errno}: naming ${x.field})`;
}

interface Row extends Partial<Expected> {
  call: string;
  field: string;
  values: unknown[];
  act: (f: Fixture, v: unknown) => unknown;
  fixture?: FixtureKind;
}

/** Every value is rejected as expected and leaves the VM as it was; the dirty bits survive. */
async function checkRow(row: Row): Promise<void> {
  const f = await fixture(row.fixture);
  const x: Expected = { errno: row.errno ?? "EINVAL", call: row.call, prefix: row.prefix, field: row.field };
  const failures: string[] = [];
  for (const v of row.values) {
    const before = snapshot(f.vm);
    const p = problem(
      thrown(() => row.act(f, v)),
      x,
    );
    if (p) failures.push(`${row.field} = ${label(v)}: ${p}`);
    const changed = changes(before, snapshot(f.vm));
    if (changed.length) failures.push(`${row.field} = ${label(v)} changed the VM: ${changed.join("; ")}`);
  }
  expect(failures).toEqual([]);
  expectDirtyBitsKept(f);
}

const bytes8 = () => new Uint8Array([1, 2, 3, 4, 5, 6, 7, 8]);
const fullBitmap = () => new Uint8Array(SLOT0_PAGES / 8).fill(0xff);
const region = (slot: unknown, gpa: unknown, size: unknown) => ({ slot, guestPhysAddr: gpa, memorySize: size });
const sequentialElsewhere = { pattern: "uniform", gpa: GPA0 + 96 * PAGE, pages: 16, batch: 8 };

// ---- the table ----
const vmRows: Row[] = [
  {
    call: "KVM_CHECK_EXTENSION",
    field: "cap",
    values: U32_REQUIRED,
    act: ({ vm }, v) => vm.checkExtension(v as never),
  },
  {
    call: "KVM_ENABLE_CAP",
    prefix: true,
    field: "cap",
    fixture: "bare",
    // Symbols and prototype-less objects: see the separate test below
    values: U32_REQUIRED.filter((v) => typeof v !== "symbol"),
    act: ({ vm }, v) => vm.enableCap(v as never, [4096 * 16]),
  },
  {
    call: "KVM_ENABLE_CAP(DIRTY_LOG_RING)",
    field: "args",
    fixture: "bare",
    values: [null, 65536, "65536", {}, { length: 1, 0: 65536 }, new BigUint64Array([65536n]), [65536, 0, 0, 0, 0]],
    act: ({ vm }, v) => vm.enableCap(RING, v as never),
  },
  {
    call: "KVM_ENABLE_CAP(DIRTY_LOG_RING)",
    field: "args[0]",
    fixture: "bare",
    values: [...U64_REQUIRED, 2n ** 64n + 65536n],
    act: ({ vm }, v) => vm.enableCap(RING, [v as never]),
  },
  {
    call: "KVM_ENABLE_CAP(DIRTY_LOG_RING)",
    field: "args[1]",
    fixture: "bare",
    values: U64_REQUIRED,
    act: ({ vm }, v) => vm.enableCap(RING, [65536, v as never]),
  },
  {
    // the u64 args[0] is checked whole (no wrap): 2^64 + 1 is no ENABLE, 2^32 + 1 neither
    call: "KVM_ENABLE_CAP(MANUAL_DIRTY_LOG_PROTECT2)",
    field: "args[0]",
    fixture: "bare",
    values: [...U64_REQUIRED, 2n ** 64n + 1n, 2n ** 64n + 3n, 2, 4, 2n ** 32n + 1n, 2n ** 63n + 1n],
    act: ({ vm }, v) => vm.enableCap(MP2, [v as never]),
  },
  {
    call: "KVM_ENABLE_CAP(MANUAL_DIRTY_LOG_PROTECT2)",
    field: "flags",
    fixture: "bare",
    values: [...U32_OPTIONAL, 1, 2 ** 31],
    act: ({ vm }, v) => vm.enableCap(MP2, [1], v as never),
  },
  {
    call: "KVM_SET_USER_MEMORY_REGION",
    field: "region",
    values: [undefined, null, 0, "slot 2", [2, 0, FREE_GPA, PAGE], true, Symbol("r")],
    act: ({ vm }, v) => vm.setUserMemoryRegion(v as never),
  },
  {
    call: "KVM_SET_USER_MEMORY_REGION",
    field: "slot",
    values: [MISSING, ...U32_REQUIRED],
    act: ({ vm }, v) => vm.setUserMemoryRegion(withField(region(2, FREE_GPA, PAGE), "slot", v) as never),
  },
  {
    call: "KVM_SET_USER_MEMORY_REGION",
    field: "flags",
    values: [...U32_OPTIONAL, 2 ** 32 + LOG],
    act: ({ vm }, v) => vm.setUserMemoryRegion({ ...region(2, FREE_GPA, PAGE), flags: v } as never),
  },
  {
    call: "KVM_SET_USER_MEMORY_REGION",
    field: "guestPhysAddr",
    values: [MISSING, ...U64_REQUIRED, 2n ** 64n + BigInt(FREE_GPA), 2 ** 64 + 2 ** 12],
    act: ({ vm }, v) => vm.setUserMemoryRegion(withField(region(2, FREE_GPA, PAGE), "guestPhysAddr", v) as never),
  },
  {
    call: "KVM_SET_USER_MEMORY_REGION",
    field: "memorySize",
    values: [MISSING, ...U64_REQUIRED, 2n ** 64n + 4096n],
    act: ({ vm }, v) => vm.setUserMemoryRegion(withField(region(2, FREE_GPA, PAGE), "memorySize", v) as never),
  },
  {
    // on an existing slot: 2^64 wrapped to 0 would delete it
    call: "KVM_SET_USER_MEMORY_REGION",
    field: "memorySize",
    values: [2 ** 64, 2n ** 64n, 2n ** 64n + 64n * 4096n, -0.5, "0"],
    act: ({ vm }, v) => vm.setUserMemoryRegion(region(1, GPA1, v) as never),
  },
  {
    call: "KVM_SET_USER_MEMORY_REGION",
    field: "backed",
    values: BOOL_BAD,
    act: ({ vm }, v) => vm.setUserMemoryRegion({ ...region(2, FREE_GPA, PAGE), backed: v } as never),
  },
  {
    // a misspelt field would be ignored
    call: "KVM_SET_USER_MEMORY_REGION",
    field: "bakced",
    values: [true, false],
    act: ({ vm }, v) => vm.setUserMemoryRegion({ ...region(2, FREE_GPA, PAGE), bakced: v } as never),
  },
  {
    call: "KVM_SET_TSS_ADDR",
    field: "addr",
    values: [...U64_REQUIRED, 2 ** 32, 0xffff_f000, 2n ** 32n, 2n ** 64n + 0xfffb_d000n],
    act: ({ vm }, v) => vm.setTssAddr(v as never),
  },
  {
    call: "KVM_SET_IDENTITY_MAP_ADDR",
    field: "addr",
    fixture: "bare",
    values: U64_REQUIRED,
    act: ({ vm }, v) => vm.setIdentityMapAddr(v as never),
  },
  {
    call: "memslotAt",
    field: "asId",
    values: [...INT_REQUIRED, 2, 3, 2 ** 32],
    act: ({ vm }, v) => vm.memslotAt(v as never, GPA0),
  },
  { call: "memslotAt", field: "gpa", values: U64_REQUIRED, act: ({ vm }, v) => vm.memslotAt(0, v as never) },
  { call: "guestMemory", field: "slot", values: U32_REQUIRED, act: ({ vm }, v) => vm.guestMemory(v as never) },
  {
    call: "writeUserMemory",
    field: "slot",
    values: U32_REQUIRED,
    act: ({ vm }, v) => vm.writeUserMemory(v as never, 0, bytes8()),
  },
  {
    call: "writeUserMemory",
    field: "offset",
    values: [...INT_REQUIRED, -4096, 2 ** 53],
    act: ({ vm }, v) => vm.writeUserMemory(0, v as never, bytes8()),
  },
  {
    // bytes, not elements: a Uint32Array would be written truncated
    call: "writeUserMemory",
    field: "data",
    values: [
      new Uint32Array([0xdeadbeef, 0xcafef00d]),
      new Uint16Array(4).fill(0xffff),
      new Int8Array(8).fill(-1),
      new Uint8ClampedArray(8).fill(255),
      new BigUint64Array([U64 - 1n]),
      new ArrayBuffer(8),
      new DataView(new ArrayBuffer(8)),
      [1, 2, 3],
      "abc",
      null,
      undefined,
      5,
    ],
    act: ({ vm }, v) => vm.writeUserMemory(0, 0, v as never),
  },
  {
    call: "kvm_write_guest",
    field: "gpa",
    values: [...U64_REQUIRED, GPA0 + 4, BigInt(GPA0 + 1)],
    act: ({ vm }, v) => vm.kvmWriteGuest(v as never, 1n),
  },
  {
    call: "kvm_write_guest",
    field: "value",
    values: U64_REQUIRED,
    act: ({ vm }, v) => vm.kvmWriteGuest(GPA0 + 5 * PAGE, v as never),
  },
  {
    call: "setDebug",
    field: "flags",
    values: [undefined, null, 1, "skipTlbFlush", [true], true],
    act: ({ vm }, v) => vm.setDebug(v as never),
  },
  {
    call: "setDebug",
    field: "skipTlbFlush",
    values: BOOL_BAD,
    act: ({ vm }, v) => vm.setDebug({ skipTlbFlush: v } as never),
  },
  {
    call: "iteration",
    field: "iteration",
    values: U64_REQUIRED,
    act: ({ vm }, v) => {
      vm.iteration = v as never;
    },
  },
  {
    call: "generation",
    field: "asId",
    values: [...INT_OPTIONAL, 2, 3, 2 ** 32],
    act: ({ vm }, v) => vm.generation(v as never),
  },
  {
    // getDirtyLog(undefined) / null / NaN / "0" / [0] / 2**32 must not act on slot 0
    call: "KVM_GET_DIRTY_LOG",
    field: "slot",
    values: U32_REQUIRED,
    act: ({ vm }, v) => vm.getDirtyLog(v as never),
  },
  {
    call: "KVM_CLEAR_DIRTY_LOG",
    field: "slot",
    fixture: "manual",
    values: U32_REQUIRED,
    act: ({ vm }, v) => vm.clearDirtyLog(v as never, 0, SLOT0_PAGES, fullBitmap()),
  },
  {
    // 2^64 + 64 wrapped would be page 64: DIRTY's page 64 and 127 would be cleared
    call: "KVM_CLEAR_DIRTY_LOG",
    field: "firstPage",
    fixture: "manual",
    values: [...U64_REQUIRED, 2n ** 64n + 64n],
    act: ({ vm }, v) => vm.clearDirtyLog(0, v as never, 64, fullBitmap()),
  },
  {
    // struct kvm_clear_dirty_log: __u32 num_pages; 2^32 + 128 wrapped would be the whole slot
    call: "KVM_CLEAR_DIRTY_LOG",
    field: "numPages",
    fixture: "manual",
    values: [...U32_REQUIRED, 2 ** 32 + SLOT0_PAGES, 2n ** 32n + 128n],
    act: ({ vm }, v) => vm.clearDirtyLog(0, 0, v as never, fullBitmap()),
  },
  {
    // copy_from_user of the user's bitmap fails: EFAULT, as the kernel (after the range checks)
    call: "KVM_CLEAR_DIRTY_LOG",
    field: "bitmap",
    errno: "EFAULT",
    fixture: "manual",
    values: [
      undefined,
      null,
      "ffff",
      [0xff, 0xff],
      new Uint8Array(SLOT0_PAGES / 8 - 1).fill(0xff),
      new Uint32Array(SLOT0_PAGES / 32).fill(~0),
      new ArrayBuffer(SLOT0_PAGES / 8),
      5,
    ],
    act: ({ vm }, v) => vm.clearDirtyLog(0, 0, SLOT0_PAGES, v as never),
  },
  {
    call: "KVM_CREATE_VCPU",
    field: "id",
    values: [...INT_REQUIRED, 4096, 2 ** 32 + 1],
    act: ({ vm }, v) => vm.createVcpu(v as never),
  },
  {
    call: "spte",
    field: "asId",
    values: [...INT_REQUIRED, -2, 2, 2 ** 31],
    act: ({ vm }, v) => vm.spte(v as never, GPA0),
  },
  { call: "spte", field: "gpa", values: U64_REQUIRED, act: ({ vm }, v) => vm.spte(0, v as never) },
];

const vcpuRows: Row[] = [
  {
    // 2^64 + GPA0 + 5 pages wrapped would dirty page 5
    call: "writeGuest",
    field: "gpa",
    values: [...U64_REQUIRED, 2n ** 64n + BigInt(GPA0 + 5 * PAGE), GPA0 + 5 * PAGE + 4],
    act: ({ vcpu }, v) => vcpu.writeGuest(v as never, 1n),
  },
  {
    call: "writeGuest",
    field: "value",
    values: U64_REQUIRED,
    act: ({ vcpu }, v) => vcpu.writeGuest(GPA0 + 5 * PAGE, v as never),
  },
  {
    call: "readGuest",
    field: "gpa",
    values: [...U64_REQUIRED, 2n ** 64n + BigInt(GPA0 + 5 * PAGE), GPA0 + 2],
    act: ({ vcpu }, v) => vcpu.readGuest(v as never),
  },
  {
    call: "writeStrided",
    field: "gpa",
    values: [...U64_REQUIRED, GPA0 + 5 * PAGE + 1],
    act: ({ vcpu }, v) => vcpu.writeStrided(v as never, 8, 1, 1n),
  },
  {
    call: "writeStrided",
    field: "stride",
    values: [...U64_REQUIRED, 4, 12, 1n],
    act: ({ vcpu }, v) => vcpu.writeStrided(GPA0 + 5 * PAGE, v as never, 2, 1n),
  },
  {
    // writeStrided(gpa, 0, -1, v): -1 as a u32 would be 2^32 - 1 stores (a hang)
    call: "writeStrided",
    field: "count",
    values: [...INT_REQUIRED, 2 ** 31, 2 ** 32 - 1],
    act: ({ vcpu }, v) => vcpu.writeStrided(GPA0 + 5 * PAGE, 0, v as never, 1n),
  },
  {
    call: "writeStrided",
    field: "value",
    values: U64_REQUIRED,
    act: ({ vcpu }, v) => vcpu.writeStrided(GPA0 + 5 * PAGE, 8, 1, v as never),
  },
  {
    call: "kvm_vcpu_write_guest",
    field: "gpa",
    values: [...U64_REQUIRED, 2n ** 64n + BigInt(GPA0 + 5 * PAGE), GPA0 + 5 * PAGE + 4],
    act: ({ vcpu }, v) => vcpu.kvmWriteGuest(v as never, 1n),
  },
  {
    call: "kvm_vcpu_write_guest",
    field: "value",
    values: U64_REQUIRED,
    act: ({ vcpu }, v) => vcpu.kvmWriteGuest(GPA0 + 5 * PAGE, v as never),
  },
  {
    call: "setWorkload",
    field: "workload",
    values: [undefined, null, 5, "sequential", [sequentialElsewhere], true],
    act: ({ vcpu }, v) => vcpu.setWorkload(v as never),
  },
  {
    call: "setWorkload",
    field: "pattern",
    values: [
      MISSING,
      undefined,
      "toString",
      "constructor",
      "__proto__",
      "hasOwnProperty",
      "Uniform",
      "",
      1,
      null,
      ["uniform"],
    ],
    act: ({ vcpu }, v) => vcpu.setWorkload(withField(sequentialElsewhere, "pattern", v) as never),
  },
  {
    call: "setWorkload",
    field: "gpa",
    values: [MISSING, ...U64_REQUIRED, GPA0 + 96 * PAGE + 8, 2n ** 64n + BigInt(GPA0 + 96 * PAGE)],
    act: ({ vcpu }, v) => vcpu.setWorkload(withField(sequentialElsewhere, "gpa", v) as never),
  },
  {
    call: "setWorkload",
    field: "pages",
    values: [MISSING, ...INT_REQUIRED, 0, 2 ** 32],
    act: ({ vcpu }, v) => vcpu.setWorkload(withField(sequentialElsewhere, "pages", v) as never),
  },
  {
    call: "setWorkload",
    field: "batch",
    values: [...INT_OPTIONAL, 0, 2 ** 32],
    act: ({ vcpu }, v) => vcpu.setWorkload(withField(sequentialElsewhere, "batch", v) as never),
  },
  {
    call: "setWorkload",
    field: "limit",
    values: U64_OPTIONAL,
    act: ({ vcpu }, v) => vcpu.setWorkload(withField(sequentialElsewhere, "limit", v) as never),
  },
  {
    call: "setWorkload",
    field: "stride",
    values: [...INT_OPTIONAL, 0, 2 ** 32],
    act: ({ vcpu }, v) => vcpu.setWorkload({ ...sequentialElsewhere, pattern: "strided", stride: v } as never),
  },
  {
    call: "setWorkload",
    field: "hotPages",
    values: [...INT_OPTIONAL, 17],
    act: ({ vcpu }, v) => vcpu.setWorkload({ ...sequentialElsewhere, pattern: "hot-set", hotPages: v } as never),
  },
  {
    call: "setWorkload",
    field: "hotFraction",
    values: [...WRONG_TYPES, ...NON_FINITE, -0.1, 1.5, 2],
    act: ({ vcpu }, v) => vcpu.setWorkload({ ...sequentialElsewhere, pattern: "hot-set", hotFraction: v } as never),
  },
  {
    call: "setWorkload",
    field: "zipfS",
    values: [...WRONG_TYPES, ...NON_FINITE, -1, 65],
    act: ({ vcpu }, v) => vcpu.setWorkload({ ...sequentialElsewhere, pattern: "zipf", zipfS: v } as never),
  },
  {
    call: "setWorkload",
    field: "seed",
    values: [...U64_OPTIONAL, 0, 0n],
    act: ({ vcpu }, v) => vcpu.setWorkload(withField(sequentialElsewhere, "seed", v) as never),
  },
  {
    call: "setWorkload",
    field: "rate",
    values: [1, 0],
    act: ({ vcpu }, v) => vcpu.setWorkload({ ...sequentialElsewhere, rate: v } as never),
  },
  {
    // gpa + pages pages beyond 2^64
    call: "setWorkload",
    field: "region",
    values: [2n ** 64n - BigInt(PAGE), 2n ** 64n - 8n * BigInt(PAGE)],
    act: ({ vcpu }, v) => vcpu.setWorkload({ ...sequentialElsewhere, gpa: v } as never),
  },
  {
    call: "smm",
    field: "smm",
    values: [undefined, ...BOOL_BAD],
    act: ({ vcpu }, v) => {
      vcpu.smm = v as never;
    },
  },
];

describe("§4 every call validates its arguments: EINVAL naming the call and the field, nothing changed", () => {
  for (const row of vmRows) {
    it(`vm: ${row.call} ${row.field} (${row.values.length} bad values)`, () => checkRow(row));
  }
  for (const row of vcpuRows) {
    it(`vcpu: ${row.call} ${row.field} (${row.values.length} bad values)`, () => checkRow(row));
  }
});

describe("§4 the issue's examples", () => {
  it("memorySize 2**64 on an existing slot does not delete it", async () => {
    const { vm } = await fixture();
    const g = vm.generation(0);
    expect(
      problem(
        thrown(() => vm.setUserMemoryRegion(region(1, GPA1, 2 ** 64) as never)),
        { errno: "EINVAL", call: "KVM_SET_USER_MEMORY_REGION", field: "memorySize" },
      ),
    ).toBeUndefined();
    expect(vm.memslotAt(0, GPA1)).toBe(1);
    expect(vm.generation(0)).toBe(g);
  });

  it("guestPhysAddr 2n**64n + 0x5000n creates no slot at 0x5000", async () => {
    const { vm } = await fixture();
    const e = thrown(() => vm.setUserMemoryRegion(region(2, 2n ** 64n + 0x5000n, PAGE) as never));
    expect(problem(e, { errno: "EINVAL", call: "KVM_SET_USER_MEMORY_REGION", field: "guestPhysAddr" })).toBeUndefined();
    expect(vm.memslotAt(0, 0x5000)).toBeUndefined();
    expect(
      vm
        .memslots()
        .map((s) => s.slot)
        .sort(),
    ).toEqual([0, 1]);
  });

  it('getDirtyLog(undefined | null | NaN | "0" | [0] | 2**32) neither harvests nor consumes slot 0\'s bits', async () => {
    const f = await fixture();
    for (const v of [undefined, null, Number.NaN, "0", [0], 2 ** 32]) {
      const e = thrown(() => f.vm.getDirtyLog(v as never));
      expect(problem(e, { errno: "EINVAL", call: "KVM_GET_DIRTY_LOG", field: "slot" }), label(v)).toBeUndefined();
    }
    expectDirtyBitsKept(f); // a later valid GET still sees them
  });

  it('slot "7", memorySize "4096", backed "no", fractional flags: EINVAL, no slot made', async () => {
    const { vm } = await fixture();
    const cases: Array<[string, object]> = [
      ["slot", { slot: "7", guestPhysAddr: FREE_GPA, memorySize: PAGE }],
      ["memorySize", { slot: 7, guestPhysAddr: FREE_GPA, memorySize: "4096" }],
      ["backed", { slot: 7, guestPhysAddr: FREE_GPA, memorySize: PAGE, backed: "no" }],
      ["flags", { slot: 7, flags: 0.5, guestPhysAddr: FREE_GPA, memorySize: PAGE }],
      ["flags", { slot: 7, flags: 1.5, guestPhysAddr: FREE_GPA, memorySize: PAGE }],
    ];
    for (const [field, r] of cases) {
      const e = thrown(() => vm.setUserMemoryRegion(r as never));
      expect(problem(e, { errno: "EINVAL", call: "KVM_SET_USER_MEMORY_REGION", field }), json(r)).toBeUndefined();
    }
    expect(vm.memslotAt(0, FREE_GPA)).toBeUndefined();
    expect(vm.guestMemory(7)).toBeUndefined();
  });

  it("the u64 wrap is gone from clearDirtyLog's first page, guest addresses, setIdentityMapAddr and MANUAL_PROTECT2's args", async () => {
    const f = await fixture("manual");
    const { vm, vcpu } = f;
    const cases: Array<[string, string, () => unknown]> = [
      ["KVM_CLEAR_DIRTY_LOG", "firstPage", () => vm.clearDirtyLog(0, 2n ** 64n, SLOT0_PAGES, fullBitmap())],
      ["writeGuest", "gpa", () => vcpu.writeGuest(2n ** 64n + BigInt(GPA0 + 9 * PAGE), 1n)],
      ["kvm_write_guest", "gpa", () => vm.kvmWriteGuest(2n ** 64n + BigInt(GPA0 + 9 * PAGE), 1n)],
      ["kvm_vcpu_write_guest", "gpa", () => vcpu.kvmWriteGuest(2n ** 64n + BigInt(GPA0 + 9 * PAGE), 1n)],
      ["KVM_ENABLE_CAP(MANUAL_DIRTY_LOG_PROTECT2)", "args[0]", () => vm.enableCap(MP2, [2n ** 64n])],
    ];
    for (const [call, field, fn] of cases) {
      expect(problem(thrown(fn), { errno: "EINVAL", call, field }), call).toBeUndefined();
    }
    expect(vm.manualDirtyLogProtect).toBe(true); // 2^64 was not taken as 0
    expectDirtyBitsKept(f); // the CLEAR at "page 0" did not happen; page 9 was not written

    const bare = await newVm();
    const e = thrown(() => bare.setIdentityMapAddr(2n ** 64n + 0x5000n));
    expect(problem(e, { errno: "EINVAL", call: "KVM_SET_IDENTITY_MAP_ADDR", field: "addr" })).toBeUndefined();
    bare.createVcpu(0); // no identity-map slot appears (at 0x5000 or anywhere)
    expect(bare.memslots()).toEqual([]);
    expect(bare.memslotAt(0, 0x5000)).toBeUndefined();
  });

  it("a rejected setIdentityMapAddr keeps the address set before", async () => {
    const vm = await newVm();
    vm.setIdentityMapAddr(0xfeffc000);
    for (const v of [-1, 0.5, Number.NaN, "0x5000", null, undefined, 2 ** 64, 2n ** 64n + 0x5000n]) {
      const e = thrown(() => vm.setIdentityMapAddr(v as never));
      expect(
        problem(e, { errno: "EINVAL", call: "KVM_SET_IDENTITY_MAP_ADDR", field: "addr" }),
        label(v),
      ).toBeUndefined();
    }
    vm.createVcpu(0);
    const identity = vm.memslots().filter((s) => (s.slot & 0xffff) === IDENTITY_PAGETABLE_PRIVATE_MEMSLOT);
    expect(identity.map((s) => [s.slot >>> 16, s.guestPhysAddr])).toEqual([
      [0, 0xfeffc000n],
      [1, 0xfeffc000n],
    ]);
  });

  it("introspection: spte(-2, …), memslotAt(-1, …) neither trap nor answer; spte(2, …), generation(2) are no garbage", async () => {
    const f = await fixture();
    const cases: Array<[string, string, () => unknown]> = [
      ["spte", "asId", () => f.vm.spte(-2, GPA0)],
      ["memslotAt", "asId", () => f.vm.memslotAt(-1, GPA0)],
      ["spte", "asId", () => f.vm.spte(2, GPA0)],
      ["generation", "asId", () => f.vm.generation(2)],
    ];
    for (const [call, field, fn] of cases) {
      expect(problem(thrown(fn), { errno: "EINVAL", call, field }), call).toBeUndefined();
    }
  });

  it("writeUserMemory with a Uint32Array writes nothing (bytes, not elements)", async () => {
    const { vm } = await fixture();
    const mem = vm.guestMemory(0) as Uint8Array;
    const before = hashMemory(mem);
    const e = thrown(() => vm.writeUserMemory(0, 0, new Uint32Array([0x11223344, 0x55667788]) as never));
    expect(problem(e, { errno: "EINVAL", call: "writeUserMemory", field: "data" })).toBeUndefined();
    expect(hashMemory(mem)).toBe(before);
    expect([...mem.subarray(0, 8)]).toEqual([0, 0, 0, 0, 0, 0, 0, 0]);
  });

  it("negative or fractional counts, pattern 'toString', rate NaN", async () => {
    const f = await fixture();
    const cases: Array<[string, string, () => unknown]> = [
      ["writeStrided", "count", () => f.vcpu.writeStrided(GPA0, 0, -1, 1n)],
      ["writeStrided", "count", () => f.vcpu.writeStrided(GPA0, 8, 2.5, 1n)],
      ["setWorkload", "pages", () => f.vcpu.setWorkload({ pattern: "uniform", gpa: GPA0, pages: -4 })],
      ["setWorkload", "pages", () => f.vcpu.setWorkload({ pattern: "uniform", gpa: GPA0, pages: 1.5 })],
      ["setWorkload", "pattern", () => f.vcpu.setWorkload({ pattern: "toString" as never, gpa: GPA0, pages: 4 })],
    ];
    for (const [call, field, fn] of cases) {
      expect(problem(thrown(fn), { errno: "EINVAL", call, field }), `${call} ${field}`).toBeUndefined();
    }
    expect(f.vcpu.stats.stores).toBe(BigInt(DIRTY.length));
    await expect(f.vcpu.startLoop({ rate: Number.NaN })).rejects.toMatchObject({
      name: "KvmError",
      errno: "EINVAL",
      call: "startLoop",
      reason: expect.stringMatching(fieldPattern("rate")),
    });
    expect(f.vcpu.loopEnd).toBeUndefined();
    expect(f.vcpu.threaded).toBe(false);
    expectDirtyBitsKept(f);
  });
});

describe("§4 a cap that is no number cannot break the error (enableCap builds its call name from cap)", () => {
  it("enableCap(Symbol()), enableCap(Object.create(null)), enableCap('toString'): EINVAL naming cap, no TypeError", async () => {
    const vm = await newVm();
    const failures: string[] = [];
    for (const v of [Symbol("cap"), Object.create(null), "toString", "constructor", "__proto__"]) {
      const e = thrown(() => vm.enableCap(v as never, [4096 * 16]));
      const p = problem(e, { errno: "EINVAL", call: "KVM_ENABLE_CAP", prefix: true, field: "cap" });
      if (p) failures.push(`cap = ${label(v)}: ${p}`);
      // the call is the ioctl, not a function's source text from Object.prototype
      else if (/native code|function|\[object/.test((e as KvmError).call))
        failures.push(`cap = ${label(v)}: call "${(e as KvmError).call}"`);
    }
    expect(failures).toEqual([]);
    expect(vm.dirtyRingSize).toBe(0);
  });

  it("a u32 given as a bigint is the same u32 for enableCap's cap and flags as for every other u32 field", async () => {
    // checkExtension(192n) answers for KVM_CAP_DIRTY_LOG_RING; the validator accepts 192n
    // for enableCap's cap and 0n for its flags, so the call must act on those values too
    const failures: string[] = [];
    const vm0 = await newVm();
    expect(vm0.checkExtension(BigInt(RING) as never)).toBe(vm0.checkExtension(RING));
    const cases: Array<[string, (vm: Vm) => void, (vm: Vm) => boolean]> = [
      [
        "enableCap(MANUAL_PROTECT2, [1], 0n)",
        (vm) => vm.enableCap(MP2, [1], 0n as never),
        (vm) => vm.manualDirtyLogProtect,
      ],
      [
        "enableCap(192n, [65536])",
        (vm) => vm.enableCap(BigInt(RING) as never, [4096 * 16]),
        (vm) => vm.dirtyRingSize === 65536,
      ],
      [
        "enableCap(DIRTY_LOG_RING_WITH_BITMAP, [], 0n)",
        (vm) => {
          vm.enableCap(RING, [4096 * 16]);
          vm.enableCap(KVM_CAP_DIRTY_LOG_RING_WITH_BITMAP, [], 0n as never);
        },
        (vm) => vm.dirtyRingSize === 65536,
      ],
    ];
    for (const [name, act, took] of cases) {
      const vm = await newVm();
      const e = thrown(() => act(vm));
      if (e !== NO_THROW) failures.push(`${name}: threw ${String(e)}`);
      else if (!took(vm)) failures.push(`${name}: accepted but did nothing`);
    }
    expect(failures).toEqual([]);
  });

  it("KVM_CAP_DIRTY_LOG_RING's size stays the kernel's u32: args[0] = 2^32 + 65536 is 65536 bytes", async () => {
    const vm = await newVm();
    vm.enableCap(RING, [2n ** 32n + 4096n * 16n]);
    expect(vm.dirtyRingSize).toBe(65536);
    const vcpu = vm.createVcpu(0);
    expect(vcpu.dirtyRingState.entries).toBe(4096);
    expect(vcpu.dirtyRing.byteLength).toBe(65536);
    // and the narrowing is the kernel's only: 2^32 + 48 is 48 bytes, not a power of two
    const other = await newVm();
    const e = thrown(() => other.enableCap(RING, [2n ** 32n + 48n]));
    expect(problem(e, { errno: "EINVAL", call: "KVM_ENABLE_CAP(DIRTY_LOG_RING)", field: "size" })).toBeUndefined();
    expect(other.dirtyRingSize).toBe(0);
  });
});

describe("§4 options objects: a misspelt option is EINVAL, not ignored", () => {
  it("createVm rejects a misspelt option (as setUserMemoryRegion and setWorkload do: see the table)", async () => {
    await expect(createVm({ maxMemory: 1 << 30 } as never)).rejects.toMatchObject({
      errno: "EINVAL",
      call: "KVM_CREATE_VM",
    });
  });

  it("setDebug({ skipTlbFlsh: true })", async () => {
    const f = await fixture();
    const e = thrown(() => f.vm.setDebug({ skipTlbFlsh: true } as never));
    expect(problem(e, { errno: "EINVAL", call: "setDebug", field: "skipTlbFlsh" })).toBeUndefined();
  });

  it("vcpu.startLoop({ rte: 1000 }) does not start an unpaced loop", async () => {
    const vm = await dist.createVm({ maxMemoryBytes: 256 << 20, mmuPoolBytes: 2 << 20 });
    track({ dispose: () => void vm.close() });
    vm.setUserMemoryRegion({ slot: 0, guestPhysAddr: GPA0, memorySize: 16 * PAGE });
    const vcpu = vm.createVcpu(0);
    vcpu.setWorkload({ pattern: "sequential", gpa: GPA0, pages: 16, limit: 100 });
    await expect(deadline(vcpu.startLoop({ rte: 1000 } as never))).rejects.toMatchObject({
      errno: "EINVAL",
      call: "startLoop",
      reason: expect.stringMatching(fieldPattern("rte")),
    });
    await vm.close();
  });

  it("runDirtyLogTest({ mode, vcpu: 4 }) does not run a test with the default vCPUs", async () => {
    const p = dist.runDirtyLogTest({ mode: "dirty-log", iterations: 1, intervalMs: 0, pages: 64, vcpu: 4 } as never);
    await expect(deadline(p, 60_000)).rejects.toMatchObject({
      errno: "EINVAL",
      call: "runDirtyLogTest",
      reason: expect.stringMatching(fieldPattern("vcpu")),
    });
  });

  it("migrate(vm, { maxRound: 1 }) does not migrate with the default rounds", async () => {
    const vm = await dist.createVm({ maxMemoryBytes: 256 << 20, mmuPoolBytes: 2 << 20 });
    track({ dispose: () => void vm.close() });
    vm.setUserMemoryRegion({ slot: 0, guestPhysAddr: GPA0, memorySize: 16 * PAGE, backed: true });
    await expect(deadline(dist.migrate(vm, { maxRound: 1 } as never), 60_000)).rejects.toMatchObject({
      errno: "EINVAL",
      call: "migrate",
      reason: expect.stringMatching(fieldPattern("maxRound")),
    });
    expect(vm.memslots()[0].flags).toBe(0); // logging was not turned on
    await vm.close();
  });
});

/** `p`, or a rejection "did not settle" after ms: a helper must not hang on bad options. */
function deadline<T>(p: Promise<T>, ms = 5000): Promise<T> {
  let timer: ReturnType<typeof setTimeout> | undefined;
  const late = new Promise<never>((_, reject) => {
    timer = setTimeout(() => reject(new Error(`did not settle within ${ms} ms (hangs)`)), ms);
  });
  return Promise.race([p, late]).finally(() => clearTimeout(timer));
}

interface AsyncRow {
  call: string;
  field: string;
  values: unknown[];
  act: (v: unknown) => Promise<unknown>;
}

/** Each value rejects promptly with EINVAL, the call and the field. */
async function checkAsyncRow(row: AsyncRow): Promise<void> {
  const failures: string[] = [];
  for (const v of row.values) {
    let e: unknown = NO_THROW;
    try {
      await deadline(
        Promise.resolve().then(() => row.act(v)),
        10_000,
      );
    } catch (err) {
      e = err;
    }
    const p = problem(e, { errno: "EINVAL", call: row.call, field: row.field });
    if (p) failures.push(`${row.field} = ${label(v)}: ${p}`);
  }
  expect(failures).toEqual([]);
}

const DLT = { mode: "dirty-log", iterations: 1, intervalMs: 0, pages: 64, vcpus: 1 };
const dltRows: AsyncRow[] = [
  {
    call: "runDirtyLogTest",
    field: "options",
    values: [undefined, null, 5, "dirty-log", [DLT]],
    act: (v) => dist.runDirtyLogTest(v as never),
  },
  ...(
    [
      ["mode", [MISSING, undefined, "toString", "dirty_log", "", 0, null]],
      ["vcpus", [0, -1, 1.5, Number.NaN, "2", null, 65]],
      ["iterations", [Number.NaN, 0, -1, 1.5, "3", Number.POSITIVE_INFINITY, null]],
      ["intervalMs", [Number.NaN, -1, Number.POSITIVE_INFINITY, "10", null]],
      ["pages", [0, -1, 1.5, Number.NaN, "100", null, 2 ** 21]],
      ["pattern", ["toString", "Zipf", 3, null]],
      ["pml", ["yes", 1, null]],
      ["tlb", ["false", 0, null]],
      ["partition", ["no", 1]],
      ["skipTlbFlush", ["true", 1]],
      ["paging", ["pae", "toString", 1, null]],
      ["memslotChurn", ["true", 1]],
    ] as Array<[string, unknown[]]>
  ).map(
    ([field, values]): AsyncRow => ({
      call: "runDirtyLogTest",
      field,
      values,
      act: (v) => dist.runDirtyLogTest(withField(DLT, field, v) as never),
    }),
  ),
  {
    call: "runDirtyLogTest",
    field: "ringEntries",
    values: [0, -1, 1.5, Number.NaN, "1024", null, 65537],
    act: (v) => dist.runDirtyLogTest({ ...DLT, mode: "dirty-ring", ringEntries: v } as never),
  },
];

describe("§4 helpers validate their options up front and reject promptly (no hang)", () => {
  it("the issue's hangs: runDirtyLogTest({ vcpus: 0 }), ({ intervalMs: NaN }), ({ iterations: NaN }); migrate({ threshold: -1, maxRounds: Infinity }); writeStrided(gpa, 0, -1, v)", async () => {
    for (const [field, o] of [
      ["vcpus", { mode: "dirty-log", vcpus: 0 }],
      ["intervalMs", { mode: "dirty-log", intervalMs: Number.NaN }],
      ["iterations", { mode: "dirty-log", iterations: Number.NaN }],
    ] as Array<[string, object]>) {
      await expect(deadline(dist.runDirtyLogTest(o as never))).rejects.toMatchObject({
        name: "KvmError",
        errno: "EINVAL",
        call: "runDirtyLogTest",
        reason: expect.stringMatching(fieldPattern(field)),
      });
    }
    // and without a mode the first complaint is the mode
    await expect(deadline(dist.runDirtyLogTest({ vcpus: 0 } as never))).rejects.toMatchObject({ errno: "EINVAL" });
    const vm = await dist.createVm({ maxMemoryBytes: 256 << 20, mmuPoolBytes: 2 << 20 });
    track({ dispose: () => void vm.close() });
    vm.setUserMemoryRegion({ slot: 0, guestPhysAddr: GPA0, memorySize: 16 * PAGE, backed: true });
    await expect(
      deadline(dist.migrate(vm, { threshold: -1, maxRounds: Number.POSITIVE_INFINITY })),
    ).rejects.toMatchObject({
      name: "KvmError",
      errno: "EINVAL",
      call: "migrate",
    });
    expect(vm.memslots()[0].flags).toBe(0);
    const vcpu = vm.createVcpu(0);
    expect(() => vcpu.writeStrided(GPA0, 0, -1, 1n)).toThrow(/^writeStrided: EINVAL: count/);
    expect(vcpu.stats.stores).toBe(0n);
    await vm.close();
  });

  for (const row of dltRows) {
    it(`${row.call} ${row.field} (${row.values.length} bad values)`, () => checkAsyncRow(row));
  }

  it("runDirtyLogTest ringEntries the dirty ring cannot take (not a power of two, below the reserve) is its own EINVAL, before any VM is made", async () => {
    // validated up front: the rejection names runDirtyLogTest's ringEntries, not a
    // KVM_ENABLE_CAP from inside a VM the helper made (and then never closed)
    await checkAsyncRow({
      call: "runDirtyLogTest",
      field: "ringEntries",
      values: [3, 100, 1000, 32, 64],
      act: (v) => dist.runDirtyLogTest({ ...DLT, mode: "dirty-ring", ringEntries: v } as never),
    });
  });

  it("startLoop: options and rate", async () => {
    const vm = await dist.createVm({ maxMemoryBytes: 256 << 20, mmuPoolBytes: 2 << 20 });
    track({ dispose: () => void vm.close() });
    vm.setUserMemoryRegion({ slot: 0, guestPhysAddr: GPA0, memorySize: 16 * PAGE });
    const vcpu = vm.createVcpu(0);
    vcpu.setWorkload({ pattern: "sequential", gpa: GPA0, pages: 16, limit: 100 });
    await checkAsyncRow({
      call: "startLoop",
      field: "options",
      values: [null, 5, "fast", [{ rate: 1 }], true],
      act: (v) => vcpu.startLoop(v as never),
    });
    await checkAsyncRow({
      call: "startLoop",
      field: "rate",
      values: [Number.NaN, Number.POSITIVE_INFINITY, -1, "10", null, [10], true, 2 ** 53],
      act: (v) => vcpu.startLoop({ rate: v } as never),
    });
    expect(vcpu.loopEnd).toBeUndefined();
    expect(vcpu.threaded).toBe(false);
    expect(vcpu.runSync()).toBeGreaterThan(0); // not driven by a loop: runs here
    await vm.close();
  });

  it("migrate: options, threshold, maxRounds, onRound; the slot's logging is not turned on", async () => {
    const vm = await dist.createVm({ maxMemoryBytes: 256 << 20, mmuPoolBytes: 2 << 20 });
    track({ dispose: () => void vm.close() });
    vm.setUserMemoryRegion({ slot: 0, guestPhysAddr: GPA0, memorySize: 16 * PAGE, backed: true });
    const g = vm.generation(0);
    const rows: AsyncRow[] = [
      { call: "migrate", field: "options", values: [null, 5, "x", [{}]], act: (v) => dist.migrate(vm, v as never) },
      ...(
        [
          ["threshold", [-1, 0.5, Number.NaN, "64", Number.POSITIVE_INFINITY, null]],
          ["maxRounds", [Number.POSITIVE_INFINITY, -1, 0.5, Number.NaN, 1e6 + 1, "3", null]],
          ["onRound", [5, "f", {}, null]],
        ] as Array<[string, unknown[]]>
      ).map(
        ([field, values]): AsyncRow => ({
          call: "migrate",
          field,
          values,
          act: (v) => dist.migrate(vm, { [field]: v } as never),
        }),
      ),
    ];
    for (const row of rows) await checkAsyncRow(row);
    expect(vm.memslots()[0].flags).toBe(0);
    expect(vm.generation(0)).toBe(g);
    await vm.close();
  });

  it("migrate(null) / migrate(undefined) / migrate({}): EINVAL naming vm, not a TypeError", async () => {
    await checkAsyncRow({
      call: "migrate",
      field: "vm",
      values: [null, undefined, {}, 5],
      act: (v) => dist.migrate(v as never, {}),
    });
  });

  it("createVm: options and each option", async () => {
    const rows: AsyncRow[] = [
      { call: "KVM_CREATE_VM", field: "options", values: [null, 5, "x", [{}], true], act: (v) => createVm(v as never) },
      ...(
        [
          ["maxMemoryBytes", [...WRONG_TYPES, ...FRACTIONS, ...NON_FINITE, -1, 0, 1024, 2 ** 33]],
          ["mmuPoolBytes", [...WRONG_TYPES, ...FRACTIONS, ...NON_FINITE, -1, 2 ** 33]],
          ["irqchip", BOOL_BAD],
          ["pml", BOOL_BAD],
          ["tlb", BOOL_BAD],
          ["workerUrl", [5, {}, null, true]],
          ["wasm", [{}, new ArrayBuffer(8), new Uint8Array(8), null, "build/dirtlog.wasm"]],
        ] as Array<[string, unknown[]]>
      ).map(
        ([field, values]): AsyncRow => ({
          call: "KVM_CREATE_VM",
          field,
          values,
          act: (v) => createVm({ maxMemoryBytes: 64 << 20, mmuPoolBytes: 1 << 20, [field]: v } as never),
        }),
      ),
    ];
    for (const row of rows) await checkAsyncRow(row);
  });
});

describe("§4 after dispose() every call throws EBADF", () => {
  async function disposed() {
    const f = await fixture();
    f.vm.dispose();
    return f;
  }
  const EBADF = /^[^:]+: EBADF: /;

  it("every VM call", async () => {
    const { vm } = await disposed();
    const calls: Array<[string, () => unknown]> = [
      ["checkExtension", () => vm.checkExtension(RING)],
      ["enableCap", () => vm.enableCap(MP2, [1])],
      ["setUserMemoryRegion", () => vm.setUserMemoryRegion(region(2, FREE_GPA, PAGE) as never)],
      ["setTssAddr", () => vm.setTssAddr(0xfffbd000)],
      ["setIdentityMapAddr", () => vm.setIdentityMapAddr(0xfeffc000)],
      ["memslotAt", () => vm.memslotAt(0, GPA0)],
      ["memslots", () => vm.memslots()],
      ["guestMemory", () => vm.guestMemory(0)],
      ["writeUserMemory", () => vm.writeUserMemory(0, 0, bytes8())],
      ["kvmWriteGuest", () => vm.kvmWriteGuest(GPA0, 1n)],
      ["setDebug", () => vm.setDebug({ skipTlbFlush: true })],
      ["iteration (get)", () => vm.iteration],
      [
        "iteration (set)",
        () => {
          vm.iteration = 1n;
        },
      ],
      ["generation", () => vm.generation(0)],
      ["getDirtyLog", () => vm.getDirtyLog(0)],
      ["clearDirtyLog", () => vm.clearDirtyLog(0, 0, SLOT0_PAGES, fullBitmap())],
      ["createVcpu", () => vm.createVcpu(1)],
      ["spte", () => vm.spte(0, GPA0)],
      ["stats", () => vm.stats],
      ["vcpuList", () => vm.vcpuList],
      ["resetDirtyRings", () => vm.resetDirtyRings()],
    ];
    const failures: string[] = [];
    for (const [name, fn] of calls) {
      const e = thrown(fn);
      if (!(e instanceof Error) || e.name !== "KvmError" || !EBADF.test(e.message))
        failures.push(`${name}: ${String(e === NO_THROW ? "no error" : e)}`);
    }
    expect(failures).toEqual([]);
  });

  it("the VM's state getters (dirtyRingSize, manualDirtyLogProtect) too", async () => {
    const { vm } = await disposed();
    const failures: string[] = [];
    for (const [name, fn] of [
      ["dirtyRingSize", () => vm.dirtyRingSize],
      ["manualDirtyLogProtect", () => vm.manualDirtyLogProtect],
    ] as Array<[string, () => unknown]>) {
      const e = thrown(fn);
      if (!(e instanceof Error) || !EBADF.test(e.message))
        failures.push(`${name}: ${e === NO_THROW ? `returned ${String(fn())}` : String(e)}`);
    }
    expect(failures).toEqual([]);
  });

  it("every vCPU call", async () => {
    const { vcpu } = await disposed();
    const sync: Array<[string, () => unknown]> = [
      ["writeGuest", () => vcpu.writeGuest(GPA0, 1n)],
      ["readGuest", () => vcpu.readGuest(GPA0)],
      ["writeStrided", () => vcpu.writeStrided(GPA0, 8, 2, 1n)],
      ["kvmWriteGuest", () => vcpu.kvmWriteGuest(GPA0, 1n)],
      ["setWorkload", () => vcpu.setWorkload({ pattern: "uniform", gpa: GPA0, pages: 4 })],
      ["runSync", () => vcpu.runSync()],
      ["kick", () => vcpu.kick()],
      ["requestExit", () => vcpu.requestExit()],
      ["resume", () => vcpu.resume()],
      [
        "smm (set)",
        () => {
          vcpu.smm = true;
        },
      ],
      ["smm (get)", () => vcpu.smm],
      ["stats", () => vcpu.stats],
      ["dirtyRingState", () => vcpu.dirtyRingState],
      ["lastGpa", () => vcpu.lastGpa],
      ["workloadStores", () => vcpu.workloadStores],
      ["exitReason", () => vcpu.exitReason],
      ["mmioPhysAddr", () => vcpu.mmioPhysAddr],
    ];
    const failures: string[] = [];
    for (const [name, fn] of sync) {
      const e = thrown(fn);
      if (!(e instanceof Error) || e.name !== "KvmError" || !EBADF.test(e.message))
        failures.push(`${name}: ${String(e === NO_THROW ? "no error" : e)}`);
    }
    expect(failures).toEqual([]);
    for (const [name, fn] of [
      ["run", () => vcpu.run()],
      ["spawn", () => vcpu.spawn()],
      ["startLoop", () => vcpu.startLoop()],
      ["pause", () => vcpu.pause()],
    ] as Array<[string, () => Promise<unknown>]>) {
      await expect(deadline(fn()), name).rejects.toMatchObject({ name: "KvmError", errno: "EBADF" });
    }
  });

  it("migrate on a disposed VM rejects with EBADF", async () => {
    const vm = await dist.createVm({ maxMemoryBytes: 64 << 20, mmuPoolBytes: 1 << 20 });
    vm.dispose();
    await expect(deadline(dist.migrate(vm))).rejects.toMatchObject({
      name: "KvmError",
      errno: "EBADF",
      call: "migrate",
    });
  });
});
