// The data structures of the SentencePiece BPE merge loop (sentencepiece.ts): a table of the symbol pairs met
// so far, the symbol arrays reused from one segment to the next, and the heap of candidate merges.

/** What PairTable.get gives for a pair it does not hold. */
export const ABSENT = -2;

/** An open-addressing hash table from a pair of non-negative integers to an integer. */
export class PairTable {
  private a = new Int32Array(1024).fill(-1);
  private b = new Int32Array(1024);
  private v = new Int32Array(1024);
  private count = 0;

  private slot(a: number, b: number): number {
    const mask = this.a.length - 1;
    let h = (Math.imul(a, 0x9e3779b1) ^ Math.imul(b + 0x7f4a7c15, 0x85ebca77)) >>> 0;
    h = (h ^ (h >>> 15)) & mask;
    for (;;) {
      const k = this.a[h] as number;
      if (k === -1 || (k === a && this.b[h] === b)) return h;
      h = (h + 1) & mask;
    }
  }

  /** The value, or ABSENT. */
  get(a: number, b: number): number {
    const h = this.slot(a, b);
    return this.a[h] === -1 ? ABSENT : (this.v[h] as number);
  }

  get size(): number {
    return this.count;
  }

  clear(): void {
    this.a.fill(-1);
    this.count = 0;
  }

  has(a: number, b: number): boolean {
    return this.a[this.slot(a, b)] !== -1;
  }

  set(a: number, b: number, value: number): void {
    if ((this.count + 1) * 2 > this.a.length) this.grow();
    const h = this.slot(a, b);
    if (this.a[h] === -1) this.count++;
    this.a[h] = a;
    this.b[h] = b;
    this.v[h] = value;
  }

  private grow(): void {
    const [a, b, v] = [this.a, this.b, this.v];
    this.a = new Int32Array(a.length * 2).fill(-1);
    this.b = new Int32Array(a.length * 2);
    this.v = new Int32Array(a.length * 2);
    this.count = 0;
    for (let i = 0; i < a.length; i++) if (a[i] !== -1) this.set(a[i] as number, b[i] as number, v[i] as number);
  }
}

/** Symbol arrays reused from one segment to the next. */
export class Work {
  start = new Int32Array(256);
  end = new Int32Array(256);
  sym = new Int32Array(256);
  prev = new Int32Array(256);
  next = new Int32Array(256);

  ensure(n: number): this {
    if (n > this.start.length) {
      const size = Math.max(n, this.start.length * 2);
      this.start = new Int32Array(size);
      this.end = new Int32Array(size);
      this.sym = new Int32Array(size);
      this.prev = new Int32Array(size);
      this.next = new Int32Array(size);
    }
    return this;
  }
}

/** A binary max-heap of candidate merges over typed arrays: higher score first, then smaller left index. */
export class PairHeap {
  private left = new Int32Array(256);
  private right = new Int32Array(256);
  private score = new Float64Array(256);
  private len = new Int32Array(256);
  private id = new Int32Array(256);
  size = 0;

  topLeft(): number {
    return this.left[0] as number;
  }
  topRight(): number {
    return this.right[0] as number;
  }
  topLen(): number {
    return this.len[0] as number;
  }
  topId(): number {
    return this.id[0] as number;
  }

  private before(si: number, li: number, j: number): boolean {
    const sj = this.score[j] as number;
    return si > sj || (si === sj && li < (this.left[j] as number));
  }

  private grow(): void {
    const n = this.left.length * 2;
    const copy = <T extends Int32Array | Float64Array>(a: T, b: T): T => {
      b.set(a);
      return b;
    };
    this.left = copy(this.left, new Int32Array(n));
    this.right = copy(this.right, new Int32Array(n));
    this.score = copy(this.score, new Float64Array(n));
    this.len = copy(this.len, new Int32Array(n));
    this.id = copy(this.id, new Int32Array(n));
  }

  private put(i: number, left: number, right: number, score: number, len: number, id: number): void {
    this.left[i] = left;
    this.right[i] = right;
    this.score[i] = score;
    this.len[i] = len;
    this.id[i] = id;
  }

  private move(to: number, from: number): void {
    this.put(
      to,
      this.left[from] as number,
      this.right[from] as number,
      this.score[from] as number,
      this.len[from] as number,
      this.id[from] as number,
    );
  }

  push(left: number, right: number, score: number, len: number, id: number): void {
    if (this.size === this.left.length) this.grow();
    let i = this.size++;
    while (i > 0) {
      const parent = (i - 1) >> 1;
      if (!this.before(score, left, parent)) break;
      this.move(i, parent);
      i = parent;
    }
    this.put(i, left, right, score, len, id);
  }

  /** Removes the top. */
  pop(): void {
    const last = --this.size;
    if (last === 0) return;
    const left = this.left[last] as number;
    const right = this.right[last] as number;
    const score = this.score[last] as number;
    const len = this.len[last] as number;
    const id = this.id[last] as number;
    let i = 0;
    for (;;) {
      const l = 2 * i + 1;
      if (l >= last) break;
      const r = l + 1;
      const best = r < last && this.before(this.score[r] as number, this.left[r] as number, l) ? r : l;
      const sb = this.score[best] as number;
      if (!(sb > score || (sb === score && (this.left[best] as number) < left))) break;
      this.move(i, best);
      i = best;
    }
    this.put(i, left, right, score, len, id);
  }
}
