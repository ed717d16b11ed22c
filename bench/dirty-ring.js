// Dirty ring: push, collect, reset, and ring vs bitmap, in one process and one run, so every
// ratio printed is a same-run ratio. Kernel figures: ../shared/anchors/real-kvm.md.
// Lower times are better.
//
//   npm run build && node bench/dirty-ring.js [--scale k]     (k multiplies every task's time)
//
// What is timed, per task (tinybench, explicit warm-up and time, hrtime timer):
//   push     vcpu.writeStrided over n write-protected pages of a dirty-logged unbacked slot:
//            n fast faults, each pushing one ring entry (or setting one bitmap bit)
//   collect  collectDirtyRing(vcpu, cb) over a ring filled by the guest up to its soft limit
//   reset    vm.resetDirtyRings() over entries pushed and collected in beforeEach
//   round    ring: dirty + collect + reset; bitmap: dirty + KVM_GET_DIRTY_LOG
// Everything that prepares an iteration (dirtying, collecting, resetting) runs in
// beforeEach/afterEach, outside the timed region, and every result is checked there.
//
// A small wasm module compiled here from the core's own sources (MICRO_SOURCE below) times
// the pieces of the push path, prototypes of a shorter store path, and a collector
// done in wasm; they run over the same shared memory as the VMs. They are measurements for
// the report, not library code.
import { createHash } from "node:crypto";
import { existsSync, mkdirSync, readFileSync, writeFileSync } from "node:fs";
import { cpus, loadavg, totalmem } from "node:os";
import { resolve } from "node:path";
import { fileURLToPath } from "node:url";
import asc from "assemblyscript/asc";
import {
	Bench,
	calibrateTimerOverhead,
	hrtimeNowTimestampProvider,
} from "tinybench";
import {
	collectDirtyRing,
	createVm,
	harvestDirtyRings,
	KVM_CAP_DIRTY_LOG_RING,
	KVM_EXIT_DIRTY_RING_FULL,
	KVM_MEM_LOG_DIRTY_PAGES,
} from "../dist/index.js";

const args = process.argv.slice(2);
if (args.includes("--help")) {
	console.log(
		"usage: node bench/dirty-ring.js [--scale k (default 1): multiply every task's time]",
	);
	process.exit(0);
}
const i = args.indexOf("--scale");
const SCALE = i >= 0 ? Number(args[i + 1]) : 1;

const MIB = 1 << 20;
const GIB = 1 << 30;
const PAGE = 4096;
const GPA = 0x1_0000_0000;
const SLOT_PAGES = GIB / PAGE; // 262144
const RING = 65536;
const SOFT = RING - 64; // 65472
const SMALL_RING = 4096;
const SMALL_SOFT = SMALL_RING - 64; // 4032
// Pages per push sample: below the soft limit (no ring-full exit). Kept to ~0.6 ms of work
// so that on a shared 2-CPU machine few samples span a preemption (which shows up as a
// second mode at about +4 ms); one more row pushes 65000 (almost the whole ring).
const PUSH_N = 16384;
const PUSH_BIG = 65000;
const KERNEL = {
	// ../shared/anchors/real-kvm.md
	resetNsPerEntry: [55, 75],
	collectNsPerEntry: [1.5, 2.5],
	smallCollectUs: 8,
	smallResetUs: [210, 240],
	ring1: { entries: 2622, collectUs: 24, resetUs: 202, getUs: 151 },
	ring10: { entries: 26215, collectUs: 41, resetUs: 1902, getUs: 1215 },
};
const TARGETS = { pushMps: 50, collectNs: 5, resetNs: 14 };

const root = new URL("../", import.meta.url);
const started = performance.now();
const log = (msg) =>
	console.error(
		`[dirty-ring ${((performance.now() - started) / 1000).toFixed(1)}s] ${msg}`,
	);

// ---------------------------------------------------------------- environment
function timerResolutionNs() {
	let min = Number.POSITIVE_INFINITY;
	for (let k = 0; k < 20000; k++) {
		const a = process.hrtime.bigint();
		let b = process.hrtime.bigint();
		while (b === a) b = process.hrtime.bigint();
		min = Math.min(min, Number(b - a));
	}
	return min;
}
const pkg = (name) =>
	JSON.parse(
		readFileSync(new URL(`node_modules/${name}/package.json`, root), "utf8"),
	).version;
const wasmPath = new URL("build/dirtlog.wasm", root);
/** The checked-out commit, read from .git (the working tree may differ from it). */
function gitHead() {
	try {
		const head = readFileSync(new URL(".git/HEAD", root), "utf8").trim();
		if (!head.startsWith("ref: ")) return head.slice(0, 12);
		return readFileSync(new URL(`.git/${head.slice(5)}`, root), "utf8")
			.trim()
			.slice(0, 12);
	} catch {
		return "unknown";
	}
}
if (!existsSync(wasmPath) || !existsSync(new URL("dist/index.js", root))) {
	console.error("run `npm run build` first");
	process.exit(1);
}
const env = {
	cpu: cpus()[0]?.model ?? "unknown",
	cores: cpus().length,
	memoryGiB: Math.round(totalmem() / GIB),
	node: process.version,
	v8: process.versions.v8,
	platform: `${process.platform} ${process.arch}`,
	crossOriginIsolated:
		globalThis.crossOriginIsolated ??
		"n/a (Node: SharedArrayBuffer always available)",
	timer: "process.hrtime.bigint (tinybench hrtimeNowTimestampProvider)",
	timerResolutionNs: timerResolutionNs(),
	timerCallOverheadNs: Math.round(
		calibrateTimerOverhead(hrtimeNowTimestampProvider) * 1e6,
	),
	tinybench: pkg("tinybench"),
	assemblyscript: pkg("assemblyscript"),
	gitHead: gitHead(),
	coreWasmSha256: createHash("sha256")
		.update(readFileSync(wasmPath))
		.digest("hex")
		.slice(0, 16),
	loadAverageAtStart: loadavg().map((x) => Number(x.toFixed(2))),
	scale: SCALE,
};
console.log("environment");
for (const [k, v] of Object.entries(env))
	console.log(`  ${k.padEnd(20)} ${Array.isArray(v) ? v.join(" ") : v}`);

