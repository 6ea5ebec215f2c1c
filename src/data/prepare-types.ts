// The prepared data's shapes: what prepareDataset takes (options, progress) and gives back (result, splits), and
// manifest.json's layout with its version (a cache entry of another version is prepared again).
import type { DataFormat } from "./formats.js";
import type { FileInfo, Origin, SkippedLine } from "./read.js";
import type { DataStats } from "./stats.js";
import type { ChatTemplate, TemplateOption } from "./template.js";
import type { Tokenizer } from "./tokenizer.js";

/** Version 3: SHA256SUMS beside each split's files (version 2: records keyed by their index in the file). */
export const MANIFEST_VERSION = 3;

export interface PrepareProgress {
  /** `hash`: reading the files for their content hash; `prepare`: the pass; `write`: the output files. */
  phase: "hash" | "prepare" | "write";
  /** Bytes of the input files done, of `totalBytes`. */
  bytes: number;
  totalBytes: number;
  /** Records taken in so far. */
  records: number;
  elapsedS: number;
  /** Records read and not yet taken back (bounded by the pipeline's window). */
  inFlight: number;
  /** Worker threads (0: all on the main thread). */
  workers: number;
}

export interface PrepareOptions {
  files: string[];
  /** Held-out files; when given, `split` is not used. */
  evalFiles?: string[];
  format?: DataFormat;
  /** A template option (resolved against the checkpoint) or a template already built. */
  template?: TemplateOption | ChatTemplate;
  tokenizer: Tokenizer;
  modelDir: string;
  modelType?: string;
  maxLength: number;
  system?: string;
  maskHistory?: boolean;
  skipBadLines?: boolean;
  /** Share of the training records held out (0 = none). */
  split?: number;
  /** How many held-out prompts (with their answers) the eval manifest keeps for generation (default 16). */
  prompts?: number;
  /** Worker threads (default: one per core the process may use, when there are two or more and the input
   * files hold 8 MiB or more; 0: none). */
  workers?: number;
  /** The compiled worker script (default: prepare-worker.js beside this module; without it, no workers). */
  workerScript?: URL | string;
  /** Records per batch (default 512). */
  batchRecords?: number;
  /** Called now and then while hashing and preparing (at most every 200 ms, and once at the end). */
  onProgress?: (p: PrepareProgress) => void;
}

export interface SplitManifest {
  version: number;
  complete: true;
  hash: string;
  split: "train" | "eval";
  counts: {
    records: number;
    samples: number;
    tokens: number;
    trained_tokens: number;
    truncated: number;
    trained_tokens_lost: number;
    dropped: number;
    max_id: number;
  };
  /** Origins of the samples written, in order: [file index, line, record index in the file]. */
  origins: { files: string[]; samples: [file: number, line: number, sample?: number][] };
  /** Dropped samples (the first 1000; `counts.dropped` has them all). */
  dropped: (Origin & { reason: string })[];
  stats: DataStats;
  /** Prompts (conversation without its last answer) for generation, with the answer's ids. */
  prompts: { index: number; origin: Origin; prompt_ids: number[]; answer_ids: number[] }[];
}

export interface Manifest extends SplitManifest {
  created: string;
  inputs: {
    files: Omit<FileInfo, "records">[];
    eval_files: Omit<FileInfo, "records">[];
    options: Record<string, unknown>;
    tokenizer: { kind: string; hash: string; vocab_size: number };
    template: { name: string; sha256: string };
  };
  template: { name: string; source: string; stop_ids: number[]; special_tokens: Record<string, number> };
  formats: Record<string, string>;
  skipped: SkippedLine[];
  bom_files: number;
  first_samples: Origin[];
  /** The eval split (`eval/` beside), or null. */
  eval: { dir: "eval"; samples: number; tokens: number; origins: Origin[] } | null;
}

export interface PreparedSplit {
  dir: string;
  samples: number;
  tokens: number;
  trainedTokens: number;
  stats: DataStats;
}

export interface PrepareResult {
  hash: string;
  dir: string;
  reused: boolean;
  /** Why an entry already in the cache was not reused but prepared again (damaged, torn); null when not. */
  rebuilt: string | null;
  manifest: Manifest;
  train: PreparedSplit;
  eval: PreparedSplit | null;
  template: ChatTemplate;
}
