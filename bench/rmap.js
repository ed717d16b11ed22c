// The shadow MMU's rmap hot paths, each beside its plain-JavaScript twin
// (bench/js-rmap.js), in the one tinybench harness (common.js runGroup) and one process, so
// every ratio printed is a same-run ratio:
//
//   pte_list  add, remove (in a random order) and a full iteration (rmap_get_first/next) of
//             4200 entries spread over lists of 1, 2, 14, 15 and 100 entries, in descriptor
//             pools of the VM's layout (pte_list_pool_init, base = pool + 32): the core's
//             exports (vm.raw.pte_list_*, rmap_get_*), called from JS once per op, vs the twin
//   write-protect  lists of 1 and 14 over SPTE words whose W bits are set before each
//             sample: the twin's rmapWriteProtect (iterate + clear W with Atomics.and) vs the
//             core's rmap_write_protect (kvm_rmap_write_protect: mmu_lock taken, the list
//             walked, W cleared; one call per list), and each side's iteration alone
//   GET       classic KVM_GET_DIRTY_LOG of a 1 GiB logged slot at 1 %, 10 %, 100 % dirty on a
//             shadow-MMU VM (re-protection through each dirty page's 4K rmap), beside the same
//             on a TDP-MMU VM; against real KVM's shadow MMU and the target "GET through the
//             rmap at most 0.25 × the kernel's time in every case"
//
// Before timing, the twin is checked against the core: from one saved memory state the
// core runs an op sequence (adds, counts, iterations, an add past the pool's capacity,
// removes in a random order, removes of absent SPTEs, re-adds through the free list, write
// protection), the memory is restored, the twin runs the same sequence; the results must be
// equal and the whole memories byte-identical (the script throws otherwise). The twin's
// rmapWriteProtect is also checked against the core's own re-protection through the rmaps
// of a shadow VM (its GET), on the page-table pages. Every sample's outcome is checked
// outside the timed region (list memory against a snapshot, sums and counts of the SPTEs
// iterated, W bits, GET bitmaps bit by bit), and GET's re-arming is proved by the next
// sample's writes faulting again (one fast fault per page). Lower times are better.
//
//   npm run build && node bench/rmap.js [--quick] [--save]
import {
  buildIdentity,
  checkStridedBits,
  commandLine,
  fmt,
  GPA,
  groupsMd,
  hostEnvironment,
  loadAverage,
  mdTable,
  PAGE,
  printEnvironment,
  printGroups,
  printRunEnd,
  requireBuild,
  resultsPreamble,
  runGroup,
  startClock,
  targetLines,
  targetsMd,
  textTable,
  tinybenchTiming,
  writeResults,
} from "./common.js";

const cli = commandLine("npm run build && node bench/rmap.js [--quick] [--save]");
const QUICK = cli.quick;
const SCALE = QUICK ? 0.15 : 1;
const ROUNDS = QUICK ? 2 : 5;
requireBuild();
const { createVm } = await import("../dist/index.js");
const L = await import("../dist/layout.js");
const { createJsRmap } = await import("./js-rmap.js");

const { log, seconds } = startClock("rmap");
const env = {
  ...hostEnvironment(),
  ...tinybenchTiming(),
  ...buildIdentity(),
  loadAverageAtStart: loadAverage(),
  run: QUICK ? `--quick (scale ${SCALE}, ${ROUNDS} rounds)` : `scale ${SCALE}, ${ROUNDS} rounds`,
};
printEnvironment(env);
if (env.loadAverageAtStart[0] > env.cores / 2) {
  console.log(
    `note: the machine is busy (load average ${env.loadAverageAtStart[0]} on ${env.cores} cores): p99s are inflated`,
  );
}

const EXT = 14; // PTE_LIST_EXT
const DESC = 128; // PTE_LIST_DESC_SIZE
const POOL_HDR = 32; // PTE_POOL_SIZE
const SPTE_W = 1 << 1;
const E = 4200; // entries per sample: lcm(1, 2, 14, 15, 100) × 2
const LENGTHS = [1, 2, 14, 15, 100];
const WP_LENGTHS = [1, 14];
const SLOT_PAGES = 262144; // 1 GiB
const n1 = Math.ceil(SLOT_PAGES / 100); // 2622
const n10 = Math.ceil(SLOT_PAGES / 10); // 26215
// real KVM's shadow MMU on this kind of machine, µs (../shared/anchors/real-kvm.md; bench/micro.js KERNEL_US)
const KERNEL_US = { 100: 151, 10: 1215, 1: 11775 };
const T_KERNEL = 0.25;

function check(cond, msg) {
  if (!cond) throw new Error(`check failed: ${msg}`);
}
/** Descriptors a list of `len` entries holds (tail descriptors full, the head partly). */
const descsFor = (len) => (len < 2 ? 0 : Math.ceil(len / EXT));
/** A seeded pseudo-random permutation of 0..n-1. */
function shuffled(n, seed) {
  let s = seed;
  const a = Array.from({ length: n }, (_, i) => i);
  for (let i = n - 1; i > 0; i--) {
    s = (Math.imul(s, 1103515245) + 12345) >>> 0;
    const j = Math.floor((s / 2 ** 32) * (i + 1));
    [a[i], a[j]] = [a[j], a[i]];
  }
  return a;
}

