// The browser the report test drives (tests/report.test.ts): Debian's Chromium at /usr/bin/chromium, or
// LORAKIT_CHROMIUM. `npm test` sets it up itself: where it is missing and this process may install
// packages (root, apt-get on PATH) it installs Debian's chromium; otherwise it stops at once with the one
// command to run. `chromiumPlan` is the decision alone (tested in tests/test-script.test.ts).
import { spawnSync } from "node:child_process";
import { accessSync, constants, readFileSync, writeFileSync } from "node:fs";
import os from "node:os";
import path from "node:path";

export const DEFAULT_CHROMIUM = "/usr/bin/chromium";

/**
 * What to do about the browser, from the facts alone.
 * @param {{ path: string, explicit: boolean, executable: boolean, platform: string, uid: number | null, aptGet: boolean }} f
 * @returns {{ action: "ok", path: string } | { action: "install", path: string, steps: string[][] } | { action: "fail", message: string }}
 */
export function chromiumPlan(f) {
  if (f.executable) return { action: "ok", path: f.path };
  if (f.explicit) {
    return {
      action: "fail",
      message: `LORAKIT_CHROMIUM=${f.path} is not an executable file: point it at a Chromium binary, or unset it to use ${DEFAULT_CHROMIUM}`,
    };
  }
  const install = "apt-get install -y chromium";
  if (f.platform === "linux" && f.aptGet && f.uid === 0) {
    return {
      action: "install",
      path: f.path,
      steps: [
        ["apt-get", "update", "-qq"],
        ["apt-get", "install", "-y", "-qq", "chromium"],
      ],
    };
  }
  if (f.platform === "linux" && f.aptGet) {
    return {
      action: "fail",
      message: `the report test needs Chromium at ${f.path}; install it with:\n  sudo ${install}\nthen run npm test again`,
    };
  }
  return {
    action: "fail",
    message: `the report test needs Chromium at ${f.path}, and this machine has no apt-get to install Debian's chromium; install Chromium and run:\n  LORAKIT_CHROMIUM=/path/to/chromium npm test`,
  };
}

export function isExecutable(file) {
  try {
    accessSync(file, constants.X_OK);
    return true;
  } catch {
    return false;
  }
}

export function onPath(name, env) {
  return (env.PATH ?? "").split(path.delimiter).some((dir) => dir && isExecutable(path.join(dir, name)));
}

/** The facts chromiumPlan decides on, read from this machine. */
export function chromiumFacts(env = process.env) {
  const explicit = Boolean(env.LORAKIT_CHROMIUM);
  const file = env.LORAKIT_CHROMIUM || DEFAULT_CHROMIUM;
  return {
    path: file,
    explicit,
    executable: isExecutable(file),
    platform: process.platform,
    uid: typeof process.getuid === "function" ? process.getuid() : null,
    aptGet: onPath("apt-get", env),
  };
}

/** Makes sure the browser is there; returns null when it is, else the message to stop with. */
export function ensureChromium(log = console.log, env = process.env) {
  const plan = chromiumPlan(chromiumFacts(env));
  if (plan.action === "ok") return null;
  if (plan.action === "fail") return plan.message;
  log(`Chromium is missing at ${plan.path}: installing Debian's chromium (apt-get) …`);
  const failed = runSteps("chromium", plan.steps, env);
  if (failed) return failed;
  return isExecutable(plan.path) ? null : `apt-get installed chromium, but ${plan.path} is still missing`;
}

/** Runs an install plan's steps (apt-get) into a log; null, or what failed with the log's tail. */
export function runSteps(name, steps, env = process.env) {
  const logFile = path.join(os.tmpdir(), `lorakit-${name}-apt.log`);
  writeFileSync(logFile, "");
  for (const step of steps) {
    const [cmd, ...args] = step;
    const r = spawnSync(cmd, args, { env: { ...env, DEBIAN_FRONTEND: "noninteractive" }, encoding: "utf8" });
    writeFileSync(logFile, `${readFileSync(logFile, "utf8")}$ ${step.join(" ")}\n${r.stdout ?? ""}${r.stderr ?? ""}`);
    if (r.error || r.status !== 0) {
      const tail = readFileSync(logFile, "utf8").trim().split("\n").slice(-15).join("\n");
      return `installing ${name} failed (${step.join(" ")}; log: ${logFile}):\n${tail}`;
    }
  }
  return null;
}
