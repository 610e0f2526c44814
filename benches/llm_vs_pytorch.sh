#!/usr/bin/env bash
# Model engine benchmark (not run in CI): a distilgpt2-shaped GPT-2 with seeded random
# weights, written once; load time, prompt and decode tokens/s and peak RSS for n0m1 F32,
# n0m1 Q8_0 and PyTorch transformers on the same folder and thread count. Greedy ids of n0m1
# F32 and PyTorch must be identical.
#
# Needs: python3 with torch and transformers (PYTHON=/path/to/python to choose one).
# Usage: benches/llm_vs_pytorch.sh [THREADS] [PROMPT_TOKENS] [NEW_TOKENS]
set -euo pipefail
cd "$(dirname "$0")/.."
threads="${1:-2}"; prompt="${2:-64}"; new="${3:-64}"
python="${PYTHON:-python3}"
work="${BENCH_DIR:-$(mktemp -d)}"
model="$work/distilgpt2-random"
cargo build --release -q -p n0m1-models --bin n0m1_model
tool=target/release/n0m1_model
[ -f "$model/model.safetensors" ] || "$tool" fixture "$model" --shape distilgpt2 --seed 7 >/dev/null

run() { "$@" 2>/dev/null | tail -n 1; }
f32=$(run "$tool" --home "$work" bench --model "$model" --threads "$threads" --prompt-tokens "$prompt" --new-tokens "$new")
q8=$(run "$tool" --home "$work" bench --model "$model" --threads "$threads" --quantize q8_0 --prompt-tokens "$prompt" --new-tokens "$new")
torch=$(run "$python" benches/pytorch_gpt2.py "$model" "$threads" "$prompt" "$new")

"$python" - "$f32" "$q8" "$torch" "$threads" "$prompt" "$new" <<'PY'
import json, sys
f32, q8, pt = (json.loads(a) for a in sys.argv[1:4])
threads, prompt, new = sys.argv[4:7]
print(f"distilgpt2-shaped GPT-2, random weights; {threads} threads, {prompt} prompt tokens, {new} new tokens")
print(f"{'':12} {'load s':>8} {'ready s':>8} {'prompt tok/s':>13} {'decode tok/s':>13} {'peak RSS MiB':>13}")
for name, r in (("n0m1 F32", f32), ("n0m1 Q8_0", q8), ("PyTorch", pt)):
    print(f"{name:12} {r['load_s']:>8.3f} {r['ready_s']:>8.2f} {r['prompt_tok_s']:>13.1f} {r['decode_tok_s']:>13.1f} {r['peak_rss_mib']:>13.0f}")
print("load = from_pretrained / LoadedModel::load alone; ready = from exec to loaded (imports included)")
print(f"decode vs PyTorch: F32 {f32['decode_tok_s']/pt['decode_tok_s']:.2f}x, Q8_0 {q8['decode_tok_s']/pt['decode_tok_s']:.2f}x; "
      f"load {f32['load_s']/pt['load_s']:.2f}, ready {f32['ready_s']/pt['ready_s']:.2f} of PyTorch's; "
      f"peak RSS F32 {f32['peak_rss_mib']/pt['peak_rss_mib']:.2f}, Q8_0 {q8['peak_rss_mib']/pt['peak_rss_mib']:.2f} of PyTorch's")
same = f32["ids"] == pt["ids"]
print(f"greedy ids identical (n0m1 F32 vs PyTorch): {same}; Q8_0 agrees on {sum(a == b for a, b in zip(q8['ids'], f32['ids']))}/{len(f32['ids'])}")
sys.exit(0 if same else 1)
PY
