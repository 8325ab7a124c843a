"""model.py against transformers as the reference (tiny random weights, fp32, CPU), and the
checkpoint, chat template, preprocessing and error paths.   python -m pytest tests/test_model.py"""
import json
import os

import numpy as np
import pytest
import torch
from PIL import Image
from safetensors.torch import save_file

import model as M
from tokenizer import load_tokenizer

transformers = pytest.importorskip("transformers")  # test-only dependency (requirements-test.txt)
from transformers import (InternVLConfig, InternVLForConditionalGeneration, InternVLVisionConfig,  # noqa: E402
                          InternVLVisionModel, LlamaConfig, LlamaForCausalLM, Qwen2Config, Qwen2ForCausalLM,
                          Qwen3Config, Qwen3ForCausalLM)

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
IMG_CTX = 250  # <IMG_CONTEXT> id of the random-weight models below
ATOL = 1e-4


def randomize(module, seed=0):
    """Random weights at a trained model's scale (norm weights near 1, matrices ~ 1/sqrt(fan_in)), so
    activations stay O(1), attention is sharp and a 1e-4 tolerance means something."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in module.named_parameters():
            r = torch.randn(p.shape, generator=g)
            if p.dim() == 1:
                p.copy_(0.1 * r if name.endswith("bias") else 1 + 0.1 * r)
            elif "embed" in name or "cls_token" in name:
                p.copy_(r)
            else:
                p.copy_(r / p[0].numel() ** 0.5)
    return module.eval()


def hf_vision_config(image_size=56, **kw):
    return InternVLVisionConfig(hidden_size=32, num_hidden_layers=2, num_attention_heads=4, intermediate_size=64,
                                image_size=image_size, patch_size=14, attention_bias=True, **kw)


def hf_text_config(cls=LlamaConfig, **kw):
    # GQA with 2 query heads per kv head; rope_theta as InternLM2
    return cls(**dict(vocab_size=256, hidden_size=64, num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2,
                      intermediate_size=96, rms_norm_eps=1e-5, max_position_embeddings=512, tie_word_embeddings=False,
                      rope_parameters={"rope_type": "default", "rope_theta": 1e6}) | kw)


def released_llm(arch, **kw):
    """Our LLMConfig as parsed from a released config.json's llm_config (transformers 4 field names) of `arch`;
    a field given None is left out."""
    lc = dict(architectures=[arch], vocab_size=256, hidden_size=64, num_hidden_layers=2, num_attention_heads=4,
              num_key_value_heads=2, intermediate_size=96, rms_norm_eps=1e-5, rope_theta=1e6,
              max_position_embeddings=512, tie_word_embeddings=False) | kw
    return M.config_from_dict({"vision_config": {}, "llm_config": {k: v for k, v in lc.items() if v is not None}}).llm


# -- the released InternVL2 layout, written from transformers' weights (the inverse of transformers'
#    convert_internvl_weights_to_hf.py: qkv concatenated, q/k/v packed per kv head into wqkv)

def vision_to_released(sd, prefix):
    out = {}
    for k, v in sd.items():
        if not k.startswith(prefix):
            continue
        k = "vision_model." + k[len(prefix):]
        for hf, ours in (("embeddings.cls_token", "embeddings.class_embedding"),
                         ("embeddings.position_embeddings", "embeddings.position_embedding"),
                         ("patch_embeddings.projection", "patch_embedding"), (".layer.", ".layers."),
                         ("lambda_1", "ls1"), ("lambda_2", "ls2"), ("attention.projection_layer", "attn.proj"),
                         ("attention.", "attn."), ("layernorm_before", "norm1"), ("layernorm_after", "norm2")):
            k = k.replace(hf, ours)
        out[k] = v
    for k in [k for k in out if ".attn.q_proj." in k]:
        out[k.replace("q_proj", "qkv")] = torch.cat([out.pop(k), out.pop(k.replace("q_", "k_")), out.pop(k.replace("q_", "v_"))])
    return out


def llama_to_internlm2(sd, prefix, cfg):
    g, d = cfg.num_attention_heads // cfg.num_key_value_heads, cfg.hidden_size // cfg.num_attention_heads
    out = {}
    for k, v in sd.items():
        if not k.startswith(prefix) or "rotary" in k:
            continue
        k = k[len(prefix):]
        for hf, ours in (("embed_tokens", "tok_embeddings"), ("self_attn.o_proj", "attention.wo"),
                         ("mlp.gate_proj", "feed_forward.w1"), ("mlp.up_proj", "feed_forward.w3"),
                         ("mlp.down_proj", "feed_forward.w2"), ("input_layernorm", "attention_norm"),
                         ("post_attention_layernorm", "ffn_norm")):
            k = k.replace(hf, ours)
        out["language_model.model." + k] = v
    for k in [k for k in out if ".self_attn.q_proj." in k]:
        q, kk, vv = out.pop(k), out.pop(k.replace("q_proj", "k_proj")), out.pop(k.replace("q_proj", "v_proj"))
        H = q.shape[1]
        # rows: for each kv head h: q heads h*g .. h*g+g-1, then k_h, then v_h
        packed = torch.cat([q.view(-1, g, d, H), kk.view(-1, 1, d, H), vv.view(-1, 1, d, H)], dim=1)
        out[k.replace("self_attn.q_proj", "attention.wqkv")] = packed.reshape(-1, H)
    return out


def write_checkpoint(folder, tensors, config, added=None, shards=1):
    os.makedirs(folder, exist_ok=True)
    keys = sorted(tensors)
    parts = [keys[i::shards] for i in range(shards)]
    if shards == 1:
        save_file({k: tensors[k].contiguous() for k in keys}, os.path.join(folder, "model.safetensors"))
    else:
        weight_map = {}
        for i, part in enumerate(parts):
            name = f"model-{i + 1:05d}-of-{shards:05d}.safetensors"
            save_file({k: tensors[k].contiguous() for k in part}, os.path.join(folder, name))
            weight_map.update({k: name for k in part})
        json.dump({"metadata": {}, "weight_map": weight_map}, open(os.path.join(folder, "model.safetensors.index.json"), "w"))
    json.dump(config, open(os.path.join(folder, "config.json"), "w"))
    json.dump(added or {"<IMG_CONTEXT>": IMG_CTX}, open(os.path.join(folder, "added_tokens.json"), "w"))
    return folder


def released_config(vision_cfg, text_cfg, arch, image_size):
    return {"architectures": ["InternVLChatModel"], "force_image_size": image_size, "downsample_ratio": 0.5,
            "ps_version": "v2", "select_layer": -1, "template": "internlm2-chat", "max_dynamic_patch": 12,
            "vision_config": {"hidden_size": vision_cfg.hidden_size, "num_hidden_layers": vision_cfg.num_hidden_layers,
                              "num_attention_heads": vision_cfg.num_attention_heads, "image_size": image_size,
                              "intermediate_size": vision_cfg.intermediate_size, "patch_size": 14, "qkv_bias": True,
                              "qk_normalization": False, "norm_type": "layer_norm", "layer_norm_eps": 1e-6},
            "llm_config": {"architectures": [arch], "vocab_size": text_cfg.vocab_size, "hidden_size": text_cfg.hidden_size,
                           "num_hidden_layers": text_cfg.num_hidden_layers, "intermediate_size": text_cfg.intermediate_size,
                           "num_attention_heads": text_cfg.num_attention_heads, "rms_norm_eps": text_cfg.rms_norm_eps,
                           "num_key_value_heads": text_cfg.num_key_value_heads, "rope_theta": 1e6,
                           "max_position_embeddings": 512, "rope_scaling": {"type": "dynamic", "factor": 2.0},
                           "tie_word_embeddings": False}}


# ----------------------------------------------------------------------------------------------

@pytest.mark.parametrize("image_size,input_size,variant", [(56, 56, {}), (56, 84, {}),
                                                           (56, 56, {"use_qk_norm": True, "norm_type": "rms_norm"})])
def test_vit_matches_transformers(image_size, input_size, variant):
    hf = randomize(InternVLVisionModel(hf_vision_config(image_size, **variant)))
    cfg = M.VisionConfig(image_size=image_size, hidden_size=32, num_hidden_layers=2, num_attention_heads=4,
                         intermediate_size=64, qk_normalization=bool(variant), norm_type=variant.get("norm_type", "layer_norm"))
    ours = M.InternViT(cfg)
    sd = {k.removeprefix("vision_model."): v for k, v in vision_to_released(hf.state_dict(), "").items()}
    ours.load_state_dict(sd)
    x = torch.randn(3, 3, input_size, input_size)
    with torch.no_grad():
        ref = hf(pixel_values=x).last_hidden_state
        assert (ours(x) - ref).abs().max() < ATOL
        # select_layer=-2 stops one block early, as InternVL's hidden_states[-2]
        ref2 = hf(pixel_values=x, output_hidden_states=True).hidden_states[-2]
        assert (ours(x, select_layer=-2) - ref2).abs().max() < ATOL


def llm_pair(kind):
    if kind.startswith("internlm2"):
        dynamic = kind == "internlm2-dynamic-ntk"  # 24 + 20 tokens run past max_position_embeddings=16
        hf_cfg = hf_text_config()
        if dynamic:
            hf_cfg.max_position_embeddings = 16
            hf_cfg.rope_parameters = {"rope_type": "dynamic", "factor": 2.0, "rope_theta": 1e6}
        hf = randomize(LlamaForCausalLM(hf_cfg))
        cfg = M.LLMConfig(vocab_size=256, hidden_size=64, num_hidden_layers=2, num_attention_heads=4,
                          num_key_value_heads=2, intermediate_size=96, max_position_embeddings=16 if dynamic else 512,
                          rope_scaling={"type": "dynamic", "factor": 2.0})
        sd = llama_to_internlm2(hf.state_dict(), "model.", hf.config)
        sd["language_model.output.weight"] = hf.state_dict()["lm_head.weight"]
    elif kind == "qwen2":
        hf = randomize(Qwen2ForCausalLM(hf_text_config(Qwen2Config)))
        cfg = M.LLMConfig(architecture="Qwen2ForCausalLM", vocab_size=256, hidden_size=64, num_hidden_layers=2,
                          num_attention_heads=4, num_key_value_heads=2, intermediate_size=96, qkv_bias=True,
                          max_position_embeddings=512)
        sd = {"language_model." + k: v for k, v in hf.state_dict().items()}
    elif kind == "qwen2.5-tied":  # Qwen2.5-0.5B/3B (InternVL2.5/3-1B, -4B): Qwen2's layout, output tied
        hf = randomize(Qwen2ForCausalLM(hf_text_config(Qwen2Config, tie_word_embeddings=True, rms_norm_eps=1e-6)))
        cfg = released_llm("Qwen2ForCausalLM", tie_word_embeddings=True, rms_norm_eps=1e-6, rope_scaling=None)
        sd = {"language_model." + k: v for k, v in hf.state_dict().items() if k != "lm_head.weight"}
    elif kind == "qwen3":  # InternVL3.5: q/k RMSNorm per head, no biases, head_dim 32 (not hidden / heads = 16)
        hf = randomize(Qwen3ForCausalLM(hf_text_config(Qwen3Config, head_dim=32, rms_norm_eps=1e-6)))
        cfg = released_llm("Qwen3ForCausalLM", head_dim=32, rms_norm_eps=1e-6, attention_bias=False)
        sd = {"language_model." + k: v for k, v in hf.state_dict().items()}
    else:  # internlm3 (InternVL3-9B): Llama's math and names, its own head_dim, dynamic NTK rope (here past 16 tokens)
        rope = {"rope_type": "dynamic", "factor": 6.0}
        hf = randomize(LlamaForCausalLM(hf_text_config(head_dim=32, max_position_embeddings=16,
                                                       rope_parameters=dict(rope, rope_theta=5e7))))
        cfg = released_llm("InternLM3ForCausalLM", head_dim=32, max_position_embeddings=16, rope_theta=5e7,
                           rope_scaling=rope, qkv_bias=False, bias=False)
        sd = {"language_model." + k: v for k, v in hf.state_dict().items()}
    ours = M.LanguageModel(cfg).eval()
    config, params = M.InternVLConfig(llm=cfg), dict(ours.named_parameters(prefix="language_model"))
    where = {key: (name, slot) for name in params for key, slot in M.checkpoint_keys(name, config)}
    with torch.no_grad():  # through the loader's own key mapping and wqkv packing
        for key, t in sd.items():
            name, slot = where[key]
            target = params[name].data if slot is None else M.qkv_part(params[name].data, name, slot, config)
            target.copy_(t.view(target.shape))
    return hf, ours


def greedy(ours, ids, n):
    with torch.no_grad():
        caches = M.new_caches(ours.config, ids.shape[0], ids.shape[1] + n, torch.float32, "cpu")
        pos = torch.arange(ids.shape[1])[None]
        logits = ours(ours.model.tok_embeddings(ids), pos, caches=caches)
        out = []
        for i in range(n):
            tok = logits[:, -1].argmax(-1)
            out.append(tok)
            logits = ours(ours.model.tok_embeddings(tok[:, None]), torch.tensor([[ids.shape[1] + i]]), caches=caches)
        return torch.stack(out, 1)


@pytest.mark.parametrize("kind", ["internlm2", "internlm2-dynamic-ntk", "qwen2", "qwen2.5-tied", "qwen3", "internlm3"])
def test_llm_matches_transformers(kind):
    """InternLM2/2.5 against Llama with q/k/v packed per kv head; Qwen2/2.5, Qwen3 against their own classes;
    InternLM3 against Llama, which it subclasses (its modular file) but for q/k/v and o/MLP bias switches, off here."""
    hf, ours = llm_pair(kind)
    ids = torch.randint(0, 256, (1, 24), generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        ref = hf(ids).logits
        got = ours(ours.model.tok_embeddings(ids), torch.arange(24)[None])
    assert (got - ref).abs().max() < ATOL
    ref_tokens = hf.generate(ids, attention_mask=torch.ones_like(ids), max_new_tokens=20, min_new_tokens=20,
                             do_sample=False, pad_token_id=0)[:, 24:]
    assert torch.equal(greedy(ours, ids, 20), ref_tokens)


def full_model_pair(tmp_path, text="llama", image_size=56):
    text_cfg = hf_text_config(Qwen2Config if text == "qwen2" else LlamaConfig)
    hf = InternVLForConditionalGeneration(InternVLConfig(vision_config=hf_vision_config(image_size), text_config=text_cfg,
                                                         image_token_id=IMG_CTX, downsample_ratio=0.5,
                                                         tie_word_embeddings=False))
    randomize(hf)
    sd = hf.state_dict()
    tensors = vision_to_released(sd, "model.vision_tower.")
    for hf_name, ours in (("layer_norm", "0"), ("linear_1", "1"), ("linear_2", "3")):
        for p in ("weight", "bias"):
            tensors[f"mlp1.{ours}.{p}"] = sd[f"model.multi_modal_projector.{hf_name}.{p}"]
    if text == "qwen2":
        arch = "Qwen2ForCausalLM"
        tensors.update({"language_model.model." + k[len("model.language_model."):]: v for k, v in sd.items()
                        if k.startswith("model.language_model.")})
        tensors["language_model.lm_head.weight"] = sd["lm_head.weight"]
    else:
        arch = "InternLM2ForCausalLM"
        tensors.update(llama_to_internlm2(sd, "model.language_model.", text_cfg))
        tensors["language_model.output.weight"] = sd["lm_head.weight"]
    folder = write_checkpoint(str(tmp_path / f"ckpt-{text}"), tensors, released_config(hf.config.vision_config, text_cfg, arch, image_size))
    return hf, M.load_model(folder)


def image_prompt(tiles, tokens_per_tile, seed=0):
    g = torch.Generator().manual_seed(seed)
    pre, post = torch.randint(0, 240, (5,), generator=g), torch.randint(0, 240, (9,), generator=g)
    return torch.cat([pre, torch.full((tiles * tokens_per_tile,), IMG_CTX), post])[None]


@pytest.mark.parametrize("text", ["llama", "qwen2"])
def test_full_model_matches_transformers(tmp_path, text):
    hf, ours = full_model_pair(tmp_path, text)
    assert ours.img_context_token_id == IMG_CTX and ours.num_image_token == 4
    pv = torch.randn(5, 3, 56, 56)  # 4 tiles + thumbnail
    ids = image_prompt(5, 4)
    with torch.no_grad():
        ref = hf(input_ids=ids, pixel_values=pv).logits
        assert (ours(pv, ids) - ref).abs().max() < ATOL
    ref_tokens = hf.generate(input_ids=ids, attention_mask=torch.ones_like(ids), pixel_values=pv, max_new_tokens=20,
                             min_new_tokens=20, do_sample=False, pad_token_id=0)
    assert ours.generate(pv, ids, max_new_tokens=20) == ref_tokens[:, ids.shape[1]:].tolist()


def test_left_padded_batch_equals_one_by_one(tmp_path):
    _, ours = full_model_pair(tmp_path)
    a, b = image_prompt(3, 4, seed=1), image_prompt(1, 4, seed=2)
    pa, pb = torch.randn(3, 3, 56, 56), torch.randn(1, 3, 56, 56)
    L = a.shape[1]
    ids = torch.cat([a, torch.cat([torch.zeros(1, L - b.shape[1], dtype=torch.long), b], 1)])
    mask = torch.ones_like(ids)
    mask[1, : L - b.shape[1]] = 0
    both = ours.generate(torch.cat([pa, pb]), ids, mask, max_new_tokens=12)
    assert both == ours.generate(pa, a, max_new_tokens=12) + ours.generate(pb, b, max_new_tokens=12)
    # stop ids end a row early; max_new_tokens bounds the rest
    first = both[0][3]
    stopped = ours.generate(pa, a, max_new_tokens=12, stop_ids=[first])
    assert stopped[0] == both[0][: both[0].index(first)]


@pytest.mark.parametrize("device", ["cpu", pytest.param("cuda", marks=pytest.mark.skipif(
    not torch.cuda.is_available(), reason="the captured CUDA graph needs a GPU; on a CPU the same step runs eagerly"))])
@pytest.mark.parametrize("arch", ["InternLM2ForCausalLM", "Qwen3ForCausalLM"])
def test_static_decode_step_equals_eager_decoding(tmp_path, device, arch):
    """decode_step (static buffers; on CUDA a replayed graph) gives the eager cached loop's logits, left padding too
    (Qwen3: its own head_dim and q/k norms)."""
    ours = full_model_pair(tmp_path)[1] if arch == "InternLM2ForCausalLM" else tiny_family(arch)
    ours = ours.to(device)
    a, b = image_prompt(3, 4, seed=1), image_prompt(1, 4, seed=2)
    L = a.shape[1]
    ids = torch.cat([a, torch.cat([torch.zeros(1, L - b.shape[1], dtype=torch.long), b], 1)]).to(device)
    mask = torch.ones_like(ids)
    mask[1, : L - b.shape[1]] = 0
    pv = torch.randn(4, 3, 56, 56).to(device)

    @torch.inference_mode()
    def decode(static, steps=6):
        caches = M.new_caches(ours.config.llm, 2, L + steps, torch.float32, device)
        logits, m, out = ours(pv, ids, mask, caches=caches, last_only=True)[:, -1], mask, []
        next_logits = M.decode_step(ours.language_model, caches, mask) if static else None
        for _ in range(steps):
            out.append(logits.clone())
            token = logits.argmax(-1)
            m = torch.cat([m, torch.ones_like(m[:, :1])], 1)
            logits = next_logits(token) if static else ours(None, token[:, None], m, caches=caches)[:, -1]
        return torch.stack(out)
    assert (decode(True) - decode(False)).abs().max() < 1e-4


class EveryOther(torch.nn.Module):
    """The compressor extension point's contract, written here: each image hands on its tokens 0, 2, 4, ... (a
    tile has 4) through the projector, at their own position ids (keep_positions) or at consecutive ones."""

    def __init__(self, keep_positions):
        super().__init__()
        self.keep_positions = keep_positions

    def tokens_per_tile(self, n):
        return n // 2

    def compress(self, grid, tiles_per_image, projector, counts):
        assert counts == [n * grid.shape[1] * grid.shape[2] // 2 for n in tiles_per_image]  # the prompt's
        positions = torch.cat([torch.arange(0, n * grid.shape[1] * grid.shape[2], 2) for n in tiles_per_image])
        return projector(grid.flatten(0, 2)[::2]), positions if self.keep_positions else None


class FirstByContent(torch.nn.Module):
    """A budget by content, written here: each image hands on its first `count` tokens at their own position ids,
    count = 1 + the number of its tokens whose first channel is positive (tokens_per_tile None)."""

    def tokens_per_tile(self, n):
        return None

    def counts(self, grid, tiles_per_image, projector):
        images = grid.flatten(0, 2).split([n * grid.shape[1] * grid.shape[2] for n in tiles_per_image])
        return [1 + int((x[:, 0] > 0).sum()) for x in images]

    def compress(self, grid, tiles_per_image, projector, counts):
        images = grid.flatten(0, 2).split([n * grid.shape[1] * grid.shape[2] for n in tiles_per_image])
        kept = torch.cat([x[:c] for x, c in zip(images, counts)])
        return projector(kept), torch.cat([torch.arange(c) for c in counts])


@pytest.mark.parametrize("keep_positions", [True, False])
def test_compressor_extension_point(tmp_path, keep_positions):
    """A model with a compressor equals the full model with the dropped image tokens masked out as keys, at the
    kept tokens' own position ids (or consecutive ones), in the prefill and in decode steps that continue from
    the last position id."""
    _, full = full_model_pair(tmp_path)
    small = M.InternVLChat(full.config, EveryOther(keep_positions))
    small.load_state_dict(full.state_dict())
    small.img_context_token_id = full.img_context_token_id
    assert small.eval().num_image_token == 2
    pv, ids, short = torch.randn(3, 3, 56, 56), image_prompt(3, 4, seed=3), image_prompt(3, 2, seed=3)
    kept = torch.ones_like(ids)
    kept[0, 5 + 1:5 + 12:2] = 0  # the image's tokens 1, 3, 5, ... (after 5 text tokens)
    with torch.no_grad():
        caches = M.new_caches(full.config.llm, 1, short.shape[1] + 2, torch.float32, "cpu")
        got = small(pv, short, caches=caches)[0]
        steps = [got[-1]]
        for _ in range(2):  # no attention mask: the positions come from the cache's last position id alone
            steps.append(small(None, steps[-1].argmax()[None, None], caches=caches)[0, -1])
        for n, step in enumerate(steps):
            tokens = torch.stack([s.argmax() for s in steps[:n]]).view(1, n) if n else ids[:, :0]
            ids_n, kept_n = torch.cat([ids, tokens], 1), torch.cat([kept, torch.ones_like(tokens)], 1)
            positions = torch.arange(ids_n.shape[1])[None] if keep_positions else (kept_n.cumsum(-1) - 1).clamp(min=0)
            want = full(pv, ids_n, kept_n, position_ids=positions)[0]
            if n == 0:
                assert torch.allclose(got, want[kept[0].bool()], atol=ATOL)
            assert torch.allclose(step, want[-1], atol=ATOL), n
        assert not torch.allclose(got[-1], full(pv, ids)[0, -1], atol=1e-2)  # something was dropped


def test_a_budget_by_content_through_the_extension_point(tmp_path):
    """A compressor whose counts follow the content: batch_chat builds each prompt with its image's count, and the
    logits equal the full model's with the dropped tokens masked out as keys; forward without tiles_per_image
    refuses a prompt whose runs are not whole tiles."""
    _, full = full_model_pair(tmp_path)
    small = M.InternVLChat(full.config, FirstByContent())
    small.load_state_dict(full.state_dict())
    small.img_context_token_id = full.img_context_token_id
    small.eval()
    pv = torch.randn(3, 3, 56, 56)
    with torch.no_grad():
        count = small.image_token_counts(small.visual_grid(pv), [3])[0]
        assert 1 < count < 12 and count != 6  # not whole tiles of 4: the tiles must be passed
        short, ids = image_prompt(1, count, seed=4), image_prompt(3, 4, seed=4)
        got = small(pv, short, tiles_per_image=[3])[0]
        kept = torch.ones_like(ids)
        kept[0, 5 + count:5 + 12] = 0
        want = full(pv, ids, kept, position_ids=torch.arange(ids.shape[1])[None])[0]
        assert torch.allclose(got, want[kept[0].bool()], atol=ATOL)
        with pytest.raises(ValueError, match="pass tiles_per_image"):
            small(pv, short)

    class CharTokenizer:  # one id per character, the image token its own: enough for batch_chat's prompts
        def encode(self, text):
            return [IMG_CTX if p == "\0" else ord(p) % 100 + 10 for p in text.replace(M.IMG_CONTEXT, "\0")]

        def token_to_id(self, token):
            return 1

        def decode(self, ids):
            return " ".join(map(str, ids))
    stats, tok = {}, CharTokenizer()
    small.batch_chat(tok, [pv, None], ["what?", "hi"], max_new_tokens=2, stats=stats)
    assert stats["image_tokens"] == [count, 0] and stats["visual_tokens"] == count
    assert tok.encode(M.chat_prompt("what?", count)).count(IMG_CTX) == count


def test_before_layer_hook_runs_before_every_layer_and_may_drop_tokens(tmp_path):
    _, ours = full_model_pair(tmp_path)
    pv, ids = torch.randn(1, 3, 56, 56), image_prompt(1, 4)
    seen = []

    def text_only_from_layer_1(lm, i, x, cos, sin, mask, image_mask):
        seen.append((i, x.shape[1], int(image_mask.sum())))
        keep = ~image_mask[0] if i == 1 else torch.ones(x.shape[1], dtype=torch.bool)
        return x[:, keep], cos[:, :, keep], sin[:, :, keep], mask
    with torch.no_grad():
        plain = ours(pv, ids)
        ours.language_model.before_layer = text_only_from_layer_1
        pruned = ours(pv, ids)
    assert seen == [(0, 18, 4), (1, 18, 4)] and pruned.shape == (1, 14, plain.shape[-1])
    assert not torch.allclose(pruned[0, -1], plain[0, -1], atol=1e-2)
    caches = M.new_caches(ours.config.llm, 1, 20, torch.float32, "cpu")
    with pytest.raises(ValueError, match="before_layer"):  # its fixed buffers cannot follow a hook's tokens
        M.decode_step(ours.language_model, caches, torch.ones_like(ids))


def test_released_key_names_single_and_sharded(tmp_path):
    """Keys and shapes as listed for InternVL2-2B, scaled down; bf16 on disk as released."""
    V, D, F, L, G, d, kv, vocab = 32, 64, 96, 2, 2, 16, 2, 300
    t = {"vision_model.embeddings.class_embedding": [1, 1, V], "vision_model.embeddings.position_embedding": [1, 17, V],
         "vision_model.embeddings.patch_embedding.weight": [V, 3, 14, 14], "vision_model.embeddings.patch_embedding.bias": [V],
         "mlp1.0.weight": [4 * V], "mlp1.0.bias": [4 * V], "mlp1.1.weight": [D, 4 * V], "mlp1.1.bias": [D],
         "mlp1.3.weight": [D, D], "mlp1.3.bias": [D], "language_model.model.tok_embeddings.weight": [vocab, D],
         "language_model.model.norm.weight": [D], "language_model.output.weight": [vocab, D]}
    for i in range(2):
        p = f"vision_model.encoder.layers.{i}."
        t.update({p + "ls1": [V], p + "ls2": [V], p + "attn.qkv.weight": [3 * V, V], p + "attn.qkv.bias": [3 * V],
                  p + "attn.proj.weight": [V, V], p + "attn.proj.bias": [V], p + "mlp.fc1.weight": [2 * V, V],
                  p + "mlp.fc1.bias": [2 * V], p + "mlp.fc2.weight": [V, 2 * V], p + "mlp.fc2.bias": [V],
                  p + "norm1.weight": [V], p + "norm1.bias": [V], p + "norm2.weight": [V], p + "norm2.bias": [V]})
    for i in range(L):
        p = f"language_model.model.layers.{i}."
        t.update({p + "attention.wqkv.weight": [(kv * G + 2 * kv) * d, D], p + "attention.wo.weight": [D, D],
                  p + "feed_forward.w1.weight": [F, D], p + "feed_forward.w3.weight": [F, D],
                  p + "feed_forward.w2.weight": [D, F], p + "attention_norm.weight": [D], p + "ffn_norm.weight": [D]})
    g = torch.Generator().manual_seed(0)
    tensors = {k: torch.randn(s, generator=g).to(torch.bfloat16) for k, s in t.items()}
    cfg = released_config(hf_vision_config(), hf_text_config(), "InternLM2ForCausalLM", 56)
    cfg["vision_config"]["intermediate_size"], cfg["llm_config"]["vocab_size"] = 2 * V, vocab
    ids = image_prompt(2, 4)
    pv = torch.randn(2, 3, 56, 56)
    logits = []
    for shards in (1, 3):
        m = M.load_model(write_checkpoint(str(tmp_path / f"s{shards}"), tensors, dict(cfg, auto_map={"AutoModel": "x"}), shards=shards))
        state = m.state_dict()
        assert all(torch.equal(state[k], v.float()) for k, v in tensors.items())
        logits.append(m(pv, ids))
        # save then load gives identical logits, single file and sharded, in fp32 and bf16
        for max_bytes in (2**40, 20_000):
            out = str(tmp_path / f"re{shards}-{max_bytes}")
            M.save_model(m, out, max_shard_bytes=max_bytes)
            json.dump({"<IMG_CONTEXT>": IMG_CTX}, open(os.path.join(out, "added_tokens.json"), "w"))
            assert os.path.exists(os.path.join(out, "model.safetensors.index.json")) == (max_bytes < 2**40)
            saved = json.load(open(os.path.join(out, "config.json")))  # fields we don't model survive
            assert saved["auto_map"] == {"AutoModel": "x"} and saved["llm_config"]["rope_scaling"] == {"type": "dynamic", "factor": 2.0}
            assert torch.equal(M.load_model(out)(pv, ids), logits[-1])
    assert torch.equal(logits[0], logits[1])
    bf16 = M.load_model(str(tmp_path / "s1"), dtype=torch.bfloat16)
    assert bf16.mlp1[1].weight.dtype == torch.bfloat16 and torch.equal(bf16.mlp1[1].weight, tensors["mlp1.1.weight"])


@pytest.mark.parametrize("arch", ["Qwen2ForCausalLM", "InternLM2ForCausalLM"])
def test_tied_embeddings_load_tied(tmp_path, arch):
    """InternVL2-1B's Qwen2 ties its output to the token embeddings and its checkpoint has no lm_head: the loaded
    output must be the embeddings, not the uninitialised memory that allocating on load gives it."""
    cfg = M.tiny_config()
    cfg.llm.architecture, cfg.llm.tie_word_embeddings, cfg.llm.qkv_bias = arch, True, arch == "Qwen2ForCausalLM"
    torch.manual_seed(0)
    m = randomize(M.InternVLChat(cfg))
    m.img_context_token_id = IMG_CTX
    M.save_model(m, str(tmp_path / "tied"))
    json.dump({"<IMG_CONTEXT>": IMG_CTX}, open(tmp_path / "tied" / "added_tokens.json", "w"))
    back = M.load_model(str(tmp_path / "tied"))
    lm = back.language_model
    assert lm.output.weight is lm.model.tok_embeddings.weight
    ids, pv = image_prompt(2, 4), torch.randn(2, 3, 56, 56)
    with torch.no_grad():
        assert torch.equal(back(pv, ids), m(pv, ids))


def tiny_family(arch, tied=False):
    """A random tiny InternVL of LLM `arch` (Qwen3: head_dim 32, not hidden / heads = 16), weights at a trained
    model's scale."""
    cfg = M.tiny_config(vocab_size=256)
    cfg.llm.architecture, cfg.llm.qkv_bias, cfg.llm.tie_word_embeddings = arch, arch == "Qwen2ForCausalLM", tied
    if arch == "Qwen3ForCausalLM":
        cfg.llm.head_dim, cfg.llm.qk_norm, cfg.llm.rms_norm_eps = 32, True, 1e-6
    if arch == "InternLM2ForCausalLM":
        cfg.llm.rope_scaling = {"type": "dynamic", "factor": 2.0}
    torch.manual_seed(0)
    m = randomize(M.InternVLChat(cfg))
    m.img_context_token_id = IMG_CTX
    return m


