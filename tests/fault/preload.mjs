// Test-only, loaded before the CLI with `node --import`: lorakit SIGKILLs itself (kill -9: no handler, no
// cleanup) at an exact point, from outside the product.
//   LORAKIT_TEST_KILL_FS="<fs function>:<regular expression>"  when the function is called on a matching path
//       (either path of a rename, copy or link), e.g. "renameSync:/report\.html$" (the report written whole,
//       not yet renamed into place)
//   LORAKIT_TEST_KILL_OUT="<regular expression>"  when lorakit is about to print a matching line on stdout
// One line `[lorakit-test-fault] SIGKILL at …` goes to stderr first.
import fs from "node:fs";
import { syncBuiltinESMExports } from "node:module";

function kill(what) {
  fs.writeSync(2, `[lorakit-test-fault] SIGKILL at ${what}\n`);
  process.kill(process.pid, "SIGKILL");
}

const onFs = process.env.LORAKIT_TEST_KILL_FS;
if (onFs) {
  const at = onFs.indexOf(":");
  const name = onFs.slice(0, at);
  const pattern = new RegExp(onFs.slice(at + 1));
  const real = fs[name];
  if (typeof real !== "function") throw new Error(`LORAKIT_TEST_KILL_FS: node:fs has no function ${name}`);
  // Functions of two paths (renameSync, copyFileSync, linkSync): either may match, e.g. the final name of a file
  // written beside it under any temporary name.
  const paths = /rename|copy|link/i.test(name) ? 2 : 1;
  fs[name] = function killing(...args) {
    for (const p of args.slice(0, paths))
      if ((typeof p === "string" || p instanceof URL) && pattern.test(String(p))) kill(`${name}(${args[0]})`);
    return real.apply(this, args);
  };
  // ES modules that import { renameSync } from "node:fs" see the replacement too.
  syncBuiltinESMExports();
}

const onOut = process.env.LORAKIT_TEST_KILL_OUT;
if (onOut) {
  const pattern = new RegExp(onOut, "m");
  const write = process.stdout.write.bind(process.stdout);
  process.stdout.write = (chunk, ...rest) => {
    if (pattern.test(String(chunk))) kill(`stdout ${JSON.stringify(String(chunk).trim().slice(0, 80))}`);
    return write(chunk, ...rest);
  };
}
