// The mmu unit's rule for updating SPTEs under the write side of mmu_lock (kernel
// spte_has_volatile_bits, spte.c; spec §5.2, §5.6, §5.10): only an SPTE that a lockless
// actor may change needs an atomic read-modify-write; every other is stored plainly.
import { describe, expect, it } from "vitest";
import { vmFactory } from "./helpers.js";

const { newVm } = vmFactory();
const bit = (n: number) => 1n << BigInt(n);
const R = bit(0);
const W = bit(1);
const A = bit(8);
const D = bit(9);
const PRESENT = bit(11);
const H = bit(57);
const M = bit(58);
const leaf = R | PRESENT;

describe("spte_has_volatile_bits", () => {
  it("is true exactly where the fast path may set W or the CPU may set A or D", async () => {
    const vm = await newVm();
    const volatile = (spte: bigint) => vm.raw.spte_has_volatile_bits(spte) === 1;
    // (H, M, W) = 1 1 0: the lockless fast page fault may set W (cmpxchg)
    expect(volatile(leaf | A | D | H | M)).toBe(true);
    // A clear: the CPU may set it
    expect(volatile(leaf | D | H | M | W)).toBe(true);
    // writable with D clear: the CPU may set D (and, with PML, log the gpa)
    expect(volatile(leaf | A | H | M | W)).toBe(true);
    // stable: writable and dirty, shadow-style protected, host read-only
    expect(volatile(leaf | A | D | H | M | W)).toBe(false);
    expect(volatile(leaf | A | D | H)).toBe(false);
    expect(volatile(leaf | A)).toBe(false);
  });
});