@pytest.mark.parametrize("arch,tied", [("InternLM2ForCausalLM", False), ("Qwen2ForCausalLM", True),
                                       ("Qwen3ForCausalLM", False)])
def test_hf_layout_round_trip_and_transformers_loads_it(tmp_path, arch, tied):
    """Released layout -> ours -> -hf -> ours -> released: identical logits; transformers' own
    InternVLForConditionalGeneration.from_pretrained reads our -hf folder and gives the same logits and greedy tokens
    (InternLM2 is written as Llama, as transformers' converter does)."""
    m = tiny_family(arch, tied)
    M.save_model(m, str(tmp_path / "orig"))
    json.dump({"<IMG_CONTEXT>": IMG_CTX}, open(tmp_path / "orig" / "added_tokens.json", "w"))
    a = M.load_model(str(tmp_path / "orig"))
    M.save_model(a, str(tmp_path / "hf"), layout="hf", max_shard_bytes=100_000)  # sharded, with an index
    saved = json.load(open(tmp_path / "hf" / "config.json"))
    assert saved["model_type"] == "internvl" and "lm_head.weight" not in json.dumps(saved) and \
        os.path.exists(tmp_path / "hf" / "model.safetensors.index.json")
    b = M.load_model(str(tmp_path / "hf"))  # no tokenizer files: the image token id is config.json's
    assert b.img_context_token_id == IMG_CTX and b.config.template == "internlm2-chat"
    assert b.config.llm.architecture == {"InternLM2ForCausalLM": "LlamaForCausalLM"}.get(arch, arch)
    M.save_model(b, str(tmp_path / "back"))
    json.dump({"<IMG_CONTEXT>": IMG_CTX}, open(tmp_path / "back" / "added_tokens.json", "w"))
    c = M.load_model(str(tmp_path / "back"))
    pv, ids = torch.randn(3, 3, 56, 56), image_prompt(3, 4)
    with torch.no_grad():
        want = m(pv, ids)
        assert all(torch.equal(x(pv, ids), want) for x in (a, b, c))
    hf = InternVLForConditionalGeneration.from_pretrained(str(tmp_path / "hf"), dtype=torch.float32).eval()
    assert (hf.lm_head.weight is hf.model.language_model.embed_tokens.weight) == tied
    with torch.no_grad():
        assert (hf(input_ids=ids, pixel_values=pv).logits - want).abs().max() < ATOL
    ref = hf.generate(input_ids=ids, attention_mask=torch.ones_like(ids), pixel_values=pv, max_new_tokens=20,
                      min_new_tokens=20, do_sample=False, pad_token_id=0)
    assert b.generate(pv, ids, max_new_tokens=20) == ref[:, ids.shape[1]:].tolist()
    with pytest.raises(ValueError, match="layout 'hf'"):
        M.save_model(M.InternVLChat(a.config, EveryOther(True)), str(tmp_path / "student"), layout="hf")


