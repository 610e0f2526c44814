#!/usr/bin/env python3
"""An independent GPT-2 forward pass in numpy, to check n0m1-llm's logits.

Usage: python3 scripts/gpt2_reference.py MODEL_DIR TOKEN_ID...   (make a folder with `n0m1ctl model fixture DIR`)
Prints the logits of the last position (first 8 values) and the greedy next token.
Needs: pip install numpy safetensors
"""
import json
import sys

import numpy as np
from safetensors.numpy import load_file


def layer_norm(x, w, b, eps):
    mean = x.mean(-1, keepdims=True)
    var = ((x - mean) ** 2).mean(-1, keepdims=True)
    return (x - mean) / np.sqrt(var + eps) * w + b


def gelu_new(x):
    return 0.5 * x * (1 + np.tanh(np.sqrt(2 / np.pi) * (x + 0.044715 * x ** 3)))


def main():
    folder, ids = sys.argv[1], [int(t) for t in sys.argv[2:]]
    cfg = json.load(open(f"{folder}/config.json"))
    w = {k.removeprefix("transformer."): v.astype(np.float64) for k, v in load_file(f"{folder}/model.safetensors").items()}
    c, nh, eps = cfg["n_embd"], cfg["n_head"], cfg.get("layer_norm_epsilon", 1e-5)
    hd = c // nh
    t = len(ids)
    x = w["wte.weight"][ids] + w["wpe.weight"][:t]
    mask = np.triu(np.full((t, t), -np.inf), 1)
    for i in range(cfg["n_layer"]):
        p = f"h.{i}."
        h = layer_norm(x, w[p + "ln_1.weight"], w[p + "ln_1.bias"], eps)
        qkv = h @ w[p + "attn.c_attn.weight"] + w[p + "attn.c_attn.bias"]
        q, k, v = (qkv[:, j * c:(j + 1) * c].reshape(t, nh, hd).transpose(1, 0, 2) for j in range(3))
        att = q @ k.transpose(0, 2, 1) / np.sqrt(hd) + mask
        att = np.exp(att - att.max(-1, keepdims=True))
        att = att / att.sum(-1, keepdims=True)
        y = (att @ v).transpose(1, 0, 2).reshape(t, c)
        x = x + y @ w[p + "attn.c_proj.weight"] + w[p + "attn.c_proj.bias"]
        h = layer_norm(x, w[p + "ln_2.weight"], w[p + "ln_2.bias"], eps)
        h = gelu_new(h @ w[p + "mlp.c_fc.weight"] + w[p + "mlp.c_fc.bias"])
        x = x + h @ w[p + "mlp.c_proj.weight"] + w[p + "mlp.c_proj.bias"]
    x = layer_norm(x, w["ln_f.weight"], w["ln_f.bias"], eps)
    logits = x[-1] @ w["wte.weight"].T
    print("first8", [round(float(v), 5) for v in logits[:8]])
    print("argmax", int(logits.argmax()))


if __name__ == "__main__":
    main()
