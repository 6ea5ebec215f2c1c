#!/usr/bin/env node
// The one gate (`npm test`, called by .ci/run): its own set-up first (the browser the report test
// drives and the tmux the terminal tests drive: scripts/chromium.mjs and scripts/tmux.mjs install
// Debian's packages where they can, or stop at once with the command to run), then lint + type-check + TypeScript tests, then the engine's environment, ruff +
// pytest. Every stage runs even when an earlier one fails, so one run shows every problem; the exit
// code is non-zero when any failed.
import { spawnSync } from "node:child_process";
import { existsSync, readFileSync, rmSync } from "node:fs";
import path from "node:path";
import { fileURLToPath } from "node:url";
import { ensureChromium } from "./chromium.mjs";
import { ensureTmux } from "./tmux.mjs";

const root = path.resolve(path.dirname(fileURLToPath(import.meta.url)), "..");
process.chdir(root);

const missing = ensureChromium() ?? ensureTmux();
if (missing) {
  console.error(`npm test cannot run here yet: ${missing}`);
  process.exit(1);
}
const results = [];
let passed = 0;
let failed = 0;

function stage(name, cmd, args, env = {}) {
  const t0 = Date.now();
  console.log(`\n=== ${name}: ${cmd} ${args.join(" ")}`);
  const r = spawnSync(cmd, args, { stdio: "inherit", env: { ...process.env, ...env } });
  const ok = r.status === 0;
  results.push({ name, ok, s: ((Date.now() - t0) / 1000).toFixed(1) });
  return ok;
}

const bin = (n) => path.join(root, "node_modules", ".bin", n);

stage("lint (biome)", bin("biome"), ["check", "src", "tests", "scripts", "bin", "bench"]);
stage("type-check (tsc)", bin("tsc"), ["-p", "tsconfig.json", "--noEmit"]);
if (!existsSync(path.join(root, "dist", "cli", "main.js"))) stage("build", bin("tsc"), ["-p", "tsconfig.build.json"]);

// The engine's environment (created once, cached) with the test tools.
const { ensurePython } = await import(path.join(root, "dist", "engine", "python.js"));
const py = await ensurePython({ dev: true, log: (l) => console.log(l) });
const pyEnv = { LORAKIT_PYTHON: py.python };
console.log(`engine python: ${py.python}`);

const fixtures = path.join(root, "tests", ".fixtures");
stage(
  "fixtures",
  py.python,
  [path.join(root, "engine", "tests", "fixtures", "build_all.py"), "--out", fixtures],
  pyEnv,
);

const vitestJson = path.join(root, "node_modules", ".cache", "vitest-result.json");
rmSync(vitestJson, { force: true });
stage(
  "TypeScript tests (vitest)",
  bin("vitest"),
  ["run", "--reporter=default", "--reporter=json", `--outputFile.json=${vitestJson}`],
  pyEnv,
);
if (existsSync(vitestJson)) {
  const j = JSON.parse(readFileSync(vitestJson, "utf8"));
  passed += j.numPassedTests ?? 0;
  // A suite that fails to load has no failed tests of its own: count it as one failure.
  failed += Math.max(j.numFailedTests ?? 0, j.numFailedTestSuites ?? 0);
}

const ruff = [path.join(path.dirname(py.python), "ruff")];
stage("lint (ruff)", ruff[0], ["check", "engine"]);
stage("format (ruff)", ruff[0], ["format", "--check", "engine"]);
const pyt = spawnSync(py.python, ["-m", "pytest", "engine/tests", "-q", "-p", "no:cacheprovider"], {
  stdio: ["ignore", "pipe", "inherit"],
  // Triton's kernels are tested in its CPU interpreter on machines without a GPU.
  env: { ...process.env, ...py.env, ...pyEnv, TRITON_INTERPRET: process.env.TRITON_INTERPRET ?? "1" },
  encoding: "utf8",
});
console.log(`\n=== Python tests (pytest)\n${pyt.stdout}`);
results.push({ name: "Python tests (pytest)", ok: pyt.status === 0, s: "" });
const m = /(\d+) passed/.exec(pyt.stdout);
const f = /(\d+) failed/.exec(pyt.stdout);
const e = /(\d+) error/.exec(pyt.stdout);
passed += m ? Number(m[1]) : 0;
failed += (f ? Number(f[1]) : 0) + (e ? Number(e[1]) : 0);

console.log("\n=== summary");
for (const r of results) console.log(`${r.ok ? "ok  " : "FAIL"}  ${r.name}${r.s ? ` (${r.s} s)` : ""}`);
const bad = results.filter((r) => !r.ok);
if (bad.length > 0 && failed === 0) failed = bad.length; // a failed lint or type-check counts
console.log(`\n${passed} passed, ${failed} failed`);
process.exit(bad.length > 0 ? 1 : 0);