def test_config_fields_of_each_family():
    """What the released config.json files of each family say, as config_from_dict reads them."""
    internlm2_5 = released_llm("InternLM2ForCausalLM", bias=False, rope_scaling={"type": "dynamic", "factor": 2.0})
    assert internlm2_5.rope_scaling == {"type": "dynamic", "factor": 2.0} and not internlm2_5.qkv_bias
    assert released_llm("Qwen2ForCausalLM").qkv_bias and M.head_dim(released_llm("Qwen2ForCausalLM")) == 16
    qwen3 = released_llm("Qwen3ForCausalLM", head_dim=32, attention_bias=False)
    assert qwen3.qk_norm and not qwen3.qkv_bias and M.head_dim(qwen3) == 32
    assert released_llm("InternLM3ForCausalLM", qkv_bias=True).qkv_bias  # its own field name
    written_by_5 = released_llm("Qwen2ForCausalLM", rope_theta=None, rope_parameters={  # transformers 5's fields
        "rope_type": "dynamic", "factor": 2.0, "rope_theta": 5e5})
    assert written_by_5.rope_theta == 5e5 and written_by_5.rope_scaling["factor"] == 2.0
    with pytest.raises(M.ModelLoadError, match="rope scaling 'yarn'"):
        released_llm("Qwen2ForCausalLM", rope_scaling={"type": "yarn", "factor": 4.0})
    with pytest.raises(M.ModelLoadError, match="unknown chat template 'phi3-chat'"):
        M.config_from_dict({"vision_config": {}, "llm_config": {"architectures": ["Qwen2ForCausalLM"]},
                            "template": "phi3-chat"})
    hf = {"vision_config": {"image_size": [448, 448]}, "text_config": {"model_type": "gpt_oss"}}
    with pytest.raises(M.ModelLoadError, match="text_config model_type 'gpt_oss'"):
        M.config_from_dict(hf)
    hf["text_config"] = {"model_type": "qwen2"}
    assert M.config_from_dict(hf).template == "internvl2_5"  # the -hf checkpoints are InternVL2.5, 3 and 3.5


