"""
Speed of model.py's language model with random weights: prefill, and the cost of one KV-cache
decode step as the context grows (it should stay about flat: the cache is preallocated and each
step attends to the filled prefix only).

    python bench.py                                   # a 2B-shaped-but-narrow model on the CPU
    python bench.py --shape 2b --device cuda --dtype bfloat16
"""
import argparse
import time
from dataclasses import replace

import torch

import model as M

SHAPES = {
    "tiny": M.tiny_config().llm,
    "small": M.LLMConfig(vocab_size=8192, hidden_size=512, num_hidden_layers=8, num_attention_heads=8,
                         num_key_value_heads=4, intermediate_size=1536),
    "2b": M.LLMConfig(),  # internlm2-chat-1_8b
    "8b": M.LLMConfig(hidden_size=4096, num_hidden_layers=32, num_attention_heads=32, intermediate_size=14336),
}


def sync(device):
    if device.type == "cuda":
        torch.cuda.synchronize()


@torch.inference_mode()
def decode_step_ms(lm, cfg, context, steps, batch, device, dtype):
    """Fill the cache with `context` tokens, then time `steps` single-token decode steps (median ms)."""
    d = cfg.hidden_size // cfg.num_attention_heads
    caches = [M.KVCache(batch, cfg.num_key_value_heads, context + steps, d, dtype, device) for _ in range(cfg.num_hidden_layers)]
    ids = torch.randint(0, cfg.vocab_size, (batch, context), device=device)
    sync(device)
    t0 = time.perf_counter()
    logits = lm(lm.model.tok_embeddings(ids), torch.arange(context, device=device).expand(batch, -1), caches=caches, last_only=True)
    sync(device)
    prefill = time.perf_counter() - t0
    token, times = logits[:, -1].argmax(-1, keepdim=True), []
    for i in range(steps):
        t0 = time.perf_counter()
        pos = torch.full((batch, 1), context + i, device=device)
        token = lm(lm.model.tok_embeddings(token), pos, caches=caches)[:, -1].argmax(-1, keepdim=True)
        sync(device)
        times.append(time.perf_counter() - t0)
    return prefill, sorted(times)[steps // 2] * 1000  # the median: robust to a busy machine


def main():
    p = argparse.ArgumentParser()
    p.add_argument("--shape", choices=SHAPES, default="small")
    p.add_argument("--contexts", type=int, nargs="+", default=[10, 100, 500, 2000])
    p.add_argument("--steps", type=int, default=20)
    p.add_argument("--batch", type=int, default=1)
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument("--dtype", default="bfloat16" if torch.cuda.is_available() else "float32")
    args = p.parse_args()
    torch.manual_seed(0)
    device, dtype = torch.device(args.device), getattr(torch, args.dtype)
    cfg = replace(SHAPES[args.shape], max_position_embeddings=32768)
    lm = M.LanguageModel(cfg).to(device, dtype).eval()
    n = sum(p.numel() for p in lm.parameters())
    print(f"{args.shape}: {n / 1e6:.1f}M parameters, {args.device} {args.dtype}, batch {args.batch}, threads {torch.get_num_threads()}")
    decode_step_ms(lm, cfg, args.contexts[0], args.steps, args.batch, device, dtype)  # warm-up: allocator, caches
    # rounds interleave the contexts; the fastest round of each is its cost with the least interference
    runs = [[decode_step_ms(lm, cfg, ctx, args.steps, args.batch, device, dtype) for ctx in args.contexts]
            for _ in range(args.rounds)]
    base = None
    for i, ctx in enumerate(args.contexts):
        prefill, ms = min(r[i][0] for r in runs), min(r[i][1] for r in runs)
        base = base or ms
        print(f"context {ctx:6d}: prefill {prefill * 1000:8.1f} ms ({args.batch * ctx / prefill:8.0f} tok/s)   "
              f"decode step {ms:7.2f} ms ({args.batch * 1000 / ms:6.1f} tok/s)   x{ms / base:.2f} of the first")


if __name__ == "__main__":
    main()
