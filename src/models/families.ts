// The model family registry, keyed by config.json `model_type`: how each family is built
// (natively or through transformers), its default LoRA targets and learning rate, its chat
// template and stop tokens, and the pitfalls the doctor knows about.

export interface Family {
  /** Registry name (the engine's name for the builder). */
  name: string;
  /** `config.json` `model_type` values served by this family. */
  modelTypes: string[];
  /** `native`: built by lorakit's engine with the checkpoint's own module names; `transformers`: its own classes. */
  builder: "native" | "transformers";
  /** Default LoRA targets (module leaf names). */
  targets: string[];
  /** All linear projections, for `targets: all-linear`-style advice. */
  allLinear: string[];
  /** Default learning rate for LoRA with the Self-LLM recipe. */
  lr: number;
  /** Built-in template used when the checkpoint carries no chat_template. */
  template: "chatglm3" | "chatml" | "llama3" | "deepseek";
  /** Token spellings that end generation (looked up in the tokenizer; missing ones are skipped). */
  stopTokens: string[];
  /** config.json keys giving the layer count. */
  layerKeys: string[];
  pitfalls: string[];
}

const LLAMA_PROJ = ["q_proj", "k_proj", "v_proj", "o_proj"];
const LLAMA_ALL = [...LLAMA_PROJ, "gate_proj", "up_proj", "down_proj"];

export const FAMILIES: Family[] = [
  {
    name: "chatglm",
    modelTypes: ["chatglm"],
    builder: "native",
    targets: ["query_key_value"],
    allLinear: ["query_key_value", "dense", "dense_h_to_4h", "dense_4h_to_h"],
    lr: 1e-4,
    template: "chatglm3",
    stopTokens: ["</s>", "<|user|>", "<|observation|>"],
    layerKeys: ["num_layers"],
    pitfalls: [
      "LoRA targets are named query_key_value, not q_proj/v_proj.",
      "Role markers (<|user|>…) written as text are not the special tokens.",
      "float16 weights with float16 adapters drive the loss to 0 or NaN: keep adapters in float32, prefer bf16.",
      "The checkpoint's remote code breaks on newer transformers; lorakit never runs it.",
    ],
  },
  {
    name: "llama",
    modelTypes: ["llama"],
    builder: "transformers",
    targets: LLAMA_PROJ,
    allLinear: LLAMA_ALL,
    lr: 1e-4,
    template: "llama3",
    stopTokens: ["<|eot_id|>", "<|end_of_text|>", "<|im_end|>", "<｜end▁of▁sentence｜>", "</s>"],
    layerKeys: ["num_hidden_layers"],
    pitfalls: ["pad == eos masks the end-of-turn token unless labels are built explicitly."],
  },
  {
    name: "qwen2",
    modelTypes: ["qwen2"],
    builder: "transformers",
    targets: LLAMA_ALL,
    allLinear: LLAMA_ALL,
    lr: 1e-4,
    template: "chatml",
    stopTokens: ["<|im_end|>", "<|endoftext|>"],
    layerKeys: ["num_hidden_layers"],
    pitfalls: ["The base (non-instruct) checkpoint never saw <|im_end|> as end of turn."],
  },
  {
    name: "qwen3",
    modelTypes: ["qwen3"],
    builder: "transformers",
    targets: LLAMA_ALL,
    allLinear: LLAMA_ALL,
    lr: 1e-4,
    template: "chatml",
    stopTokens: ["<|im_end|>", "<|endoftext|>"],
    layerKeys: ["num_hidden_layers"],
    pitfalls: ["The checkpoint's template adds <think> blocks; train and serve with the same template."],
  },
  {
    name: "mistral",
    modelTypes: ["mistral"],
    builder: "transformers",
    targets: LLAMA_PROJ,
    allLinear: LLAMA_ALL,
    lr: 1e-4,
    template: "chatml",
    stopTokens: ["</s>", "<|im_end|>"],
    layerKeys: ["num_hidden_layers"],
    pitfalls: [],
  },
  {
    name: "glm4",
    modelTypes: ["glm", "glm4"],
    builder: "transformers",
    targets: LLAMA_PROJ,
    allLinear: ["q_proj", "k_proj", "v_proj", "o_proj", "gate_up_proj", "down_proj"],
    lr: 1e-4,
    template: "chatml",
    stopTokens: ["<|user|>", "<|observation|>", "<|endoftext|>"],
    layerKeys: ["num_hidden_layers"],
    pitfalls: ["GLM-4 checkpoints in transformers' layout split query_key_value into q_proj/k_proj/v_proj."],
  },
];

export function familyFor(modelType: string): Family | undefined {
  return FAMILIES.find((f) => f.modelTypes.includes(modelType));
}

export function supportedModelTypes(): string[] {
  return FAMILIES.flatMap((f) => f.modelTypes);
}
