// The model family registry, keyed by config.json `model_type`: how each family is built
// (natively or through transformers), its default LoRA targets and learning rate, its chat
// template, stop tokens and where config.json keeps its layer count. The one list of families:
// exported to protocol/families.json, which the engine's models/registry.py reads.

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
  /** config.json keys giving the layer count, the first present wins. */
  layerKeys: string[];
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
  },
  ...(["qwen2", "qwen3"] as const).map(
    (name): Family => ({
      name,
      modelTypes: [name],
      builder: "transformers",
      targets: LLAMA_ALL,
      allLinear: LLAMA_ALL,
      lr: 1e-4,
      template: "chatml",
      stopTokens: ["<|im_end|>", "<|endoftext|>"],
      layerKeys: ["num_hidden_layers"],
    }),
  ),
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
  },
  // GLM-4 in transformers' layout: glm-4-9b-chat-hf is GlmForCausalLM, the GLM-4-0414 models Glm4ForCausalLM
  // (two more norms a layer). Both split ChatGLM3's query_key_value into q_proj/k_proj/v_proj.
  ...(["glm", "glm4"] as const).map(
    (name): Family => ({
      name,
      modelTypes: [name],
      builder: "transformers",
      targets: LLAMA_PROJ,
      allLinear: ["q_proj", "k_proj", "v_proj", "o_proj", "gate_up_proj", "down_proj"],
      lr: 1e-4,
      template: "chatml",
      stopTokens: ["<|user|>", "<|observation|>", "<|endoftext|>"],
      layerKeys: ["num_hidden_layers"],
    }),
  ),
];

export function familyFor(modelType: string): Family | undefined {
  return FAMILIES.find((f) => f.modelTypes.includes(modelType));
}

export function supportedModelTypes(): string[] {
  return FAMILIES.flatMap((f) => f.modelTypes);
}

/** Whether the engine has a fast path for the family (packed rows, fused loss and LoRA): its native builds. */
export function hasFastPath(family: Family): boolean {
  return family.builder === "native";
}

/** protocol/families.json: the registry as the engine reads it. */
export function familiesJson(): unknown {
  return {
    version: 1,
    families: FAMILIES.map((f) => ({
      name: f.name,
      model_types: f.modelTypes,
      builder: f.builder,
      targets: f.targets,
      all_linear: f.allLinear,
      lr: f.lr,
      template: f.template,
      stop_tokens: f.stopTokens,
      layer_keys: f.layerKeys,
    })),
  };
}
