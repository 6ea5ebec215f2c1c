"""Padding-free packing: a packed row gives the same loss, logits and LoRA gradients as the same samples
padded in a batch (float32, 1e-5), positions restart per sample, and samples never see each other."""

from __future__ import annotations

import pytest
import torch
from peft import LoraConfig, get_peft_model

from lorakit_engine.kernels import configure_fast_path, make_packed_attention, pack_batch
from lorakit_engine.kernels.attention import packed_attention
from lorakit_engine.kernels.packing import document_ids, positions_from_cu_seqlens
from lorakit_engine.models import load_model

ATOL = 1e-5
SUM_RTOL = 1e-6  # summed losses (~100s) are compared to float32 rounding of the sum
LENGTHS = (9, 4, 13, 1, 7)


def samples(vocab: int, lengths=LENGTHS, seed: int = 0) -> list[dict[str, torch.Tensor]]:
    """Chat-like samples: a prompt without loss, then a response with loss."""
    gen = torch.Generator().manual_seed(seed)
    out = []
    for n in lengths:
        ids = torch.randint(3, vocab, (n,), generator=gen)
        labels = ids.clone()
        labels[: n // 3] = -100
        out.append({"input_ids": ids, "labels": labels})
    return out


def padded(batch: list[dict[str, torch.Tensor]]) -> dict[str, torch.Tensor]:
    width = max(len(s["input_ids"]) for s in batch)
    ids = torch.zeros(len(batch), width, dtype=torch.long)
    labels = torch.full((len(batch), width), -100)
    mask = torch.zeros(len(batch), width, dtype=torch.long)
    for i, s in enumerate(batch):
        n = len(s["input_ids"])
        ids[i, :n], labels[i, :n], mask[i, :n] = s["input_ids"], s["labels"], 1
    return {"input_ids": ids, "labels": labels, "attention_mask": mask}


def lora_model(fixtures_dir, seed: int = 1):
    model = load_model(fixtures_dir / "models" / "chatglm3-single")
    lora = LoraConfig(target_modules=["query_key_value"], r=4, lora_alpha=16, lora_dropout=0.0)
    model = get_peft_model(model, lora)
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if "lora_B" in name:  # a live adapter, so its gradients flow through attention
                p.copy_(torch.randn(p.shape, generator=gen) * 0.1)
    return model.train()


def loss_and_grads(model, **inputs) -> tuple[torch.Tensor, torch.Tensor, dict[str, torch.Tensor]]:
    model.zero_grad(set_to_none=True)
    out = model(**inputs, loss_reduction="sum")
    out.loss.backward()
    grads = {n: p.grad.clone() for n, p in model.named_parameters() if p.requires_grad}
    return out.loss.detach(), out.n_tokens, grads


def test_pack_batch_layout():
    batch = pack_batch(
        [{"input_ids": [5, 6, 7], "labels": [-100, 6, 7]}, ([8, 9], [8, 9]), ([], []), ([4], [4])]
    )
    assert batch.input_ids.tolist() == [[5, 6, 7, 8, 9, 4]]
    # each sample's first label is dropped: after the shift it would be predicted by the previous sample
    assert batch.labels.tolist() == [[-100, 6, 7, -100, 9, -100]]
    assert batch.position_ids.tolist() == [[0, 1, 2, 0, 1, 0]]
    assert batch.cu_seqlens.tolist() == [0, 3, 5, 6] and batch.cu_seqlens.dtype == torch.int32
    assert (batch.max_seqlen, batch.n_tokens, batch.n_real, batch.n_samples) == (3, 3, 6, 3)
    assert positions_from_cu_seqlens(batch.cu_seqlens, 6).tolist() == batch.position_ids.tolist()
    assert document_ids(batch.cu_seqlens, 6).tolist() == [0, 0, 0, 1, 1, 2]

    extra = pack_batch([([5, 6, 7], [5, 6, 7])], pad_to_multiple_of=8)
    assert extra.input_ids.shape == (1, 8) and extra.cu_seqlens.tolist() == [0, 3, 8]
    assert extra.labels[0, 3:].eq(-100).all() and (extra.n_tokens, extra.n_real) == (2, 3)
    with pytest.raises(ValueError, match="labels"):
        pack_batch([([1, 2], [1])])


def test_packed_attention_is_block_diagonal_causal():
    """sdpa over the packed row == each sample's own causal attention, GQA groups shared per head."""
    gen = torch.Generator().manual_seed(2)
    cu = torch.tensor([0, 5, 6, 14], dtype=torch.int32)
    q, k, v = (torch.randn(14, h, 8, generator=gen) for h in (4, 2, 2))
    ctx = make_packed_attention(cu, None, 14, "sdpa")
    out = packed_attention(q, k, v, ctx)
    for a, b in zip(cu[:-1].tolist(), cu[1:].tolist(), strict=True):
        qs, ks, vs = (x[a:b].transpose(0, 1) for x in (q, k, v))
        ks, vs = ks.repeat_interleave(2, 0), vs.repeat_interleave(2, 0)
        ref = torch.nn.functional.scaled_dot_product_attention(qs, ks, vs, is_causal=True)
        torch.testing.assert_close(out[a:b], ref.transpose(0, 1), atol=ATOL, rtol=0)


def test_packed_equals_padded_loss_and_lora_gradients(fixtures_dir):
    model = lora_model(fixtures_dir)
    batch = samples(model.config.padded_vocab_size)
    loss_pad, n_pad, grads_pad = loss_and_grads(model, **padded(batch))
    packed = pack_batch(batch)
    loss_pack, n_pack, grads_pack = loss_and_grads(model, **packed.model_inputs())
    assert int(n_pad) == int(n_pack) == packed.n_tokens
    assert loss_pack.item() > 1  # O(1) per token: the tolerance means something
    torch.testing.assert_close(loss_pack, loss_pad, atol=ATOL, rtol=SUM_RTOL)
    assert grads_pack.keys() == grads_pad.keys() and len(grads_pack) == 4  # A and B of 2 layers
    for name in grads_pad:
        assert grads_pad[name].abs().max() > 0
        torch.testing.assert_close(grads_pack[name], grads_pad[name], atol=ATOL, rtol=0)

    # and the mean over the packed row is the padded batch's mean
    with torch.no_grad():
        mean_pad = model(**padded(batch)).loss
        mean_pack = model(**packed.model_inputs()).loss
    torch.testing.assert_close(mean_pack, mean_pad, atol=ATOL, rtol=0)


def test_packed_logits_are_each_sample_alone(fixtures_dir):
    model = lora_model(fixtures_dir).eval()
    batch = samples(model.config.padded_vocab_size, seed=5)
    packed = pack_batch(batch)
    with torch.no_grad():
        logits = model(input_ids=packed.input_ids, cu_seqlens=packed.cu_seqlens).logits[0]
        for s, a, b in zip(batch, packed.cu_seqlens[:-1], packed.cu_seqlens[1:], strict=True):
            alone = model(input_ids=s["input_ids"][None]).logits[0]
            torch.testing.assert_close(logits[a:b], alone, atol=ATOL, rtol=0)


def test_flex_backend_matches_sdpa_on_cpu(fixtures_dir):
    pytest.importorskip("torch.nn.attention.flex_attention")
    model = lora_model(fixtures_dir).eval()
    packed = pack_batch(samples(model.config.padded_vocab_size, lengths=(5, 11, 3)))
    with torch.no_grad():
        ref = model(**packed.model_inputs(), return_logits=True).logits
        configure_fast_path(model, attention="flex")
        flex = model(**packed.model_inputs(), return_logits=True).logits
    torch.testing.assert_close(flex, ref, atol=ATOL, rtol=0)


def test_packed_rows_refuse_masks_and_batches(fixtures_dir):
    model = lora_model(fixtures_dir)
    packed = pack_batch(samples(model.config.padded_vocab_size))
    with pytest.raises(ValueError, match="one row"):
        model(**packed.model_inputs(), attention_mask=torch.ones_like(packed.input_ids))
    with pytest.raises(ValueError, match="one row"):
        model(input_ids=packed.input_ids.repeat(2, 1), cu_seqlens=packed.cu_seqlens)


def test_low_memory_checkpointing_gives_the_same_gradients(fixtures_dir):
    model = lora_model(fixtures_dir)
    packed = pack_batch(samples(model.config.padded_vocab_size))
    loss_plain, _, grads_plain = loss_and_grads(model, **packed.model_inputs())
    configure_fast_path(model, checkpointing="low_memory", mlp_chunk_tokens=7, loss_chunk_rows=5)
    assert model.base_model.model.is_gradient_checkpointing
    loss_low, _, grads_low = loss_and_grads(model, **packed.model_inputs())
    torch.testing.assert_close(loss_low, loss_plain, atol=ATOL, rtol=SUM_RTOL)
    for name in grads_plain:
        torch.testing.assert_close(grads_low[name], grads_plain[name], atol=ATOL, rtol=0)
    configure_fast_path(model, checkpointing="none")
    assert not model.base_model.model.is_gradient_checkpointing
    assert model.base_model.model.fast.mlp_chunk_tokens is None


def test_low_memory_keeps_the_frozen_token_table_on_the_host(fixtures_dir):
    model = lora_model(fixtures_dir)
    table = model.get_input_embeddings().weight
    configure_fast_path(model, checkpointing="low_memory", embedding_on_host=True)
    assert table.device.type == "cpu" and model.base_model.model.fast.mlp_chunk_tokens == 1024
    table.requires_grad_(True)
    with pytest.raises(ValueError, match="frozen input embedding"):
        configure_fast_path(model, embedding_on_host=True)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="host vs device placement needs a GPU")
