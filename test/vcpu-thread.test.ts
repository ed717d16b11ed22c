// Starting and stopping vCPU threads: startLoop resolves once the vCPU runs; stopping goes
// through a request the vCPU honours (bounded); every sleep is interruptible; a worker
// that traps, fails to load or throws rejects the pending promises with a message naming
// the vCPU and the call, and leaves the vCPU outside guest mode; an idle worker does not
// keep Node alive. Imports the built package (workers are dist/vcpu-worker.js).
import { spawnSync } from "node:child_process";
import { describe, expect, it } from "vitest";
import { KVM_EXIT_INTR, KVM_EXIT_IO, KVM_MEM_LOG_DIRTY_PAGES, KvmError, type Vm, createVm } from "../dist/index.js";
import { OUTSIDE_GUEST_MODE, VCPU_MODE, VCPU_MUTEX, VCPU_WL_ZIPF } from "../dist/layout.js";

const PAGE = 4096;
const sleep = (ms: number) => new Promise((r) => setTimeout(r, ms));

/** `p`, or a rejection after `ms` saying what hung (so a hang fails the test, not the run). */
function within<T>(p: Promise<T>, ms: number, what: string): Promise<T> {
  let timer: ReturnType<typeof setTimeout> | undefined;
  const hang = new Promise<never>((_, reject) => {
    timer = setTimeout(() => reject(new Error(`${what} did not settle within ${ms} ms`)), ms);
  });
  return Promise.race([p, hang]).finally(() => clearTimeout(timer));
}

function word(vm: Vm, addr: number): number {
  return new DataView(vm.memory.buffer).getUint32(addr, true);
}

async function vmWithSlot(options = {}): Promise<Vm> {
  const vm = await createVm({ maxMemoryBytes: 128 << 20, mmuPoolBytes: 2 << 20, ...options });
  vm.setUserMemoryRegion({ slot: 0, flags: KVM_MEM_LOG_DIRTY_PAGES, guestPhysAddr: 0, memorySize: 1024 * PAGE, backed: true });
  return vm;
}

describe("starting a loop", () => {
  it("await startLoop() resolves once the worker runs the vCPU: it holds vcpu->mutex and stores retire", async () => {
    const vm = await vmWithSlot();
    try {
      const v = vm.createVcpu(0);
      v.setWorkload({ pattern: "uniform", gpa: 0, pages: 1024, batch: 256 });
      await v.startLoop();
      expect(word(vm, v.addr + VCPU_MUTEX)).not.toBe(0);
      const end = Date.now() + 5000;
      while (v.workloadStores === 0n && Date.now() < end) await sleep(1);
      expect(v.workloadStores).toBeGreaterThan(0n);
      expect(v.loopEnd).toBeInstanceOf(Promise);
    } finally {
      await vm.close();
    }
  });
});

describe("stopping", () => {
  it("close() during a single run() stops it through KVM_REQ_EXIT: run settles, the vCPU is outside guest mode", async () => {
    const vm = await vmWithSlot();
    const v = vm.createVcpu(0);
    v.setWorkload({ pattern: "uniform", gpa: 0, pages: 1024, batch: 0xffff_ffff }); // one endless KVM_RUN
    await v.spawn();
    const run = v.run();
    const end = Date.now() + 5000;
    while (word(vm, v.addr + VCPU_MODE) === OUTSIDE_GUEST_MODE && Date.now() < end) await sleep(1);
    await within(vm.close(), 5000, "close()");
    expect(await within(run, 1000, "run()")).toBe(KVM_EXIT_INTR);
    expect(word(vm, v.addr + VCPU_MODE)).toBe(OUTSIDE_GUEST_MODE);
    expect(word(vm, v.addr + VCPU_MUTEX)).toBe(0);
  });

  it("terminate() during run() leaves a VM whose next TLB flush does not wait for the vCPU, and consumes the stop", async () => {
    const vm = await vmWithSlot();
    try {
      const v = vm.createVcpu(0);
      v.setWorkload({ pattern: "uniform", gpa: 0, pages: 1024, batch: 0xffff_ffff });
      await v.spawn();
      const run = v.run();
      await sleep(30);
      await within(v.terminate(), 5000, "terminate()");
      expect(await run).toBe(KVM_EXIT_INTR);
      // a GET flushes remote TLBs: it must not wait for the stopped vCPU
      expect(vm.getDirtyLog(0).some((b) => b !== 0)).toBe(true);
      // the vCPU runs on this thread now, and the stop request was for the thread only
      v.setWorkload({ pattern: "uniform", gpa: 0, pages: 1024, batch: 16 });
      expect(v.runSync()).toBe(KVM_EXIT_IO);
    } finally {
      await vm.close();
    }
  });

  it("a loop pacing itself at 1 store/s pauses and closes at once (its sleep is interrupted)", async () => {
    const vm = await vmWithSlot();
    const v = vm.createVcpu(0);
    v.setWorkload({ pattern: "uniform", gpa: 0, pages: 1024, batch: 4096 });
    await v.startLoop({ rate: 1 }); // after its first batch it sleeps 4096 s
    await sleep(20);
    await within(v.pause(), 2000, "pause()");
    v.resume();
    await sleep(20);
    await within(vm.close(), 2000, "close()");
  });
});

