// The findings' front door: the code catalogue (codes/, error-codes.ts) and the finding model, the one
// converter between findings and LorakitError included.
export {
  type CatalogueEntry,
  catalogue,
  catalogueMarkdown,
  findingsJson,
  isCatalogued,
  withCatalogue,
} from "./catalogue.js";
export { CODES, type Code } from "./codes/index.js";
export { ERRORS, type ErrorCode, RENAMED } from "./error-codes.js";
export {
  type Counts,
  countFindings,
  errorOfFindings,
  type Finding,
  fill,
  findingsError,
  findingsOfError,
  fromEvent,
  fromRow,
  hasErrors,
  makeFinding,
  showValue,
  sortFindings,
  specOf,
  stageOf,
  toEvent,
} from "./finding.js";
export { type CodeSpec, type ErrorSpec, type Severity, STAGES, type Stage } from "./spec.js";
