// `npm start` on a fresh clone: build first when the CLI or the core is missing (npm install
// runs no build script), so `npm install && npm start` works as the README says.
import { execSync } from "node:child_process";
import { existsSync } from "node:fs";

const need = ["dist/cli.js", "build/dirtlog.wasm"].filter((f) => !existsSync(new URL(`../${f}`, import.meta.url)));
if (need.length > 0) {
  process.stderr.write(`dirtlog: ${need.join(" and ")} missing; building first (npm run build, ~15 s)\n`);
  execSync("npm run build", { stdio: ["ignore", "ignore", "inherit"], cwd: new URL("..", import.meta.url) });
}
