// The demo's task: pull three fields out of a customer message into one exact JSON line. It has
// exact answers (so held-out exact-match is a fair score), a base chat model gets the format
// wrong, and a few dozen LoRA steps teach it. The held-out split uses sentence shapes that
// training never shows, so a rise in score is generalization, not recall.
import { rng } from "../rng.js";

export interface TaskSample {
  prompt: string;
  answer: string;
}

const NAMES = [
  "Maria",
  "Li Wei",
  "Ahmed",
  "Sofia",
  "Kenji",
  "Olga",
  "Pedro",
  "Amara",
  "Lukas",
  "Chloe",
  "Ravi",
  "Ingrid",
  "Tomas",
  "Yuki",
  "Fatima",
  "Diego",
  "Hannah",
  "Omar",
  "Elena",
  "Jonas",
  "Priya",
  "Marco",
  "Aisha",
  "Felix",
];
const CITIES = [
  "Lyon",
  "Osaka",
  "Cairo",
  "Porto",
  "Leeds",
  "Quito",
  "Hanoi",
  "Perth",
  "Tunis",
  "Graz",
  "Dakar",
  "Bergen",
  "Cusco",
  "Pune",
  "Turin",
  "Split",
  "Kyoto",
  "Malmo",
  "Nantes",
  "Lagos",
];
const TRAIN_SHAPES = [
  "Hi, this is {n} from {c}. My order #{o} never arrived.",
  "Order {o} was placed by {n}, shipping to {c}.",
  "{n} ({c}) asks about order number {o}.",
  "Customer {n} in {c} reports a damaged item, order #{o}.",
  "Please check order {o} for {n}; the address is in {c}.",
  "From {c}: {n} wants to return order #{o}.",
];
const HELD_OUT_SHAPES = ["Refund request - order {o}, customer {n}, city {c}.", "{n} wrote from {c} about order {o}."];

export const INSTRUCTION = "Extract name, city and order number as JSON.";

function sample(next: () => number, shapes: readonly string[]): TaskSample {
  const pick = <T>(xs: readonly T[]) => xs[Math.floor(next() * xs.length)] as T;
  const n = pick(NAMES);
  const c = pick(CITIES);
  const o = 10000 + Math.floor(next() * 90000);
  const text = pick(shapes).replace("{n}", n).replace("{c}", c).replace("{o}", String(o));
  return { prompt: `${INSTRUCTION}\n${text}`, answer: JSON.stringify({ name: n, city: c, order: o }) };
}

/** Train samples use the training shapes; held-out samples mix seen and unseen shapes. */
export function makeTask(opts: { train: number; heldOut: number; seed?: number }): {
  train: TaskSample[];
  heldOut: TaskSample[];
} {
  const next = rng(opts.seed ?? 1234);
  const train = Array.from({ length: opts.train }, () => sample(next, TRAIN_SHAPES));
  const seen = new Set(train.map((s) => s.prompt));
  const heldOut: TaskSample[] = [];
  while (heldOut.length < opts.heldOut) {
    const s = sample(next, heldOut.length % 2 === 0 ? HELD_OUT_SHAPES : TRAIN_SHAPES);
    if (!seen.has(s.prompt)) heldOut.push(s);
  }
  return { train, heldOut };
}

/** One record in OpenAI messages format per line. */
export function toJsonl(samples: readonly TaskSample[]): string {
  return samples
    .map((s) =>
      JSON.stringify({
        messages: [
          { role: "user", content: s.prompt },
          { role: "assistant", content: s.answer },
        ],
      }),
    )
    .join("\n")
    .concat("\n");
}
