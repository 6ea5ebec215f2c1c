// A TypeScript entry bundled by esbuild into one ES module for a real Node process a test starts (a worker, the
// CLI, a store writer): written under a temporary name and renamed, so a process never starts a half-written
// file, and each test file bundles from this tree's sources rather than dist/.
import { renameSync, writeFileSync } from "node:fs";
import { type BuildOptions, build } from "esbuild";

/** Bundles `entry` (a file, or esbuild `stdin`) to `out`; returns `out`. Packages stay external. */
export async function bundleForNode(entry: string | NonNullable<BuildOptions["stdin"]>, out: string): Promise<string> {
  const r = await build({
    ...(typeof entry === "string" ? { entryPoints: [entry] } : { stdin: entry }),
    bundle: true,
    platform: "node",
    format: "esm",
    target: "node20",
    packages: "external",
    write: false,
    logLevel: "silent",
  });
  const tmp = `${out}.${process.pid}.tmp`;
  writeFileSync(tmp, r.outputFiles?.[0]?.contents ?? "");
  renameSync(tmp, out);
  return out;
}