// ---------------------------------------------------------------- the list VM
// A plain VM: the pte_list exports work over any addresses of its memory.
const LV = await createVm({ maxMemoryBytes: 32 << 20, mmuPoolBytes: 1 << 20 });
const raw = LV.raw;
const js = createJsRmap(LV.memory);
const mem8 = () => new Uint8Array(LV.memory.buffer);
let u32 = new Uint32Array(LV.memory.buffer);
function views() {
  if (u32.buffer !== LV.memory.buffer) {
    u32 = new Uint32Array(LV.memory.buffer);
  }
  js.refresh();
}

// the SPTE words every list points at: entry k of a set is SPTES + 8k
const SPTES = LV.allocRegion(E * 8, 64);
const SPTE_LO = (k) => (((0x1000 + k) << 12) | 0x800 | 0x100 | 0x7) >>> 0; // present, A, R W X
const SPTE_HI = (1 << 25) | (1 << 26); // host-writable (bit 57), MMU-writable (bit 58)
const spteWithW = new Uint32Array(2 * E);
const spteNoW = new Uint32Array(2 * E);
for (let k = 0; k < E; k++) {
  spteWithW[2 * k] = SPTE_LO(k);
  spteWithW[2 * k + 1] = SPTE_HI;
  spteNoW[2 * k] = SPTE_LO(k) & ~SPTE_W;
  spteNoW[2 * k + 1] = SPTE_HI;
}

/**
 * A set of `E / len` lists of `len` entries in one region: the pool header, `capacity`
 * descriptors (exactly as many as the lists need), the heads, an 8-byte iterator.
 */
function listSet(len) {
  const n = E / len;
  const capacity = n * descsFor(len);
  const bytes = POOL_HDR + capacity * DESC + n * 8 + 64;
  const pool = LV.allocRegion(bytes, 64);
  const heads = pool + POOL_HDR + capacity * DESC;
  views();
  return {
    len,
    n,
    capacity,
    pool,
    heads,
    iter: heads + n * 8,
    at: pool,
    bytes,
    empty: null,
    full: null,
    removed: null,
  };
}
const snap = (s) => mem8().slice(s.at, s.at + s.bytes);
const restore = (s, bytes) => mem8().set(bytes, s.at);
const same = (s, bytes) => Buffer.from(LV.memory.buffer, s.at, s.bytes).equals(bytes);

// ---------------------------------------------------------------- the timed bodies
// One body per implementation, each call site monomorphic (the core's exports, the twin's closures).
const wInit = raw.pte_list_pool_init;
const wAdd = raw.pte_list_add;
const wRemove = raw.pte_list_remove;
const wFirst = raw.rmap_get_first;
const wNext = raw.rmap_get_next;
const wWp = raw.kvm_rmap_write_protect;
const wCount = raw.pte_list_count;
const wUsed = raw.pte_list_pool_used;
const jAdd = js.add;
const jRemove = js.remove;
const jFirst = js.first;
const jNext = js.next;
const jWp = js.rmapWriteProtect;

function addAllWasm(s) {
  const { pool, heads, n, len } = s;
  let sum = 0;
  let sp = SPTES;
  for (let j = 0; j < n; j++) {
    const h = heads + 8 * j;
    for (let e = 0; e < len; e++, sp += 8) sum += wAdd(pool, h, sp);
  }
  return sum;
}
function addAllJs(s) {
  const { pool, heads, n, len } = s;
  let sum = 0;
  let sp = SPTES;
  for (let j = 0; j < n; j++) {
    const h = heads + 8 * j;
    for (let e = 0; e < len; e++, sp += 8) sum += jAdd(pool, h, sp);
  }
  return sum;
}
/** Remove every entry in the order of `order` (head offsets and SPTE offsets). */
function removeAllWasm(s, order) {
  const { pool, heads } = s;
  const { head, spte } = order;
  let sum = 0;
  for (let q = 0; q < E; q++) sum += wRemove(pool, heads + head[q], SPTES + spte[q]);
  return sum;
}
function removeAllJs(s, order) {
  const { pool, heads } = s;
  const { head, spte } = order;
  let sum = 0;
  for (let q = 0; q < E; q++) sum += jRemove(pool, heads + head[q], SPTES + spte[q]);
  return sum;
}
// iteration results: [sum of the SPTE addresses, entries]
const seen = new Float64Array(2);
function iterateWasm(s) {
  const { heads, n, iter } = s;
  let sum = 0;
  let c = 0;
  for (let j = 0; j < n; j++) {
    for (let p = wFirst(heads + 8 * j, iter); p !== 0; p = wNext(iter)) {
      sum += p;
      c++;
    }
  }
  seen[0] = sum;
  seen[1] = c;
}
function iterateJs(s) {
  const { heads, n, iter } = s;
  let sum = 0;
  let c = 0;
  for (let j = 0; j < n; j++) {
    for (let p = jFirst(heads + 8 * j, iter); p !== 0; p = jNext(iter)) {
      sum += p;
      c++;
    }
  }
  seen[0] = sum;
  seen[1] = c;
}
/** The core's rmap_write_protect on every list (W only); returns how many said a flush is due. */
function writeProtectWasm(s) {
  const { heads, n } = s;
  let flushes = 0;
  for (let j = 0; j < n; j++) flushes += wWp(LV.addr, heads + 8 * j, 0);
  return flushes;
}
/** The twin's rmap_write_protect on every list; returns how many said a flush is due. */
function writeProtectJs(s) {
  const { heads, n, iter } = s;
  let flushes = 0;
  for (let j = 0; j < n; j++) if (jWp(heads + 8 * j, iter)) flushes++;
  return flushes;
}
const SPTE_SUM = E * SPTES + 8 * ((E * (E - 1)) / 2);

