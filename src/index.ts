// dirtlog — a model of Linux KVM's guest-memory dirty tracking over a WebAssembly core.
export * from "./constants.js";
export { KvmError, ERRNO, type ErrnoName } from "./errors.js";
export { createVm, Vm, type VmOptions, type UserMemoryRegion, type VmStats } from "./vm.js";
export { Vcpu, type VcpuStats } from "./vcpu.js";
export { coreModule } from "./core.js";
