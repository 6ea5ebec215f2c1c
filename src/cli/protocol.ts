// `lorakit protocol`: export the zod schema as JSON Schema under protocol/ (or check it is current).
import path from "node:path";
import { staleProtocolFiles, writeProtocol } from "../engine/protocol.js";
import { ROOT } from "../engine/python.js";
import { parse } from "./args.js";
import { err, out } from "./io.js";
import type { Command } from "./main.js";

const usage = "lorakit protocol [--write | --check]";

export const command: Command = {
  summary: "export the config/plan/event schema as JSON Schema (protocol/)",
  usage,
  async run(argv, io) {
    const { values } = parse(argv, { write: { type: "boolean" }, check: { type: "boolean" } }, usage);
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
};
