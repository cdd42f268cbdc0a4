#!/usr/bin/env python3
"""The throughput workloads of shared/benches/throughput.rs through Hugging Face transformers
and PyTorch, for scripts/gpu-check.sh: one JSON line per workload, same fields.

    python3 scripts/gpu_check_torch.py --config bench/bench-40m.config.json \
        [--device cuda] [--dtype bf16|f32] [--workloads generate,logprobs,train] [--runs 3]

Same shapes and settings as the Rust side: random weights (std 0.02), generate batch 8 x
prompt 32 + 64 sampled tokens (T 0.7, top-p 0.9, KV cache), teacher-forced log-probs of
8 x 96 tokens (prompt 32, response 64; log-softmax in f32 at response positions only), one
train step over 8 x 128 tokens (forward, backward, clip_grad_norm_ 1.0, AdamW): f32 parameters
with bf16 autocast for --dtype bf16 (PyTorch's mixed precision: f32 master weights and
optimizer state), plain f32 otherwise. Exits 3 when torch or transformers is missing, so the
caller can say "skipped".
"""

import argparse
import json
import math
import sys
import time


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--config", required=True)
    ap.add_argument("--device", default="cuda")
    ap.add_argument("--dtype", default=None, help="f32 or bf16 (default: bf16 on cuda, f32 on cpu)")
    ap.add_argument("--workloads", default="generate,logprobs,train")
    ap.add_argument("--runs", type=int, default=3)
    args = ap.parse_args()
    try:
        import torch
        import transformers
    except ImportError as e:
        print(f"gpu_check_torch: {e}; skipped", file=sys.stderr)
        return 3

    device = torch.device(args.device)
    dtype_name = args.dtype or ("bf16" if device.type == "cuda" else "f32")
    if dtype_name not in ("f32", "bf16"):
        print(f"gpu_check_torch: --dtype {dtype_name}: expected f32 or bf16", file=sys.stderr)
        return 2
    compute = torch.bfloat16 if dtype_name == "bf16" else torch.float32
    workloads = args.workloads.split(",")
    with open(args.config) as f:
        cfg_json = json.load(f)
    model_name = args.config.rsplit("/", 1)[-1].removesuffix(".config.json").removeprefix("bench-")
    cfg_json["initializer_range"] = 0.02
    cfg_json.pop("torch_dtype", None)
    cfg_json.pop("dtype", None)
    config = transformers.AutoConfig.for_model(**cfg_json)
    # Attention as transformers picks it by default (sdpa), as a user would run it.
    torch.manual_seed(0)
    vocab = config.vocab_size

    def ids(seed, length, offset):
        top = max(vocab - 2, 1)
        return [1 + (seed * 977 + (i + offset) * 131) % top for i in range(length)]

    def sync():
        if device.type == "cuda":
            torch.cuda.synchronize(device)

    def report(workload, tokens, secs, runs):
        print(json.dumps({
            "impl": "torch", "model": model_name, "device": args.device, "dtype": dtype_name,
            "workload": workload, "tokens_per_s": round(tokens / secs, 1),
            "seconds_per_run": round(secs / runs, 4), "runs": runs,
            "torch": torch.__version__, "transformers": transformers.__version__,
        }), flush=True)

    def make_model(dtype):
        # transformers 5 calls it `dtype`, 4.x `torch_dtype`.
        try:
            return transformers.AutoModelForCausalLM.from_config(config, dtype=dtype)
        except TypeError:
            return transformers.AutoModelForCausalLM.from_config(config, torch_dtype=dtype)

    if "generate" in workloads or "logprobs" in workloads:
        model = make_model(compute)
        model.to(device).eval()
        if "generate" in workloads:
            prompts = torch.tensor([ids(r, 32, 0) for r in range(8)], device=device)
            mask = torch.ones_like(prompts)
            kw = dict(attention_mask=mask, do_sample=True, temperature=0.7, top_p=0.9, top_k=0,
                      min_new_tokens=64, max_new_tokens=64, pad_token_id=0)
            with torch.no_grad():
                model.generate(prompts[:1], attention_mask=mask[:1], do_sample=True,
                               max_new_tokens=4, pad_token_id=0)
                sync()
                tokens, start = 0, time.perf_counter()
                for _ in range(args.runs):
                    out = model.generate(prompts, **kw)
                    tokens += (out.shape[1] - 32) * out.shape[0]
                sync()
                report("generate", tokens, time.perf_counter() - start, args.runs)
        if "logprobs" in workloads:
            seqs = torch.tensor([ids(r + 100, 96, 0) for r in range(8)], device=device)

            def logprobs():
                hidden = model.model(input_ids=seqs).last_hidden_state
                # Positions 31..94 predict the response tokens 32..95.
                logits = model.lm_head(hidden[:, 31:95]).float()
                lp = torch.log_softmax(logits, dim=-1).gather(-1, seqs[:, 32:, None]).squeeze(-1)
                return lp.cpu()

            with torch.no_grad():
                logprobs()
                sync()
                start = time.perf_counter()
                for _ in range(args.runs):
                    logprobs()
                report("logprobs", 8 * 96 * args.runs, time.perf_counter() - start, args.runs)
        del model
        if device.type == "cuda":
            torch.cuda.empty_cache()

    if "train" in workloads:
        model = make_model(torch.float32)
        model.to(device).train()
        opt = torch.optim.AdamW(model.parameters(), lr=5e-7, weight_decay=0.01)
        seqs = torch.tensor(
            [ids(p, 32, 0) + ids(p * 2 + k + 11, 96, 32) for p in range(4) for k in range(2)],
            device=device)
        winrate = torch.tensor([0.8, 0.2] * 4, device=device, dtype=torch.float64)
        logp_t = torch.full((8,), -96.0 * math.log(vocab), device=device, dtype=torch.float64)
        logp_ref = logp_t - 0.5
        eta = 1000.0

        def step():
            with torch.autocast(device.type, dtype=torch.bfloat16, enabled=compute == torch.bfloat16):
                logits = model(input_ids=seqs).logits[:, 31:127]
            lp = torch.log_softmax(logits.float(), dim=-1).gather(-1, seqs[:, 32:, None]).squeeze(-1)
            s = lp.sum(-1).double()
            dt, dref = s - logp_t, s - logp_ref
            # The rspo-paper loss of DESIGN.md: self-play + 0.1 forward_kl_is + 0.5 reverse_kl.
            loss = ((dt - eta * (winrate - 0.5)) ** 2).mean() \
                + 0.1 * 2 * torch.exp(torch.clamp(-dref, max=10.0)).mean() \
                + 0.5 * 2 * (dref ** 2).mean()
            opt.zero_grad(set_to_none=True)
            loss.backward()
            torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
            opt.step()
            return loss

        step()
        sync()
        start = time.perf_counter()
        for _ in range(args.runs):
            step()
        sync()
        report("train", 8 * 128 * args.runs, time.perf_counter() - start, args.runs)
    return 0


if __name__ == "__main__":
    sys.exit(main())