# -- preprocessing

def test_32_bit_integer_images_keep_their_8_bit_values():
    """Mode I holds 8-bit values as often as 16-bit ones (TIFFs, .convert("I")): only values above 255 are scaled."""
    page = np.random.default_rng(0).integers(0, 256, (60, 90)).astype(np.uint8)
    eight = M.to_rgb(Image.fromarray(page, "L"))
    assert np.array_equal(np.asarray(M.to_rgb(Image.fromarray(page, "L").convert("I"))), np.asarray(eight))
    sixteen = Image.fromarray(page.astype(np.int32) * 257, "I")  # 255 -> 65535
    assert np.array_equal(np.asarray(M.to_rgb(sixteen)), np.asarray(eight))

def reference_grid(width, height, min_num, max_num, image_size):
    """InternVL's find_closest_aspect_ratio and target_ratios, written out as in the original."""
    aspect_ratio = width / height
    target_ratios = set((i, j) for n in range(min_num, max_num + 1) for i in range(1, n + 1) for j in range(1, n + 1)
                        if i * j <= max_num and i * j >= min_num)
    target_ratios = sorted(target_ratios, key=lambda x: x[0] * x[1])
    best_ratio_diff, best_ratio, area = float("inf"), (1, 1), width * height
    for ratio in target_ratios:
        ratio_diff = abs(aspect_ratio - ratio[0] / ratio[1])
        if ratio_diff < best_ratio_diff:
            best_ratio_diff, best_ratio = ratio_diff, ratio
        elif ratio_diff == best_ratio_diff:
            if area > 0.5 * image_size * image_size * ratio[0] * ratio[1]:
                best_ratio = ratio
    return best_ratio


