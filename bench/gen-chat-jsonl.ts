// A large chat dataset for the data-preparation benchmark (bench/prepare-scale.ts): JSON Lines in the alpaca
// shape of Self-LLM's huanhuan.json (`instruction`, `input`, `output`), about 70% Chinese huanhuan-style
// dialogue and 30% English assistant chat, seeded and reproducible. Lengths follow PERFORMANCE.md's sample
// shape: prompt 16–128 tokens, answer lognormal(4.2, 0.6) tokens; 30% of the records also carry 1–3 earlier
// turns in `history` (answers of the same shape), so about 8% exceed max_length 512 and are cut, as real chat
// data is. Token counts become characters at ChatGLM3's measured rate on this text (≈1.3 Chinese characters,
// ≈0.84 English words per token). Text is drawn from a bigram chain over the seed lines below (characters for
// Chinese, words for English): natural character statistics without repeating whole sentences.
//
//   npx vite-node bench/gen-chat-jsonl.ts -- --samples 1000000 --out /tmp/chat-1m.jsonl   (≈1 GB, ~1 min)
import { closeSync, openSync, writeSync } from "node:fs";
import { rng } from "../src/rng.js";

const ZH_SEED = `臣妾参见皇上，皇上万福金安。嬛嬛，你过来，让朕好好瞧瞧你。回皇上的话，臣妾不过是尽了本分罢了。
小主，夜深了，您该歇着了。罢了罢了，本宫累了，你们都退下吧。这碎玉轩虽偏僻些，倒也清静，正合我的心意。
皇后娘娘贤德，臣妾自愧不如。华妃娘娘的欢宜香，闻着倒是好闻，只是不知里头加了些什么。臣妾斗胆，想求皇上一件事。
朕准了，你且说来听听。逆风如解意，容易莫摧残。愿得一心人，白首不相离。嬛儿，你可知朕为何独独对你另眼相看？
皇上说笑了，臣妾蒲柳之姿，怎敢当皇上如此厚爱。槿汐，你去内务府把本宫的份例取来，莫要让人克扣了。
奴婢遵命。小主放心，奴婢心里有数。这宫里头，人人都戴着一张面具，哪有几句真心话。本宫倒要看看，她还能得意到几时！
臣妾做不到啊！皇上，臣妾的孩子没了。安妹妹的嗓子，真真是天籁之音。眉姐姐，你我自幼相识，我信你。
温太医医术高明，有劳温太医了。小姐，别的秀女都在求中选，唯有咱们小姐想被撂牌子，菩萨一定记得真真儿的。
嘘，都说许愿说破是不灵的。这个温太医啊，也是古怪，谁不知太医不得皇命不能为皇族以外的人请脉诊病。
你们俩话太多了，我该和温太医要一剂药，好好治治你们。出来走走，也是散心。家父是大理寺少卿甄远道。
小主，奴婢这就去请太医来给您瞧瞧。不必了，本宫歇一歇便好。今日御花园里的梅花开得正好，娘娘可要去瞧瞧？
皇上近来政务繁忙，已有半月不曾踏足后宫了。这件事若是传了出去，只怕于娘娘的名声有碍。
你且记着，在这宫里，凡事都要多留一个心眼，不可轻信旁人。臣妾今日身子不适，怕是不能陪皇上用晚膳了。
流朱，你去把那件新做的衣裳拿来，明日请安要穿。浣碧，你可知错？奴婢知错了，求小主饶了奴婢这一回。
皇上若是怪罪下来，一切由本宫担着，与你们无干。这盏茶是今年新进的龙井，皇上尝尝可还合口味。
四郎，你可还记得倚梅园的那个雪夜？朕自然记得，那一夜你许的愿，朕一直放在心上。
太后娘娘近日凤体欠安，各宫嫔妃须每日前去侍疾。沈贵人素来端庄持重，深得皇后喜爱。
宫中规矩森严，一步也错不得，你们都给本宫仔细着些。熹贵妃回宫那日，满宫上下无不震动。
果郡王吹得一手好笛，又擅丹青，是京中有名的闲散王爷。甄嬛入宫之后，处处小心，步步为营。
请问您想了解哪方面的内容？我可以为您详细解释。当然可以，下面是一个简单的例子，供您参考。
首先，我们需要明确问题的背景；其次，要分析可能的原因；最后，给出具体的解决办法。
这个问题可以从三个方面来看：第一，历史的原因；第二，现实的需要；第三，未来的发展。
如果您还有其他问题，欢迎随时告诉我，我会尽力为您解答。总的来说，这种方法简单有效，适合初学者使用。
学习一门新的技能需要时间和耐心，不要急于求成，每天坚持练习一点点，日积月累就会有明显的进步。
根据您提供的信息，我建议先检查一下配置文件是否正确，然后再重新运行程序。
春天来了，万物复苏，小草从地里探出头来，柳树也抽出了嫩绿的新芽。
人工智能正在改变我们的生活方式，从智能手机到自动驾驶汽车，处处都能看到它的身影。`;

