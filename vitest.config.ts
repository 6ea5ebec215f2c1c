import { defineConfig } from "vitest/config";

export default defineConfig({
  test: {
    include: ["tests/**/*.test.ts"],
    globalSetup: ["tests/setup/global.ts"],
    testTimeout: 300_000, // training tests take ~40 s on a quiet 2-core machine, several times that on a busy one
    hookTimeout: 600_000,
    // Engine tests spawn Python processes; two cores do not gain from more than two workers.
    maxWorkers: 2,
    minWorkers: 1,
  },
});
