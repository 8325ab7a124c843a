"""
Speed of InternVL2-shaped models with random weights: the teacher (ratio 1.0) against FCoT-VL students that
keep 0.5 and 0.25 of the visual tokens (compress.make_student(model, 'select', r)), a stage-I distillation
step, and the same weights in transformers' InternVLForConditionalGeneration as a peer.

    python bench.py                        # tiny shape on a CPU, fp32, < 1 min: the format, not the numbers
    python bench.py --threads 2 --json runs/bench-tiny.json
    python bench.py --shape 2b             # InternViT-300M + InternLM2-1.8B, bf16, one GPU
    python bench.py --shape 8b --distill-batches 1 2 4 --json runs/bench-8b.json    # + InternLM2.5-7B
    python bench.py --kernels              # compress.py's kernels per backend (2b's grid on CUDA; tiny's on a CPU)

n tiles are n tiles plus the thumbnail when n > 1 (as dynamic_preprocess) inside --text prompt tokens.
ViT ms: the encoder. Prefill ms: the LLM over the prompt's embeddings, KV cache written. TTFT ms: pixels to
the first greedy token. Decode tok/s: a step of model.generate's loop at batch 1 and 8 (on CUDA a replayed
graph: model.decode_step). Peak GB: the TTFT run's (CUDA). After a warm-up run a figure is the median of
--repeats runs on CUDA, the fastest on a CPU. --kernels: pool's merge in GB/s against a copy of the grid, select's
gather against a copy of as many bytes as it moves, select's rarity in TFLOP/s against the datasheet (H100, H200).
"""
import gc
import math
import os
import sys
import time

import torch

import cli
import compress as C
import distill as D
import model as M
import posttrain as P

SHAPES = {  # 2b and 8b: InternViT-300M at 448 px (model.py's defaults) + InternLM2-1.8B / InternLM2.5-7B
    "tiny": M.InternVLConfig(force_image_size=112, vision=M.VisionConfig(
        image_size=112, hidden_size=64, num_hidden_layers=2, num_attention_heads=4, intermediate_size=256),
        llm=M.LLMConfig(vocab_size=1024, hidden_size=128, num_hidden_layers=2, num_attention_heads=4,
                        num_key_value_heads=2, intermediate_size=384)),
    "2b": M.InternVLConfig(),
    "8b": M.InternVLConfig(llm=M.LLMConfig(hidden_size=4096, num_hidden_layers=32, num_attention_heads=32,
                                           intermediate_size=14336)),
}