def test_grid_choice_matches_reference():
    sizes = [(w, h) for w in range(20, 4000, 131) for h in range(20, 4000, 127)] + [(448, 448), (896, 896), (1344, 1344),
                                                                                  (449, 449), (300, 300), (2000, 1000)]
    for max_num in (1, 6, 12, 18, 24):
        for w, h in sizes:
            assert M.find_grid(w, h, 1, max_num, 448) == reference_grid(w, h, 1, max_num, 448), (w, h, max_num)


def test_tiles_row_major_then_thumbnail():
    img = Image.new("RGB", (200, 100))
    for x in range(200):  # every column a different red, so each tile is identifiable
        for y in range(100):
            img.putpixel((x, y), (x, y, 0))
    tiles = M.dynamic_preprocess(img, max_num=6, image_size=50)
    assert M.find_grid(200, 100, 1, 6, 50) == (2, 1) and len(tiles) == 3
    resized = img.resize((100, 50))
    assert tiles[0].tobytes() == resized.crop((0, 0, 50, 50)).tobytes()
    assert tiles[1].tobytes() == resized.crop((50, 0, 100, 50)).tobytes()
    assert tiles[2].tobytes() == img.resize((50, 50)).tobytes()
    assert len(M.dynamic_preprocess(Image.new("RGB", (50, 50)), image_size=50)) == 1  # one tile: no thumbnail
    pv = M.load_image(img, max_num=6, image_size=50)
    assert pv.shape == (3, 3, 50, 50)
    px = tiles[0].getpixel((7, 3))  # ToTensor + ImageNet Normalize
    want = [(px[c] / 255 - M.IMAGENET_MEAN[c]) / M.IMAGENET_STD[c] for c in range(3)]
    assert torch.allclose(pv[0, :, 3, 7], torch.tensor(want), atol=1e-6)


