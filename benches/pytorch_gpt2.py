#!/usr/bin/env python3
"""PyTorch transformers side of benches/llm_vs_pytorch.sh: same folder, same prompt ids,
same thread count, greedy decoding with the KV cache; prints one JSON line like
`n0m1_model bench`.

Usage: pytorch_gpt2.py MODEL_DIR THREADS PROMPT_TOKENS NEW_TOKENS
"""
import json
import os
import resource
import sys
import time

import torch
from transformers import GPT2LMHeadModel


def seconds_since_exec():
    """From the process's start (exec) to now, from /proc: includes importing torch."""
    ticks = os.sysconf("SC_CLK_TCK")
    start = int(open("/proc/self/stat").read().rsplit(")", 1)[1].split()[19]) / ticks
    return float(open("/proc/uptime").read().split()[0]) - start


def main():
    folder, threads, prompt_tokens, new_tokens = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), int(sys.argv[4])
    torch.set_num_threads(threads)
    started = time.perf_counter()
    model = GPT2LMHeadModel.from_pretrained(folder, torch_dtype=torch.float32)
    model.eval()
    load_s = time.perf_counter() - started
    ready_s = seconds_since_exec()
    prompt = torch.tensor([[i % 256 for i in range(prompt_tokens)]])
    ids = []
    with torch.inference_mode():
        started = time.perf_counter()
        out = model(prompt, use_cache=True)
        prompt_s = time.perf_counter() - started
        past, logits = out.past_key_values, out.logits[0, -1]
        started = time.perf_counter()
        for step in range(new_tokens):
            nxt = int(torch.argmax(logits))
            ids.append(nxt)
            if step + 1 < new_tokens:
                out = model(torch.tensor([[nxt]]), past_key_values=past, use_cache=True)
                past, logits = out.past_key_values, out.logits[0, -1]
        decode_s = time.perf_counter() - started
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0
    print(json.dumps({
        "load_s": round(load_s, 3),
        "ready_s": round(ready_s, 2),
        "prompt_tok_s": round(prompt_tokens / prompt_s, 1),
        "decode_tok_s": round((new_tokens - 1) / decode_s, 1),
        "peak_rss_mib": round(peak),
        "ids": ids,
    }))


if __name__ == "__main__":
    main()