describe("dispose() while a loop is starting", () => {
  it("rejects the pending startLoop and loopEnd with EBADF instead of leaving them pending", async () => {
    const vm = await vmWithSlot();
    const v = vm.createVcpu(0);
    v.setWorkload({ pattern: "uniform", gpa: 0, pages: 64 });
    const started = v.startLoop(); // the worker is still being spawned
    const end = v.loopEnd;
    vm.dispose();
    await expect(within(started, 10_000, "startLoop")).rejects.toMatchObject({ errno: "EBADF" });
    await expect(within(end as Promise<number>, 10_000, "loopEnd")).rejects.toMatchObject({ errno: "EBADF" });
  });

  it("rejects a loop that already runs (loopEnd settles)", async () => {
    const vm = await vmWithSlot();
    const v = vm.createVcpu(0);
    v.setWorkload({ pattern: "uniform", gpa: 0, pages: 64 });
    await v.startLoop();
    const end = v.loopEnd as Promise<number>;
    vm.dispose();
    // it either ended at the stop request (KVM_EXIT_INTR) or was cut off (EBADF): it settles
    const r = await within(
      end.then(
        (x) => x,
        (e) => e.errno,
      ),
      10_000,
      "loopEnd",
    );
    expect([KVM_EXIT_INTR, "EBADF"]).toContain(r);
  });
});

describe("worker failures reject, never hang or crash", () => {
  it("a trap in KVM_RUN rejects run() with EIO naming the vCPU and the call; the VM is dead (EIO), close() works", async () => {
    const vm = await vmWithSlot();
    const v = vm.createVcpu(0);
    v.setWorkload({ pattern: "zipf", gpa: 0, pages: 64 });
    await v.spawn();
    // scribble: the workload's Zipf table now points far beyond the memory
    new DataView(vm.memory.buffer).setUint32(v.addr + VCPU_WL_ZIPF, 0xffff_f000, true);
    const err = await v.run().then(
      () => undefined,
      (e) => e,
    );
    expect(err).toBeInstanceOf(KvmError);
    expect(err.errno).toBe("EIO");
    expect(err.message).toMatch(/vCPU 0: KVM_RUN/);
    expect(err.message).toMatch(/memory access out of bounds/);
    expect(word(vm, v.addr + VCPU_MODE)).toBe(OUTSIDE_GUEST_MODE);
    expect(() => vm.getDirtyLog(0)).toThrow(/EIO: the VM is dead/);
    await within(vm.close(), 5000, "close()");
  });

  it("a trap in the loop rejects loopEnd with EIO", async () => {
    const vm = await vmWithSlot();
    const v = vm.createVcpu(0);
    v.setWorkload({ pattern: "zipf", gpa: 0, pages: 64 });
    new DataView(vm.memory.buffer).setUint32(v.addr + VCPU_WL_ZIPF, 0xffff_f000, true);
    const started = v.startLoop();
    const end = v.loopEnd as Promise<number>;
    await started.catch(() => {}); // it may trap before or after it reports running
    await expect(within(end, 5000, "loopEnd")).rejects.toMatchObject({ errno: "EIO" });
    await within(vm.close(), 5000, "close()");
  });

  it("a worker script that does not exist rejects startLoop (and loopEnd) with EIO; close() works", async () => {
    const vm = await vmWithSlot({ workerUrl: new URL("./fixtures/no-such-worker.js", import.meta.url) });
    const v = vm.createVcpu(0);
    v.setWorkload({ pattern: "uniform", gpa: 0, pages: 64 });
    const started = v.startLoop();
    const end = v.loopEnd;
    await expect(within(started, 10_000, "startLoop")).rejects.toMatchObject({ errno: "EIO" });
    await expect(started).rejects.toThrow(/vCPU 0/);
    await expect(end).rejects.toMatchObject({ errno: "EIO" });
    // the vCPU is still usable on this thread
    expect(v.writeGuest(0, 1)).toBe(0);
    await within(vm.close(), 5000, "close()");
  });

  it("a worker script that throws while loading rejects with its message", async () => {
    const vm = await vmWithSlot({ workerUrl: new URL("./fixtures/throwing-worker.js", import.meta.url) });
    const v = vm.createVcpu(0);
    await expect(within(v.spawn(), 10_000, "spawn")).rejects.toThrow(/vCPU 0.*boom while loading the worker/);
    await within(vm.close(), 5000, "close()");
  });
});

describe("process lifetime", () => {
  it("a program that forgets vm.close() still exits: idle and paused vCPU workers do not hold Node open", () => {
    const script = new URL("./fixtures/forgotten-close.mjs", import.meta.url).pathname;
    const pkg = new URL("../dist/index.js", import.meta.url).href;
    const r = spawnSync(process.execPath, [script, pkg], { timeout: 30_000, encoding: "utf8" });
    expect(r.error).toBeUndefined();
    expect(r.signal).toBeNull();
    expect(r.stdout).toContain("done, not closed");
    expect(r.status).toBe(0);
  });
});
