#!/usr/bin/env bash
# Property-based fuzzing of the parsers and validators that take untrusted input (the CMD:
# parser, launch_args_json, table names, config.json), for a bounded time each. CI runs the
# same properties with proptest's default 256 cases; this runs many more. A failure prints the
# minimal input; add it as a regression test beside the property.
#
# Usage: scripts/fuzz.sh [CASES]   (default 20000 per property)
set -euo pipefail
cd "$(dirname "$0")/.."
cases="${1:-20000}"
export PROPTEST_CASES="$cases"
run() {
  local crate="$1" filter="$2"
  local start=$(date +%s)
  cargo test -q --release -p "$crate" --lib "$filter" -- --test-threads 1 >/dev/null
  echo "$crate $filter: $cases cases per property, $(( $(date +%s) - start )) s, no failure"
}
run n0m1-protocol command_daemon::tests::
run n0m1-protocol tables::tests::only_plain_identifiers_pass
run n0m1-supervisor launch::tests::
run n0m1-core config::tests::any_
