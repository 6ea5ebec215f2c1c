// Named special tokens (bos/eos/pad/unk from tokenizer_config.json) to ids, and id validation.
import { LorakitError } from "../../errors.js";

/** The id of a named token; undefined when the name is absent, null or not in the vocabulary (the data
 * doctor reports a missing eos; loading does not fail on a config that names a token nobody uses). */
export function resolveNamedId(
  name: string | null | undefined,
  lookup: (token: string) => number | undefined,
): number | undefined {
  if (name === undefined || name === null) return undefined;
  return lookup(name);
}

/** Throws on ids that are not integers of this vocabulary. */
export function checkIds(ids: readonly number[], known: (id: number) => boolean): void {
  for (let i = 0; i < ids.length; i++) {
    const id = ids[i] as number;
    if (!Number.isInteger(id) || !known(id)) {
      throw new LorakitError("TOKENIZER_BAD_ID", `token id ${id} (position ${i}) is not in the vocabulary`, {
        hint: "the ids come from another tokenizer, or the model's vocabulary is larger than the tokenizer's",
      });
    }
  }
}
