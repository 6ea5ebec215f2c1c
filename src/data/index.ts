// The data stage's front door: read sample files, normalize formats, render chat templates, label and
// cut, write prepared tokens with their manifest and stats.
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
  type PrepareResult,
  prepareDataset,
  resolveTemplate,
  type SampleView,
  type SplitManifest,
  viewSample,
} from "./prepare.js";
export { type Origin, type ReadResult, readSamples, type SkippedLine } from "./read.js";
export { readSafetensors, writeSafetensors } from "./safetensors.js";
export { computeStats, type DataStats } from "./stats.js";
export { type ChatTemplate, chooseTemplate, type Rendered, readChatTemplate, type TemplateName } from "./template.js";
