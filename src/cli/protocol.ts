// `lorakit protocol`: export the zod schema as JSON Schema under protocol/ (or check it is current).
import path from "node:path";
import { staleProtocolFiles, writeProtocol } from "../engine/protocol.js";
import { ROOT } from "../engine/python.js";
import { defineCommand } from "./command.js";
import { err, out } from "./io.js";

export const command = defineCommand({
  name: "protocol",
  summary: "export the config/plan/event schema as JSON Schema (protocol/)",
  description:
    "The zod schema in src/config/schema.ts is the one definition of the run config, the engine's plan, its " +
    "events and control lines; the engine validates against its export under protocol/. Without options, " +
    "says whether protocol/ is current (exit 1 when not).",
  options: {
    write: { type: "boolean", description: "write protocol/*.schema.json from the schema" },
    check: { type: "boolean", description: "only check that protocol/ is current (the default)" },
  },
  examples: [
    ["lorakit protocol --write", "after a change to src/config/schema.ts (what `npm run protocol` runs)"],
    ["lorakit protocol --check", "in CI: fail when the export is stale"],
  ],
  async run({ values }, io) {
    const dir = path.join(ROOT, "protocol");
    if (values.write) {
      for (const f of await writeProtocol(dir)) out(io, `wrote protocol/${f}`);
      return 0;
    }
    const stale = await staleProtocolFiles(dir);
    if (stale.length === 0) {
      out(io, "protocol/ is up to date");
      return 0;
    }
    err(io, `protocol/ is stale: ${stale.join(", ")} — run \`npm run protocol\``);
    return 1;
  },
});
