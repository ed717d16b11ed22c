// The vCPU thread: instantiates the posted core module over the VM's shared memory and runs
// KVM_RUN for one vCPU — once per "run" message, or in a loop like a VMM's vCPU thread
// (QEMU's kvm_cpu_exec, the selftests' vcpu_worker) under the control word VCPU_CTL.
import { type CoreExports, instantiateCore } from "./core.js";
import { KVM_EXIT_DIRTY_RING_FULL, KVM_EXIT_INTR, KVM_EXIT_IO } from "./constants.js";
import { parentEndpoint } from "./endpoint.js";
import { CTL_PAUSE, CTL_PAUSED, CTL_QUIT, type VcpuWorkerReply, type VcpuWorkerRequest } from "./vcpu-thread.js";
import * as L from "./layout.js";

let core: CoreExports;
let vm = 0;
let vcpu = 0;
let memory: WebAssembly.Memory;


// No top-level await: some bundlers and loaders still mishandle it in workers.
void parentEndpoint().then((port) => port.onMessage(async (data) => {
  const msg = data as VcpuWorkerRequest;
  const reply = (m: VcpuWorkerReply) => port.postMessage(m);
  switch (msg.op) {
    case "init":
      memory = msg.memory;
      core = await instantiateCore(msg.module, msg.memory);
      vm = msg.vm;
      vcpu = msg.vcpu;
      reply({ op: "ready" });
      break;
    case "run":
      reply({ op: "exit", reason: core.kvm_run(vm, vcpu) });
      break;
    case "loop":
      reply({ op: "loop-end", reason: loop(msg.rate) });
      break;
  }
}));

/**
 * Run KVM_RUN until told to quit or until an exit the loop cannot handle. IO (a batch) and
 * INTR (a pause request) re-enter; RING_FULL sleeps until a reset wakes it (or 1 ms);
 * `rate` (stores/s, 0 = unlimited) paces the guest between batches.
 */
function loop(rate: number): number {
  const ctl = new Int32Array(memory.buffer, vcpu + L.VCPU_CTL, 2); // [state, wake]
  const done = new BigUint64Array(memory.buffer, vcpu + L.VCPU_WL_DONE, 1);
  const sleeper = new Int32Array(new SharedArrayBuffer(4));
  let t0 = performance.now();
  let d0 = Number(done[0]);
  while (true) {
    const state = Atomics.load(ctl, 0);
    if (state === CTL_QUIT) return KVM_EXIT_INTR;
    if (state === CTL_PAUSE) {
      Atomics.store(ctl, 0, CTL_PAUSED);
      Atomics.notify(ctl, 0);
      while (Atomics.load(ctl, 0) === CTL_PAUSED) Atomics.wait(ctl, 0, CTL_PAUSED, 50);
      t0 = performance.now();
      d0 = Number(done[0]);
      continue;
    }
    const wake = Atomics.load(ctl, 1);
    const reason = core.kvm_run(vm, vcpu);
    if (reason === KVM_EXIT_IO) {
      if (rate > 0) {
        const ahead = (Number(done[0]) - d0) / rate - (performance.now() - t0) / 1000;
        if (ahead > 0.0002) Atomics.wait(sleeper, 0, 0, ahead * 1000);
      }
      continue;
    }
    if (reason === KVM_EXIT_DIRTY_RING_FULL) {
      Atomics.wait(ctl, 1, wake, 1); // a reset bumps the wake word
      continue;
    }
    if (reason === KVM_EXIT_INTR) continue;
    return reason; // SHUTDOWN, MMIO, INTERNAL_ERROR: back to the host
  }
}
