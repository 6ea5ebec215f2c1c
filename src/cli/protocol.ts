// `lorakit protocol`: write protocol/ (the zod schema as JSON Schema, the code catalogue and the family
// registry as JSON) and the code tables of the README; `--check` says whether any of it is stale.
import { readFileSync, writeFileSync } from "node:fs";
import path from "node:path";
import { staleProtocolFiles, writeProtocol } from "../engine/protocol.js";
import { ROOT } from "../engine/python.js";
import { withCatalogue } from "../findings/index.js";
import { defineCommand } from "./command.js";
import { err, out } from "./io.js";

export const README = path.join(ROOT, "README.md");

/** README.md as it should be: its code tables regenerated from the catalogue. */
export function currentReadme(): { text: string; stale: boolean } {
  const now = readFileSync(README, "utf8");
  const text = withCatalogue(now);
  return { text, stale: text !== now };
}

export const command = defineCommand({
  name: "protocol",
  summary: "export the boundary (schemas, codes, families) under protocol/ and the README's code tables",
  description:
    "The zod schema in src/config/schema.ts is the one definition of the run config, the engine's plan, its " +
    "events and its control line; the engine validates against its export under protocol/. The codes " +
    "(findings.json: stage, severity, title and fix of each) and the model families (families.json) are " +
    "exported beside it for the engine to read, and the README's tables of codes are generated from the same " +
    "catalogue. Without options, says whether all of it is current (exit 1 when not).",
  options: {
    write: {
      type: "boolean",
      description: "write protocol/ (*.schema.json, findings.json, families.json) and the README's code tables",
    },
    check: { type: "boolean", description: "only check that both are current (the default)" },
  },
  examples: [
    ["lorakit protocol --write", "after a change to src/config/schema.ts (what `npm run protocol` runs)"],
    ["lorakit protocol --check", "in CI: fail when the export is stale"],
  ],
  async run({ values }, io) {
    const dir = path.join(ROOT, "protocol");
    const readme = currentReadme();
    if (values.write) {
      for (const f of await writeProtocol(dir)) out(io, `wrote protocol/${f}`);
      if (readme.stale) {
        writeFileSync(README, readme.text);
        out(io, "wrote README.md (the code tables)");
      }
      return 0;
    }
    const stale = await staleProtocolFiles(dir);
    if (readme.stale) stale.push("README.md (the code tables)");
    if (stale.length === 0) {
      out(io, "protocol/ and the README's code tables are up to date");
      return 0;
    }
    err(io, `stale: ${stale.join(", ")} — run \`npm run protocol\``);
    return 1;
  },
});
