import { main } from "../src/cli/main.js";
const io = { stdout: process.stdout, stderr: process.stderr, stdin: process.stdin, env: { ...process.env, LORAKIT_PYTHON: "/root/.cache/lorakit-probe-venv/bin/python" }, cwd: "/tmp/dr" };
const code = await main(process.argv.slice(2), io as never);
console.log("exit", code);
