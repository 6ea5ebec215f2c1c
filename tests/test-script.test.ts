// `npm test` sets up what it needs itself (scripts/chromium.mjs): the decision about the report test's
// browser, for each kind of machine — present, installable (root + apt-get), or not (the one command).
import { chmodSync, writeFileSync } from "node:fs";
import path from "node:path";
import { describe, expect, it } from "vitest";
import { chromiumFacts, chromiumPlan, DEFAULT_CHROMIUM, ensureChromium } from "../scripts/chromium.mjs";
import { ensureTmux, tmuxFacts, tmuxPlan } from "../scripts/tmux.mjs";
import { tmpDir } from "./helpers.js";

const facts = {
  path: DEFAULT_CHROMIUM,
  explicit: false,
  executable: false,
  platform: "linux",
  uid: 0,
  aptGet: true,
};

describe("npm test's browser", () => {
  it("uses Chromium where it is", () => {
    expect(chromiumPlan({ ...facts, executable: true })).toEqual({ action: "ok", path: DEFAULT_CHROMIUM });
  });

  it("installs Debian's chromium as root where apt-get is", () => {
    expect(chromiumPlan(facts)).toEqual({
      action: "install",
      path: DEFAULT_CHROMIUM,
      steps: [
        ["apt-get", "update", "-qq"],
        ["apt-get", "install", "-y", "-qq", "chromium"],
      ],
    });
  });

  it("stops at once with the one command when it may not install", () => {
    const user = chromiumPlan({ ...facts, uid: 1000 });
    expect(user.action).toBe("fail");
    expect(user.action === "fail" && user.message).toContain("\n  sudo apt-get install -y chromium\n");
    const noApt = chromiumPlan({ ...facts, aptGet: false });
    expect(noApt.action === "fail" && noApt.message).toContain("LORAKIT_CHROMIUM=/path/to/chromium npm test");
    const mac = chromiumPlan({ ...facts, platform: "darwin", uid: 501 });
    expect(mac.action).toBe("fail");
  });

  it("never installs over an explicit LORAKIT_CHROMIUM that is wrong", () => {
    const plan = chromiumPlan({ ...facts, path: "/opt/nope/chrome", explicit: true });
    expect(plan.action === "fail" && plan.message).toContain("LORAKIT_CHROMIUM=/opt/nope/chrome is not an executable");
  });

  it("reads the facts from the machine: LORAKIT_CHROMIUM, executability, apt-get on PATH", () => {
    const dir = tmpDir("lorakit-chromium-");
    const browser = path.join(dir, "chromium");
    writeFileSync(browser, "#!/bin/sh\n");
    const noExec = chromiumFacts({ LORAKIT_CHROMIUM: browser, PATH: dir });
    expect(noExec).toMatchObject({ path: browser, explicit: true, executable: false, aptGet: false });
    chmodSync(browser, 0o755);
    writeFileSync(path.join(dir, "apt-get"), "#!/bin/sh\nexit 1\n", { mode: 0o755 });
    expect(chromiumFacts({ LORAKIT_CHROMIUM: browser, PATH: dir })).toMatchObject({ executable: true, aptGet: true });
    expect(ensureChromium(() => {}, { LORAKIT_CHROMIUM: browser, PATH: dir })).toBeNull();
    expect(ensureChromium(() => {}, { LORAKIT_CHROMIUM: path.join(dir, "missing"), PATH: dir })).toContain(
      "is not an executable file",
    );
  });
});

describe("npm test's tmux (the terminal tests)", () => {
  const tmux = { present: false, platform: "linux", uid: 0, aptGet: true };

  it("uses tmux on PATH, installs Debian's as root where apt-get is, else stops with the one command", () => {
    expect(tmuxPlan({ ...tmux, present: true })).toEqual({ action: "ok" });
    expect(tmuxPlan(tmux)).toEqual({
      action: "install",
      steps: [
        ["apt-get", "update", "-qq"],
        ["apt-get", "install", "-y", "-qq", "tmux"],
      ],
    });
    const user = tmuxPlan({ ...tmux, uid: 1000 });
    expect(user.action === "fail" && user.message).toContain("\n  sudo apt-get install -y tmux\n");
    const mac = tmuxPlan({ ...tmux, platform: "darwin", aptGet: false });
    expect(mac.action === "fail" && mac.message).toContain("package manager");
  });

  it("reads the facts from the machine: tmux and apt-get on PATH", () => {
    const dir = tmpDir("lorakit-tmux-");
    expect(tmuxFacts({ PATH: dir })).toMatchObject({ present: false, aptGet: false });
    writeFileSync(path.join(dir, "tmux"), "#!/bin/sh\n", { mode: 0o755 });
    expect(tmuxFacts({ PATH: dir })).toMatchObject({ present: true });
    expect(ensureTmux(() => {}, { PATH: dir })).toBeNull();
  });
});
