// One token per line for a person: index, id, piece, and whether it is trained (green in a terminal).
import { colors, type Io, out } from "./io.js";

export function printTokens(
  io: Io,
  view: { ids: readonly number[]; pieces: readonly string[]; trained?: readonly boolean[]; roles?: readonly string[] },
): void {
  const c = colors(io);
  for (let i = 0; i < view.ids.length; i++) {
    const piece = JSON.stringify(view.pieces[i] ?? "");
    const trained = view.trained?.[i];
    const role = view.roles?.[i] ? ` ${c.dim((view.roles[i] as string).padEnd(9))}` : "";
    const line = `${String(i).padStart(5)} ${String(view.ids[i]).padStart(7)}${role} ${trained === undefined ? "" : trained ? "T " : ". "}${piece}`;
    out(io, trained ? c.green(line) : line);
  }
}