def test_token_table_on_the_host_gives_the_same_loss_and_gradients_on_cuda(fixtures_dir):
    model = lora_model(fixtures_dir).cuda()
    packed = pack_batch(samples(model.config.padded_vocab_size)).to("cuda")
    configure_fast_path(model, checkpointing="full", embedding_on_host=False, attention="sdpa")  # float32
    loss_dev, _, grads_dev = loss_and_grads(model, **packed.model_inputs())
    configure_fast_path(model, checkpointing="low_memory", mlp_chunk_tokens=7, loss_chunk_rows=5)
    assert model.get_input_embeddings().weight.device.type == "cpu"
    assert model.get_input_embeddings().weight.is_pinned()
    loss_host, _, grads_host = loss_and_grads(model, **packed.model_inputs())
    torch.testing.assert_close(loss_host, loss_dev, atol=ATOL, rtol=SUM_RTOL)
    for name in grads_dev:
        torch.testing.assert_close(grads_host[name], grads_dev[name], atol=ATOL, rtol=0)
    from lorakit_engine.generate import greedy  # samples during a low-memory run: the table on the host

    prompts = [[5, 9, 14, 3], [7, 2]]
    on_host = greedy(model, prompts, max_new_tokens=6, stop_ids=[], pad_id=0)
    configure_fast_path(model, embedding_on_host=False)
    assert model.get_input_embeddings().weight.device.type == "cuda"
    assert greedy(model, prompts, max_new_tokens=6, stop_ids=[], pad_id=0) == on_host


