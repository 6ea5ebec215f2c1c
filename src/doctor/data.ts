// The doctor's data stage: the catalogue's data rows read off the prepared data's statistics and
// manifest — role markers typed as text, end of turn not learned, prompt trained, nothing trained,
// truncation, template mismatch, vocabulary, bad lines, encoding, duplicates and train/eval overlap.
import type { DataStats, PrepareResult, Tokenizer } from "../data/index.js";
import { readChatTemplate } from "../data/index.js";
import { type Finding, makeFinding } from "../findings/index.js";
import { pct } from "../format.js";

export interface DataCheckInput {
  result: PrepareResult;
  tokenizer: Tokenizer;
  modelDir: string;
  /** Embedding rows of the model (config.json vocab_size / padded_vocab_size). */
  vocabRows: number;
  /** Failures below these shares are warnings only when above them. */
  thresholds?: { truncatedShare?: number; stopShare?: number; promptShare?: number };
}

/** file:line, and the record's index in its file (every record of a one-line JSON array is on line 1). */
const where = (o: { file: string; line: number; sample?: number }) =>
  `${o.file}:${o.line}${o.sample !== undefined ? ` (sample ${o.sample})` : ""}`;

/** Findings for one split's statistics (`split` names it in the evidence). */
function statsFindings(stats: DataStats, split: "train" | "eval", input: DataCheckInput): Finding[] {
  const t = { truncatedShare: 0, stopShare: 0.99, promptShare: 0, ...input.thresholds };
  const out: Finding[] = [];
  if (stats.samples === 0) return out;
  if (stats.specialSpellings.samples > 0) {
    out.push(
      makeFinding("DATA_ROLE_MARKERS_AS_TEXT", {
        split,
        samples: stats.specialSpellings.samples,
        parsed_as_special: stats.specialSpellings.parsedAsSpecial,
        at: stats.specialSpellings.origins.slice(0, 5).map(where),
      }),
    );
  }
  // Judged on the samples not cut by max_length: a cut sample lacks its stop because of the cut (DATA_TRUNCATED).
  if (stats.endsWithStop.of > 0 && stats.endsWithStop.share < t.stopShare) {
    out.push(
      makeFinding("DATA_NO_STOP", {
        split,
        share: pct(stats.endsWithStop.share),
        samples_ending_with_stop: stats.endsWithStop.samples,
        samples_not_cut: stats.endsWithStop.of,
        samples: stats.samples,
        at: stats.endsWithStop.missing.slice(0, 5).map(where),
      }),
    );
  }
  if (stats.trainedInPrompt.share > t.promptShare) {
    out.push(
      makeFinding("DATA_PROMPT_TRAINED", {
        split,
        share: pct(stats.trainedInPrompt.share),
        tokens: stats.trainedInPrompt.tokens,
      }),
    );
  }
  if (stats.nothingTrained.samples > 0) {
    out.push(
      makeFinding("DATA_SAMPLES_UNTRAINED", {
        split,
        samples: stats.nothingTrained.samples,
        at: stats.nothingTrained.origins.slice(0, 5).map(where),
      }),
    );
  }
  if (stats.truncated.samples > 0 && stats.truncated.share > t.truncatedShare) {
    out.push(
      makeFinding("DATA_TRUNCATED", {
        split,
        share: pct(stats.truncated.share),
        samples: stats.truncated.samples,
        lost: pct(stats.truncated.trainedShareLost),
        trained_tokens_lost: stats.truncated.trainedTokensLost,
        length_p95: stats.length.p95,
        length_max: stats.length.max,
      }),
    );
  }
  if (split === "train" && stats.duplicates.samples > 0) {
    out.push(
      makeFinding("DATA_DUPLICATES", {
        count: stats.duplicates.samples,
        examples: stats.duplicates.examples.slice(0, 3).map((g) => g.map(where)),
      }),
    );
  }
  if (split === "eval" && stats.overlap.samples > 0) {
    out.push(
      makeFinding("DATA_EVAL_OVERLAP", {
        count: stats.overlap.samples,
        at: stats.overlap.origins.slice(0, 5).map(where),
      }),
    );
  }
  return out;
}

export function dataFindings(input: DataCheckInput): Finding[] {
  const { result } = input;
  const m = result.manifest;
  const out: Finding[] = [...statsFindings(result.train.stats, "train", input)];
  if (result.eval) out.push(...statsFindings(result.eval.stats, "eval", input));

  // Vocabulary: ids the embedding has no row for crash on the GPU or train garbage.
  if (input.vocabRows > 0 && m.counts.max_id >= input.vocabRows) {
    out.push(makeFinding("DATA_VOCAB_OUT_OF_RANGE", { max_id: m.counts.max_id, rows: input.vocabRows }));
  }
  if (input.vocabRows > 0 && input.tokenizer.vocabSize > input.vocabRows) {
    out.push(
      makeFinding("DATA_TOKENIZER_MISMATCH", {
        tokenizer_vocab: input.tokenizer.vocabSize,
        rows: input.vocabRows,
      }),
    );
  }

  // Template: trained with a template other than the checkpoint's own one.
  const own = readChatTemplate(input.modelDir);
  if (own && result.template.name !== "jinja" && result.template.name !== "chatglm3") {
    out.push(
      makeFinding("DATA_TEMPLATE_MISMATCH", { template: result.template.name, checkpoint_has: "chat_template" }),
    );
  }

  // Dirty data: bad lines skipped (opt-in, so reported), BOMs.
  if (m.skipped.length > 0) {
    out.push(
      makeFinding(
        "DATA_BAD_LINES",
        { count: m.skipped.length, at: m.skipped.slice(0, 5).map((s) => `${where(s)}: ${s.reason}`) },
        { severity: "warning", title: `${m.skipped.length} malformed records were skipped (data.skip_bad_lines)` },
      ),
    );
  }
  if (m.bom_files > 0) {
    out.push(
      makeFinding(
        "DATA_ENCODING",
        { what: `${m.bom_files} files start with a UTF-8 BOM (stripped)` },
        { severity: "info" },
      ),
    );
  }
  return out;
}