const EN_SEED = `Sure, here is a short summary of the main points. The model was trained for three epochs with a learning
rate of two times ten to the minus four. I am sorry, but I cannot help with that request. Could you tell me a
little more about what you are trying to do? There are several ways to approach this problem, and the best one
depends on your data. First, make sure that the input file is valid JSON, with one object per line. Then run the
command again and check the output for any warnings. If the error persists, please share the full message so
that I can take a closer look. In general, a smaller batch size uses less memory but takes longer to train.
The learning rate controls how large each update step is, and a value that is too high can make the loss
diverge. Here is an example of a simple function that adds two numbers and returns the result. You can also
use a list comprehension to make the code shorter and easier to read. Your Majesty, this humble consort greets
you. May you live ten thousand years. The emperor smiled and asked her to sit beside him in the garden. She
bowed deeply and said that she did not dare to accept such an honor. It was the best of times, it was the worst
of times, it was the age of wisdom, it was the age of foolishness. The weather today is sunny with a light
breeze, and the temperature will reach about twenty degrees in the afternoon. To install the package, open a
terminal and run the install command, then restart your editor. A good night of sleep, regular exercise and a
balanced diet are the foundations of a healthy life. Thank you for your question! Let me explain step by step
how the algorithm works and why it is efficient. Each sample is rendered with the chat template, tokenized, and
labelled so that only the answers are learned. The report shows the loss curve, the evaluation results and a
few generated samples before and after training. Please note that these numbers are estimates and may vary
depending on the hardware and the software versions you use.`;

/** A bigram chain over units (characters or words): next unit drawn from those that followed the last one. */
class Chain {
  private readonly next = new Map<string, string[]>();
  readonly starts: string[] = [];
  constructor(units: string[], isStart: (prev: string | undefined) => boolean) {
    for (let i = 0; i < units.length; i++) {
      const u = units[i] as string;
      if (isStart(units[i - 1])) this.starts.push(u);
      if (i + 1 < units.length) {
        const list = this.next.get(u) ?? [];
        list.push(units[i + 1] as string);
        this.next.set(u, list);
      }
    }
  }
  walk(r: () => number, count: number, join: string): string {
    const out: string[] = [];
    let u = this.starts[Math.floor(r() * this.starts.length)] as string;
    for (let i = 0; i < count; i++) {
      out.push(u);
      const list = this.next.get(u);
      // A small chance to jump to a fresh start keeps the walk from cycling through one sentence.
      u =
        list && r() > 0.04
          ? (list[Math.floor(r() * list.length)] as string)
          : (this.starts[Math.floor(r() * this.starts.length)] as string);
    }
    return out.join(join);
  }
}

const zhUnits = [...ZH_SEED.replace(/\s+/g, "")];
const zh = new Chain(zhUnits, (prev) => prev === undefined || "。！？".includes(prev));
const enUnits = EN_SEED.split(/\s+/).filter(Boolean);
const en = new Chain(enUnits, (prev) => prev === undefined || /[.!?]$/.test(prev));

function gaussian(r: () => number): number {
  return Math.sqrt(-2 * Math.log(1 - r())) * Math.cos(2 * Math.PI * r());
}

const ZH_PER_TOKEN = 1.3;
const EN_WORDS_PER_TOKEN = 0.84;

function text(r: () => number, english: boolean, tokens: number): string {
  if (english) return en.walk(r, Math.max(1, Math.round(tokens * EN_WORDS_PER_TOKEN)), " ");
  return zh.walk(r, Math.max(1, Math.round(tokens * ZH_PER_TOKEN)), "");
}

function record(r: () => number): Record<string, unknown> {
  const english = r() < 0.3;
  const prompt = 16 + Math.floor(r() * 113);
  const answer = Math.min(512 - prompt - 8, Math.max(1, Math.round(Math.exp(4.2 + 0.6 * gaussian(r)))));
  const rec: Record<string, unknown> = { instruction: text(r, english, prompt), input: "", output: "" };
  if (r() < 0.25) rec.input = text(r, english, 8 + r() * 24);
  rec.output = text(r, english, answer);
  // Multi-turn samples: earlier turns in `history` (alpaca's way), answers of the same shape.
  if (r() < 0.3) {
    const turns = 1 + Math.floor(r() * 3);
    rec.history = Array.from({ length: turns }, () => [
      text(r, english, 16 + r() * 48),
      text(r, english, Math.exp(4.2 + 0.6 * gaussian(r))),
    ]);
  }
  return rec;
}

/** Writes `samples` records to `file` (seeded: the same seed gives the same bytes); returns the byte count. */
function writeChatJsonl(file: string, samples: number, seed = 0): number {
  const r = rng(seed);
  const fd = openSync(file, "w");
  let chunk: string[] = [];
  let bytes = 0;
  const flush = () => {
    const buf = Buffer.from(chunk.join(""), "utf8");
    writeSync(fd, buf);
    bytes += buf.length;
    chunk = [];
  };
  try {
    for (let i = 0; i < samples; i++) {
      chunk.push(`${JSON.stringify(record(r))}\n`);
      if (chunk.length >= 5000) flush();
    }
    flush();
  } finally {
    closeSync(fd);
  }
  return bytes;
}

const argv = process.argv;
const arg = (name: string, def: string) => {
  const i = argv.indexOf(`--${name}`);
  return i >= 0 && argv[i + 1] !== undefined ? (argv[i + 1] as string) : def;
};
const out = arg("out", "");
if (!out) throw new Error("usage: gen-chat-jsonl.ts --samples N --out FILE [--seed S]");
const samples = Number(arg("samples", "50000"));
console.log(`${samples} samples, ${writeChatJsonl(out, samples, Number(arg("seed", "0")))} bytes → ${out}`);