// ---------------------------------------------------------------- micro module
// Compiled in memory from the core's sources with the core's flags; instantiated over a
// VM's memory next to the core. Per-instance wasm globals are fine here (one thread).
const MICRO_SOURCE = `
import { dirty_ring_push } from "../assembly/dirty_ring";
import { bitmap_set } from "../assembly/dirty_bitmap";
import { vcpu_enter_guest, vcpu_exit_guest } from "../assembly/fault";
import { mark_page_dirty_in_slot } from "../assembly/mark_dirty";
import { memslot_lookup } from "../assembly/memslot";
import { pml_active, pml_flush } from "../assembly/pml";
import { SPTE_D, SPTE_M, SPTE_PFN_MASK, SPTE_W, is_present } from "../assembly/spte";
import { tdp_walk } from "../assembly/tdp";
import { tlb_fill, tlb_lookup, tlb_on } from "../assembly/tlb";
import {
  OUTSIDE_GUEST_MODE, READING_SHADOW_PAGE_TABLES, SLOT_BASE_GFN, SLOT_NPAGES, VCPU_AS,
  VCPU_DIRTY_INDEX, VCPU_EXIT_REASON, VCPU_FAST_FAULTS, VCPU_LAST_GPA, VCPU_MODE,
  VCPU_REQUESTS, VCPU_RESET_INDEX, VCPU_STORES, VM_GEN, VM_TLB_FLUSHES,
} from "../assembly/layout";

/** n × dirty_ring_push (the whole push, nothing else). */
export function push_loop(vm: usize, vcpu: usize, slot: u32, n: u32): void {
  for (let i: u32 = 0; i < n; i++) dirty_ring_push(vm, vcpu, slot, <u64>i);
}
/** Forget push_loop's pushes: reset_index = dirty_index, no request pending. */
export function ring_rewind(vcpu: usize): void {
  atomic.store<u32>(vcpu + VCPU_RESET_INDEX, atomic.load<u32>(vcpu + VCPU_DIRTY_INDEX));
  atomic.store<u32>(vcpu + VCPU_REQUESTS, 0);
}
/** n × bitmap_set (what a bitmap VM does instead of a push). */
export function bitmap_set_loop(slot: usize, n: u32): void {
  for (let i: u32 = 0; i < n; i++) bitmap_set(slot, <u64>i);
}
/** n × tdp_walk of consecutive gfns. */
export function walk_loop(vm: usize, gfn0: u64, n: u32): u32 {
  let x: usize = 0;
  for (let i: u32 = 0; i < n; i++) x ^= tdp_walk(vm, 0, gfn0 + i);
  return <u32>x;
}
/** n × (tdp_walk + a locked cmpxchg that leaves the SPTE as it is). */
export function walk_cmpxchg_loop(vm: usize, gfn0: u64, n: u32): u32 {
  let x: u64 = 0;
  for (let i: u32 = 0; i < n; i++) {
    const p = tdp_walk(vm, 0, gfn0 + i) & ~7;
    const v = atomic.load<u64>(p);
    x ^= atomic.cmpxchg<u64>(p, v, v);
  }
  return <u32>x;
}
/** n × memslot_lookup. */
export function lookup_loop(vm: usize, gfn0: u64, n: u32): u32 {
  let x: usize = 0;
  for (let i: u32 = 0; i < n; i++) x ^= memslot_lookup(vm, 0, gfn0 + i);
  return <u32>x;
}
/** n seq-cst u32 stores (wasm has no release store), 16 B apart over 64 KiB. */
export function atomic_store_loop(p: usize, n: u32): void {
  for (let i: u32 = 0; i < n; i++) atomic.store<u32>(p + ((<usize>i & 4095) << 4), i);
}
/** n plain u32 stores, same addresses. */
export function plain_store_loop(p: usize, n: u32): void {
  for (let i: u32 = 0; i < n; i++) store<u32>(p + ((<usize>i & 4095) << 4), i);
}

/**
 * The userspace collector done in wasm: acquire flags, copy (slot, offset) to out
 * (16 B per entry: u32 slot, pad, u64 offset), set RESET. publish_each: one seq-cst
 * store per entry (what collectDirtyRing does); otherwise plain RESET stores and one
 * seq-cst store at the end (enough when the same thread then calls the reset).
 */
export function collect_to(ring: usize, mask: u32, fetch: u32, out: usize, max: u32, publish_each: bool): u32 {
  let n: u32 = 0;
  while (n < max) {
    const e = ring + ((<usize>(fetch & mask)) << 4);
    if (atomic.load<u32>(e) != 1) break;
    const o = out + (<usize>n << 4);
    store<u32>(o, load<u32>(e + 4));
    store<u64>(o + 8, load<u64>(e + 8));
    if (publish_each) atomic.store<u32>(e, 2);
    else store<u32>(e, 2);
    fetch++;
    n++;
  }
  if (!publish_each && n != 0) atomic.store<u32>(ring + ((<usize>((fetch - 1) & mask)) << 4), 2);
  return n;
}

// ---- prototype of a shorter store path: guest_write (fault.ts) mirrored, with options ----
//   opts 0             the core's path as it is (checks that the mirror costs the same)
//   NO_REWALK (1)      after the fast fault and re-entry, re-load the same SPTE instead of
//                      walking again (walk again if a remote TLB flush started meanwhile)
//   SLOT_CACHE (2)     memslot lookup through a last-used-slot cache (KVM's
//                      vcpu->last_used_slot), validated by the memslot generation
//   MERGED_MODES (4)   IN_GUEST -> READING_SHADOW_PAGE_TABLES -> IN_GUEST: two seq-cst mode
//                      stores per fast fault instead of four (no OUTSIDE_GUEST_MODE between)
//   LEAF_CACHE (8)     one-entry cache of the last 4K leaf table (a paging-structure cache),
//                      valid while the VM's remote-TLB-flush count is unchanged
// Same pushes, same counters, same exits; no PML and no slow path (the benchmark maps
// every page first). Wasm globals are per instance: one vCPU thread here.
const NO_REWALK: u32 = 1;
const SLOT_CACHE: u32 = 2;
const MERGED_MODES: u32 = 4;
const LEAF_CACHE: u32 = 8;
const PROTO_SLOW: u32 = 0xdead;
let c_slot: usize = 0;
let c_as: u32 = 0;
let c_gen: u64 = 0;
let c_base: u64 = 0;
let c_npages: u64 = 0;
let c_table: usize = 0;
let c_frame: u64 = 0;
let c_as_t: u32 = 0;
let c_flushes: u64 = 0;

@inline function lookup_cached(vm: usize, as_id: u32, gfn: u64): usize {
  const gen = atomic.load<u64>(vm + VM_GEN + (as_id << 3));
  if (c_slot != 0 && c_as == as_id && c_gen == gen && gfn - c_base < c_npages) return c_slot;
  const s = memslot_lookup(vm, as_id, gfn);
  if (s != 0) {
    c_slot = s;
    c_as = as_id;
    c_gen = gen;
    c_base = load<u64>(s + SLOT_BASE_GFN);
    c_npages = load<u64>(s + SLOT_NPAGES);
  }
  return s;
}

@inline function walk(vm: usize, as_id: u32, gfn: u64, opts: u32): usize {
  if ((opts & LEAF_CACHE) == 0) return tdp_walk(vm, as_id, gfn);
  const flushes = atomic.load<u64>(vm + VM_TLB_FLUSHES);
  if (c_table != 0 && c_as_t == as_id && c_frame == gfn >> 9 && c_flushes == flushes) {
    return (c_table + ((<usize>(gfn & 511)) << 3)) | 1;
  }
  const w = tdp_walk(vm, as_id, gfn);
  if ((w & 7) == 1) {
    c_table = w & ~(<usize>0xfff);
    c_frame = gfn >> 9;
    c_as_t = as_id;
    c_flushes = flushes;
  }
  return w;
}

function proto_guest_write(vm: usize, vcpu: usize, gpa: u64, value: u64, opts: u32): u32 {
  const gfn = gpa >> 12;
  const as_id = load<u32>(vcpu + VCPU_AS);
  const tlb = tlb_on(vm);
  if (tlb) {
    const host = tlb_lookup(vcpu, as_id, gfn);
    if (host != 0) {
      if (host != 1) store<u64>(host + <usize>(gpa & 0xff8), value);
      return 0;
    }
  }
  let w = walk(vm, as_id, gfn, opts);
  while (true) {
    const p = w & ~7;
    const level = <u32>(w & 7);
    const spte = atomic.load<u64>(p);
    if (!is_present(spte) || level != 1) return PROTO_SLOW;
    if ((spte & SPTE_W) != 0) {
      if ((spte & SPTE_D) == 0 && pml_active(vm, vcpu)) return PROTO_SLOW;
      const hpa = <usize>(spte & SPTE_PFN_MASK);
      if (tlb) tlb_fill(vcpu, as_id, gfn, hpa);
      if (hpa != 0) store<u64>(hpa + <usize>(gpa & 0xff8), value);
      return 0;
    }
    if ((spte & SPTE_M) == 0) return PROTO_SLOW;
    const flushes = atomic.load<u64>(vm + VM_TLB_FLUSHES);
    if ((opts & MERGED_MODES) != 0) pml_flush(vm, vcpu);
    else vcpu_exit_guest(vm, vcpu);
    atomic.store<u32>(vcpu + VCPU_MODE, READING_SHADOW_PAGE_TABLES);
    const slot = (opts & SLOT_CACHE) != 0 ? lookup_cached(vm, as_id, gfn) : memslot_lookup(vm, as_id, gfn);
    if (slot == 0) return PROTO_SLOW;
    if (atomic.cmpxchg<u64>(p, spte, spte | SPTE_W | SPTE_D) == spte) {
      mark_page_dirty_in_slot(vm, vcpu, slot, gfn);
      store<u64>(vcpu + VCPU_FAST_FAULTS, load<u64>(vcpu + VCPU_FAST_FAULTS) + 1);
    }
    if ((opts & MERGED_MODES) == 0) atomic.store<u32>(vcpu + VCPU_MODE, OUTSIDE_GUEST_MODE);
    const r = vcpu_enter_guest(vm, vcpu);
    if (r != 0) return r;
    if ((opts & NO_REWALK) == 0 || atomic.load<u64>(vm + VM_TLB_FLUSHES) != flushes) w = walk(vm, as_id, gfn, opts);
  }
  return 0;
}

/** kvm_vcpu_write_strided (fault.ts) over proto_guest_write; caches live for one call. */
export function proto_write_strided(vm: usize, vcpu: usize, gpa: u64, stride: u64, count: u32, value: u64, opts: u32): u32 {
  c_slot = 0;
  c_table = 0;
  let r = vcpu_enter_guest(vm, vcpu);
  let i: u32 = 0;
  for (; r == 0 && i < count; i++) {
    r = proto_guest_write(vm, vcpu, gpa + (<u64>i) * stride, value, opts);
    if (r != 0) break;
  }
  vcpu_exit_guest(vm, vcpu);
  store<u64>(vcpu + VCPU_STORES, load<u64>(vcpu + VCPU_STORES) + i);
  if (i > 0) store<u64>(vcpu + VCPU_LAST_GPA, gpa + (<u64>(i - 1)) * stride);
  store<u32>(vcpu + VCPU_EXIT_REASON, r);
  return i;
}
`;

