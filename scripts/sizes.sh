#!/usr/bin/env bash
# The size limits CI keeps (issue 18): no source file of a crate over 600 lines, and the
# binary crate (the CLI) under 2,000 lines. Functions over 80 lines are clippy's
# `too_many_lines` (threshold in clippy.toml), run by .ci/run.
set -euo pipefail
cd "$(dirname "$0")/.."

status=0
while read -r lines file; do
  if [ "$file" != total ] && [ "$lines" -gt 600 ]; then
    echo "sizes.sh: $file has $lines lines (at most 600): split it by concern" >&2
    status=1
  fi
done < <(find crates -path '*/src/*.rs' -print0 | xargs -0 wc -l)

binary=$(find crates/stormwatch/src -name '*.rs' -print0 | xargs -0 cat | wc -l)
if [ "$binary" -ge 2000 ]; then
  echo "sizes.sh: the binary crate crates/stormwatch has $binary lines (under 2000): move logic to a library crate" >&2
  status=1
fi
exit "$status"
