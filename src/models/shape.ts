// The shape of a checkpoint from its config.json, before any weight is read: layers, widths, heads, the
// linear modules LoRA can adapt and their sizes, parameter counts. The doctor's memory and time estimates and
// its LoRA parameter count rest on it.

import { layerCount } from "./checkpoint.js";
import type { Family } from "./families.js";

export interface ModuleShape {
  in: number;
  out: number;
  /** One per decoder layer (false: the output layer). */
  perLayer: boolean;
}

export interface ModelShape {
  modelType: string;
  layers: number;
  hidden: number;
  ffn: number;
  heads: number;
  kvHeads: number;
  headDim: number;
  vocab: number;
  tied: boolean;
  /** All parameters. */
  params: number;
  /** Parameters in matrix products (every layer's linears and the output layer): FLOPs = 2 × this per token. */
  matmulParams: number;
  /** Linear modules by leaf name. */
  modules: Record<string, ModuleShape>;
}

function num(config: Record<string, unknown>, ...keys: string[]): number | undefined {
  for (const k of keys) {
    const v = config[k];
    if (typeof v === "number" && Number.isFinite(v)) return v;
  }
  return undefined;
}

/** The shape of a checkpoint from its config.json (null when a needed key is missing). */
export function modelShape(config: Record<string, unknown>, family: Family): ModelShape | null {
  const native = family.builder === "native";
  const hidden = num(config, "hidden_size");
  const layers = layerCount(config, family);
  const heads = num(config, "num_attention_heads");
  const ffn = num(config, native ? "ffn_hidden_size" : "intermediate_size");
  const vocab = num(config, "padded_vocab_size", "vocab_size");
  if (!hidden || !layers || !heads || !ffn || !vocab) return null;
  const headDim = num(config, native ? "kv_channels" : "head_dim") ?? hidden / heads;
  const kvHeads = native
    ? config.multi_query_attention
      ? (num(config, "multi_query_group_num") ?? heads)
      : heads
    : (num(config, "num_key_value_heads") ?? heads);
  const q = heads * headDim;
  const kv = kvHeads * headDim;
  const tied = config.tie_word_embeddings === true;
  const modules: Record<string, ModuleShape> = {};
  const add = (name: string, i: number, o: number, perLayer = true) => {
    modules[name] = { in: i, out: o, perLayer };
  };
  if (native) {
    add("query_key_value", hidden, q + 2 * kv);
    add("dense", q, hidden);
    add("dense_h_to_4h", hidden, 2 * ffn);
    add("dense_4h_to_h", ffn, hidden);
    add("output_layer", hidden, vocab, false);
  } else {
    add("q_proj", hidden, q);
    add("k_proj", hidden, kv);
    add("v_proj", hidden, kv);
    add("o_proj", q, hidden);
    if (family.allLinear.includes("gate_up_proj")) add("gate_up_proj", hidden, 2 * ffn);
    else {
      add("gate_proj", hidden, ffn);
      add("up_proj", hidden, ffn);
    }
    add("down_proj", ffn, hidden);
    add("lm_head", hidden, vocab, false);
  }
  const perLayer = Object.values(modules)
    .filter((m) => m.perLayer)
    .reduce((s, m) => s + m.in * m.out, 0);
  const matmulParams = layers * perLayer + vocab * hidden;
  // Biases: ChatGLM3's query_key_value (add_qkv_bias), Qwen2's q/k/v.
  const qkvBias = native ? config.add_qkv_bias === true || config.add_bias_linear === true : family.name === "qwen2";
  const bias = qkvBias ? q + 2 * kv : 0;
  const params = vocab * hidden + layers * (perLayer + bias + 2 * hidden) + hidden + (tied ? 0 : vocab * hidden);
  return {
    modelType: String(config.model_type ?? family.name),
    layers,
    hidden,
    ffn,
    heads,
    kvHeads,
    headDim,
    vocab,
    tied,
    params,
    matmulParams,
    modules,
  };
}

/** The modules a target name stands for (its last dotted part is the leaf name). */
export function targetModule(shape: ModelShape, target: string): ModuleShape | undefined {
  return shape.modules[target.split(".").pop() ?? target];
}

/** LoRA tensors: an A and a B for every adapted module. Unknown names count nothing. */
export function loraTensors(shape: ModelShape, targets: readonly string[]): number {
  let n = 0;
  for (const t of new Set(targets)) {
    const m = targetModule(shape, t);
    if (m) n += 2 * (m.perLayer ? shape.layers : 1);
  }
  return n;
}

/** LoRA parameters: r × (in + out) for every adapted module. Unknown names count nothing. */
export function loraParams(shape: ModelShape, targets: readonly string[], r: number): number {
  let n = 0;
  for (const t of new Set(targets)) {
    const m = targetModule(shape, t);
    if (m) n += r * (m.in + m.out) * (m.perLayer ? shape.layers : 1);
  }
  return n;
}