// ---------------------------------------------------------------- twin = core, checked
const verified = [];
/**
 * From the current memory state: run `wasm`, save the memory (A), restore the start, run
 * `twin`, save (B). A and B must be byte-identical and differ from the start, and the two
 * result lists equal. The core's outcome is left in place.
 */
function checkTwin(what, wasm, twin) {
  views();
  const start = mem8().slice();
  const r1 = wasm();
  const a = mem8().slice();
  mem8().set(start);
  views();
  const r2 = twin();
  const b = mem8().slice();
  check(a.length === b.length, `${what}: the memory grew differently`);
  if (!Buffer.from(a.buffer).equals(Buffer.from(b.buffer))) {
    let at = 0;
    while (a[at] === b[at]) at++;
    throw new Error(`${what}: the JS twin left memory different from the core, first at byte 0x${at.toString(16)}`);
  }
  check(!Buffer.from(start.buffer).equals(Buffer.from(b.buffer)), `${what}: neither path changed anything`);
  check(r1.length === r2.length, `${what}: ${r1.length} vs ${r2.length} results`);
  for (let i = 0; i < r1.length; i++) {
    check(r1[i] === r2[i], `${what}: result ${i} differs (core ${r1[i]}, twin ${r2[i]})`);
  }
  mem8().set(a);
  verified.push(`${what} (${r1.length} results)`);
}

/**
 * The op sequence the twin is checked on, for lists of `len` (6 lists, a pool of exactly
 * the descriptors they need), over an implementation `m`; returns every result (| 0).
 */
function opSequence(m, s, len) {
  const out = [];
  const r = (x) => out.push(x | 0);
  const nl = 6;
  const sp = (j, e) => SPTES + 8 * (j * len + e);
  const head = (j) => s.heads + 8 * j;
  m.init(s.pool, s.pool + POOL_HDR, nl * descsFor(len));
  for (let j = 0; j < nl; j++) for (let e = 0; e < len; e++) r(m.add(s.pool, head(j), sp(j, e)));
  const walk = () => {
    for (let j = 0; j < nl; j++) {
      r(m.count(head(j)));
      for (let p = m.first(head(j), s.iter); p !== 0; p = m.next(s.iter)) r(p);
      r(0);
    }
    r(m.used(s.pool));
  };
  walk();
  // one more: fits in the head descriptor, or needs a descriptor the pool does not have (-1)
  const extra = SPTES + 8 * (E - 1);
  r(m.add(s.pool, head(0), extra));
  r(m.remove(s.pool, head(0), extra));
  r(m.remove(s.pool, head(1), extra)); // absent: 0
  // half the entries, in a random order
  const order = shuffled(nl * len, 17 + len);
  for (const k of order.slice(0, order.length >> 1)) r(m.remove(s.pool, head(Math.floor(k / len)), SPTES + 8 * k));
  walk();
  // re-add a third of those (descriptors come back from the free list), then remove everything
  for (const k of order.slice(0, Math.ceil(order.length / 6)))
    r(m.add(s.pool, head(Math.floor(k / len)), SPTES + 8 * k));
  walk();
  for (const k of shuffled(nl * len, 99 + len)) r(m.remove(s.pool, head(Math.floor(k / len)), SPTES + 8 * k));
  walk();
  for (let j = 0; j < nl; j++) r(m.remove(s.pool, head(j), sp(j, 0))); // all absent now
  return out;
}
const wasmImpl = {
  init: wInit,
  add: wAdd,
  remove: wRemove,
  count: wCount,
  first: wFirst,
  next: wNext,
  used: wUsed,
};
const jsImpl = {
  init: js.poolInit,
  add: js.add,
  remove: js.remove,
  count: js.count,
  first: js.first,
  next: js.next,
  used: js.poolUsed,
};
log(`checking the twin against the core: lists of ${LENGTHS.join(", ")} entries`);
{
  const scratch = listSet(100); // room for 6 lists of any length here
  for (const len of [...LENGTHS, 3, 28, 29]) {
    checkTwin(
      `pte_list add/count/iterate/remove, 6 lists of ${len}`,
      () => opSequence(wasmImpl, scratch, len),
      () => opSequence(jsImpl, scratch, len),
    );
  }
  // write protection: lists built by the core; some SPTEs with W, some without, one list with none
  for (const len of [1, 2, 14, 15, 40]) {
    const nl = 5;
    wInit(scratch.pool, scratch.pool + POOL_HDR, 30);
    u32.fill(0, scratch.heads >>> 2, (scratch.heads >>> 2) + 2 * 42);
    for (let j = 0; j < nl; j++) {
      for (let e = 0; e < len; e++)
        check(wAdd(scratch.pool, scratch.heads + 8 * j, SPTES + 8 * (j * len + e)) >= 0, "add");
    }
    for (let k = 0; k < nl * len; k++) {
      const noW = Math.floor(k / len) === 3 || k % 3 === 1;
      u32[(SPTES >>> 2) + 2 * k] = noW ? spteNoW[2 * k] : spteWithW[2 * k];
      u32[(SPTES >>> 2) + 2 * k + 1] = SPTE_HI;
    }
    checkTwin(
      `rmapWriteProtect, 5 lists of ${len} (the core's kvm_rmap_write_protect, W only)`,
      () => {
        const out = [];
        for (let j = 0; j < nl; j++) out.push(wWp(LV.addr, scratch.heads + 8 * j, 0));
        return out;
      },
      () => {
        const out = [];
        // (the iterator the core uses: the VM's, in its control block)
        for (let j = 0; j < nl; j++) out.push(jWp(scratch.heads + 8 * j, LV.addr + L.VM_RMAP_ITER) ? 1 : 0);
        return out;
      },
    );
  }
}

