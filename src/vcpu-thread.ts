// A vCPU's own thread (a worker), driven from the VMM like a vCPU thread: single KVM_RUNs
// on request, or a run loop controlled through the VCPU_CTL word in shared memory:
//   CTL_RUN ──pause()──► CTL_PAUSE ──worker──► CTL_PAUSED ──resume()──► CTL_RUN
//   any ──quit──► CTL_QUIT (the loop returns)
// pause() also raises KVM_REQ_EXIT so a KVM_RUN in progress returns promptly (KVM_EXIT_INTR).
import type { CoreExports } from "./core.js";
import { type Endpoint, spawnVcpuWorker } from "./endpoint.js";
import * as L from "./layout.js";

export const CTL_RUN = 0;
export const CTL_PAUSE = 1;
export const CTL_PAUSED = 2;
export const CTL_QUIT = 3;

export type VcpuWorkerRequest =
  | { op: "init"; module: WebAssembly.Module; memory: WebAssembly.Memory; vm: number; vcpu: number }
  | { op: "run" }
  | { op: "loop"; rate: number };

export type VcpuWorkerReply = { op: "ready" } | { op: "exit"; reason: number } | { op: "loop-end"; reason: number };

export class VcpuThread {
  private readonly endpoint: Endpoint;
  private readonly ctl: Int32Array;
  private readonly requests: Int32Array;
  private waiters: Array<(m: VcpuWorkerReply) => void> = [];
  private loopEnd: Promise<number> | undefined;

  private constructor(endpoint: Endpoint, memory: WebAssembly.Memory, vcpu: number) {
    this.endpoint = endpoint;
    this.ctl = new Int32Array(memory.buffer, vcpu + L.VCPU_CTL, 2);
    this.requests = new Int32Array(memory.buffer, vcpu + L.VCPU_REQUESTS, 1);
    endpoint.onMessage((data) => {
      const w = this.waiters.shift();
      if (w) w(data as VcpuWorkerReply);
    });
  }

  static async spawn(module: WebAssembly.Module, memory: WebAssembly.Memory, vm: number, vcpu: number): Promise<VcpuThread> {
    const endpoint = await spawnVcpuWorker();
    const thread = new VcpuThread(endpoint, memory, vcpu);
    const ready = thread.next();
    endpoint.postMessage({ op: "init", module, memory, vm, vcpu } satisfies VcpuWorkerRequest);
    await ready;
    return thread;
  }

  private next(): Promise<VcpuWorkerReply> {
    return new Promise((resolve) => this.waiters.push(resolve));
  }

  /** One KVM_RUN on the vCPU's thread. */
  async run(): Promise<number> {
    if (this.loopEnd) throw new Error("the vCPU thread is running its loop");
    const reply = this.next();
    this.endpoint.postMessage({ op: "run" } satisfies VcpuWorkerRequest);
    const m = await reply;
    return m.op === "exit" ? m.reason : -1;
  }

  /** Start the run loop; resolves with the exit that ended it. */
  startLoop(rate = 0): Promise<number> {
    if (this.loopEnd) return this.loopEnd;
    Atomics.store(this.ctl, 0, CTL_RUN);
    const reply = this.next();
    this.endpoint.postMessage({ op: "loop", rate } satisfies VcpuWorkerRequest);
    this.loopEnd = reply.then((m) => {
      this.loopEnd = undefined;
      return m.op === "loop-end" ? m.reason : -1;
    });
    return this.loopEnd;
  }

  get looping(): boolean {
    return this.loopEnd !== undefined;
  }

  /** Ask the loop to pause and wait until the vCPU is parked outside KVM_RUN. */
  async pause(): Promise<void> {
    if (!this.loopEnd) return;
    Atomics.store(this.ctl, 0, CTL_PAUSE);
    Atomics.or(this.requests, 0, 1 << L.KVM_REQ_EXIT);
    const ended = this.loopEnd.then(() => true);
    while (Atomics.load(this.ctl, 0) === CTL_PAUSE) {
      const w = Atomics.waitAsync(this.ctl, 0, CTL_PAUSE, 100);
      if (w.async) {
        if (await Promise.race([w.value.then(() => false), ended])) break;
      }
    }
  }

  /** Let a paused loop run again. */
  resume(): void {
    Atomics.store(this.ctl, 0, CTL_RUN);
    Atomics.notify(this.ctl, 0);
  }

  /** Wake the loop if it sleeps on a full ring (called after a reset). */
  wake(): void {
    Atomics.add(this.ctl, 1, 1);
    Atomics.notify(this.ctl, 1);
  }

  /** End the loop (if any) and the worker. */
  async terminate(): Promise<void> {
    if (this.loopEnd) {
      Atomics.store(this.ctl, 0, CTL_QUIT);
      Atomics.or(this.requests, 0, 1 << L.KVM_REQ_EXIT);
      Atomics.notify(this.ctl, 0);
      await this.loopEnd;
    }
    await this.endpoint.terminate();
  }
}

export type { CoreExports };
