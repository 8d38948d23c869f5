#!/usr/bin/env bash
# Build the native core with AddressSanitizer + UBSan in a scratch copy and run the engine
# differential and fuzz tests against it.  Usage: scripts/asan-native.sh [pytest args...]
set -euo pipefail
here=$(cd "$(dirname "$0")/.." && pwd)
py=${PY:-$here/.venv/bin/python}
tmp=$(mktemp -d /tmp/udpnest-asan.XXXXXX)
trap 'rm -rf "$tmp"' EXIT
cp -r "$here/setup.py" "$here/pyproject.toml" "$here/README.md" "$here/csrc" "$here/src" "$here/tests" "$tmp/"
find "$tmp/src" -name '*.so' -delete
cd "$tmp"
CFLAGS="-fsanitize=address,undefined -fno-omit-frame-pointer -fno-sanitize-recover=undefined -O1 -g" \
    LDFLAGS="-fsanitize=address,undefined" "$py" setup.py -q build_ext --inplace
ls src/udpnest/_native*.so >/dev/null
LD_PRELOAD="$(gcc -print-file-name=libasan.so) $(gcc -print-file-name=libubsan.so)" \
    ASAN_OPTIONS=detect_leaks=0 UBSAN_OPTIONS=halt_on_error=1:print_stacktrace=1 \
    "$py" -m pytest -q -p no:cacheprovider "${@:-tests/test_engine_diff_tx.py}"
