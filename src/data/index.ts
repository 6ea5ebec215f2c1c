// The data stage's front door: read sample files, normalize formats, render chat templates, tokenize, label
// and cut, write prepared tokens with their manifest and stats, and the rows of train.pack_tokens. Everything
// outside src/data/ imports the data stage from here (tests/layers.test.ts holds it to that).
export type { Conversation, DataFormat, FormatName, Message, Role } from "./formats.js";
export { conversationKey, detectFormat, normalizeRecords } from "./formats.js";
export { buildLabels, IGNORE, type Labeled } from "./mask.js";
export { longSamples, packRows, preparedLengths, rowStarts, rowsFile, writeRows } from "./pack.js";
export {
  buildSample,
  loadConversations,
  type Manifest,
  type PreparedSplit,
  type PrepareOptions,
  type PrepareProgress,
  type PrepareResult,
  pickConversations,
  prepareDataset,
  resolveTemplate,
  type SampleView,
  type SplitManifest,
  viewSample,
} from "./prepare.js";
export { PrepareProgressText, plainPrepareProgress } from "./progress-text.js";
export { type Origin, type RawRecord, type ReadResult, readSamples, type SkippedLine } from "./read.js";
export { readSafetensors, writeSafetensors } from "./safetensors.js";
export { computeStats, type DataStats } from "./stats.js";
export { type ChatTemplate, chooseTemplate, type Rendered, readChatTemplate, type TemplateName } from "./template.js";
export { lenientUtf8, utf8CharLen } from "./tokenizer/utf8.js";
export { loadTokenizer, type Tokenizer } from "./tokenizer.js";
