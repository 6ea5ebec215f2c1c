// Errors are data: a stable code, what went wrong, where (file:line, key path, sample), and the fix.
// CLI errors and doctor findings share this shape so a person reads one kind of message everywhere.

export interface Where {
  file?: string;
  line?: number;
  /** Byte offset in a binary file (a tokenizer.model, a safetensors file), 0-based. */
  offset?: number;
  /** Key path inside a config or record, e.g. `train.lr` or `conversations[2].role`. */
  key?: string;
  /** Sample index (0-based, in file order). */
  sample?: number;
}

export class LorakitError extends Error {
  readonly code: string;
  readonly where: Where | undefined;
  readonly hint: string;
  /** Further problems found in the same pass (config and data checks report every problem at once). */
  readonly more: readonly LorakitError[];
  /** The command's exit code when this error ends it: 1, or 2 for a usage error, 130 for Ctrl-C. */
  readonly exitCode: number;

  constructor(
    code: string,
    message: string,
    opts: { where?: Where; hint?: string; more?: LorakitError[]; exitCode?: number } = {},
  ) {
    super(message);
    this.name = "LorakitError";
    this.code = code;
    this.where = opts.where;
    this.hint = opts.hint ?? "";
    this.more = opts.more ?? [];
    this.exitCode = opts.exitCode ?? 1;
  }

  /** One error carrying a whole list of problems (the first leads, the rest ride along). */
  static fromList(errors: readonly LorakitError[]): LorakitError {
    const [first, ...rest] = errors;
    if (!first) throw new Error("fromList needs at least one error");
    return new LorakitError(first.code, first.message, {
      where: first.where,
      hint: first.hint,
      more: rest,
      exitCode: first.exitCode,
    });
  }

  /** All problems carried, this one first. */
  all(): LorakitError[] {
    return [this, ...this.more.flatMap((e) => e.all())];
  }
}

export function formatWhere(where: Where | undefined): string {
  if (!where) return "";
  const parts: string[] = [];
  if (where.file) parts.push(where.line !== undefined ? `${where.file}:${where.line}` : where.file);
  if (where.offset !== undefined) parts.push(`byte ${where.offset}`);
  if (where.key) parts.push(`key ${where.key}`);
  if (where.sample !== undefined) parts.push(`sample ${where.sample}`);
  return parts.join(", ");
}

/** A wrong command line: exit code 2, the usage as the fix. */
export function usageError(message: string, usage: string): LorakitError {
  return new LorakitError("CLI_BAD_ARGS", message, { hint: `usage: ${usage}`, exitCode: 2 });
}

/** One line per problem: `CODE  where: message — fix`. */
export function formatError(err: LorakitError): string {
  return err
    .all()
    .map((e) => {
      const where = formatWhere(e.where);
      const head = where ? `${where}: ${e.message}` : e.message;
      return `error ${e.code}: ${head}${e.hint ? `\n  fix: ${e.hint}` : ""}`;
    })
    .join("\n");
}

/** Levenshtein distance, for "did you mean" suggestions. */
export function editDistance(a: string, b: string): number {
  const prev = Array.from({ length: b.length + 1 }, (_, i) => i);
  for (let i = 1; i <= a.length; i++) {
    let diag = prev[0] as number;
    prev[0] = i;
    for (let j = 1; j <= b.length; j++) {
      const up = prev[j] as number;
      prev[j] = Math.min(up + 1, (prev[j - 1] as number) + 1, diag + (a[i - 1] === b[j - 1] ? 0 : 1));
      diag = up;
    }
  }
  return prev[b.length] as number;
}

/** The closest candidate, when it is close enough to be a plausible typo. */
export function nearest(word: string, candidates: readonly string[]): string | undefined {
  let best: string | undefined;
  let bestD = Number.POSITIVE_INFINITY;
  for (const c of candidates) {
    const d = editDistance(word.toLowerCase(), c.toLowerCase());
    if (d < bestD) {
      bestD = d;
      best = c;
    }
  }
  return best !== undefined && bestD <= Math.max(2, Math.floor(word.length / 3)) ? best : undefined;
}