async function compileMicro() {
	const virtual = "bench/dirty-ring-micro.ts";
	let binary;
	const stderr = [];
	const { error } = await asc.main(
		[
			virtual,
			"--baseDir",
			fileURLToPath(root),
			"--config",
			"bench/no-asconfig.json", // keep asc from loading ./asconfig.json's entries
			"--importMemory",
			"--sharedMemory",
			"--initialMemory",
			"17",
			"--maximumMemory",
			"65536",
			"--enable",
			"threads,simd",
			"--runtime",
			"stub",
			"-O3",
			"--noAssert",
			"--outFile",
			"micro.wasm",
		],
		{
			readFile(name, baseDir) {
				if (name === virtual) return MICRO_SOURCE;
				const file = resolve(baseDir, name);
				return existsSync(file) ? readFileSync(file, "utf8") : null;
			},
			writeFile(name, contents) {
				if (name.endsWith(".wasm")) binary = contents;
			},
			listFiles: () => [],
			stderr: { write: (s) => stderr.push(String(s)) },
			stdout: { write: () => {} },
		},
	);
	if (error || !binary)
		throw new Error(`micro module: ${error}\n${stderr.join("")}`);
	const module = await WebAssembly.compile(binary);
	const imports = WebAssembly.Module.imports(module);
	if (imports.length !== 1 || imports[0].name !== "memory")
		throw new Error(`micro module imports ${JSON.stringify(imports)}`);
	return module;
}
// The core changes under this script; if its internals no longer fit MICRO_SOURCE, the
// library tasks still run and the rows that need the micro module are left out (said so).
let microModule = null;
let microError = null;
try {
	microModule = await compileMicro();
	log("micro module compiled from the core's sources");
} catch (e) {
	microError = String(e?.message ?? e)
		.split("\n")
		.slice(0, 4)
		.join(" | ");
	log(`micro module NOT built, its rows are skipped: ${microError}`);
}
env.microModule = microModule ? "built" : `skipped: ${microError}`;
const micro = async (x) =>
	microModule
		? (
				await WebAssembly.instantiate(microModule, {
					env: { memory: x.vm.memory },
				})
			).exports
		: null;
/** items when cond, else none */
const when = (cond, ...items) => (cond ? items : []);

// ---------------------------------------------------------------- VMs
/** A VM with one dirty-logged unbacked 1 GiB slot at GPA and vCPU 0. ring = entries or 0. */
async function makeVm(ring, { scratch = false } = {}) {
	const vm = await createVm({
		maxMemoryBytes: 128 * MIB,
		mmuPoolBytes: 8 * MIB,
	});
	if (ring) vm.enableCap(KVM_CAP_DIRTY_LOG_RING, [ring * 16]);
	vm.setUserMemoryRegion({
		slot: 0,
		flags: KVM_MEM_LOG_DIRTY_PAGES,
		guestPhysAddr: GPA,
		memorySize: GIB,
		backed: false,
	});
	// scratch: 2 MiB of the shared memory (a backed slot the guest never touches)
	if (scratch)
		vm.setUserMemoryRegion({
			slot: 1,
			guestPhysAddr: 0x10_0000_0000,
			memorySize: 2 * MIB,
			backed: true,
		});
	const vcpu = vm.createVcpu(0);
	const slotAddr = vm.raw.memslot_lookup(vm.addr, 0, BigInt(GPA / PAGE)) >>> 0;
	return {
		vm,
		vcpu,
		ring,
		slotAddr,
		scratch: scratch ? vm.guestMemory(1) : undefined,
	};
}

// The one consumer every collect uses (a monomorphic call site in collectDirtyRing).
const acc = new Float64Array(3); // [sum of offsets, sum of slots, entries]
function onEntry(slot, offset) {
	acc[0] += offset;
	acc[1] += slot;
	acc[2]++;
}
function takeAcc() {
	const r = [acc[0], acc[1], acc[2]];
	acc.fill(0);
	return r;
}
/** Sum of the offsets 0, k, 2k, … of n pages. */
const stridedSum = (k, n) => (k * n * (n - 1)) / 2;

/** The ring's kernel-side indices, read outside timed regions. */
const ringState = (x) => x.vcpu.dirtyRingState;

/**
 * Dirty pages 0, k, 2k, … (n of them) through the guest path and check the outcome:
 * exactly n pushes on a ring VM (so the pages were write-protected), n stores retired or,
 * at the soft limit, n − 1 and a ring-full exit.
 */
let round = 0;
function dirty(x, k, n) {
	const before = x.ring ? ringState(x).dirtyIndex : 0;
	const done = x.vcpu.writeStrided(GPA, k * PAGE, n, ++round);
	if (x.ring) {
		const pushed = (ringState(x).dirtyIndex - before) >>> 0;
		const soft = x.ring - 64;
		const used = (ringState(x).dirtyIndex - ringState(x).resetIndex) >>> 0;
		const full = used >= soft;
		if (
			pushed !== n ||
			done !== (full ? n - 1 : n) ||
			(full && x.vcpu.exitReason !== KVM_EXIT_DIRTY_RING_FULL)
		) {
			throw new Error(
				`dirty: ${n} pages, ${pushed} pushes, ${done} stores retired, exit ${x.vcpu.exitReason}`,
			);
		}
	} else if (done !== n) {
		throw new Error(`dirty: ${done} of ${n} stores retired`);
	}
}
/** Collect everything (checked against pages 0, k, … of n) and reset. */
function harvest(x, k, n) {
	const c = collectDirtyRing(x.vcpu, onEntry);
	checkCollected(c, k, n);
	const r = x.vm.resetDirtyRings();
	if (r !== n) throw new Error(`reset returned ${r}, expected ${n}`);
}
function checkCollected(c, k, n) {
	const [sum, slots, count] = takeAcc();
	if (c !== n || count !== n || slots !== 0 || sum !== stridedSum(k, n)) {
		throw new Error(
			`collected ${c} (${count} seen, offsets sum ${sum}, slots ${slots}); expected ${n}`,
		);
	}
}
const ONES = new Uint8Array(256);
for (let b = 1; b < 256; b++) ONES[b] = ONES[b >> 1] + (b & 1);
/** The bitmap has exactly the bits 0, k, 2k, … (n of them). */
function checkBitmap(bm, k, n) {
	let c = 0;
	for (let b = 0; b < bm.length; b++) c += ONES[bm[b]];
	for (let p = 0; p < n * k; p += k)
		if ((bm[p >>> 3] & (1 << (p & 7))) === 0)
			throw new Error(`page ${p} not in the bitmap`);
	if (c !== n) throw new Error(`bitmap has ${c} bits, expected ${n}`);
}

