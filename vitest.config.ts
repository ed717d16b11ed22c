import { playwright } from "@vitest/browser-playwright";
import { configDefaults, defineConfig } from "vitest/config";

// Shared memory can only be posted to a Web Worker from a cross-origin isolated page.
const crossOriginIsolation = {
  "Cross-Origin-Opener-Policy": "same-origin",
  "Cross-Origin-Embedder-Policy": "require-corp",
};

export default defineConfig({
  test: {
    // The JSON report is what .ci/run counts; the default reporter is for people.
    reporters: ["default", ["json", { outputFile: "test-results/vitest.json" }]],
    testTimeout: 120_000,
    hookTimeout: 120_000,
    // 2 cores: one worker process per core at most.
    maxWorkers: 2,
    projects: [
      {
        extends: true,
        test: {
          name: "node",
          include: ["test/**/*.test.ts"],
          exclude: [...configDefaults.exclude, "test/browser/**"],
        },
      },
      {
        // The same suite against the debug build of the core (asc --target debug): its
        // asserts check the locking rules (mmu_lock held for write, vcpu->mutex held) on
        // every path the tests take; a failed assert throws out of the core.
        extends: true,
        test: {
          name: "node-debug-core",
          include: ["test/**/*.test.ts"],
          // the packed tarball and the demo page exercise the package, not the core's rules
          exclude: [...configDefaults.exclude, "test/browser/**", "test/package/**", "test/e2e/**"],
          env: { DIRTLOG_CORE: "debug" },
        },
      },
      {
        // The built package (dist/ + build/dirtlog.wasm) in headless Debian Chromium, with
        // real Web Workers; no browser download (/usr/bin/chromium, see .ci/run).
        extends: true,
        server: { headers: crossOriginIsolation },
        test: {
          name: "browser",
          // the browser's own tests, and the core's spec tests exactly as they run in Node
          include: [
            "test/browser/**/*.browser.test.ts",
            "test/memslot.test.ts",
            "test/dirty_bitmap.test.ts",
            "test/fault.test.ts",
            "test/dirty_ring.test.ts",
            "test/pfncache.test.ts",
            "test/xen-runstate.test.ts",
            "test/shadow.test.ts",
          ],
          browser: {
            enabled: true,
            headless: true,
            screenshotFailures: false,
            instances: [{ browser: "chromium" }],
            provider: playwright({
              launchOptions: {
                executablePath: process.env.CHROMIUM_PATH ?? "/usr/bin/chromium",
                args: [
                  "--no-sandbox",
                  "--disable-gpu",
                  "--disable-background-networking",
                  "--disable-component-update",
                  "--disable-sync",
                  "--no-first-run",
                ],
              },
            }),
          },
        },
      },
    ],
  },
});
