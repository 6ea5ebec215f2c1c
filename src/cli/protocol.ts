// `lorakit protocol`: export the zod schema as JSON Schema under protocol/, and the code tables of the
// README from the catalogue (src/doctor/catalogue.ts); `--check` says whether either is stale.
import { readFileSync, writeFileSync } from "node:fs";
import path from "node:path";
import { withCatalogue } from "../doctor/catalogue.js";
import { staleProtocolFiles, writeProtocol } from "../engine/protocol.js";
import { ROOT } from "../engine/python.js";
import { parse } from "./args.js";
import { err, out } from "./io.js";
import type { Command } from "./main.js";

const usage = "lorakit protocol [--write | --check]";

export const README = path.join(ROOT, "README.md");

/** README.md as it should be: its code tables regenerated from the catalogue. */
export function currentReadme(): { text: string; stale: boolean } {
  const now = readFileSync(README, "utf8");
  const text = withCatalogue(now);
  return { text, stale: text !== now };
}

export const command: Command = {
  summary: "export the config/plan/event schema as JSON Schema (protocol/) and the README's code tables",
  usage,
  async run(argv, io) {
    const { values } = parse(argv, { write: { type: "boolean" }, check: { type: "boolean" } }, usage);
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
};