/** Map every page of the slot (slow faults), then harvest so all are write-protected. */
function mapAll(x, pages = SLOT_PAGES) {
	let done = 0;
	while (done < pages) {
		done += x.vcpu.writeStrided(GPA + done * PAGE, PAGE, pages - done, 1);
		if (x.ring) {
			collectDirtyRing(x.vcpu, onEntry);
			x.vm.resetDirtyRings();
		} else {
			x.vm.getDirtyLog(0);
		}
	}
	takeAcc();
}

log(
	"setting up VMs: 1 GiB unbacked dirty-logged slot each, pages mapped then write-protected",
);
const R = await makeVm(RING); // ring 65536: push, collect, reset, round
const B = await makeVm(0); // bitmap: push, round
const F = await makeVm(SMALL_RING); // ring 4096: ring-full exits
const P = await makeVm(RING); // ring 65536: prototypes of a shorter store path
const W = await makeVm(0); // bitmap VM whose pages stay writable: the store path without faults
const C = await makeVm(RING, { scratch: true }); // collector variants (own fetch index)
const U = await makeVm(RING); // push_loop target (its ring holds synthetic entries)
mapAll(R);
mapAll(B);
mapAll(F, 2 * SMALL_RING);
mapAll(P, PUSH_N);
mapAll(C, SOFT);
W.vcpu.writeStrided(GPA, PAGE, PUSH_N, 1); // writable from now on (never harvested)
const mR = await micro(R);
const mB = await micro(B);
const mP = await micro(P);
const mC = await micro(C);
const mU = await micro(U);
log("VMs ready");

// ---------------------------------------------------------------- harness
const rows = [];
let sink = 0;

/** Linear-interpolated quantile of sorted samples (tinybench's method). */
function quantile(sorted, q) {
	const pos = (sorted.length - 1) * q;
	const lo = Math.floor(pos);
	const hi = Math.ceil(pos);
	return sorted[lo] + (sorted[hi] - sorted[lo]) * (pos - lo);
}

/**
 * Run a group of tasks as ROUNDS tinybench runs (each task's budget split over them), so
 * that the tasks of a group interleave in time: on a shared machine a burst of load then
 * hits every task of the group, not one, and the same-run ratios stay fair. Samples of
 * all rounds are merged; p50/p99 are computed over them. `time` is the timed budget per
 * task (tinybench does not count hooks, so slow-setup tasks get smaller budgets), with at
 * least `iterations` samples, and explicit warm-up in every round.
 */
const ROUNDS = 5;
function group(title, opts, tasks) {
	const t0 = performance.now();
	const samples = new Map(tasks.map((t) => [t.id, []]));
	const roundP50 = new Map(tasks.map((t) => [t.id, []]));
	for (let r = 0; r < ROUNDS; r++) {
		const bench = new Bench({
			name: title,
			time: (opts.time * SCALE) / ROUNDS,
			iterations: Math.ceil((opts.iterations ?? 32) / ROUNDS),
			warmupTime: opts.warmupTime ?? 10,
			warmupIterations: opts.warmupIterations ?? 4,
			timestampProvider: hrtimeNowTimestampProvider,
			retainSamples: true,
			throws: true,
		});
		// async: false, or tinybench calls fn once (outside the hooks) to find out
		for (const t of tasks)
			bench.add(t.label, t.fn, {
				async: false,
				beforeEach: t.beforeEach,
				afterEach: t.afterEach,
			});
		bench.runSync();
		for (const t of tasks) {
			const res = bench.getTask(t.label).result;
			if (!res.latency?.samples)
				throw new Error(`${t.label}: ${res.state} ${res.error ?? ""}`);
			samples.get(t.id).push(...res.latency.samples);
			roundP50.get(t.id).push(res.latency.p50 * 1000);
		}
	}
	for (const t of tasks) {
		const all = samples.get(t.id).sort((x, y) => x - y);
		const us = (ms) => ms * 1000;
		const spread = roundP50.get(t.id);
		const row = {
			id: t.id,
			group: title,
			task: t.label,
			entries: t.entries,
			samples: all.length,
			p50Us: us(quantile(all, 0.5)),
			p99Us: us(quantile(all, 0.99)),
			meanUs: us(all.reduce((x, y) => x + y, 0) / all.length),
			minUs: us(all[0]),
			maxUs: us(all[all.length - 1]),
			roundP50Us: spread.map((x) => Number(x.toFixed(2))),
		};
		if (t.entries) {
			row.nsPerEntryP50 = (row.p50Us * 1000) / t.entries;
			row.nsPerEntryP99 = (row.p99Us * 1000) / t.entries;
			row.nsPerEntryMin = (row.minUs * 1000) / t.entries;
		}
		if (t.kernelUs !== undefined) row.kernelUs = t.kernelUs;
		rows.push(row);
		log(
			`${t.label}: p50 ${row.p50Us.toFixed(1)} µs, p99 ${row.p99Us.toFixed(1)} µs, ${row.samples} samples, round p50s ${spread.map((x) => x.toFixed(1)).join(" / ")}`,
		);
	}
	log(
		`group "${title}" took ${((performance.now() - t0) / 1000).toFixed(1)} s`,
	);
}
const row = (id) => {
	const r = rows.find((x) => x.id === id);
	if (!r) throw new Error(`no row ${id}`);
	return r;
};

// ---------------------------------------------------------------- 1. push
let retired = 0;
const fastFaults = (x) => x.vcpu.stats.fastFaults;
let ffBefore = 0n;
/** A prototype store path (see MICRO_SOURCE) over the same writes, on VM P. */
const protoTask = (id, label, opts) => ({
	id,
	label,
	entries: PUSH_N,
	fn: () => {
		retired =
			mP.proto_write_strided(
				P.vm.addr,
				P.vcpu.addr,
				BigInt(GPA),
				BigInt(PAGE),
				PUSH_N,
				7n,
				opts,
			) >>> 0;
	},
	afterEach() {
		if (retired !== PUSH_N)
			throw new Error(
				`${label}: ${retired} stores retired, exit ${P.vcpu.exitReason}`,
			);
		harvest(P, 1, PUSH_N); // the same n entries, in order, and all re-armed
	},
});
group("1. push: n fast faults on one vCPU", { time: 600, iterations: 48 }, [
	{
		id: "push-ring",
		label: `ring push: writeStrided over ${PUSH_N} protected pages (fast fault + push)`,
		entries: PUSH_N,
		fn: () => {
			retired = R.vcpu.writeStrided(GPA, PAGE, PUSH_N, 7);
		},
		afterEach() {
			if (retired !== PUSH_N)
				throw new Error(`ring push: ${retired} stores retired`);
			harvest(R, 1, PUSH_N); // checks n entries, offsets 0..n-1, and re-protects
		},
	},
	{
		id: "push-ring-big",
		label: `ring push: writeStrided over ${PUSH_BIG} protected pages (almost a whole ring)`,
		entries: PUSH_BIG,
		fn: () => {
			retired = R.vcpu.writeStrided(GPA, PAGE, PUSH_BIG, 7);
		},
		afterEach() {
			if (retired !== PUSH_BIG)
				throw new Error(`ring push: ${retired} stores retired`);
			harvest(R, 1, PUSH_BIG);
		},
	},
	{
		id: "push-bitmap",
		label: `bitmap set: same writes on a bitmap VM (fast fault + bitmap set)`,
		entries: PUSH_N,
		fn: () => {
			retired = B.vcpu.writeStrided(GPA, PAGE, PUSH_N, 7);
		},
		afterEach() {
			if (retired !== PUSH_N)
				throw new Error(`bitmap push: ${retired} stores retired`);
			checkBitmap(B.vm.getDirtyLog(0), 1, PUSH_N);
		},
	},
	{
		id: "store-writable",
		label: "store path floor: same writes to writable pages (no fault)",
		entries: PUSH_N,
		beforeEach() {
			ffBefore = fastFaults(W);
		},
		fn: () => {
			retired = W.vcpu.writeStrided(GPA, PAGE, PUSH_N, 7);
		},
		afterEach() {
			if (retired !== PUSH_N || fastFaults(W) !== ffBefore)
				throw new Error("writable pages faulted");
		},
	},
	...when(
		microModule,
		protoTask(
			"proto-mirror",
			"prototype, no option: the core's guest_write mirrored (must cost the same)",
			0,
		),
		protoTask(
			"proto-a",
			"prototype A: no second walk after the fast fault + last-used-slot cache",
			1 | 2,
		),
		protoTask(
			"proto-b",
			"prototype B: A + two mode stores per fast fault instead of four",
			1 | 2 | 4,
		),
		protoTask(
			"proto-c",
			"prototype C: B + one-entry leaf-table cache (valid until a TLB flush)",
			1 | 2 | 4 | 8,
		),
	),
]);