// ---------------------------------------------------------------- the timed list sets
log("setting up: 4200 entries per sample in lists of 1, 2, 14, 15, 100, for the core and the twin");
const sets = {};
for (const len of LENGTHS) {
  const order = shuffled(E, 1000 + len);
  const ord = {
    head: Uint32Array.from(order, (k) => 8 * Math.floor(k / len)),
    spte: Uint32Array.from(order, (k) => 8 * k),
  };
  for (const [impl, init, addAll, removeAll] of [
    ["wasm", wInit, addAllWasm, removeAllWasm],
    ["js", js.poolInit, addAllJs, removeAllJs],
  ]) {
    const s = listSet(len); // add and remove
    const it = listSet(len); // iteration (never changed)
    for (const x of [s, it]) {
      init(x.pool, x.pool + POOL_HDR, x.capacity);
      x.empty = snap(x);
      check(addAll(x) === (x.n * len * (len - 1)) / 2, `${impl} ${len}: add`);
      x.full = snap(x);
    }
    check(removeAll(s, ord) === E, `${impl} ${len}: remove`);
    check(wUsed(s.pool) === 0, `${impl} ${len}: every descriptor freed`);
    for (let j = 0; j < s.n; j++) check(u32[(s.heads >>> 2) + 2 * j] === 0, `${impl} ${len}: list ${j} emptied`);
    s.removed = snap(s);
    check(wUsed(it.pool) === it.capacity && js.poolUsed(it.pool) === it.capacity, `${impl} ${len}: pool use`);
    for (let j = 0; j < it.n; j++) check(wCount(it.heads + 8 * j) === len, `${impl} ${len}: list ${j} length`);
    sets[`${impl}${len}`] = { s, it, ord };
  }
  // the twin and the core built the same lists (at their own addresses): same shape
  const a = sets[`wasm${len}`].it;
  const b = sets[`js${len}`].it;
  iterateWasm(a);
  const wSeen = [...seen];
  iterateJs(b);
  check(wSeen[0] === SPTE_SUM && wSeen[1] === E && seen[0] === SPTE_SUM && seen[1] === E, `${len}: iteration`);
}

