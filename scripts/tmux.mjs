// tmux, through which the terminal tests (tests/cli-process.test.ts) drive a real pseudo-terminal. `npm test`
// sets it up as it does the report test's browser (scripts/chromium.mjs): where it is missing and this process
// may install packages (root, apt-get on PATH) it installs Debian's tmux; otherwise it stops at once with the
// one command to run. `tmuxPlan` is the decision alone (tested in tests/test-script.test.ts).
import { onPath, runSteps } from "./chromium.mjs";

/**
 * What to do about tmux, from the facts alone.
 * @param {{ present: boolean, platform: string, uid: number | null, aptGet: boolean }} f
 * @returns {{ action: "ok" } | { action: "install", steps: string[][] } | { action: "fail", message: string }}
 */
export function tmuxPlan(f) {
  if (f.present) return { action: "ok" };
  if (f.platform === "linux" && f.aptGet && f.uid === 0) {
    return {
      action: "install",
      steps: [
        ["apt-get", "update", "-qq"],
        ["apt-get", "install", "-y", "-qq", "tmux"],
      ],
    };
  }
  const how = f.platform === "linux" && f.aptGet ? "sudo apt-get install -y tmux" : "your system's package manager";
  return {
    action: "fail",
    message: `the terminal tests need tmux on PATH; install it with:\n  ${how}\nthen run npm test again`,
  };
}

/** The facts tmuxPlan decides on, read from this machine. */
export function tmuxFacts(env = process.env) {
  return {
    present: onPath("tmux", env),
    platform: process.platform,
    uid: typeof process.getuid === "function" ? process.getuid() : null,
    aptGet: onPath("apt-get", env),
  };
}

/** Makes sure tmux is there; returns null when it is, else the message to stop with. */
export function ensureTmux(log = console.log, env = process.env) {
  const plan = tmuxPlan(tmuxFacts(env));
  if (plan.action === "ok") return null;
  if (plan.action === "fail") return plan.message;
  log("tmux is missing: installing Debian's tmux (apt-get) …");
  return (
    runSteps("tmux", plan.steps, env) ?? (onPath("tmux", env) ? null : "apt-get installed tmux, but it is not on PATH")
  );
}