const G0 = BigInt(GPA / PAGE);
const microTask = (id, label, fn, hooks = {}) => ({
	id,
	label,
	entries: PUSH_N,
	fn,
	...hooks,
});
if (microModule)
	group("1b. pieces of the push path (wasm loops, n per call)", { time: 250 }, [
		microTask(
			"micro-push",
			`dirty_ring_push × ${PUSH_N} (the push alone)`,
			() => mU.push_loop(U.vm.addr, U.vcpu.addr, 0, PUSH_N),
			{
				beforeEach: () => mU.ring_rewind(U.vcpu.addr),
				afterEach() {
					const s = ringState(U);
					if ((s.dirtyIndex - s.resetIndex) >>> 0 !== PUSH_N)
						throw new Error("push_loop did not push n entries");
				},
			},
		),
		microTask(
			"micro-bitmap-set",
			`bitmap_set × ${PUSH_N} (the bitmap's counterpart)`,
			() => mB.bitmap_set_loop(B.slotAddr, PUSH_N),
			{
				afterEach() {
					// clears the bits again (the pages are already protected: nothing else changes)
					checkBitmap(B.vm.getDirtyLog(0), 1, PUSH_N);
				},
			},
		),
		microTask("micro-walk", `tdp_walk × ${PUSH_N} (4-level walk)`, () => {
			sink ^= mR.walk_loop(R.vm.addr, G0, PUSH_N);
		}),
		microTask(
			"micro-walk-cmpxchg",
			`tdp_walk + cmpxchg<u64> × ${PUSH_N}`,
			() => {
				sink ^= mR.walk_cmpxchg_loop(R.vm.addr, G0, PUSH_N);
			},
		),
		microTask("micro-lookup", `memslot_lookup × ${PUSH_N} (1 slot)`, () => {
			sink ^= mR.lookup_loop(R.vm.addr, G0, PUSH_N);
		}),
		microTask(
			"micro-atomic-store",
			`atomic.store<u32> (seq-cst) × ${PUSH_N}`,
			() => {
				mC.atomic_store_loop(C.scratch.byteOffset, PUSH_N);
			},
		),
		microTask("micro-plain-store", `store<u32> (plain) × ${PUSH_N}`, () => {
			mC.plain_store_loop(C.scratch.byteOffset, PUSH_N);
		}),
	]);

// ---------------------------------------------------------------- 2. collect
let collected = 0;
group(
	"2. collect: collectDirtyRing at ring-full",
	{ time: 400, iterations: 64 },
	[
		{
			id: "collect-64k",
			label: `collectDirtyRing: ${SOFT} entries of a ${RING}-entry ring`,
			entries: SOFT,
			beforeEach: () => dirty(R, 1, SOFT), // the guest runs into the soft limit
			fn: () => {
				collected = collectDirtyRing(R.vcpu, onEntry);
			},
			afterEach() {
				checkCollected(collected, 1, SOFT);
				if (R.vm.resetDirtyRings() !== SOFT)
					throw new Error("reset after collect");
			},
		},
		{
			id: "collect-4k",
			label: `collectDirtyRing: ${SMALL_SOFT} entries of a ${SMALL_RING}-entry ring`,
			entries: SMALL_SOFT,
			kernelUs: KERNEL.smallCollectUs,
			beforeEach: () => dirty(F, 1, SMALL_SOFT),
			fn: () => {
				collected = collectDirtyRing(F.vcpu, onEntry);
			},
			afterEach() {
				checkCollected(collected, 1, SMALL_SOFT);
				if (F.vm.resetDirtyRings() !== SMALL_SOFT)
					throw new Error("reset after collect");
			},
		},
	],
);

// Collector variants on VM C: the same 65472 entries, collected by other code. Each keeps
// its own fetch index (the library's cursor for C is never used).
const CR = C.vcpu.dirtyRing;
const cFlags = new Int32Array(CR.buffer, CR.byteOffset, CR.byteLength >> 2);
const cWords = new Uint32Array(CR.buffer, CR.byteOffset, CR.byteLength >> 2);
const cMask = RING - 1;
const cOut = new Uint32Array(
	C.scratch.buffer,
	C.scratch.byteOffset,
	C.scratch.byteLength >> 2,
);
let cFetch = 0;
/** The library's loop, verbatim (Atomics.load, callback, Atomics.store per entry). */
function collectReplica(cb) {
	let fetch = cFetch;
	let n = 0;
	while (true) {
		const e = (fetch & cMask) << 2;
		if (Atomics.load(cFlags, e) !== 1) break;
		cb(cWords[e + 1], cWords[e + 2] + cWords[e + 3] * 0x1_0000_0000);
		Atomics.store(cFlags, e, 2);
		fetch = (fetch + 1) >>> 0;
		n++;
	}
	cFetch = fetch;
	return n;
}
/** Same, RESET stored plainly, one Atomics.store after the batch. */
function collectPlainReset(cb) {
	let fetch = cFetch;
	let n = 0;
	while (true) {
		const e = (fetch & cMask) << 2;
		if (Atomics.load(cFlags, e) !== 1) break;
		cb(cWords[e + 1], cWords[e + 2] + cWords[e + 3] * 0x1_0000_0000);
		cFlags[e] = 2;
		fetch = (fetch + 1) >>> 0;
		n++;
	}
	if (n) Atomics.store(cFlags, ((fetch - 1) & cMask) << 2, 2);
	cFetch = fetch;
	return n;
}
/** Library loop with the consumer inlined (no callback). */
function collectInline() {
	let fetch = cFetch;
	let n = 0;
	let sum = 0;
	let slots = 0;
	while (true) {
		const e = (fetch & cMask) << 2;
		if (Atomics.load(cFlags, e) !== 1) break;
		slots += cWords[e + 1];
		sum += cWords[e + 2] + cWords[e + 3] * 0x1_0000_0000;
		Atomics.store(cFlags, e, 2);
		fetch = (fetch + 1) >>> 0;
		n++;
	}
	acc[0] += sum;
	acc[1] += slots;
	acc[2] += n;
	cFetch = fetch;
	return n;
}
/** wasm collects into 16-byte records; JS then calls cb per record (or sums inline). */
function collectWasm(publishEach, cb) {
	const n =
		mC.collect_to(
			CR.byteOffset,
			cMask,
			cFetch,
			C.scratch.byteOffset,
			RING,
			publishEach ? 1 : 0,
		) >>> 0;
	if (cb) {
		for (let r = 0; r < n; r++)
			cb(cOut[r << 2], cOut[(r << 2) + 2] + cOut[(r << 2) + 3] * 0x1_0000_0000);
	} else {
		let sum = 0;
		let slots = 0;
		for (let r = 0; r < n; r++) {
			slots += cOut[r << 2];
			sum += cOut[(r << 2) + 2] + cOut[(r << 2) + 3] * 0x1_0000_0000;
		}
		acc[0] += sum;
		acc[1] += slots;
		acc[2] += n;
	}
	cFetch = (cFetch + n) >>> 0;
	return n;
}
const variant = (id, label, fn) => ({
	id,
	label,
	entries: SOFT,
	beforeEach() {
		dirty(C, 1, SOFT);
		cFetch = (ringState(C).dirtyIndex - SOFT) >>> 0;
	},
	fn: () => {
		collected = fn();
	},
	afterEach() {
		checkCollected(collected, 1, SOFT);
		if (C.vm.resetDirtyRings() !== SOFT)
			throw new Error(`${label}: reset count`);
	},
});
group(
	`2b. where collect time goes: other collectors over the same ${SOFT} entries`,
	{ time: 150, iterations: 48 },
	[
		variant(
			"coll-replica",
			"JS, the library's loop copied (Atomics.load + callback + Atomics.store)",
			() => collectReplica(onEntry),
		),
		variant(
			"coll-plain-reset",
			"JS, plain RESET stores + one Atomics.store per batch",
			() => collectPlainReset(onEntry),
		),
		variant(
			"coll-inline",
			"JS, Atomics per entry, consumer inlined (no callback)",
			() => collectInline(),
		),
		...when(
			microModule,
			variant(
				"coll-wasm-each",
				"wasm collect (seq-cst RESET per entry) + JS sums 16-B records",
				() => collectWasm(true, null),
			),
			variant(
				"coll-wasm-batch",
				"wasm collect (one publish per batch) + JS sums 16-B records",
				() => collectWasm(false, null),
			),
			variant(
				"coll-wasm-each-cb",
				"wasm collect (seq-cst RESET per entry) + JS callback per record",
				() => collectWasm(true, onEntry),
			),
			variant(
				"coll-wasm-cb",
				"wasm collect (one publish per batch) + JS callback per record",
				() => collectWasm(false, onEntry),
			),
		),
	],
);

