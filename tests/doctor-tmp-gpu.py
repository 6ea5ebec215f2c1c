# Temporary (doctor calibration on the GPU machine): peak memory of the engine's native ChatGLM3-6B shape
# with LoRA, bf16, random weights, full-length batches, vs src/doctor/memory.ts's estimate.
import json, sys, time
import torch
import torch.nn.functional as F
sys.path.insert(0, "engine")
from lorakit_engine.models.chatglm import ChatGLMConfig, ChatGLMForConditionalGeneration
from lorakit_engine.inspect_model import attach

cfg = ChatGLMConfig.from_dict({"model_type": "chatglm", "num_layers": 28, "hidden_size": 4096, "ffn_hidden_size": 13696,
    "num_attention_heads": 32, "kv_channels": 128, "multi_query_attention": True, "multi_query_group_num": 2,
    "padded_vocab_size": 65024, "seq_length": 8192, "layernorm_epsilon": 1e-5, "rmsnorm": True, "post_layer_norm": True,
    "add_bias_linear": False, "add_qkv_bias": True, "apply_residual_connection_post_layernorm": False,
    "original_rope": True, "tie_word_embeddings": False, "eos_token_id": 2, "pad_token_id": 0, "torch_dtype": "bfloat16"})
cases = [("qkv r8 ckpt 4x512", 4, 512, True, ["query_key_value"], 8),
         ("qkv r8 no ckpt 4x512", 4, 512, False, ["query_key_value"], 8),
         ("qkv r8 no ckpt 16x512", 16, 512, False, ["query_key_value"], 8),
         ("qkv r16 ckpt 16x512", 16, 512, True, ["query_key_value"], 16),
         ("all r16 no ckpt 16x512", 16, 512, False, ["query_key_value", "dense", "dense_h_to_4h", "dense_4h_to_h"], 16),
         ("qkv r8 ckpt 1x8192", 1, 8192, True, ["query_key_value"], 8)]
out = []
for name, b, s, ckpt, targets, r in cases:
    torch.cuda.empty_cache()
    torch.set_default_dtype(torch.bfloat16)
    with torch.device("cuda"):
        base = ChatGLMForConditionalGeneration(cfg)
    torch.set_default_dtype(torch.float32)
    base.requires_grad_(False)
    model = attach(base, targets, r, 32.0, 0.1)
    if ckpt:
        model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
        model.enable_input_require_grads()
    model.train()
    opt = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-4, fused=True)
    ids = torch.randint(3, 64000, (b, s), device="cuda")
    for it in range(2):
        torch.cuda.reset_peak_memory_stats()
        logits = model(input_ids=ids, attention_mask=torch.ones_like(ids), use_cache=False).logits
        target = torch.cat((ids[:, 1:], torch.full_like(ids[:, :1], -100)), dim=1)
        loss = F.cross_entropy(logits.flatten(0, 1).float(), target.flatten(), ignore_index=-100, reduction="sum") / target.numel()
        del logits
        loss.backward()
        opt.step(); opt.zero_grad(set_to_none=True)
        torch.cuda.synchronize()
    peak = torch.cuda.max_memory_allocated()
    out.append({"case": name, "peak_gib": peak / 2**30, "batch": b, "seq": s, "ckpt": ckpt, "targets": targets, "r": r})
    print(out[-1], flush=True)
    del model, base, opt, ids, loss
json.dump(out, open(sys.argv[1], "w"), indent=1)
