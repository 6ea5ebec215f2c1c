// The model check: runs the engine's inspection (`python -m lorakit_engine.inspect_model`), which loads the
// checkpoint, attaches LoRA as the engine does and reports targets matched against layers × targets, the
// trainable parameters and their dtypes, and — given formatted samples — the base model's loss with and
// without the template. Its findings come back in the protocol's `finding` shape.
import { mkdtempSync, rmSync, writeFileSync } from "node:fs";
import os from "node:os";
import path from "node:path";
import { FindingEvent } from "../config/schema.js";
import type { PythonEnv } from "../engine/python.js";
import { runEngineJson } from "../engine/supervisor.js";
import { type Finding, fromEvent, makeFinding } from "../findings/index.js";
import type { Precision } from "../plan/index.js";

/** Formatted samples (ids + labels, -100 = no loss) and the same text without the template. */
export interface TemplateSamples {
  formatted: { input_ids: number[]; labels: number[] }[];
  plain: { input_ids: number[] }[];
}

export interface InspectFacts {
  model: string;
  model_type?: string;
  layers?: number;
  recommended?: string[];
  linear_modules?: string[];
  lora_modules?: number;
  targets?: {
    matched_total: number;
    expected_total: number;
    per_target: Record<string, { modules: number; layers: number }>;
  };
  params?: {
    total: number;
    trainable: number;
    lora: number;
    share: number;
    base_trainable: string[];
    trainable_dtypes: Record<string, number>;
  };
  template_loss?: { formatted: { mean: number | null }; plain: { mean: number | null }; ratio: number | null };
}

export interface InspectOptions {
  modelDir: string;
  targets: readonly string[];
  r: number;
  alpha: number;
  dropout: number;
  precision: Precision;
  device: "cuda" | "cpu";
  samples?: TemplateSamples;
  /** Attach adapters in the base dtype (what older peft did) instead of float32. */
  noFp32Adapters?: boolean;
  env?: NodeJS.ProcessEnv;
  timeoutMs?: number;
  /** Aborting kills the inspection (Ctrl-C during the checks). */
  signal?: AbortSignal;
}

const TORCH_DTYPE: Record<Precision, string> = { bf16: "bfloat16", fp16: "float16", fp32: "float32" };

export async function runModelInspection(
  py: PythonEnv,
  o: InspectOptions,
): Promise<{ facts: InspectFacts | null; findings: Finding[] }> {
  let tmp: string | null = null;
  const args = [
    "--model",
    o.modelDir,
    "--targets",
    o.targets.join(","),
    "--r",
    String(o.r),
    "--alpha",
    String(o.alpha),
    "--dropout",
    String(o.dropout),
    "--dtype",
    TORCH_DTYPE[o.precision],
    "--device",
    o.device,
  ];
  if (o.noFp32Adapters) args.push("--no-fp32-adapters");
  if (o.samples) {
    tmp = mkdtempSync(path.join(os.tmpdir(), "lorakit-inspect-"));
    const file = path.join(tmp, "samples.json");
    writeFileSync(file, JSON.stringify(o.samples));
    args.push("--samples", file);
  }
  try {
    const r = await runEngineJson<{ facts: InspectFacts; findings: unknown[] }>(
      py,
      "lorakit_engine.inspect_model",
      args,
      {
        env: o.env,
        timeoutMs: o.timeoutMs ?? 600_000,
        ...(o.signal ? { signal: o.signal } : {}),
      },
    );
    if (!r.json) {
      return {
        facts: null,
        findings: [makeFinding("MODEL_INSPECT_FAILED", { error: r.error ?? "no output", stderr: r.stderrTail })],
      };
    }
    const findings: Finding[] = [];
    for (const raw of r.json.findings) {
      const parsed = FindingEvent.safeParse(raw);
      findings.push(
        parsed.success
          ? fromEvent(parsed.data, "model")
          : makeFinding("MODEL_INSPECT_FAILED", { error: "the inspection wrote a malformed finding", finding: raw }),
      );
    }
    return { facts: r.json.facts, findings };
  } finally {
    if (tmp) rmSync(tmp, { recursive: true, force: true });
  }
}

/** MODEL_REMOTE_CODE when config.json carries an auto_map (remote code lorakit never runs). */
export function remoteCodeFindings(config: Record<string, unknown>): Finding[] {
  const autoMap = config.auto_map;
  if (!autoMap || typeof autoMap !== "object") return [];
  const first = Object.values(autoMap as Record<string, unknown>)[0];
  return [
    makeFinding("MODEL_REMOTE_CODE", {
      auto_map: typeof first === "string" ? first : JSON.stringify(first),
      model_type: String(config.model_type ?? "?"),
    }),
  ];
}

/** One line for the doctor's step list. */
export function modelSummary(f: InspectFacts): string {
  if (!f.params) return `${f.model_type ?? "model"}: ${f.layers ?? "?"} layers`;
  const p = f.params;
  return `LoRA on ${f.lora_modules ?? "?"} modules (${f.targets?.matched_total ?? "?"} of ${f.targets?.expected_total ?? "?"} expected), ${p.trainable.toLocaleString("en-US")} trainable of ${p.total.toLocaleString("en-US")} parameters (${(100 * p.share).toFixed(2)}%)`;
}