# -- chat template

# The query strings of InternVL's chat() (conversation.py and modeling_internvl_chat.py at OpenGVLab/InternVL 2410d1d,
# run there with num_image_token 2), after the system turn: (question, tiles per image, history, query). {C2}: 2
# <IMG_CONTEXT>. Hermes-2 and internlm2-chat are the same text; InternVL3.5's chat() (internvl_chat_gpt_oss) builds
# its query as InternVL2.5's.
ORIGINAL_SYSTEM = {
    "Hermes-2": "<|im_start|>system\n你是由上海人工智能实验室联合商汤科技开发的书生多模态大模型，英文名叫InternVL, "
                "是一个有用无害的人工智能助手。<|im_end|>",
    "internvl2_5": "<|im_start|>system\n你是书生·万象，英文名是InternVL，是由上海人工智能实验室、清华大学及多家合作单位"
                   "联合开发的多模态大语言模型。<|im_end|>\n"}
ORIGINAL_QUERIES = {
    "Hermes-2": [
        ("What is the total?", [1], None,
         "<|im_start|>user\n<img>{C2}</img>\nWhat is the total?<|im_end|><|im_start|>assistant\n"),
        ("Hi", [], None, "<|im_start|>user\nHi<|im_end|><|im_start|>assistant\n"),
        ("And the date?", [], [("<image>\nWhat is the total?", "42")],
         "<|im_start|>user\n<image>\nWhat is the total?<|im_end|><|im_start|>assistant\n42<|im_end|>"
         "<|im_start|>user\nAnd the date?<|im_end|><|im_start|>assistant\n"),
        ("And the date?", [3], [("<image>\nWhat is the total?", "42")],
         "<|im_start|>user\n<img>{C2}{C2}{C2}</img>\nWhat is the total?<|im_end|><|im_start|>assistant\n42<|im_end|>"
         "<|im_start|>user\nAnd the date?<|im_end|><|im_start|>assistant\n"),
        ("Image-1: <image>\nImage-2: <image>\nCompare them.", [1, 2], None,
         "<|im_start|>user\nImage-1: <img>{C2}</img>\nImage-2: <img>{C2}{C2}</img>\nCompare them.<|im_end|>"
         "<|im_start|>assistant\n"),
        ("Next?", [2], [("a?", "b"), ("c?", "d")],  # with history and no <image> in it, the image goes nowhere
         "<|im_start|>user\na?<|im_end|><|im_start|>assistant\nb<|im_end|><|im_start|>user\nc?<|im_end|>"
         "<|im_start|>assistant\nd<|im_end|><|im_start|>user\nNext?<|im_end|><|im_start|>assistant\n")],
    "internvl2_5": [
        ("What is the total?", [1], None,
         "<|im_start|>user\n<img>{C2}</img>\nWhat is the total?<|im_end|>\n<|im_start|>assistant\n"),
        ("Hi", [], None, "<|im_start|>user\nHi<|im_end|>\n<|im_start|>assistant\n"),
        ("And the date?", [], [("<image>\nWhat is the total?", "42")],
         "<|im_start|>user\n<image>\nWhat is the total?<|im_end|>\n<|im_start|>assistant\n42<|im_end|>\n"
         "<|im_start|>user\nAnd the date?<|im_end|>\n<|im_start|>assistant\n"),
        ("And the date?", [3], [("<image>\nWhat is the total?", "42")],
         "<|im_start|>user\n<img>{C2}{C2}{C2}</img>\nWhat is the total?<|im_end|>\n<|im_start|>assistant\n42"
         "<|im_end|>\n<|im_start|>user\nAnd the date?<|im_end|>\n<|im_start|>assistant\n"),
        ("Image-1: <image>\nImage-2: <image>\nCompare them.", [1, 2], None,
         "<|im_start|>user\nImage-1: <img>{C2}</img>\nImage-2: <img>{C2}{C2}</img>\nCompare them.<|im_end|>\n"
         "<|im_start|>assistant\n"),
        ("Next?", [2], [("a?", "b"), ("c?", "d")],
         "<|im_start|>user\na?<|im_end|>\n<|im_start|>assistant\nb<|im_end|>\n<|im_start|>user\nc?<|im_end|>\n"
         "<|im_start|>assistant\nd<|im_end|>\n<|im_start|>user\nNext?<|im_end|>\n<|im_start|>assistant\n")]}


