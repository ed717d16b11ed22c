// A vCPU's own thread (a worker), driven from the VMM like a vCPU thread: single KVM_RUNs
// on request, or a run loop controlled through the VCPU_CTL word in shared memory:
//   CTL_RUN ──pause()──► CTL_PAUSE ──worker parks──► CTL_PAUSED ──resume()──► CTL_RUN
//   any ──terminate()──► CTL_QUIT (the loop returns)
// pause() and terminate() also raise KVM_REQ_EXIT (a KVM_RUN in progress returns within
// one guest store) and bump the wake word (a sleeping loop wakes), so both complete
// promptly. terminate() waits a bounded time for the worker to honour the request; a
// worker that does not is terminated and its vCPU left outside guest mode with its mutex
// released (so no remote TLB flush waits for it forever).
//
// Every promise settles: a worker that fails to load, throws (a trap in the core), or
// exits rejects the pending run/start/loop-end with a KvmError(EIO) naming the vCPU and
// the call. A worker keeps a Node process alive only while it runs guest code.
import type { CoreExports } from "./core.js";
import { spawnVcpuWorker } from "#platform";
import type { Endpoint } from "./endpoint.js";
import { KvmError } from "./errors.js";
import * as L from "./layout.js";

export const CTL_RUN = 0;
export const CTL_PAUSE = 1;
export const CTL_PAUSED = 2;
export const CTL_QUIT = 3;

/** How long terminate() waits for a vCPU to honour a stop request before killing its worker. */
export const STOP_TIMEOUT_MS = 2000;

export type VcpuWorkerRequest =
  | { op: "init"; module: WebAssembly.Module; memory: WebAssembly.Memory; vm: number; vcpu: number; tag: number }
  | { op: "run" }
  | { op: "loop"; rate: number };

export type VcpuWorkerReply =
  | { op: "ready" }
  | { op: "exit"; reason: number }
  | { op: "loop-started" }
  | { op: "loop-end"; reason: number }
  | { op: "error"; call: string; message: string };

/** vcpu->mutex tags of vCPU workers: unique per worker (the VMM thread's is HOST_TAG = 1). */
let nextTag = 2;

interface Deferred<T> {
  promise: Promise<T>;
  resolve(value: T): void;
  reject(error: unknown): void;
  call: string;
}

function deferred<T>(call: string): Deferred<T> {
  let resolve!: (v: T) => void;
  let reject!: (e: unknown) => void;
  const promise = new Promise<T>((res, rej) => {
    resolve = res;
    reject = rej;
  });
  promise.catch(() => {}); // rejections are for whoever awaits; never an unhandled one
  return { promise, resolve, reject, call };
}

export interface VcpuThreadOptions {
  module: WebAssembly.Module;
  memory: WebAssembly.Memory;
  core: CoreExports;
  vm: number;
  vcpu: number;
  id: number;
  workerUrl?: string | URL;
  /** The worker trapped or died inside KVM_RUN: the core's state may be inconsistent. */
  onBug(reason: string): void;
}

export class VcpuThread {
  readonly tag: number;
  private readonly endpoint: Endpoint;
  private readonly o: VcpuThreadOptions;
  private readonly ctl: Int32Array;
  private readonly requests: Int32Array;
  /** The outstanding init or run request (one at a time). */
  private request: Deferred<number> | undefined;
  private loopStarted: Deferred<void> | undefined;
  private loopEnded: Deferred<number> | undefined;
  private failure: KvmError | undefined;
  private stopping = false;

  private constructor(endpoint: Endpoint, o: VcpuThreadOptions) {
    this.tag = nextTag++;
    this.endpoint = endpoint;
    this.o = o;
    this.ctl = new Int32Array(o.memory.buffer, o.vcpu + L.VCPU_CTL, 2);
    this.requests = new Int32Array(o.memory.buffer, o.vcpu + L.VCPU_REQUESTS, 1);
    endpoint.onMessage((data) => this.onReply(data as VcpuWorkerReply));
    endpoint.onFailure((why) => this.fail(`vCPU ${o.id} thread`, why, this.inGuest()));
  }

