// One token per line for a person: index, id, piece, and whether it is trained (green in a terminal).
import { colors, type Io, out } from "./io.js";

/** Characters a terminal shows as nothing or as a plain space: controls, format characters (U+FEFF, U+200B,
 * U+200D …), separators and spaces other than " ". Real vocabularies hold pieces made of them. */
const INVISIBLE = /[\p{Cc}\p{Cf}\p{Zl}\p{Zp}\p{Cs}]|(?! )\p{Zs}/gu;

/** A piece as a quoted string a person can read: invisible characters as \uXXXX (astral: \u{XXXXX}) escapes. */
export function showPiece(piece: string): string {
  return JSON.stringify(piece).replace(INVISIBLE, (c) => {
    const cp = c.codePointAt(0) as number;
    return cp > 0xffff ? `\\u{${cp.toString(16)}}` : `\\u${cp.toString(16).padStart(4, "0")}`;
  });
}

export function printTokens(
  io: Io,
  view: { ids: readonly number[]; pieces: readonly string[]; trained?: readonly boolean[]; roles?: readonly string[] },
): void {
  const c = colors(io);
  for (let i = 0; i < view.ids.length; i++) {
    const piece = showPiece(view.pieces[i] ?? "");
    const trained = view.trained?.[i];
    const role = view.roles?.[i] ? ` ${c.dim((view.roles[i] as string).padEnd(9))}` : "";
    const line = `${String(i).padStart(5)} ${String(view.ids[i]).padStart(7)}${role} ${trained === undefined ? "" : trained ? "T " : ". "}${piece}`;
    out(io, trained ? c.green(line) : line);
  }
}