// ---------------------------------------------------------------- 3. reset
let resetCount = 0;
const resetTask = (id, label, x, k, n, kernelUs) => ({
	id,
	label,
	entries: n,
	kernelUs,
	beforeEach() {
		dirty(x, k, n); // also proves the previous reset re-protected these pages (n pushes)
		checkCollected(collectDirtyRing(x.vcpu, onEntry), k, n);
	},
	fn: () => {
		resetCount = x.vm.resetDirtyRings();
	},
	afterEach() {
		if (resetCount !== n)
			throw new Error(`${label}: reset returned ${resetCount}`);
	},
});
group(
	"3. reset + re-protect: vm.resetDirtyRings()",
	{ time: 150, iterations: 64 },
	[
		resetTask(
			"reset-64k",
			`resetDirtyRings: ${SOFT} entries, consecutive pages (${RING}-entry ring)`,
			R,
			1,
			SOFT,
			3500,
		),
		resetTask(
			"reset-4k",
			`resetDirtyRings: ${SMALL_SOFT} entries at ring-full (${SMALL_RING}-entry ring)`,
			F,
			1,
			SMALL_SOFT,
			225,
		),
		resetTask(
			"reset-1pct",
			`resetDirtyRings: ${KERNEL.ring1.entries} entries, every 100th page (1 GiB 1 %)`,
			R,
			100,
			KERNEL.ring1.entries,
			KERNEL.ring1.resetUs,
		),
		resetTask(
			"reset-10pct",
			`resetDirtyRings: ${KERNEL.ring10.entries} entries, every 10th page (1 GiB 10 %)`,
			R,
			10,
			KERNEL.ring10.entries,
			KERNEL.ring10.resetUs,
		),
	],
);

// ---------------------------------------------------------------- 4. ring vs bitmap
let bitmap = null;
const roundTask = (id, label, x, k, n) =>
	x.ring
		? {
				id,
				label,
				entries: n,
				fn: () => {
					x.vcpu.writeStrided(GPA, k * PAGE, n, ++round);
					collected = collectDirtyRing(x.vcpu, onEntry);
					resetCount = x.vm.resetDirtyRings();
				},
				afterEach() {
					checkCollected(collected, k, n);
					if (resetCount !== n)
						throw new Error(`${label}: reset ${resetCount}`);
				},
			}
		: {
				id,
				label,
				entries: n,
				fn: () => {
					x.vcpu.writeStrided(GPA, k * PAGE, n, ++round);
					bitmap = x.vm.getDirtyLog(0);
				},
				afterEach() {
					checkBitmap(bitmap, k, n);
					bitmap = null;
				},
			};
const harvestTask = (id, label, x, k, n, kernelUs) =>
	x.ring
		? {
				id,
				label,
				entries: n,
				kernelUs,
				beforeEach: () => dirty(x, k, n),
				fn: () => {
					collected = collectDirtyRing(x.vcpu, onEntry);
					resetCount = x.vm.resetDirtyRings();
				},
				afterEach() {
					checkCollected(collected, k, n);
					if (resetCount !== n)
						throw new Error(`${label}: reset ${resetCount}`);
				},
			}
		: {
				id,
				label,
				entries: n,
				kernelUs,
				beforeEach: () => dirty(x, k, n),
				fn: () => {
					bitmap = x.vm.getDirtyLog(0);
				},
				afterEach() {
					checkBitmap(bitmap, k, n);
					bitmap = null;
				},
			};
const n1 = KERNEL.ring1.entries;
const n10 = KERNEL.ring10.entries;
group(
	"4. ring vs bitmap, 1 GiB unbacked slot: one round (dirty + harvest)",
	{ time: 400, iterations: 64 },
	[
		roundTask("round-ring-1", "ring 1 %: dirty + collect + reset", R, 100, n1),
		roundTask("round-bitmap-1", "bitmap 1 %: dirty + GET", B, 100, n1),
		roundTask(
			"round-ring-10",
			"ring 10 %: dirty + collect + reset",
			R,
			10,
			n10,
		),
		roundTask("round-bitmap-10", "bitmap 10 %: dirty + GET", B, 10, n10),
	],
);
group(
	"4b. ring vs bitmap, 1 GiB unbacked slot: harvest only",
	{ time: 200, iterations: 64 },
	[
		harvestTask(
			"harvest-ring-1",
			"ring 1 %: collect + reset",
			R,
			100,
			n1,
			KERNEL.ring1.collectUs + KERNEL.ring1.resetUs,
		),
		harvestTask(
			"harvest-bitmap-1",
			"bitmap 1 %: GET",
			B,
			100,
			n1,
			KERNEL.ring1.getUs,
		),
		harvestTask(
			"harvest-ring-10",
			"ring 10 %: collect + reset",
			R,
			10,
			n10,
			KERNEL.ring10.collectUs + KERNEL.ring10.resetUs,
		),
		harvestTask(
			"harvest-bitmap-10",
			"bitmap 10 %: GET",
			B,
			10,
			n10,
			KERNEL.ring10.getUs,
		),
	],
);
// Last, because its own callback makes collectDirtyRing's call site polymorphic.
let harvested = null;
const harvestApiTask = (id, label, k, n, kernelUs) => ({
	id,
	label,
	entries: n,
	kernelUs,
	beforeEach: () => dirty(R, k, n),
	fn: () => {
		harvested = harvestDirtyRings(R.vm);
	},
	afterEach() {
		const list = harvested.offsets.get(0) ?? [];
		const sum = list.reduce((a, b) => a + b, 0);
		if (
			harvested.entries !== n ||
			harvested.reset !== n ||
			list.length !== n ||
			sum !== stridedSum(k, n)
		) {
			throw new Error(
				`${label}: ${harvested.entries} entries, reset ${harvested.reset}, ${list.length} offsets`,
			);
		}
		harvested = null;
	},
});
group(
	"4c. the library's one-call harvest: harvestDirtyRings(vm) (kick + collect into arrays + reset)",
	{ time: 200, iterations: 64 },
	[
		harvestApiTask(
			"harvest-api-1",
			"ring 1 %: harvestDirtyRings",
			100,
			n1,
			KERNEL.ring1.collectUs + KERNEL.ring1.resetUs,
		),
		harvestApiTask(
			"harvest-api-10",
			"ring 10 %: harvestDirtyRings",
			10,
			n10,
			KERNEL.ring10.collectUs + KERNEL.ring10.resetUs,
		),
	],
);
if (sink === 0.5) console.log(sink); // keep the micro results alive