def measure(fn, args, repeats=None):
    """(ms, peak GB or None) of fn(); the peak is reset after the warm-up, so it is this measurement's."""
    cuda, times = args.device.startswith("cuda"), []
    fn()  # warm-up: allocator, kernel selection, lazy init
    torch.cuda.synchronize() if cuda else None
    torch.cuda.reset_peak_memory_stats() if cuda else None
    for _ in range(repeats or args.repeats):
        t0 = time.perf_counter()
        fn()
        torch.cuda.synchronize() if cuda else None
        times.append(time.perf_counter() - t0)
    ms = 1e3 * (sorted(times)[len(times) // 2] if cuda else min(times))  # CPU noise only ever adds time
    return ms, torch.cuda.max_memory_allocated() / 1e9 if cuda else None


def kernel_ms(fn, device, rounds=50):
    """ms per call. CUDA: calls queued back to back between two events, as a pipeline runs them (a sync per call
    would time the launch, not the kernel); a CPU: the median call."""
    for _ in range(3):
        fn()
    if str(device).startswith("cuda"):
        with torch.cuda.device(device):  # the events and the syncs on the device timed, not the current one
            start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
            torch.cuda.synchronize()
            start.record()
            for _ in range(rounds):
                fn()
            end.record()
            torch.cuda.synchronize()
            return start.elapsed_time(end) / rounds
    times = []
    for _ in range(rounds):
        t = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t)
    return 1e3 * sorted(times)[len(times) // 2]


def copy_gb_s(nbytes, device, timer=kernel_ms):
    """Read + write GB/s of copying nbytes into a preallocated buffer (a clone's fresh pages would time page faults
    too): what a kernel that only streams its bytes could reach, the device's practical memory peak."""
    src = torch.empty(nbytes, dtype=torch.uint8, device=device)
    dst = torch.empty_like(src)
    return 2 * nbytes / timer(lambda: dst.copy_(src), device) / 1e6


def build(cfg, device, dtype, seed=0):
    """InternVLChat with random weights at a trained model's scale (norms ~1, matrices ~1/sqrt(fan_in)):
    activations stay O(1), so the logits comparison with transformers means something."""
    with torch.device("meta"):  # no fp32 host copy of an 8B model: allocated once, in dtype, on the device
        model = M.InternVLChat(cfg).to(dtype)
    model, g = model.to_empty(device=device).eval(), torch.Generator(device).manual_seed(seed)
    with torch.no_grad():
        for name, p in model.named_parameters():
            r = torch.randn(p.shape, generator=g, device=device, dtype=dtype)
            p.copy_((0.1 * r if name.endswith("bias") else 1 + 0.1 * r) if p.dim() == 1 else r
                    if name.endswith("_embedding") or "tok_embeddings" in name else r / math.sqrt(p[0].numel()))
    model.img_context_token_id = cfg.llm.vocab_size - 1  # prompt() draws its text ids below it
    return model


def prompt(n_visual, n_text, vocab, device):
    """[1, L] ids: half of n_text random text ids, n_visual <IMG_CONTEXT> ids, the other half."""
    text = torch.randint(0, vocab - 1, (n_text,), generator=torch.Generator().manual_seed(0))
    return torch.cat([text[:n_text // 2], torch.full((n_visual,), vocab - 1), text[n_text // 2:]])[None].to(device)


def inputs(cfg, n, per_tile, args):
    """pixel_values of n tiles (+ the thumbnail when n > 1) and a prompt with per_tile tokens per image."""
    n_img, S = n + (n > 1), cfg.force_image_size
    pv = torch.randn(n_img, 3, S, S, generator=torch.Generator().manual_seed(n)).to(args.device, args.dtype)
    return pv, prompt(n_img * per_tile, args.text, cfg.llm.vocab_size, args.device)


def flops(cfg, n_img, per_tile, n_text, ratio):
    """FLOPs (2 per multiply-add) up to the first token of one image of n_img tiles: ViT, compressor, mlp1,
    the LLM's prefill with attention's quadratic term (causal: L(L+1)/2 query-key pairs) and lm_head on the
    last token. per_tile: the tokens a tile sends to the LLM (after compression)."""
    v, lm, vis = cfg.vision, cfg.llm, n_img * per_tile
    N, Cv = (cfg.force_image_size // v.patch_size) ** 2 + 1, v.hidden_size  # + 1: the class token
    vit = 6 * (N - 1) * v.patch_size ** 2 * Cv + v.num_hidden_layers * (
        2 * N * (4 * Cv * Cv + 2 * Cv * v.intermediate_size) + 4 * N * N * Cv)
    W, Dm, H = Cv * round(1 / cfg.downsample_ratio) ** 2, lm.hidden_size, lm.num_attention_heads
    if ratio == 1:
        compressor = 0
    else:  # select: the image's token-to-token distances, then the fold LN(3W) -> W -> W on the kept tokens
        T = round(vis / ratio)
        compressor = 2 * T * T * W + 2 * vis * 4 * W * W
    L, d = vis + n_text, Dm // H
    per_token = Dm * (H + 2 * lm.num_key_value_heads) * d + H * d * Dm + 3 * Dm * lm.intermediate_size
    llm = lm.num_hidden_layers * (2 * L * per_token + 2 * H * d * L * (L + 1)) + 2 * Dm * lm.vocab_size
    return n_img * vit + compressor + 2 * vis * (W * Dm + Dm * Dm) + llm


# ----------------------------------------------------------------------------------------------
# ours and the peer as the same callables: vit(), prefill(), ttft(), decoder(batch) -> step()

@torch.inference_mode()
def ours(m, pv, ids, steps):
    lm, cfg, L = m.language_model, m.config.llm, ids.shape[1]
    embeds = lm.model.tok_embeddings(ids)  # prefill times the LLM alone; the values don't change its cost
    pos = lambda b: torch.arange(L, device=ids.device).expand(b, L)
    caches = lambda b, n: M.new_caches(cfg, b, n, embeds.dtype, ids.device)

    def decoder(b, mode=None):  # prefill b copies, then each call is one step of model.generate's loop
        kv, tok = caches(b, L + steps + 1), torch.zeros(b, 1, dtype=torch.long, device=ids.device)
        lm(embeds.expand(b, -1, -1), pos(b), caches=kv, last_only=True)
        mode = mode or ("graph" if ids.is_cuda else "eager")  # as model.generate
        if mode == "eager":
            return lambda: m(None, tok, caches=kv).argmax(-1)
        step = M.decode_step(lm, kv, torch.ones(b, L, dtype=torch.long, device=ids.device), compile=mode == "compile")
        return lambda: step(tok).argmax(-1)
    return dict(decoder=decoder, vit=lambda: m.vision_model(pv),
                prefill=lambda: lm(embeds, pos(1), caches=caches(1, L), last_only=True).argmax(-1),
                ttft=lambda: m(pv, ids, caches=caches(1, L), last_only=True).argmax(-1))


@torch.inference_mode()
def peer(hf, pv, ids):
    embeds, kw = hf.get_input_embeddings()(ids), dict(use_cache=True, logits_to_keep=1)

    def decoder(b):  # transformers' default DynamicCache, as its generate() uses
        cache = hf(inputs_embeds=embeds.expand(b, -1, -1), **kw).past_key_values
        tok = torch.zeros(b, 1, dtype=torch.long, device=ids.device)
        return lambda: hf(input_ids=tok, past_key_values=cache, **kw).logits.argmax(-1)
    return dict(decoder=decoder, vit=lambda: hf.model.vision_tower(pixel_values=pv),
                prefill=lambda: hf(inputs_embeds=embeds, **kw).logits.argmax(-1),
                ttft=lambda: hf(input_ids=ids, pixel_values=pv, **kw).logits.argmax(-1))


@torch.inference_mode()
def figures(impl, args, **row):
    for name in ("vit", "prefill", "ttft"):
        row[f"{name}_ms"], row[f"{name}_peak_gb"] = measure(impl[name], args)
    for b in (1, 8):
        ms, row[f"decode_b{b}_peak_gb"] = measure(impl["decoder"](b), args, args.steps)
        row[f"decode_b{b}_tok_s"] = b * 1e3 / ms
    return row


def to_transformers(model):
    """The same weights in InternVLForConditionalGeneration with a Llama text config (InternLM2 is Llama with
    q/k/v packed per kv head). Tensors are shared where the layouts agree; the LLM's q/k/v are copies."""
    import transformers as T
    from transformers import InternVLForConditionalGeneration  # ImportError before 4.52 too
    cfg, v, lm = model.config, model.config.vision, model.config.llm
    rope = {"rope_theta": lm.rope_theta} if int(T.__version__.split(".")[0]) < 5 else \
        {"rope_parameters": {"rope_type": "default", "rope_theta": lm.rope_theta}}  # renamed in transformers 5
    same = lambda c, names: {k: getattr(c, k) for k in names.split()}
    hf = T.InternVLConfig(
        vision_config=T.InternVLVisionConfig(attention_bias=v.qkv_bias, use_qk_norm=v.qk_normalization, **same(
            v, "hidden_size num_hidden_layers num_attention_heads intermediate_size image_size patch_size "
               "layer_norm_eps norm_type")),
        text_config=T.LlamaConfig(**rope, **same(lm, "vocab_size hidden_size num_hidden_layers num_attention_heads "
                                  "num_key_value_heads intermediate_size rms_norm_eps max_position_embeddings "
                                  "tie_word_embeddings")),
        image_token_id=model.img_context_token_id, downsample_ratio=cfg.downsample_ratio,
        vision_feature_layer=cfg.select_layer, tie_word_embeddings=lm.tie_word_embeddings)
    with torch.device("meta"):
        hf = InternVLForConditionalGeneration(hf)
    sd = dict(M.export_state_dict(model, layout="hf"))  # our weights under their names, q/k/v apart
    hf.load_state_dict(sd, strict=True, assign=True)
    rotary = hf.model.language_model.rotary_emb  # inv_freq is a buffer outside the state dict: still on meta
    hf.model.language_model.rotary_emb = type(rotary)(hf.config.text_config).to(model.mlp1[1].weight.device)
    return hf.eval()


# ----------------------------------------------------------------------------------------------

HEAD = f"{'tiles':>5} {'ratio':>5} {'vis.tok':>7} {'ViT ms':>8} {'prefill ms':>10} {'TTFT ms':>8} {'b1 tok/s':>9} " \
       f"{'b8 tok/s':>9} {'peak GB':>7}"
gb = lambda x: "-" if x is None else f"{x:.2f}"


def line(r):
    return (f"{r['tiles']:>5} {r['ratio']:>5.2f} {r['visual_tokens']:>7} {r['vit_ms']:>8.2f} {r['prefill_ms']:>10.2f} "
            f"{r['ttft_ms']:>8.2f} {r['decode_b1_tok_s']:>9.1f} {r['decode_b8_tok_s']:>9.1f} "
            f"{gb(r['ttft_peak_gb']):>7}")


def bench_rows(model, args, ratios):
    print(f"\nours (model.py; 0.5, 0.25: compress.make_student(model, 'select', r))\n{HEAD}   "
          "TTFT speedup vs 1.0: measured / ideal (FLOPs) / %")
    rows = []
    for n in args.tiles:
        for r in ratios:
            m = model if r == 1 else C.make_student(model, "select", r)
            pv, ids = inputs(model.config, n, m.num_image_token, args)
            row = figures(ours(m, pv, ids, args.steps), args, tiles=n, ratio=r, seq_len=ids.shape[1],
                          visual_tokens=len(pv) * m.num_image_token,
                          flops=flops(model.config, len(pv), m.num_image_token, args.text, r))
            base = row if r == 1 else next(b for b in rows if b["tiles"] == n and b["ratio"] == 1)
            row.update(speedup=base["ttft_ms"] / row["ttft_ms"], ideal=base["flops"] / row["flops"])
            rows.append(row)
            print(f"{line(row)}   x{row['speedup']:.2f} / x{row['ideal']:.2f} / "
                  f"{100 * row['speedup'] / row['ideal']:.0f}%")
    return rows


def bench_distill(model, args, ratios):
    """Optimizer steps of distill.py's loss at the most tiles: the ViT once and the teacher without grad, the
    student forward + backward through the frozen LLM into V_c and A_s, AdamW. Batch sizes until one fails."""
    rows, n, cuda, V = [], max(args.tiles), args.device.startswith("cuda"), model.config.llm.vocab_size
    n_img, S = n + (n > 1), model.config.force_image_size
    for r in ratios[1:]:
        student = C.make_student(model, "select", r)
        if cuda:  # as distill.py: V_c and A_s keep fp32 weights under bf16 autocast
            student.compressor.float(), student.mlp1.float()
        P.set_trainable(student, "compressor,projector")
        opt = torch.optim.AdamW([p for p in student.parameters() if p.requires_grad], lr=1e-5, betas=(0.9, 0.95))
        loss_fn = D.make_loss(model, 1.0, 0.5)
        for b in args.distill_batches:
            # as distill.pair_collate: one conversation with the student's and with the teacher's image tokens
            batch = dict(pixel_values=torch.randn(b * n_img, 3, S, S, device=args.device, dtype=args.dtype),
                         n_labels_global=b * args.answer, own=torch.zeros(b, dtype=torch.bool, device=args.device),
                         teacher_tiles=torch.arange(b * n_img, device=args.device))
            for m, keys in ((student, ("input_ids", "attention_mask", "labels")),
                            (model, ("teacher_ids", "teacher_mask", "teacher_labels"))):
                ids = prompt(n_img * m.num_image_token, args.text + args.answer, V, args.device).expand(b, -1)
                labels = torch.full_like(ids, -100)
                labels[:, -args.answer:] = ids[:, -args.answer:]  # the answer: the last tokens
                batch.update(zip(keys, (ids, torch.ones_like(ids), labels)))

            def step():
                with torch.autocast("cuda", torch.bfloat16, enabled=cuda):
                    loss, _ = loss_fn(student, batch)
                loss.backward()
                opt.step()
                opt.zero_grad(set_to_none=True)
            rows.append(dict(tiles=n, ratio=r, batch=b, visual_tokens=n_img * student.num_image_token))
            try:
                rows[-1]["step_ms"], rows[-1]["peak_gb"] = measure(step, args)
            except torch.cuda.OutOfMemoryError:
                rows[-1]["oom"] = True
                break
    return rows


@torch.inference_mode()
def bandwidth(model, rows, args):
    """The decode step's speed at ratio 1.0 and the most tiles, as bytes read (the LLM's weights but the
    embedding table, of which it gathers rows, and the KV cache) / step time, for each way of running it:
    eager, a replayed CUDA graph (model.generate's way on CUDA), torch.compile + graph. Beside it the read +
    write GB/s of a large copy into a preallocated tensor (a clone's fresh allocation would time page
    faults): what a step that only streamed its bytes would reach. Weights that fit in a CPU's caches (the
    tiny shape) can beat the copy."""
    cuda, lm = args.device.startswith("cuda"), model.config.llm
    row = max((r for r in rows if r["ratio"] == 1), key=lambda r: r["tiles"])
    p = model.language_model.output.weight
    weights = sum(t.numel() * t.element_size() for k, t in model.language_model.named_parameters() if "tok_" not in k)
    kv = 2 * lm.num_hidden_layers * lm.num_key_value_heads * lm.hidden_size // lm.num_attention_heads * p.element_size()
    out = dict(tiles=row["tiles"], context=row["seq_len"] + args.steps / 2,  # the cache's mean length while timed
               copy_gb_s=copy_gb_s(2 ** (30 if cuda else 28), p.device, lambda fn, _: measure(fn, args)[0]), modes={})
    impl = ours(model, *inputs(model.config, row["tiles"], model.num_image_token, args), args.steps)
    for mode in ["eager"] + (["graph"] + ["compile"] * args.compile if cuda else []):
        for b in (1,) if mode == "compile" else (1, 8):  # a compile per batch size: the bound is b1's
            t0 = time.perf_counter()
            try:
                ms = measure(impl["decoder"](b, mode), args, args.steps)[0]
            except Exception as e:  # torch.compile's failures vary by version: report, keep the other figures
                if mode != "compile":
                    raise
                out["compile_error"] = f"{type(e).__name__}: {str(e).splitlines()[0][:200]}"
                continue
            gb_s = (weights + b * kv * out["context"]) / ms / 1e6
            out["modes"][f"{mode}_b{b}"] = dict(tok_s=b * 1e3 / ms, gb_s=gb_s, copy_pct=100 * gb_s / out["copy_gb_s"],
                                                setup_s=time.perf_counter() - t0)  # compile, capture, timing
    return out


# ----------------------------------------------------------------------------------------------
# python bench.py --kernels: compress.py's kernels alone, at the shape's token grid (13 tiles of 16 x 16 x 4096 for
# 2b): pool's weighted merge and select's gather in GB/s against the device's copy, select's rarity in TFLOP/s

def bench_merge(tiles, grid, width, device, dtype):
    """Pool's weighted merge on each backend at ratios 0.5 and 0.25: GB/s (the grid read once, ratio of it written)."""
    x = torch.randn(tiles, grid, grid, width, device=device, dtype=dtype)
    peak = copy_gb_s(x.nbytes, device)
    print(f"pool's weighted merge, {tiles} tiles x {grid}x{grid} tokens x {width} channels, {dtype}, {device} (a copy "
          f"of the grid: {peak:.0f} GB/s):\n{'ratio':>6} {'backend':>14} {'ms':>8} {'GB/s':>8} {'% of copy':>10}")
    paths = {"eager": C.merge_torch, "compile": torch.compile(C.merge_torch), "npu-conv2d": C.merge_npu}
    if str(device).startswith("cuda") and C.triton is not None:
        paths["triton"] = C.merge_triton
    rows = []
    for ratio in (0.5, 0.25):
        window = C.window_for(ratio, grid, grid)
        w = torch.rand(window[0] * window[1], width, device=device, dtype=dtype)
        b = torch.rand(width, device=device, dtype=dtype)
        nbytes = x.nbytes * (1 + ratio) + w.nbytes + b.nbytes
        ref = C.merge_torch(x, window, w, b).float()
        for name, fn in paths.items():
            err = (fn(x, window, w, b).float() - ref).abs().max().item()
            ms = kernel_ms(lambda: fn(x, window, w, b), device)
            rows.append(dict(kernel="merge", ratio=ratio, backend=name, ms=ms, gb_s=nbytes / ms / 1e6, copy_gb_s=peak,
                             max_diff=err))
            print(f"{ratio:>6} {name:>14} {ms:>8.3f} {rows[-1]['gb_s']:>8.0f} {100 * rows[-1]['gb_s'] / peak:>9.0f}%"
                  f"   max |diff| {err:.1e}")
    return rows


PEAK_TFLOPS = (("H100 PCIe", 756), ("H100", 989), ("H200", 989))  # dense bf16, NVIDIA's datasheets


def bench_select(tiles, grid, width, device, dtype):
    """select's step on one image of the tiles: rarity's TFLOP/s (2 n^2 C, the distance GEMM; against the datasheet
    peak on an H100 or H200) and the gather's GB/s (against a copy of as many bytes), per backend. The PyTorch paths
    compute in fp32; Triton reads x as it is (bf16 on CUDA)."""
    x = torch.randn(tiles, grid, grid, width, device=device, dtype=dtype)
    n = tiles * grid * grid
    image, k = x.view(n, width), min(C.Select.neighbours, n - 1)
    cuda = str(device).startswith("cuda")
    name = torch.cuda.get_device_name(device) if cuda else ""
    peak = next((tf for key, tf in PEAK_TFLOPS if key in name), None) if dtype == torch.bfloat16 else None
    rounds = 20 if cuda else 3  # a CPU takes seconds per call at real sizes
    paths = {"eager": C.rarity_torch, "npu-addmm": C.rarity_npu, "compile": torch.compile(C.rarity_torch)}
    if cuda and C.triton is not None:
        paths["triton"] = C.rarity_triton
    print(f"select's rarity, {n} tokens, k = {k}:")
    print(f"{'backend':>14} {'ms':>8} {'TFLOP/s':>8}" + (f" {'% of ' + str(peak):>8}" if peak else ""))
    ref, rows = C.rarity_torch(image, k), []
    for label, fn in paths.items():
        err = (fn(image, k) - ref).abs().max().item()
        ms = kernel_ms(lambda: fn(image, k), device, rounds)
        rows.append(dict(kernel="rarity", backend=label, ms=ms, tflop_s=2 * n * n * width / ms / 1e9, max_diff=err))
        share = f" {100 * rows[-1]['tflop_s'] / peak:>7.0f}%" if peak else ""
        print(f"{label:>14} {ms:>8.3f} {rows[-1]['tflop_s']:>8.2f}{share}   max |diff| {err:.1e}")
    flat = torch.randperm(n, device=device)[:n // 2].sort().values  # half the tokens kept
    tile, i, j = flat // (grid * grid), flat % (grid * grid) // grid, flat % grid
    nbytes = 2 * 3 * len(flat) * width * x.element_size()  # read three cells per kept token, write them
    copy = copy_gb_s(nbytes // 2, device)  # as many bytes read and written: what the gather could reach
    print(f"select's gather, {len(flat)} kept tokens x 3 cells, {nbytes} bytes read and written (a copy of as many: "
          f"{copy:.0f} GB/s):\n{'backend':>14} {'ms':>8} {'GB/s':>8} {'% of copy':>10}")
    ref = C.gather_torch(x, tile, i, j)
    for label, fn in ({"eager": C.gather_torch} | ({"triton": C.gather_triton} if "triton" in paths else {})).items():
        err = (fn(x, tile, i, j) - ref).abs().max().item()
        ms = kernel_ms(lambda: fn(x, tile, i, j), device)
        rows.append(dict(kernel="gather", backend=label, ms=ms, gb_s=nbytes / ms / 1e6, copy_gb_s=copy, max_diff=err))
        print(f"{label:>14} {ms:>8.3f} {rows[-1]['gb_s']:>8.0f} {100 * rows[-1]['gb_s'] / copy:>9.0f}%"
              f"   max |diff| {err:.1e}")
    return rows


def run_kernels(args):
    """Both kernel tables at the shape's grid and the most tiles (+ the thumbnail); return every figure."""
    grid, width = C.token_grid(SHAPES[args.shape]), C.token_width(SHAPES[args.shape])
    tiles = max(args.tiles) + (max(args.tiles) > 1)
    rows = bench_merge(tiles, grid, width, args.device, args.dtype)
    rows += bench_select(tiles, grid, width, args.device, args.dtype)
    device = torch.cuda.get_device_name(args.device) if args.device.startswith("cuda") else "cpu"
    return dict(shape=args.shape, torch=torch.__version__, threads=torch.get_num_threads(), device=device,
                args=dict(vars(args), dtype=str(args.dtype)), tiles=tiles, grid=grid, width=width, kernels=rows)


def run(args):
    """Print the tables; return every figure (what --json writes)."""
    cfg, ratios = SHAPES[args.shape], [1.0] + [r for r in args.ratios if r != 1]
    model = build(cfg, args.device, args.dtype)
    n_params, v, lm = sum(p.numel() for p in model.parameters()), cfg.vision, cfg.llm
    print(f"{args.shape}: ViT {v.hidden_size}x{v.num_hidden_layers} at {cfg.force_image_size} px + LLM "
          f"{lm.hidden_size}x{lm.num_hidden_layers} ({n_params / 1e6:.1f}M parameters), {args.device} "
          f"{str(args.dtype)[6:]}, {torch.get_num_threads()} threads, {args.text} text tokens, "
          f"{'median' if args.device.startswith('cuda') else 'fastest'} of {args.repeats} runs, {args.steps} decode "
          f"steps")
    res = dict(shape=args.shape, torch=torch.__version__, threads=torch.get_num_threads(),
               args=dict(vars(args), dtype=str(args.dtype)), transformers=None, peer=[])
    res.update(rows=bench_rows(model, args, ratios), distill=bench_distill(model, args, ratios))
    res["bandwidth"], per_tile, hf = bandwidth(model, res["rows"], args), model.num_image_token, None
    try:
        hf = to_transformers(model)
        res["transformers"] = __import__("transformers").__version__
        with torch.inference_mode():
            pv, ids = inputs(cfg, args.tiles[0], per_tile, args)
            diff = hf(input_ids=ids, pixel_values=pv).logits.float() - model(pv, ids).float()
            res["peer_logits_max_abs_diff"] = diff.abs().max().item()
    except ImportError:
        pass
    del model  # the peer holds the weights it shares with ours: its peak memory is then its own
    gc.collect()
    print("\ntransformers peer: InternVLForConditionalGeneration, Llama text config, the same weights" + (
        f" (transformers {res['transformers']}, {hf.config._attn_implementation} attention); logits max |diff| vs "
        f"ours {res['peer_logits_max_abs_diff']:.1e} at {args.tiles[0]} tiles" if hf else "") + f"\n{HEAD}   "
        f"ours / peer speed: TTFT, b1, b8")
    for r in (r for r in res["rows"] if r["ratio"] == 1):
        if hf is None:
            print(f"{r['tiles']:>5} {1.0:>5.2f}   transformers: not installed (or older than 4.52)")
            continue
        f = figures(peer(hf, *inputs(cfg, r["tiles"], per_tile, args)), args, tiles=r["tiles"], ratio=1.0,
                    visual_tokens=r["visual_tokens"], seq_len=r["seq_len"])
        res["peer"].append(f)
        print(f"{line(f)}   x{f['ttft_ms'] / r['ttft_ms']:.2f}, x{r['decode_b1_tok_s'] / f['decode_b1_tok_s']:.2f}, "
              f"x{r['decode_b8_tok_s'] / f['decode_b8_tok_s']:.2f}")
    print(f"\nstage-I distillation step (distill.make_loss, backward, AdamW on V_c and A_s), {args.text} text + "
          f"{args.answer} answer tokens\n{'tiles':>5} {'ratio':>5} {'batch':>5} {'vis.tok':>7} {'step ms':>9} "
          f"{'samples/s':>9} {'peak GB':>7}")
    for r in res["distill"]:
        print(f"{r['tiles']:>5} {r['ratio']:>5.2f} {r['batch']:>5} {r['visual_tokens']:>7} " + (
            "  out of memory" if r.get("oom") else
            f"{r['step_ms']:>9.2f} {r['batch'] * 1e3 / r['step_ms']:>9.2f} {gb(r['peak_gb']):>7}"))
    bw = res["bandwidth"]
    print(f"\ndecode step at ratio 1.0, {bw['tiles']} tiles, {bw['context']:.0f} tokens of context: weights + KV cache "
          f"read per step / step time, against the device's copy at {bw['copy_gb_s']:.1f} GB/s\n"
          f"{'mode':>8} {'batch':>5} {'tok/s':>9} {'GB/s':>8} {'% copy':>6} {'setup s':>7}")
    for key, f in bw["modes"].items():
        mode, b = key.rsplit("_b", 1)
        print(f"{mode:>8} {b:>5} {f['tok_s']:>9.1f} {f['gb_s']:>8.1f} {f['copy_pct']:>6.0f} {f['setup_s']:>7.1f}")
    if "compile_error" in bw:
        print(f" compile     1  failed: {bw['compile_error']}")
    return res


MODEL_FLAGS = ("ratios", "text", "answer", "repeats", "steps", "distill_batches", "compile")  # not --kernels'


def parse_args(argv=None):
    p = cli.Parser(prog="bench.py", description="InternVL2 teacher vs compressed students, transformers as a peer")
    p.add_argument("--shape", choices=SHAPES, help="default: 2b on CUDA, tiny on a CPU")
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument("--dtype", choices=["float32", "bfloat16", "float16"],
                   help="default: bfloat16 on CUDA (tiny: float32), float32 on a CPU")
    p.add_argument("--tiles", type=int, nargs="+", default=[1, 6, 12], help="tiles per image (+ the thumbnail)")
    p.add_argument("--ratios", type=float, nargs="+", default=[1.0, 0.5, 0.25], help="share of visual tokens kept")
    p.add_argument("--text", type=int, default=64, help="prompt text tokens around the image")
    p.add_argument("--answer", type=int, default=16, help="labelled answer tokens of a distillation sample")
    p.add_argument("--repeats", type=int, default=5)
    p.add_argument("--steps", type=int, default=16, help="timed decode steps")
    p.add_argument("--distill-batches", type=int, nargs="+", default=[1, 2, 4, 8], help="up to the first that fails")
    p.add_argument("--threads", type=int, default=0, help="torch threads (0: torch's default)")
    p.add_argument("--no-compile", dest="compile", action="store_false", help="skip the torch.compile decode (CUDA)")
    p.add_argument("--json", default="", help="write every figure there (atomically)")
    p.add_argument("--kernels", action="store_true",
                   help="compress.py's kernels alone, on the shape's token grid of the most --tiles (+ the thumbnail)")
    args = p.parse_args(argv)
    if args.kernels and (unused := next((f for f in MODEL_FLAGS if getattr(args, f) != p.get_default(f)), None)):
        flag = next(a.option_strings[0] for a in p._actions if a.dest == unused)
        p.error(f"{flag} is the model benchmark's, unused by --kernels: drop it")
    if msg := cli.out_of_range(args, tiles=1, ratios=(0, 1), text=1, answer=1, repeats=1, steps=1, distill_batches=1,
                             threads=0) or cli.check_device(args.device):
        p.error(msg)
    if args.json and os.path.isdir(args.json):
        p.error(f"--json {args.json} is a folder: pass a file, e.g. {os.path.join(args.json, 'bench.json')}")
    if args.json:  # now, not after the timings
        try:
            cli.writable(os.path.dirname(os.path.abspath(args.json)), f"--json {args.json}")
        except cli.Error as e:
            p.error(str(e))
    for r in (r for r in args.ratios if r < 1):
        try:  # the students' windows: a ratio they cannot keep fails now, not after the teacher's timings
            C.window_for(r, 16, 16)
        except C.CompressError as e:
            p.error(f"--ratios {r:g}: {e}")
    cuda = args.device.startswith("cuda")
    args.shape = args.shape or ("2b" if cuda else "tiny")
    args.dtype = getattr(torch, args.dtype or ("bfloat16" if cuda and args.shape != "tiny" else "float32"))
    return args


def main(argv=None):
    args = parse_args(argv)
    torch.set_num_threads(args.threads) if args.threads else None
    res = {}
    bench = run_kernels if args.kernels else run
    if rc := cli.run_main("bench.py", lambda: res.update(bench(args)), C.CompressError, M.ModelLoadError):
        sys.exit(rc)  # its one line is printed
    if args.json:
        cli.write_json(args.json, res)  # a temporary file, then os.replace
    return res


if __name__ == "__main__":
    main()
