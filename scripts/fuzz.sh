#!/usr/bin/env bash
# Fuzzes the OTLP decoders and the statement normaliser with libFuzzer, on the stable
# toolchain (coverage instrumentation through -Cpasses/-Cllvm-args; no nightly, no cargo-fuzz).
#
#   scripts/fuzz.sh                 # every target for 60 s each (what CI runs)
#   scripts/fuzz.sh 3600            # every target for an hour each
#   scripts/fuzz.sh 600 otlp_json   # one target
#
# Seeds are in fuzz/corpus/<target>/ (committed); what the fuzzer finds goes to a scratch copy
# of them, so runs do not churn the repository. A crash stops the script with libFuzzer's
# report and the input saved as fuzz/artifacts/<target>/crash-*; reproduce it with
#   fuzz/target/x86_64-unknown-linux-gnu/release/<target> fuzz/artifacts/<target>/crash-...
set -euo pipefail
cd "$(dirname "$0")/../fuzz"

seconds=${1:-60}
shift || true
targets=("$@")
if [ ${#targets[@]} -eq 0 ]; then
  targets=(otlp_protobuf otlp_json normalize_statement)
fi

export RUSTFLAGS="--cfg fuzzing -Cpasses=sancov-module -Cllvm-args=-sanitizer-coverage-level=4 \
-Cllvm-args=-sanitizer-coverage-inline-8bit-counters -Cllvm-args=-sanitizer-coverage-pc-table \
-Cllvm-args=-sanitizer-coverage-trace-compares -Cdebug-assertions -Coverflow-checks"
# An explicit --target keeps the instrumentation out of build scripts and proc macros.
host=$(rustc -vV | sed -n 's/^host: //p')
cargo build --release --locked --bins --target "$host"
bin="${CARGO_TARGET_DIR:-target}/$host/release"

scratch=$(mktemp -d)
trap 'rm -rf "$scratch"' EXIT
for target in "${targets[@]}"; do
  mkdir -p "$scratch/$target" "artifacts/$target"
  cp -r "corpus/$target/." "$scratch/$target/"
  echo "fuzz.sh: $target for ${seconds}s" >&2
  log="$scratch/$target.log"
  if [ ! -x "$bin/$target" ]; then
    echo "fuzz.sh: $bin/$target was not built" >&2
    exit 1
  fi
  if ! "$bin/$target" -max_total_time="$seconds" -max_len=262144 -rss_limit_mb=2048 \
      -artifact_prefix="artifacts/$target/" -print_final_stats=1 "$scratch/$target" >"$log" 2>&1; then
    tail -n 60 "$log" >&2
    echo "fuzz.sh: $target FAILED; the input is in fuzz/artifacts/$target/" >&2
    exit 1
  fi
  runs=$(grep -o 'stat::number_of_executed_units: *[0-9]*' "$log" | grep -o '[0-9]*$' || echo '?')
  echo "fuzz.sh: $target: $runs executions, 0 crashes, corpus $(ls "$scratch/$target" | wc -l) inputs" >&2
done