// ---------------------------------------------------------------- the shadow and TDP VMs
const dirtyRound = { n: 0 };
async function bigVm(mmu) {
  const vm = await createVm({ mmu, maxMemoryBytes: 64 << 20, mmuPoolBytes: 8 << 20 });
  vm.setUserMemoryRegion({ slot: 0, flags: 1, guestPhysAddr: GPA, memorySize: SLOT_PAGES * PAGE });
  const vcpu = vm.createVcpu(0);
  const done = vcpu.writeStrided(GPA, PAGE, SLOT_PAGES, 1); // map every page (slow faults)
  check(done === SLOT_PAGES && Number(vcpu.stats.slowFaults) === SLOT_PAGES, `${mmu}: every page mapped`);
  const bm = vm.getDirtyLog(0); // re-protect everything
  checkStridedBits(bm, 1, SLOT_PAGES, `${mmu}: the first GET`);
  check(vm.countSptes(0, GPA, SLOT_PAGES, 1n << 1n) === 0, `${mmu}: every page re-armed`);
  return { vm, vcpu, mmu };
}
/** Write pages 0, k, 2k, … (n of them): n first writes, each a fast fault (the last GET re-armed it). */
function dirty(x, k, n) {
  const s0 = x.vcpu.stats;
  const done = x.vcpu.writeStrided(GPA, k * PAGE, n, ++dirtyRound.n);
  const s1 = x.vcpu.stats;
  const fast = Number(s1.fastFaults - s0.fastFaults);
  const slow = Number(s1.slowFaults - s0.slowFaults);
  check(done === n && fast === n && slow === 0, `${x.mmu}: ${done} of ${n} stores, ${fast} fast faults, ${slow} slow`);
}
log("setting up: 1 GiB logged slots on a shadow-MMU VM and a TDP-MMU VM, every page mapped then re-protected");
const S = await bigVm("shadow");
const D = await bigVm("tdp");
// the shadow VM's rmaps: one SPTE per gfn (a direct 4K map, no aliases)
const shadowU32 = () => new Uint32Array(S.vm.memory.buffer);
const slot0 = shadowU32()[(S.vm.addr + L.VM_SLOTS) >>> 2];
const RMAP = shadowU32()[(slot0 + L.SLOT_RMAP) >>> 2];
check(RMAP !== 0 && shadowU32()[(slot0 + L.SLOT_BASE_GFN) >>> 2] === GPA / PAGE, "shadow: slot 0's rmaps");
for (let g = 0; g < SLOT_PAGES; g++) {
  if (S.vm.rmapCount(0, GPA / PAGE + g) !== 1) throw new Error(`shadow: gfn ${g}'s rmap is not one SPTE`);
}
{
  // the twin's rmapWriteProtect over the shadow VM's rmaps = the core's re-protection (its
  // GET), on the page-table pages; every 7th page dirty
  const sjs = createJsRmap(S.vm.memory);
  const iter = S.vm.allocRegion(8, 8);
  const k = 7;
  const n = Math.ceil(SLOT_PAGES / k);
  dirty(S, k, n);
  const m = () => new Uint8Array(S.vm.memory.buffer);
  const poolBase = shadowU32()[(S.vm.addr + L.VM_POOL_BASE) >>> 2];
  const poolBytes = shadowU32()[(S.vm.addr + L.VM_POOL_NEXT) >>> 2] * PAGE;
  const start = m().slice();
  const bm = S.vm.getDirtyLog(0);
  checkStridedBits(bm, k, n, "shadow: GET of every 7th page");
  const afterCore = m().slice();
  m().set(start);
  sjs.refresh();
  let flushes = 0;
  for (let p = 0; p < SLOT_PAGES; p += k) if (sjs.rmapWriteProtect(RMAP + 8 * p, iter)) flushes++;
  const tables = (x) => Buffer.from(x.buffer, poolBase, poolBytes);
  const twin = m().slice();
  check(flushes === n, `shadow: the twin cleared W on ${flushes} of ${n} rmaps`);
  check(!tables(start).equals(tables(twin)), "shadow: the twin changed no SPTE");
  if (!tables(afterCore).equals(tables(twin))) {
    throw new Error("shadow: the twin's rmapWriteProtect left the page tables different from the core's GET");
  }
  m().set(afterCore);
  check(S.vm.countSptes(0, GPA, SLOT_PAGES, 1n << 1n) === 0, "shadow: re-protected after the check");
  verified.push(
    `rmapWriteProtect on the shadow VM's rmaps of every 7th page of 1 GiB = the core's GET re-protection (${poolBytes / PAGE} page-table pages)`,
  );
}
log(`twin checks passed: ${verified.length}`);

// ---------------------------------------------------------------- groups
const rows = [];
const group = async (title, opts, tasks) => {
  views();
  for (const r of await runGroup(title, { ...opts, rounds: ROUNDS, scale: SCALE, log }, tasks)) rows.push(r);
};
const row = (id) => rows.find((r) => r.id === id);
let result = 0;

// a. pte_list add / remove / iterate
log("pte_list: add, remove (random order), iterate; 4200 entries per sample");
const listTasks = [];
for (const len of LENGTHS) {
  const n = E / len;
  for (const [impl, name, addAll, removeAll, iterate] of [
    ["wasm", "WASM", addAllWasm, removeAllWasm, iterateWasm],
    ["js", "JS twin", addAllJs, removeAllJs, iterateJs],
  ]) {
    const { s, it, ord } = sets[`${impl}${len}`];
    listTasks.push(
      {
        id: `add-${len}-${impl}`,
        label: `${name}: add, ${n} lists of ${len}`,
        ops: E,
        op: "add",
        len,
        impl,
        beforeEach: () => restore(s, s.empty),
        fn: () => {
          result = addAll(s);
        },
        afterEach() {
          check(result === (n * len * (len - 1)) / 2, `add ${len} ${impl}: counts returned ${result}`);
          check(same(s, s.full), `add ${len} ${impl}: the lists built`);
        },
      },
      {
        id: `remove-${len}-${impl}`,
        label: `${name}: remove in a random order, ${n} lists of ${len}`,
        ops: E,
        op: "remove",
        len,
        impl,
        beforeEach: () => restore(s, s.full),
        fn: () => {
          result = removeAll(s, ord);
        },
        afterEach() {
          check(result === E, `remove ${len} ${impl}: ${result} of ${E} removed`);
          check(same(s, s.removed), `remove ${len} ${impl}: every list empty, every descriptor freed`);
        },
      },
      {
        id: `iterate-${len}-${impl}`,
        label: `${name}: iterate (first/next), ${n} lists of ${len}`,
        ops: E,
        op: "iterate",
        len,
        impl,
        beforeEach: () => seen.fill(0),
        fn: () => iterate(it),
        afterEach() {
          check(seen[0] === SPTE_SUM && seen[1] === E, `iterate ${len} ${impl}: ${seen[1]} entries`);
        },
      },
    );
  }
}
await group(
  "pte_list: add / remove / iterate, 4200 entries per sample (ns per entry)",
  { time: 150, iterations: 40 },
  listTasks,
);