@pytest.mark.parametrize("template", ["Hermes-2", "internlm2-chat", "internvl2_5"])
def test_chat_prompt_reproduces_internvl(template):
    original = "internvl2_5" if template == "internvl2_5" else "Hermes-2"
    for question, tiles, history, want in ORIGINAL_QUERIES[original]:
        counts = [2 * t for t in tiles]
        got = M.chat_prompt(question, counts if len(counts) > 1 else counts[0] if counts else None, template,
                            history=history)
        assert got == ORIGINAL_SYSTEM[original] + want.format(C2="<IMG_CONTEXT>" * 2), (question, history)
    with pytest.raises(ValueError, match="unknown chat template 'phi3-chat'"):
        M.chat_prompt("hi", template="phi3-chat")


def test_chat_prompt_is_the_internlm2_template():
    got = M.chat_prompt("What is the total? Answer the question using a single word or phrase.", num_image_tokens=3)
    want = ("<|im_start|>system\n" + M.SYSTEM_MESSAGE + "<|im_end|><|im_start|>user\n<img><IMG_CONTEXT><IMG_CONTEXT>"
            "<IMG_CONTEXT></img>\nWhat is the total? Answer the question using a single word or phrase.<|im_end|>"
            "<|im_start|>assistant\n")
    assert got == want
    assert M.chat_prompt("hi", history=[("a", "b")]) == ("<|im_start|>system\n" + M.SYSTEM_MESSAGE + "<|im_end|>"
                                                       "<|im_start|>user\na<|im_end|><|im_start|>assistant\nb<|im_end|>"
                                                       "<|im_start|>user\nhi<|im_end|><|im_start|>assistant\n")
    # with history the image stays in the turn that holds <image>; the new question gets none
    two = M.chat_prompt("b?", num_image_tokens=1, history=[("<image>\na?", "A")])
    assert two.count("<IMG_CONTEXT>") == 1 and "user\n<img><IMG_CONTEXT></img>\na?" in two and "user\nb?" in two