// ---------------------------------------------------------------- final state checks
const warnings = [R, F, P, C]
	.map((x) => x.vm.stats.ringFullWarnings)
	.reduce((a, b) => a + b, 0);
if (warnings !== 0)
	throw new Error(`pushes into a hard-full ring: ${warnings}`);
for (const x of [R, F, P, C]) {
	const s = ringState(x);
	if (s.dirtyIndex !== s.resetIndex)
		throw new Error("a ring was left with unreset entries");
}
env.loadAverageAtEnd = loadavg().map((v) => Number(v.toFixed(2)));

// ---------------------------------------------------------------- report
const ns = (id) => row(id).nsPerEntryP50;
const mps = (id) => row(id).entries / row(id).p50Us; // entries per µs = M/s
const has = (...ids) => ids.every((id) => rows.some((r) => r.id === id));
const breakdown = has("micro-walk", "proto-c")
	? {
			storeFloor: ns("store-writable"),
			secondWalk: ns("micro-walk"),
			memslotLookup: ns("micro-lookup"),
			cmpxchg: ns("micro-walk-cmpxchg") - ns("micro-walk"),
			push: ns("micro-push"),
			modeStores: 4 * ns("micro-atomic-store"),
		}
	: null;
if (breakdown)
	breakdown.rest =
		ns("push-ring") - Object.values(breakdown).reduce((a, b) => a + b, 0);
const ratios = {
	ringPushVsBitmapSet: row("push-ring").p50Us / row("push-bitmap").p50Us,
	ringPushVsStoreFloor: ns("push-ring") / ns("store-writable"),
	collectLibVsReplica: ns("collect-64k") / ns("coll-replica"),
	collectLibVsPlainReset: ns("collect-64k") / ns("coll-plain-reset"),
	resetVsKernelLow: KERNEL.resetNsPerEntry[0] / ns("reset-64k"),
	resetVsKernelHigh: KERNEL.resetNsPerEntry[1] / ns("reset-64k"),
	round1RingVsBitmap: row("round-ring-1").p50Us / row("round-bitmap-1").p50Us,
	round10RingVsBitmap:
		row("round-ring-10").p50Us / row("round-bitmap-10").p50Us,
	harvest1RingVsBitmap:
		row("harvest-ring-1").p50Us / row("harvest-bitmap-1").p50Us,
	harvest10RingVsBitmap:
		row("harvest-ring-10").p50Us / row("harvest-bitmap-10").p50Us,
};
if (breakdown) {
	Object.assign(ratios, {
		pushEstimateFromDiffNs:
			ns("push-ring") - ns("push-bitmap") + ns("micro-bitmap-set"),
		pushMicroVsBitmapSetMicro: ns("micro-push") / ns("micro-bitmap-set"),
		pushShareOfPath: ns("micro-push") / ns("push-ring"),
		protoMirrorVsCore: row("proto-mirror").p50Us / row("push-ring").p50Us,
		protoAVsMirror: row("proto-mirror").p50Us / row("proto-a").p50Us,
		protoBVsMirror: row("proto-mirror").p50Us / row("proto-b").p50Us,
		protoCVsMirror: row("proto-mirror").p50Us / row("proto-c").p50Us,
		protoCProjectedMps:
			mps("push-ring") * (row("proto-mirror").p50Us / row("proto-c").p50Us),
		protoASpeedup: row("push-ring").p50Us / row("proto-a").p50Us,
		protoBSpeedup: row("push-ring").p50Us / row("proto-b").p50Us,
		protoCSpeedup: row("push-ring").p50Us / row("proto-c").p50Us,
		collectLibVsWasmEach: ns("collect-64k") / ns("coll-wasm-each"),
		collectLibVsWasmBatch: ns("collect-64k") / ns("coll-wasm-batch"),
	});
}
const targets = [
	...[
		["push-ring", PUSH_N],
		["push-ring-big", PUSH_BIG],
	].map(([id, n]) => ({
		target: `push rate ≥ ${TARGETS.pushMps} M entries/s (writeStrided over ${n} pages: fast fault + push)`,
		value: `${mps(id).toFixed(1)} M/s (${ns(id).toFixed(1)} ns/entry)`,
		met: mps(id) >= TARGETS.pushMps,
	})),
	{
		target: `collect ≤ ${TARGETS.collectNs} ns/entry, ${SOFT} of ${RING}`,
		value: `${ns("collect-64k").toFixed(2)} ns`,
		met: ns("collect-64k") <= TARGETS.collectNs,
	},
	{
		target: `collect ≤ ${TARGETS.collectNs} ns/entry, ${SMALL_SOFT} of ${SMALL_RING}`,
		value: `${ns("collect-4k").toFixed(2)} ns`,
		met: ns("collect-4k") <= TARGETS.collectNs,
	},
	{
		target: `reset ≤ ${TARGETS.resetNs} ns/entry, ${SOFT} entries`,
		value: `${ns("reset-64k").toFixed(2)} ns`,
		met: ns("reset-64k") <= TARGETS.resetNs,
	},
	{
		target: `reset ≤ ${TARGETS.resetNs} ns/entry, ${SMALL_SOFT} entries at ring-full`,
		value: `${ns("reset-4k").toFixed(2)} ns`,
		met: ns("reset-4k") <= TARGETS.resetNs,
	},
];

const f = (x, d = 1) => (x === undefined ? "—" : x.toFixed(d));
const header = [
	"task",
	"entries",
	"p50 µs",
	"p99 µs",
	"min µs",
	"samples",
	"round p50s µs",
	"ns/entry p50",
	"ns/entry p99",
	"kernel µs",
];
const table = (g) =>
	rows
		.filter((r) => r.group === g)
		.map((r) => [
			r.task,
			r.entries ? String(r.entries) : "—",
			f(r.p50Us),
			f(r.p99Us),
			f(r.minUs),
			String(r.samples),
			r.roundP50Us.map((x) => x.toFixed(x < 100 ? 1 : 0)).join(" / "),
			f(r.nsPerEntryP50, 2),
			f(r.nsPerEntryP99, 2),
			r.kernelUs === undefined ? "—" : String(r.kernelUs),
		]);