// b. rmap write-protect per SPTE
log("write-protect: lists of 1 and 14 over SPTE words with W set before each sample");
const wpTasks = [];
const setW = () => u32.set(spteWithW, SPTES >>> 2);
const spteWords = () => u32.subarray(SPTES >>> 2, (SPTES >>> 2) + 2 * E);
const equalWords = (a, b) => Buffer.from(a.buffer, a.byteOffset, a.byteLength).equals(Buffer.from(b.buffer));
for (const len of WP_LENGTHS) {
  const n = E / len;
  const w = sets[`wasm${len}`].it;
  const j = sets[`js${len}`].it;
  wpTasks.push(
    {
      id: `wp-iter-${len}-wasm`,
      label: `WASM: iteration only (rmap_get_first/next), ${n} lists of ${len}`,
      ops: E,
      len,
      impl: "wasm",
      beforeEach() {
        setW();
        seen.fill(0);
      },
      fn: () => iterateWasm(w),
      afterEach() {
        check(seen[0] === SPTE_SUM && seen[1] === E, `wp iterate ${len} wasm`);
        check(equalWords(spteWords(), spteWithW), `wp iterate ${len} wasm: SPTEs untouched`);
      },
    },
    {
      id: `wp-iter-${len}-js`,
      label: `JS twin: iteration only (first/next), ${n} lists of ${len}`,
      ops: E,
      len,
      impl: "js",
      beforeEach() {
        setW();
        seen.fill(0);
      },
      fn: () => iterateJs(j),
      afterEach() {
        check(seen[0] === SPTE_SUM && seen[1] === E, `wp iterate ${len} js`);
        check(equalWords(spteWords(), spteWithW), `wp iterate ${len} js: SPTEs untouched`);
      },
    },
    {
      id: `wp-${len}-wasm`,
      label: `WASM: rmap_write_protect (lock, iterate, clear W), ${n} lists of ${len}`,
      ops: E,
      len,
      impl: "wasm",
      beforeEach: setW,
      fn: () => {
        result = writeProtectWasm(w);
      },
      afterEach() {
        check(result === n, `wp ${len} wasm: ${result} of ${n} lists said a flush is due`);
        check(equalWords(spteWords(), spteNoW), `wp ${len} wasm: W cleared on every SPTE, nothing else`);
      },
    },
    {
      id: `wp-${len}-js`,
      label: `JS twin: rmapWriteProtect (iterate + clear W), ${n} lists of ${len}`,
      ops: E,
      len,
      impl: "js",
      beforeEach: setW,
      fn: () => {
        result = writeProtectJs(j);
      },
      afterEach() {
        check(result === n, `wp ${len} js: ${result} of ${n} lists said a flush is due`);
        check(equalWords(spteWords(), spteNoW), `wp ${len} js: W cleared on every SPTE, nothing else`);
      },
    },
  );
}
await group(
  "rmap write-protect per SPTE, W set before each sample (ns per SPTE; the iteration alone beside it)",
  { time: 150, iterations: 40 },
  wpTasks,
);

// c. GET through the rmap (shadow) beside the TDP MMU
let bitmap = null;
const getTask = (x, k, n) => ({
  id: `get${100 / k}-${x.mmu}`,
  label: `${x.mmu === "shadow" ? "shadow MMU (rmap)" : "TDP MMU (walk)"}: getDirtyLog, every ${k === 1 ? "" : `${k}th `}page (${n} pages)`,
  ops: n,
  mmu: x.mmu,
  pct: 100 / k,
  kernelUs: KERNEL_US[k],
  beforeEach: () => dirty(x, k, n),
  fn: () => {
    bitmap = x.vm.getDirtyLog(0);
  },
  afterEach() {
    check(bitmap.length === SLOT_PAGES / 8, `${x.mmu} GET: bitmap length ${bitmap.length}`);
    checkStridedBits(bitmap, k, n, `${x.mmu} GET every ${k}th page`);
    bitmap = null;
  },
});
/** GET with nothing dirty: the fixed cost (the summary scan, the bitmap handed out; no flush). */
const emptyGetTask = (x) => ({
  id: `get0-${x.mmu}`,
  label: `${x.mmu === "shadow" ? "shadow MMU (rmap)" : "TDP MMU (walk)"}: getDirtyLog, nothing dirty (the fixed cost)`,
  ops: 1,
  mmu: x.mmu,
  pct: 0,
  fn: () => {
    bitmap = x.vm.getDirtyLog(0);
  },
  afterEach() {
    check(bitmap.length === SLOT_PAGES / 8, `${x.mmu} empty GET: bitmap length ${bitmap.length}`);
    checkStridedBits(bitmap, 1, 0, `${x.mmu} empty GET`);
    bitmap = null;
  },
});
for (const [k, n, time] of [
  [100, n1, 100],
  [10, n10, 100],
  [1, SLOT_PAGES, 60],
]) {
  log(`GET ${100 / k} %: dirty ${n} pages (first writes) before each sample`);
  await group(`GET of a 1 GiB slot at ${100 / k} % dirty (${n} pages; ns per dirty page)`, { time, iterations: 30 }, [
    getTask(S, k, n),
    getTask(D, k, n),
    ...(k === 100 ? [emptyGetTask(S), emptyGetTask(D)] : []),
  ]);
}

