#!/usr/bin/env bash
# Runs the cargo-fuzz targets of fuzz/ (one per harness of src/fuzz.rs) for a set time each.
# Usage: scripts/fuzz.sh [SECONDS_PER_TARGET (default 60)] [TARGET...]   (default: every target)
# Needs the nightly toolchain (rustup) and cargo-fuzz (installed here when missing). The seed
# corpus fuzz/corpus/TARGET/ is read, never written: new inputs go to target/fuzz-corpus/TARGET/.
# A failing input is saved under fuzz/artifacts/TARGET/; tests/fuzz_corpus.rs replays every file
# there in CI, so commit it with the fix.
set -euo pipefail
cd "$(dirname "$0")/.."

secs="${1:-60}"
shift || true
log() { printf 'fuzz.sh: %s\n' "$*" >&2; }

if ! rustup run nightly rustc --version >/dev/null 2>&1; then
  log "the nightly toolchain is missing: rustup toolchain install nightly"
  exit 2
fi
if ! cargo fuzz --version >/dev/null 2>&1; then
  log "installing cargo-fuzz"
  cargo install cargo-fuzz --locked
fi

targets=("$@")
if [ ${#targets[@]} -eq 0 ]; then
  mapfile -t targets < <(cd fuzz/fuzz_targets && ls ./*.rs | sed 's#^\./##; s#\.rs$##')
fi

failed=()
for t in "${targets[@]}"; do
  work="target/fuzz-corpus/$t"
  mkdir -p "$work" "fuzz/artifacts/$t"
  log "$t: ${secs}s"
  if cargo +nightly fuzz run --fuzz-dir fuzz "$t" "$work" "fuzz/corpus/$t" -- \
      -max_total_time="$secs" -max_len=65536 -rss_limit_mb=2048 -print_final_stats=1 \
      -artifact_prefix="fuzz/artifacts/$t/" 2> "target/fuzz-$t.log"; then
    runs=$(grep -o 'stat::number_of_executed_units: *[0-9]*' "target/fuzz-$t.log" | grep -o '[0-9]*$' || echo '?')
    log "$t: clean, $runs runs in ${secs}s"
  else
    log "$t: FAILED, see target/fuzz-$t.log and fuzz/artifacts/$t/"
    failed+=("$t")
  fi
done
if [ ${#failed[@]} -gt 0 ]; then
  log "failed: ${failed[*]}"
  exit 1
fi
