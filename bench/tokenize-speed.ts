// Tokenizer throughput on the fixture tokenizers: 4,000 samples of ~300 characters each.
// Run with: npx vite-node bench/tokenize-speed.ts (after `npm test` has built tests/.fixtures).
import { readFileSync } from "node:fs";
import path from "node:path";
import { loadTokenizer } from "../src/data/tokenizer.js";
import { ROOT } from "../src/engine/python.js";

const fixtures = path.join(ROOT, "tests", ".fixtures", "tokenizers");
const corpus = JSON.parse(readFileSync(path.join(ROOT, "tests", "fixtures", "tokenizer-corpus.json"), "utf8")) as
  | string[]
  | { texts: string[] };
const texts = (Array.isArray(corpus) ? corpus : corpus.texts).filter((t) => t.length > 0);
const samples: string[] = [];
for (let r = 0; r < 4000; r++) {
  let s = "";
  for (let k = r; s.length < 300; k = (k * 31 + 7) % 997) s += texts[k % texts.length];
  samples.push(s.slice(0, 300) + r);
}
for (const name of ["spm-chatglm3", "bpe-bytelevel", "bpe-metaspace"]) {
  const tok = await loadTokenizer(path.join(fixtures, name));
  const t0 = performance.now();
  let n = 0;
  for (const s of samples) n += tok.encode(s).length;
  const ms = performance.now() - t0;
  console.log(
    `${name.padEnd(14)} 4000 × 300 chars: ${ms.toFixed(0)} ms, ${n} tokens, ${((n / ms) * 1000).toFixed(0)} tokens/s`,
  );
}