// ---------------------------------------------------------------- final state checks
for (const x of [S, D])
  check(x.vm.countSptes(0, GPA, SLOT_PAGES, 1n << 1n) === 0, `${x.mmu}: every page re-armed at the end`);
check(S.vm.stats.shadowPages > 0 && D.vm.stats.shadowPages === 0, "shadow pages only on the shadow VM");
const shadowPages = S.vm.stats.shadowPages;
env.loadAverageAtEnd = loadAverage();

// ---------------------------------------------------------------- report
const p50 = (id) => row(id).p50Us;
const perOp = (id) => row(id).nsPerOpP50;
const x2 = (v) => `${v.toFixed(2)}×`;
const twinPairs = [
  ...LENGTHS.flatMap((len) =>
    ["add", "remove", "iterate"].map((op) => ({
      what: `${op}, lists of ${len}`,
      wasmNs: perOp(`${op}-${len}-wasm`),
      jsNs: perOp(`${op}-${len}-js`),
    })),
  ),
  ...WP_LENGTHS.map((len) => ({
    what: `write-protect, lists of ${len}`,
    wasmNs: perOp(`wp-${len}-wasm`),
    jsNs: perOp(`wp-${len}-js`),
  })),
].map((t) => ({ ...t, jsOverWasm: t.jsNs / t.wasmNs }));
const gets = [100, 10, 1].map((k) => {
  const pct = 100 / k;
  return {
    pct,
    pages: Math.ceil(SLOT_PAGES / k),
    kernelUs: KERNEL_US[k],
    shadowUs: p50(`get${pct}-shadow`),
    tdpUs: p50(`get${pct}-tdp`),
    shadowNsPerPage: perOp(`get${pct}-shadow`),
    tdpNsPerPage: perOp(`get${pct}-tdp`),
    shadowOverKernel: p50(`get${pct}-shadow`) / KERNEL_US[k],
    tdpOverKernel: p50(`get${pct}-tdp`) / KERNEL_US[k],
    shadowOverTdp: p50(`get${pct}-shadow`) / p50(`get${pct}-tdp`),
  };
});
const targets = gets.map((g) => ({
  target: `shadow-MMU GET through the rmap, ${g.pct} % of 1 GiB, ≤ ${T_KERNEL} × the kernel's shadow MMU (≤ ${fmt(T_KERNEL * g.kernelUs)} µs)`,
  value: `${fmt(g.shadowUs)} µs = ${x2(g.shadowOverKernel)} the kernel`,
  kernel: `${g.kernelUs} µs`,
  met: g.shadowOverKernel <= T_KERNEL,
}));
const comparisons = gets.map((g) => ({
  target: `(for comparison, not a target) TDP-MMU GET, ${g.pct} % of 1 GiB, at the same bound (≤ ${fmt(T_KERNEL * g.kernelUs)} µs)`,
  value: `${fmt(g.tdpUs)} µs = ${x2(g.tdpOverKernel)} the kernel's shadow MMU; shadow / TDP ${x2(g.shadowOverTdp)}`,
  kernel: `${g.kernelUs} µs`,
  met: g.tdpOverKernel <= T_KERNEL,
}));

