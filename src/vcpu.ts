// Vcpu: a vCPU file descriptor. In this release a vCPU runs on the calling thread:
// writeGuest/readGuest perform one guest access through the MMU (fault.ts in the core).
import type { CoreExports } from "./core.js";
import { KvmError } from "./errors.js";
import * as L from "./layout.js";
import type { Vm } from "./vm.js";

export interface VcpuStats {
  stores: bigint;
  fastFaults: bigint;
  slowFaults: bigint;
}

export class Vcpu {
  readonly id: number;
  /** Address of this vCPU's block in the VM's shared memory. */
  readonly addr: number;
  private readonly vm: Vm;
  private readonly core: CoreExports;

  constructor(vm: Vm, core: CoreExports, addr: number, id: number) {
    this.vm = vm;
    this.core = core;
    this.addr = addr;
    this.id = id;
  }

  /**
   * One 8-byte guest store at gpa (8-aligned). Returns 0 when the store retired, or the
   * exit reason (KVM_EXIT_MMIO for no slot or a read-only slot).
   */
  writeGuest(gpa: number | bigint, value: number | bigint): number {
    return this.core.kvm_vcpu_write(this.vm.addr, this.addr, gpaArg(gpa), BigInt.asUintN(64, BigInt(value)));
  }

  /** One 8-byte guest load at gpa; `exitReason` tells whether it exited (MMIO → 0n). */
  readGuest(gpa: number | bigint): bigint {
    return BigInt.asUintN(64, this.core.kvm_vcpu_read(this.vm.addr, this.addr, gpaArg(gpa)));
  }

  /** `count` stores of value at gpa, gpa+stride, …; stops at the first exit. Returns stores retired. */
  writeStrided(gpa: number | bigint, stride: number | bigint, count: number, value: number | bigint): number {
    const s = BigInt(stride);
    if (s % 8n !== 0n) throw new KvmError("EINVAL", "writeStrided");
    const v = BigInt.asUintN(64, BigInt(value));
    return this.core.kvm_vcpu_write_strided(this.vm.addr, this.addr, gpaArg(gpa), s, count >>> 0, v) >>> 0;
  }

  /** run->exit_reason of the last access (0 when it retired). */
  get exitReason(): number {
    return this.view().getUint32(this.addr + L.VCPU_EXIT_REASON, true);
  }

  /** run->mmio.phys_addr of the last KVM_EXIT_MMIO. */
  get mmioPhysAddr(): bigint {
    return this.view().getBigUint64(this.addr + L.VCPU_MMIO_GPA, true);
  }

  /** Enter (true) or leave (false) SMM: the vCPU then uses address space 1 (or 0). */
  set smm(on: boolean) {
    this.view().setUint32(this.addr + L.VCPU_AS, on ? 1 : 0, true);
  }
  get smm(): boolean {
    return this.view().getUint32(this.addr + L.VCPU_AS, true) === 1;
  }

  get stats(): VcpuStats {
    const v = this.view();
    return {
      stores: v.getBigUint64(this.addr + L.VCPU_STORES, true),
      fastFaults: v.getBigUint64(this.addr + L.VCPU_FAST_FAULTS, true),
      slowFaults: v.getBigUint64(this.addr + L.VCPU_SLOW_FAULTS, true),
    };
  }

  private view(): DataView {
    return new DataView(this.vm.memory.buffer);
  }
}

function gpaArg(gpa: number | bigint): bigint {
  const g = BigInt.asUintN(64, BigInt(gpa));
  if (g & 7n) throw new KvmError("EINVAL", "guest access must be 8-byte aligned");
  return g;
}
