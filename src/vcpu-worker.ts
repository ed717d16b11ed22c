// The vCPU thread: instantiates the posted core module over the VM's shared memory and runs
// KVM_RUN for one vCPU — once per "run" message, or in a loop like a VMM's vCPU thread
// (QEMU's kvm_cpu_exec, the selftests' vcpu_worker) under the control word VCPU_CTL.
//
// The loop owns the vCPU (holds vcpu->mutex with this thread's tag) from the moment it
// reports "loop-started" until it parks for a pause or ends; any other caller gets EBUSY
// meanwhile. Every wait here sleeps on a word that pause/resume/quit bump and notify, so
// no sleep outlasts a stop request. Anything thrown (a trap in the core) is caught, the
// vCPU is left outside guest mode with its mutex released, and the error is reported.
import { KVM_EXIT_DIRTY_RING_FULL, KVM_EXIT_INTR, KVM_EXIT_IO } from "./constants.js";
import { type CoreExports, instantiateCore } from "./core.js";
import { parentEndpoint } from "#platform";
import * as L from "./layout.js";
import { NO_RUNSTATE_AREA, RUNSTATE_runnable, RUNSTATE_running, kvmclockNs } from "./xen.js";
import { CTL_PAUSE, CTL_PAUSED, CTL_QUIT, CTL_RUN, type VcpuWorkerReply, type VcpuWorkerRequest } from "./vcpu-thread.js";

let core: CoreExports | undefined;
let vm = 0;
let vcpu = 0;
let tag = 0;
let memory: WebAssembly.Memory;

// No top-level await: some bundlers and loaders still mishandle it in workers.
void parentEndpoint().then((port) =>
  port.onMessage(async (data) => {
    const msg = data as VcpuWorkerRequest;
    const reply = (m: VcpuWorkerReply) => port.postMessage(m);
    const call = msg.op === "init" ? "vCPU thread start" : msg.op === "run" ? "KVM_RUN" : "KVM_RUN loop";
    try {
      switch (msg.op) {
        case "init":
          memory = msg.memory;
          vm = msg.vm;
          vcpu = msg.vcpu;
          tag = msg.tag;
          core = await instantiateCore(msg.module, msg.memory);
          reply({ op: "ready" });
          break;
        case "run":
          reply({ op: "exit", reason: (core as CoreExports).kvm_run(vm, vcpu, tag) });
          break;
        case "loop":
          reply({ op: "loop-end", reason: loop(msg.rate, () => reply({ op: "loop-started" })) });
          break;
      }
    } catch (e) {
      leave();
      reply({ op: "error", call, message: e instanceof Error ? `${e.name}: ${e.message}` : String(e) });
    }
  }),
);

/** After a failure: the vCPU outside guest mode (no flusher waits for it), its mutex free. */
function leave(): void {
  if (!core || !vcpu) return;
  const words = new Int32Array(memory.buffer);
  core.kvm_vcpu_unlock(vcpu, tag);
  Atomics.store(words, (vcpu + L.VCPU_MODE) >> 2, L.OUTSIDE_GUEST_MODE);
  Atomics.notify(words, (vcpu + L.VCPU_REQUESTS) >> 2);
}

/**
 * Run KVM_RUN until told to quit or until an exit the loop cannot handle. IO (a batch) and
 * INTR (a pause request) re-enter; RING_FULL sleeps until a reset wakes it (or 1 ms);
 * PAGE_TRACK_FULL until the owner thread delivered page-track events (or 1 ms);
 * `rate` (stores/s, 0 = unlimited) paces the guest between batches.
 *
 * Two throttles, set by the host in the vCPU block (src/dirtylimit.ts), their sleeps
 * counted in VCPU_THROTTLE_NS (not in the ring-full stall):
 *  - dirty-limit (QEMU's dirtylimit_vcpu_execute): at the first ring-full exit of a stall,
 *    sleep VCPU_THROTTLE_US µs;
 *  - auto-converge (QEMU's cpu_throttle_thread): at VCPU_THROTTLE_PCT = p %, after each
 *    10 ms timeslice of running, sleep p / (100 − p) of the time run.
 * A throttled guest does not catch up afterwards: the pacing restarts after a throttle
 * sleep (a throttled vCPU loses the time, as a real one does).
 */
