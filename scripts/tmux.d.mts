// Types of scripts/tmux.mjs (plain JavaScript so that `npm test` runs it before anything is built).
export interface TmuxFacts {
  present: boolean;
  platform: string;
  uid: number | null;
  aptGet: boolean;
}
export type TmuxPlan =
  | { action: "ok" }
  | { action: "install"; steps: string[][] }
  | { action: "fail"; message: string };
export function tmuxPlan(f: TmuxFacts): TmuxPlan;
export function tmuxFacts(env?: NodeJS.ProcessEnv): TmuxFacts;
export function ensureTmux(log?: (line: string) => void, env?: NodeJS.ProcessEnv): string | null;
