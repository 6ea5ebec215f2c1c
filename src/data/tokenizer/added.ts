// Splitting text around added tokens: at each position the longest token that starts there wins, scanning
// left to right (what a regex alternation of the tokens, longest first, finds).

export type Segment = string | number;

export class TokenSplitter {
  private readonly byFirst = new Map<string, Array<[string, number]>>();

  constructor(tokens: Iterable<[string, number]>) {
    for (const [content, id] of tokens) {
      if (content.length === 0) continue;
      const first = content[0] as string;
      const list = this.byFirst.get(first) ?? [];
      list.push([content, id]);
      this.byFirst.set(first, list);
    }
    for (const list of this.byFirst.values()) list.sort((a, b) => b[0].length - a[0].length);
  }

  get empty(): boolean {
    return this.byFirst.size === 0;
  }

  /** Text pieces (never empty) and token ids, in order. */
  split(text: string): Segment[] {
    const out: Segment[] = [];
    let last = 0;
    for (let i = 0; i < text.length; ) {
      const hit = this.byFirst.get(text[i] as string)?.find(([t]) => text.startsWith(t, i));
      if (!hit) {
        i++;
        continue;
      }
      if (last < i) out.push(text.slice(last, i));
      out.push(hit[1]);
      i += hit[0].length;
      last = i;
    }
    if (last < text.length) out.push(text.slice(last));
    return out;
  }
}