def test_chat_end_to_end(tmp_path, tokenizer_dir):
    _, ours = full_model_pair(tmp_path)
    tok = load_tokenizer(tokenizer_dir)
    ours.img_context_token_id = tok.token_to_id("<IMG_CONTEXT>")
    ours = randomize(M.InternVLChat(M.tiny_config(vocab_size=tok.vocab_size)))
    ours.img_context_token_id = tok.token_to_id("<IMG_CONTEXT>")
    img = Image.new("RGB", (112, 56), "white")
    pv = M.load_image(img, image_size=56)
    stats = {}
    answers = ours.batch_chat(tok, [pv, pv[:1]], ["What is the total?", "Date?"], max_new_tokens=5, stats=stats)
    assert len(answers) == 2 and all(isinstance(a, str) for a in answers)
    assert answers[0] == ours.chat(tok, pv, "What is the total?", max_new_tokens=5)
    assert stats["visual_tokens"] == (3 + 1) * ours.num_image_token and stats["prefill_s"] > 0


# -- bad input

def test_bad_checkpoints_give_clear_errors(tmp_path):
    with pytest.raises(M.ModelLoadError, match="does not exist"):
        M.load_model(str(tmp_path / "nope"))
    (tmp_path / "empty").mkdir()
    with pytest.raises(M.ModelLoadError, match="no config.json"):
        M.load_model(str(tmp_path / "empty"))
    _, ours = full_model_pair(tmp_path)
    folder = str(tmp_path / "ckpt-llama")
    cfg = json.load(open(os.path.join(folder, "config.json")))
    bad = dict(cfg, llm_config=dict(cfg["llm_config"], architectures=["MambaForCausalLM"]))
    json.dump(bad, open(os.path.join(folder, "config.json"), "w"))
    with pytest.raises(M.ModelLoadError, match="unknown language model architecture 'MambaForCausalLM'"):
        M.load_model(folder)
    bad = dict(cfg, llm_config=dict(cfg["llm_config"], hidden_size=32))  # wrong shapes
    json.dump(bad, open(os.path.join(folder, "config.json"), "w"))
    with pytest.raises(M.ModelLoadError, match=r"21 mis-shaped: language_model.model.layers.0.attention.wo.weight \(64, 64\) \(expected \(32, 32\)\)"):
        M.load_model(folder)
    json.dump(dict(cfg, llm_config=dict(cfg["llm_config"], num_hidden_layers=3)), open(os.path.join(folder, "config.json"), "w"))
    with pytest.raises(M.ModelLoadError, match="missing: language_model.model.layers.2"):
        M.load_model(folder)
    json.dump(dict(cfg, llm_config=dict(cfg["llm_config"], num_hidden_layers=1)), open(os.path.join(folder, "config.json"), "w"))
    with pytest.raises(M.ModelLoadError, match="unexpected: language_model.model.layers.1"):
        M.load_model(folder)
    json.dump(cfg, open(os.path.join(folder, "config.json"), "w"))
    weights = os.path.join(folder, "model.safetensors")
    data = open(weights, "rb").read()
    open(weights, "wb").write(data[: len(data) // 2])
    with pytest.raises(M.ModelLoadError, match="corrupt or truncated"):
        M.load_model(folder)
    os.remove(weights)
    with pytest.raises(M.ModelLoadError, match="no model.safetensors"):
        M.load_model(folder)
    with pytest.raises(ValueError, match="cannot read image"):
        M.load_image(os.path.join(folder, "config.json"))
