#!/usr/bin/env node
// The lorakit command: runs the compiled CLI (built by `npm install` / `npm run build`).
import { endOnClosedOutput, main } from "../dist/cli/main.js";

endOnClosedOutput(process.stdout); // `lorakit data run.yaml | head` ends quietly

process.exitCode = await main(process.argv.slice(2), {
  stdout: process.stdout,
  stderr: process.stderr,
  stdin: process.stdin,
  env: process.env,
  cwd: process.cwd(),
});
