// Takes the README's screenshot (web/screenshot.png): the built site (npm run build && npm run
// demo:build) served by `vite preview` (which sends the two headers), a run with the page's
// defaults in headless Chromium, the whole page once the verdict is in.
//   node web/screenshot.mjs [out.png]
import { fileURLToPath } from "node:url";
import { chromium } from "playwright";
import { preview } from "vite";

const out = process.argv[2] ?? fileURLToPath(new URL("./screenshot.png", import.meta.url));
const server = await preview({
  configFile: fileURLToPath(new URL("./vite.config.ts", import.meta.url)),
  preview: { port: 0, host: "127.0.0.1" },
  logLevel: "warn",
});
const browser = await chromium.launch({
  executablePath: process.env.CHROMIUM_PATH ?? "/usr/bin/chromium",
  args: ["--no-sandbox", "--disable-gpu"],
});
try {
  const page = await browser.newPage({ viewport: { width: 1280, height: 900 } });
  page.on("console", (m) => m.type() === "error" && console.error(`page: ${m.text()}`));
  const url = server.resolvedUrls?.local[0];
  if (!url) throw new Error("vite preview has no URL");
  await page.goto(url);
  await page.waitForSelector("body[data-state=ready]");
  await page.click("#run");
  await page.waitForSelector("body[data-state=done], body[data-state=error]", { timeout: 120_000 });
  if ((await page.getAttribute("body", "data-state")) !== "done") throw new Error(await page.textContent("#run-error"));
  await page.screenshot({ path: out, fullPage: true });
  console.log(`wrote ${out}`);
} finally {
  await browser.close();
  await server.close();
}