  static async spawn(o: VcpuThreadOptions): Promise<VcpuThread> {
    const endpoint = await spawnVcpuWorker(o.workerUrl);
    const thread = new VcpuThread(endpoint, o);
    thread.request = deferred("vCPU thread start");
    endpoint.postMessage({
      op: "init",
      module: o.module,
      memory: o.memory,
      vm: o.vm,
      vcpu: o.vcpu,
      tag: thread.tag,
    } satisfies VcpuWorkerRequest);
    try {
      await thread.request.promise;
    } catch (e) {
      await endpoint.terminate();
      throw e;
    }
    endpoint.unref(); // idle until it runs guest code
    return thread;
  }

  private onReply(m: VcpuWorkerReply): void {
    switch (m.op) {
      case "ready":
      case "exit": {
        const r = this.request;
        this.request = undefined;
        this.idle();
        r?.resolve(m.op === "exit" ? m.reason : 0);
        break;
      }
      case "loop-started":
        this.loopStarted?.resolve();
        this.loopStarted = undefined;
        break;
      case "loop-end": {
        const end = this.loopEnded;
        this.loopEnded = undefined;
        this.loopStarted?.resolve(); // quit before it ever ran
        this.loopStarted = undefined;
        this.idle();
        end?.resolve(m.reason);
        break;
      }
      case "error":
        this.fail(`vCPU ${this.o.id}: ${m.call}`, `the worker threw: ${m.message}`, m.call !== "vCPU thread start");
        break;
    }
  }

  /** Is a KVM_RUN (single or loop) in flight on the worker? */
  private inGuest(): boolean {
    return (this.request !== undefined && this.request.call === "KVM_RUN") || this.loopEnded !== undefined;
  }

  /** Reject everything pending; `bug`: the core may have been left mid-operation. */
  private fail(who: string, why: string, bug: boolean): void {
    if (this.failure) return;
    const err = new KvmError("EIO", who, why);
    this.failure = err;
    // the worker is gone or unusable: the vCPU must not look busy or in guest mode
    this.o.core.kvm_vcpu_unlock(this.o.vcpu, this.tag);
    const words = new Int32Array(this.o.memory.buffer);
    Atomics.store(words, (this.o.vcpu + L.VCPU_MODE) >> 2, L.OUTSIDE_GUEST_MODE);
    if (bug) this.o.onBug(err.message);
    for (const d of [this.request, this.loopStarted, this.loopEnded]) d?.reject(err);
    this.request = this.loopStarted = this.loopEnded = undefined;
    this.idle();
    if (!this.stopping) void this.endpoint.terminate();
  }

  private busy(): void {
    this.endpoint.ref();
  }
  private idle(): void {
    if (!this.request && !this.loopEnded) this.endpoint.unref();
  }

  /** The thread can take requests (it loaded and has not failed). */
  get alive(): boolean {
    return !this.failure;
  }

  /** A run loop exists (started or starting, not ended). */
  get looping(): boolean {
    return this.loopEnded !== undefined;
  }

  private checkUsable(call: string): void {
    if (this.failure?.errno === "EBADF") throw new KvmError("EBADF", call, this.failure.reason);
    if (this.failure) throw new KvmError("EIO", call, `vCPU ${this.o.id}'s thread failed: ${this.failure.reason}`);
    if (this.request || this.loopEnded) {
      throw new KvmError("EBUSY", call, `vCPU ${this.o.id}'s thread is running ${this.loopEnded ? "its loop" : "KVM_RUN"}`);
    }
  }

  /** One KVM_RUN on the vCPU's thread. */
  run(): Promise<number> {
    try {
      this.checkUsable("KVM_RUN");
    } catch (e) {
      return Promise.reject(e);
    }
    this.request = deferred("KVM_RUN");
    this.busy();
    this.endpoint.postMessage({ op: "run" } satisfies VcpuWorkerRequest);
    return this.request.promise;
  }

