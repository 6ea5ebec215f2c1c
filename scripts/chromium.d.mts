// Types of scripts/chromium.mjs (plain JavaScript so that `npm test` runs it before anything is built).
export const DEFAULT_CHROMIUM: string;
export interface ChromiumFacts {
  path: string;
  explicit: boolean;
  executable: boolean;
  platform: string;
  uid: number | null;
  aptGet: boolean;
}
export type ChromiumPlan =
  | { action: "ok"; path: string }
  | { action: "install"; path: string; steps: string[][] }
  | { action: "fail"; message: string };
export function chromiumPlan(f: ChromiumFacts): ChromiumPlan;
export function chromiumFacts(env?: NodeJS.ProcessEnv): ChromiumFacts;
export function ensureChromium(log?: (line: string) => void, env?: NodeJS.ProcessEnv): string | null;
export function isExecutable(file: string): boolean;
export function onPath(name: string, env: NodeJS.ProcessEnv): boolean;
export function runSteps(name: string, steps: string[][], env?: NodeJS.ProcessEnv): string | null;