function loop(rate: number, started: () => void): number {
  const c = core as CoreExports;
  const ctl = new Int32Array(memory.buffer, vcpu + L.VCPU_CTL, 2); // [state, wake]
  const mutex = new Int32Array(memory.buffer, vcpu + L.VCPU_MUTEX, 1);
  const requests = new Int32Array(memory.buffer, vcpu + L.VCPU_REQUESTS, 1);
  const done = new BigUint64Array(memory.buffer, vcpu + L.VCPU_WL_DONE, 1);
  const stall = new BigUint64Array(memory.buffer, vcpu + L.VCPU_STALL_NS, 1);
  const throttle = new Uint32Array(memory.buffer, vcpu + L.VCPU_THROTTLE_US, 2); // [µs per full, pct]
  const throttled = new BigUint64Array(memory.buffer, vcpu + L.VCPU_THROTTLE_NS, 1);
  const trackHead = new Int32Array(memory.buffer, vm + L.VM_TRACK_HEAD, 1);
  /** Take vcpu->mutex; false if told to quit first. */
  const acquire = (): boolean => {
    while (c.kvm_vcpu_lock(vcpu, tag) !== 0) {
      if (Atomics.load(ctl, 0) === CTL_QUIT) return false;
      // the holder notifies when it sees the waiter bit; the timeout re-checks for quit
      const held = c.kvm_vcpu_mutex_wait_prepare(vcpu);
      if (held !== 0) Atomics.wait(mutex, 0, held | 0, 20);
    }
    return true;
  };
  /** Sleep up to `ms`, or until a pause/quit/resume/reset bumps the wake word. */
  const sleep = (ms: number) => {
    const wake = Atomics.load(ctl, 1);
    if (Atomics.load(ctl, 0) === CTL_RUN) Atomics.wait(ctl, 1, wake, ms);
  };
  // Xen runstate area (assembly/xen.ts): KVM rewrites it at each scheduling change; here
  // the vCPU is "running" in KVM_RUN and "runnable" (scheduled out: atomic context) between
  // runs — but not while it is stalled on a full ring: a vCPU thread waiting for the reaper
  // sleeps voluntarily, which is no preemption (kvm_sched_out sets vcpu->preempted only for
  // a thread still on the run queue), and each update pushes its pages into the ring's
  // reserve, which a stall would otherwise exhaust (a push into a hard-full ring is lost)
  const rsGpa = new BigUint64Array(memory.buffer, vcpu + L.VCPU_XEN_RS_GPA, 1);
  const clockBase = new BigUint64Array(memory.buffer, vm + L.VM_KVMCLOCK_BASE, 1)[0];
  const runstate = (state: number, atomic: number) => {
    if (rsGpa[0] !== NO_RUNSTATE_AREA) c.kvm_xen_update_runstate(vcpu, tag, state, kvmclockNs(clockBase), atomic, 1);
  };
  let stalled = false;
  /** The dirty-limit sleep of the current ring-full stall was taken. */
  let slept = false;
  if (!acquire()) return KVM_EXIT_INTR;
  started();
  let t0 = performance.now();
  let d0 = Number(done[0]);
  /** Start of the current auto-converge timeslice (time run since the last throttle sleep). */
  let slice0 = t0;
  /**
   * Sleep `ms` for a throttle, counted; the pacing restarts. Resets bump the wake word too:
   * the sleep goes on through them, and ends early only for a pause or quit.
   */
  const throttleSleep = (ms: number) => {
    const t = performance.now();
    const end = t + ms;
    let now = t;
    while (now < end && Atomics.load(ctl, 0) === CTL_RUN) {
      sleep(end - now);
      now = performance.now();
    }
    throttled[0] += BigInt(Math.round((now - t) * 1e6)); // this thread is its only writer
    t0 = now;
    d0 = Number(done[0]);
    slice0 = now;
  };
  while (true) {
    const state = Atomics.load(ctl, 0);
    if (state === CTL_QUIT) break;
    if (state === CTL_PAUSE) {
      // park outside KVM_RUN: the pause request is consumed and the vCPU is free for
      // other callers until resume
      Atomics.and(requests, 0, ~(1 << L.KVM_REQ_EXIT));
      c.kvm_vcpu_unlock(vcpu, tag);
      Atomics.compareExchange(ctl, 0, CTL_PAUSE, CTL_PAUSED);
      Atomics.notify(ctl, 0);
      while (Atomics.load(ctl, 0) === CTL_PAUSED) Atomics.wait(ctl, 0, CTL_PAUSED, 50);
      if (!acquire()) return KVM_EXIT_INTR;
      t0 = performance.now();
      d0 = Number(done[0]);
      slice0 = t0;
      continue;
    }
    if (!stalled) runstate(RUNSTATE_running, 0);
    const reason = c.kvm_run(vm, vcpu, tag);
    stalled = reason === KVM_EXIT_DIRTY_RING_FULL;
    if (!stalled) slept = false;
    if (!stalled) runstate(RUNSTATE_runnable, 1);
    if (reason === KVM_EXIT_IO) {
      const pct = Atomics.load(throttle, 1);
      if (pct > 0) {
        const ran = performance.now() - slice0;
        if (ran >= 10) throttleSleep((ran * Math.min(pct, 99)) / (100 - Math.min(pct, 99)));
      } else slice0 = performance.now();
      if (rate > 0) {
        const ahead = (Number(done[0]) - d0) / rate - (performance.now() - t0) / 1000;
        if (ahead > 0.0002) sleep(ahead * 1000);
      }
      continue;
    }
    if (reason === KVM_EXIT_DIRTY_RING_FULL) {
      const us = slept ? 0 : Atomics.load(throttle, 0);
      if (us > 0) {
        slept = true;
        throttleSleep(us / 1000);
        continue; // re-enter: the ring was likely reset meanwhile; if not, the next exit stalls
      }
      const t = performance.now();
      sleep(1); // a reset bumps the wake word
      stall[0] += BigInt(Math.round((performance.now() - t) * 1e6)); // this thread is its only writer
      continue;
    }
    if (reason === L.KVM_EXIT_PAGE_TRACK_FULL) {
      // the page-track event queue is full: the VM owner's thread drains it and notifies
      // its head; the timeout re-checks for a pause or quit (the store is retried)
      Atomics.wait(trackHead, 0, Atomics.load(trackHead, 0), 1);
      continue;
    }
    if (reason === KVM_EXIT_INTR) continue;
    if (reason < 0) throw new Error(`KVM_RUN returned ${reason} while the loop held vcpu->mutex`);
    c.kvm_vcpu_unlock(vcpu, tag);
    return reason; // SHUTDOWN, MMIO, INTERNAL_ERROR: back to the host
  }
  c.kvm_vcpu_unlock(vcpu, tag);
  return KVM_EXIT_INTR;
}