const groups = [...new Set(rows.map((r) => r.group))];
const summary = [
	`push: ${mps("push-ring").toFixed(1)} M entries/s through the guest path (fast fault + push, ${PUSH_N} pages; ${mps("push-ring-big").toFixed(1)} M/s over ${PUSH_BIG}); the bitmap VM does the same writes at ${mps("push-bitmap").toFixed(1)} M/s (ring/bitmap time ${ratios.ringPushVsBitmapSet.toFixed(2)}×); the same stores to already-writable pages take ${ns("store-writable").toFixed(1)} ns each (${ratios.ringPushVsStoreFloor.toFixed(2)}× less)`,
	...(breakdown
		? [
				`pure push: ${ns("micro-push").toFixed(2)} ns (dirty_ring_push alone, ${(1000 / ns("micro-push")).toFixed(0)} M/s) vs ${ns("micro-bitmap-set").toFixed(2)} ns (bitmap_set alone); from the end-to-end ring − bitmap difference: ${ratios.pushEstimateFromDiffNs.toFixed(2)} ns`,
				`push path per entry: store floor ${breakdown?.storeFloor.toFixed(1)} + second walk ${breakdown?.secondWalk.toFixed(1)} + memslot lookup ${breakdown?.memslotLookup.toFixed(1)} + cmpxchg ${breakdown?.cmpxchg.toFixed(1)} + push ${breakdown?.push.toFixed(1)} + 4 seq-cst mode stores ${breakdown?.modeStores.toFixed(1)} + rest ${breakdown?.rest.toFixed(1)} = ${ns("push-ring").toFixed(1)} ns; the push is ${((ratios.pushShareOfPath ?? 0) * 100).toFixed(0)} % of it`,
				`prototypes of the store path (same entries, same checks): mirror of the core ${mps("proto-mirror").toFixed(1)} M/s (${ratios.protoMirrorVsCore?.toFixed(2)}× the core's time); A ${mps("proto-a").toFixed(1)} M/s (${ratios.protoAVsMirror?.toFixed(2)}× faster than the mirror, ${ratios.protoASpeedup?.toFixed(2)}× than the core); B ${mps("proto-b").toFixed(1)} M/s (${ratios.protoBVsMirror?.toFixed(2)}×, ${ratios.protoBSpeedup?.toFixed(2)}×); C ${mps("proto-c").toFixed(1)} M/s (${ratios.protoCVsMirror?.toFixed(2)}×, ${ratios.protoCSpeedup?.toFixed(2)}×); C's gain applied to the core: ~${ratios.protoCProjectedMps?.toFixed(0)} M/s`,
			]
		: []),
	`collect: library ${ns("collect-64k").toFixed(2)} ns/entry (its loop copied: ${ns("coll-replica").toFixed(2)}; with plain RESET stores: ${ns("coll-plain-reset").toFixed(2)}; consumer inlined: ${ns("coll-inline").toFixed(2)})` +
		(breakdown
			? `; wasm collector + JS reading records: ${ns("coll-wasm-each").toFixed(2)} ns with a seq-cst RESET per entry (${ratios.collectLibVsWasmEach.toFixed(2)}× faster), ${ns("coll-wasm-batch").toFixed(2)} ns with one publish per batch; with a JS callback per record: ${ns("coll-wasm-each-cb").toFixed(2)} ns (per-entry RESET), ${ns("coll-wasm-cb").toFixed(2)} ns (one publish)`
			: "") +
		`; kernel userspace ${KERNEL.collectNsPerEntry.join("–")} ns`,
	`reset: ${ns("reset-64k").toFixed(2)} ns/entry consecutive, ${ns("reset-4k").toFixed(2)} ns at ring-full of 4096, ${ns("reset-1pct").toFixed(2)} ns at 1 % (no coalescing), ${ns("reset-10pct").toFixed(2)} ns at 10 %; kernel ${KERNEL.resetNsPerEntry.join("–")} ns (${ratios.resetVsKernelLow.toFixed(1)}–${ratios.resetVsKernelHigh.toFixed(1)}× faster)`,
	`round (dirty + harvest), ring/bitmap time: 1 % ${ratios.round1RingVsBitmap.toFixed(2)}×, 10 % ${ratios.round10RingVsBitmap.toFixed(2)}×`,
	`harvest only, ring/bitmap time: 1 % ${ratios.harvest1RingVsBitmap.toFixed(2)}×, 10 % ${ratios.harvest10RingVsBitmap.toFixed(2)}× (kernel: ${((KERNEL.ring1.collectUs + KERNEL.ring1.resetUs) / KERNEL.ring1.getUs).toFixed(2)}×, ${((KERNEL.ring10.collectUs + KERNEL.ring10.resetUs) / KERNEL.ring10.getUs).toFixed(2)}×)`,
	`harvestDirtyRings(vm), the one-call API: 1 % ${row("harvest-api-1").p50Us.toFixed(0)} µs, 10 % ${row("harvest-api-10").p50Us.toFixed(0)} µs (${(row("harvest-api-10").p50Us / row("harvest-ring-10").p50Us).toFixed(2)}× collect + reset with a plain callback)`,
];

const widthsOf = (t) =>
	header.map((h, c) => Math.max(h.length, ...t.map((r) => r[c].length)));
for (const g of groups) {
	const t = table(g);
	const w = widthsOf(t);
	const line = (cells) =>
		cells
			.map((c, k) => (k === 0 ? c.padEnd(w[k]) : c.padStart(w[k])))
			.join("  ");
	console.log(`\n${g} (lower is better; p50 = median)`);
	console.log(line(header));
	for (const r of t) console.log(line(r));
}
console.log("\nsame-run ratios");
for (const s of summary) console.log(`  ${s}`);
console.log("\ntargets");
for (const t of targets)
	console.log(`  ${t.met ? "met   " : "MISSED"}  ${t.target}: ${t.value}`);
const elapsed = (performance.now() - started) / 1000;
console.log(
	`\nload average ${env.loadAverageAtStart.join(" ")} at start, ${env.loadAverageAtEnd.join(" ")} at end; total run time ${elapsed.toFixed(1)} s`,
);

const out = new URL("bench/results/", root);
mkdirSync(out, { recursive: true });
const date = new Date().toISOString();
writeFileSync(
	new URL("dirty-ring.json", out),
	`${JSON.stringify({ date, environment: env, kernel: KERNEL, rows, breakdownNsPerEntry: breakdown, ratios, targets, totalSeconds: elapsed }, null, 2)}\n`,
);
const md = [
	"# Dirty ring: push, collect, reset; ring vs bitmap",
	"",
	`${date} · ${env.cpu}, ${env.cores} cores · Node ${env.node} (V8 ${env.v8}) · tinybench ${env.tinybench}, timer ${env.timer}` +
		` (resolution ~${env.timerResolutionNs} ns) · commit ${env.gitHead}, core wasm ${env.coreWasmSha256} · load average ${env.loadAverageAtStart.join(" ")} → ${env.loadAverageAtEnd.join(" ")}.` +
		" Times in µs, lower is better; kernel = real KVM on this machine (`../shared/anchors/real-kvm.md`). Generated by `node bench/dirty-ring.js`" +
		`${SCALE !== 1 ? ` --scale ${SCALE}` : ""}; one process, so all ratios are same-run.`,
	"",
	...groups.flatMap((g) => [
		`## ${g}`,
		"",
		`| ${header.join(" | ")} |`,
		`|${header.map((_, k) => (k === 0 ? "---" : "---:")).join("|")}|`,
		...table(g).map((r) => `| ${r.join(" | ")} |`),
		"",
	]),
	"## Same-run ratios",
	"",
	...summary.map((s) => `- ${s}`),
	"",
	"## Targets",
	"",
	"| target | value | |",
	"|---|---|---|",
	...targets.map(
		(t) => `| ${t.target} | ${t.value} | ${t.met ? "met" : "**missed**"} |`,
	),
	"",
	"Each group runs as " +
		ROUNDS +
		" interleaved tinybench rounds (warm-up in each); p50/p99/min are over the merged samples,",
	'and "round p50s" shows each round\'s median: a spread between rounds means the machine was busy (the load average is',
	"above). Setup (dirtying, collecting, resetting) runs in beforeEach/afterEach, outside the timed region; every collect",
	"is checked entry by entry (count, offset sum, slot), every reset count is checked, and each reset's re-protection is",
	"proved by the next iteration's writes pushing again.",
	"",
	microModule
		? "Rows 1b, the prototypes and the wasm collectors come from a wasm module compiled from the core's sources by this script" +
			" (MICRO_SOURCE); the prototypes mirror `guest_write` with the options named, produce the same ring entries and pass the" +
			" same checks. They are measurements, not library code."
		: `The micro module could not be built against this core (${microError}); its rows are missing.`,
	"",
];
writeFileSync(new URL("dirty-ring.md", out), md.join("\n"));
log("wrote bench/results/dirty-ring.json and bench/results/dirty-ring.md");