@pytest.mark.skipif(not torch.cuda.is_available(), reason="the fused bf16 kernels need a GPU")
def test_low_memory_with_the_fused_kernels_in_bf16_matches_no_checkpointing_on_cuda(fixtures_dir):
    """The GPU configuration of `checkpointing: low_memory` (Triton kernels, host token table, bf16, hooks
    that make the embedding output require grad) recomputes the same tensors as the original forward."""
    model = lora_model(fixtures_dir).cuda().to(torch.bfloat16)
    model.base_model.model.enable_input_require_grads()
    packed = pack_batch(samples(model.config.padded_vocab_size, lengths=(300, 41, 700, 9))).to("cuda")
    configure_fast_path(model, compile=True, checkpointing="none", embedding_on_host=False)
    loss_ref, _, grads_ref = loss_and_grads(model, **packed.model_inputs())
    configure_fast_path(model, compile=True, checkpointing="low_memory", mlp_chunk_tokens=256)
    for _ in range(2):  # the second pass runs the kernels already built in the first
        loss, _, grads = loss_and_grads(model, **packed.model_inputs())
        torch.testing.assert_close(loss.float(), loss_ref.float(), rtol=2e-2, atol=0)
        for name, g in grads_ref.items():
            err = float((grads[name].float() - g.float()).norm() / g.float().norm().clamp_min(1e-12))
            assert err < 5e-2, (name, err)
    configure_fast_path(model, checkpointing="none", embedding_on_host=False)


def test_float32_rows_on_cuda_attend_through_sdpa_not_flash():
    """precision fp32 on a GPU: `auto` picks sdpa with the block mask (varlen's flash kernels take fp16/bf16
    only and crashed the fast path); half rows keep varlen or flex. Asking for varlen in fp32 is refused."""
    from lorakit_engine.kernels.attention import describe_backend, resolve_backend

    cuda = torch.device("cuda")  # only named: nothing runs on it
    assert resolve_backend("auto", cuda, torch.float32) == "sdpa"
    assert resolve_backend("auto", cuda, torch.bfloat16) in ("varlen", "flex")
    assert resolve_backend("auto", torch.device("cpu"), torch.bfloat16) == "sdpa"
    assert "flash attention takes fp16/bf16 only" in describe_backend(cuda, torch.float32)
    with pytest.raises(ValueError, match="varlen"):
        resolve_backend("varlen", cuda, torch.float32)


def test_rows_built_from_prepared_samples_are_pack_batch_rows(tmp_path):
    """batches.build packs prepared samples straight into a row: the row pack_batch makes of the same samples
    (ids, labels with each sample's first masked, positions, boundaries, counts)."""
    from prepared import memorize_set, write_prepared

    from lorakit_engine.batches import build
    from lorakit_engine.data import Prepared

    samples = memorize_set(5)
    data = Prepared(write_prepared(tmp_path, samples)["dir"])
    got = build(data, [3, 0, 4], pad_id=0, packed=True)
    want = pack_batch([samples[i] for i in (3, 0, 4)])
    for key in ("input_ids", "labels", "position_ids", "cu_seqlens"):
        assert torch.equal(getattr(got, key), getattr(want, key)), key
    assert (got.max_seqlen, got.n_tokens, got.n_real) == (want.max_seqlen, want.n_tokens, want.n_real)
    padded = build(data, [3, 0, 4], pad_id=0, packed=False)
    assert (padded.trained_tokens, padded.real_tokens) == (got.trained_tokens, got.real_tokens)