  /** Start the run loop: `started` once the worker holds the vCPU, `end` with its last exit. */
  startLoop(rate: number): { started: Promise<void>; end: Promise<number> } {
    this.checkUsable("startLoop");
    Atomics.store(this.ctl, 0, CTL_RUN);
    this.loopStarted = deferred("startLoop");
    this.loopEnded = deferred("KVM_RUN loop");
    this.busy();
    this.endpoint.postMessage({ op: "loop", rate } satisfies VcpuWorkerRequest);
    return { started: this.loopStarted.promise, end: this.loopEnded.promise };
  }

  /** Make the worker stop waiting and a KVM_RUN in progress return (KVM_EXIT_INTR). */
  private interrupt(state: number): void {
    Atomics.store(this.ctl, 0, state);
    Atomics.or(this.requests, 0, 1 << L.KVM_REQ_EXIT);
    Atomics.notify(this.ctl, 0);
    this.wake();
  }

  /** Ask the loop to pause and wait until the vCPU is parked outside KVM_RUN. */
  async pause(): Promise<void> {
    const end = this.loopEnded;
    if (!end) return;
    if (Atomics.compareExchange(this.ctl, 0, CTL_RUN, CTL_PAUSE) === CTL_RUN) this.interrupt(CTL_PAUSE);
    const ended = end.promise.then(
      () => true,
      () => true,
    );
    while (Atomics.load(this.ctl, 0) === CTL_PAUSE && this.loopEnded === end) {
      const w = Atomics.waitAsync(this.ctl, 0, CTL_PAUSE, 100);
      if (w.async && (await Promise.race([w.value.then(() => false), ended]))) break;
    }
    this.endpoint.unref(); // parked: the worker no longer runs guest code
  }

  /** Let a paused loop run again. */
  resume(): void {
    if (!this.loopEnded) return;
    if (Atomics.compareExchange(this.ctl, 0, CTL_PAUSED, CTL_RUN) !== CTL_PAUSED) {
      Atomics.compareExchange(this.ctl, 0, CTL_PAUSE, CTL_RUN);
    }
    this.busy();
    Atomics.notify(this.ctl, 0);
    this.wake();
  }

  /** Wake the loop if it sleeps (on a full ring, or pacing its rate). */
  wake(): void {
    Atomics.add(this.ctl, 1, 1);
    Atomics.notify(this.ctl, 1);
  }

  /**
   * End the loop or run in progress (a stop request the vCPU honours within a store), then
   * the worker. A worker that has not stopped after `timeoutMs` is terminated anyway.
   */
  async terminate(timeoutMs = STOP_TIMEOUT_MS): Promise<void> {
    this.stopping = true;
    const pending = [this.request, this.loopEnded].filter((d) => d !== undefined).map((d) => d.promise);
    let forced = false;
    if (pending.length > 0 && !this.failure) {
      this.interrupt(CTL_QUIT);
      let timer: ReturnType<typeof setTimeout> | undefined;
      const timeout = new Promise<boolean>((res) => {
        timer = setTimeout(() => res(true), timeoutMs);
      });
      forced = await Promise.race([Promise.allSettled(pending).then(() => false), timeout]);
      clearTimeout(timer);
    }
    if (forced) this.fail(`vCPU ${this.o.id}`, `did not stop within ${timeoutMs} ms; its thread was terminated`, true);
    else if (!this.failure) this.failure = new KvmError("EIO", `vCPU ${this.o.id}`, "its thread was terminated");
    // the stop request was for this thread's guest code only
    Atomics.and(this.requests, 0, ~(1 << L.KVM_REQ_EXIT));
    await this.endpoint.terminate();
  }

  /** Tell the worker to end without waiting (dispose): quit, then terminate. */
  abandon(): Promise<void> {
    this.stopping = true;
    if (!this.failure) {
      this.interrupt(CTL_QUIT);
      this.failure = new KvmError("EBADF", `vCPU ${this.o.id}`, "the VM was disposed");
    }
    const failure = this.failure;
    // whatever the worker did not answer before it ended is rejected: every promise settles
    return this.endpoint.terminate().finally(() => {
      for (const d of [this.request, this.loopStarted, this.loopEnded]) d?.reject(failure);
      this.request = this.loopStarted = this.loopEnded = undefined;
    });
  }
}