const header = ["task", "ops", "p50 µs", "p99 µs", "ns/op p50", "ns/op p99", "samples", "round p50s µs", "kernel µs"];
const cells = (r) => [
  r.task,
  String(r.ops),
  fmt(r.p50Us, r.p50Us < 10 ? 3 : 1),
  fmt(r.p99Us, r.p99Us < 10 ? 3 : 1),
  fmt(r.nsPerOpP50, 2),
  fmt(r.nsPerOpP99, 2),
  String(r.samples),
  r.roundP50Us.map((x) => (x < 10 ? x.toFixed(2) : x.toFixed(0))).join(" / "),
  r.kernelUs === undefined ? "—" : String(r.kernelUs),
];
const twinHeader = ["operation", "WASM ns/op p50", "JS twin ns/op p50", "JS / WASM"];
const twinCells = twinPairs.map((t) => [t.what, fmt(t.wasmNs, 2), fmt(t.jsNs, 2), x2(t.jsOverWasm)]);
const getHeader = [
  "GET, 1 GiB",
  "pages",
  "shadow p50 µs",
  "TDP p50 µs",
  "kernel µs",
  "shadow / kernel",
  "TDP / kernel",
  "shadow / TDP",
  "shadow ns/page",
  "TDP ns/page",
];
const getCells = gets.map((g) => [
  `${g.pct} %`,
  String(g.pages),
  fmt(g.shadowUs),
  fmt(g.tdpUs),
  String(g.kernelUs),
  x2(g.shadowOverKernel),
  x2(g.tdpOverKernel),
  x2(g.shadowOverTdp),
  fmt(g.shadowNsPerPage, 2),
  fmt(g.tdpNsPerPage, 2),
]);
const summary = [
  `write-protect per SPTE: ${WP_LENGTHS.map((len) => `lists of ${len}: WASM ${fmt(perOp(`wp-${len}-wasm`), 2)} ns (one call per list, mmu_lock taken and dropped in it), JS twin ${fmt(perOp(`wp-${len}-js`), 2)} ns, of which its iteration ${fmt(perOp(`wp-iter-${len}-js`), 2)} ns`).join("; ")} (the WASM iteration rows make one call per entry, so they do not split the WASM figure)`,
  `WASM per-op figures include one JS → WASM call per op (per entry, plus one per list for the final rmap_get_next); the twin's ops are JS calls V8 may inline`,
  `GET with nothing dirty (the fixed cost: summary scan, a 32 KiB bitmap handed out, no flush): shadow ${fmt(p50("get0-shadow"), 1)} µs, TDP ${fmt(p50("get0-tdp"), 1)} µs; at 1 % the shadow GET is ${fmt(p50("get1-shadow") - p50("get0-shadow"), 1)} µs above it (${fmt(((p50("get1-shadow") - p50("get0-shadow")) * 1000) / n1, 2)} ns per dirty page), the TDP GET ${fmt(p50("get1-tdp") - p50("get0-tdp"), 1)} µs`,
  `shadow VM: ${shadowPages} shadow pages; every gfn's rmap holds exactly one SPTE (a direct 4K map, no aliases): a bare pointer, no descriptors, so GET's walk per dirty page is one head load and one SPTE`,
];

printGroups(rows, header, cells);
console.log("\nWASM vs its plain-JavaScript twin (same memory, same run; p50 ns per entry)");
console.log(textTable(twinHeader, twinCells));
console.log("\nGET: shadow MMU (rmap) vs TDP MMU vs the kernel's shadow MMU (p50)");
console.log(textTable(getHeader, getCells));
console.log("\nsame-run figures");
for (const s of summary) console.log(`  ${s}`);
console.log("\ntargets");
for (const s of targetLines(targets)) console.log(s);
for (const s of targetLines(comparisons)) console.log(s);
const elapsed = seconds();
printRunEnd(targets, env, elapsed);

const date = new Date().toISOString();
const md = [
  ...resultsPreamble(
    "rmap: the shadow MMU's pte_list and GET through the rmap, WASM core vs plain-JavaScript twin",
    "node bench/rmap.js",
    env,
    "Lower is better; kernel = real KVM's shadow MMU on this kind of machine (`../shared/anchors/real-kvm.md`).",
  ),
  "",
  "## Targets",
  "",
  ...targetsMd([...targets, ...comparisons]),
  "",
  "## GET: shadow MMU (rmap) vs TDP MMU vs the kernel",
  "",
  mdTable(getHeader, getCells),
  "",
  "## WASM vs its plain-JavaScript twin (p50 ns per entry)",
  "",
  mdTable(twinHeader, twinCells),
  "",
  ...groupsMd(rows, header, cells),
  "## Same-run figures",
  "",
  ...summary.map((s) => `- ${s}`),
  "",
  "## Method",
  "",
  `- One tinybench harness (bench/common.js runGroup): each group runs as ${ROUNDS} interleaved tinybench rounds with` +
    " explicit warm-up; p50/p99/min are over the merged samples. Setup and checks run in beforeEach/afterEach, outside" +
    " the timed region.",
  "- pte_list: 4200 entries per sample; the SPTE addresses are 8-byte words of one region; descriptor pools have the" +
    " VM's layout (32-byte header, 128-byte descriptors at pool + 32) and exactly the descriptors the lists need. add" +
    " starts from empty lists, remove from the full lists (a seeded random order over all entries); after each sample" +
    " the list memory must equal the snapshot taken at setup. iterate sums the SPTE addresses it is handed.",
  "- write-protect: the SPTE words get W back before each sample; after it, every word must have W clear and nothing" +
    " else changed, and every list must report a flush due. The core's row calls kvm_rmap_write_protect once per list" +
    " (mmu_lock for write around rmap_write_protect, pt_protect = false); the iteration rows call rmap_get_first/next" +
    " per entry.",
  "- GET: before each sample the pages are written once (each write must be a fast fault: the previous GET re-armed" +
    " it); the bitmap is checked bit by bit after. TDP VM: the same slot and writes.",
  `- Twin = core: ${verified.join("; ")}.`,
  "",
];
for (const p of writeResults(
  cli.save,
  "rmap",
  { date, environment: env, targets, comparisons, gets, twinPairs, rows, verified, totalSeconds: elapsed },
  md,
)) {
  log(`wrote ${p}`);
}
for (const x of [S, D]) await x.vm.close();
await LV.close();
