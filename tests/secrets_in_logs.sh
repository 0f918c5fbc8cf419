#!/usr/bin/env bash
# After the test suite: no test secret (tests/fixtures/test-secrets.txt) in
# any log or audit file the suite wrote. Those are the files under
# <target>/tmp/test-logs/ (tests put their audit logs and server logs there
# through support::log_dir) and the suite's own console output, if given
# as $1. Fails naming each file and secret found; says how much it read.
set -euo pipefail
cd "$(dirname "$0")/.."
target="${CARGO_TARGET_DIR:-target}"
secrets=tests/fixtures/test-secrets.txt
files=()
if [[ -d "$target/tmp/test-logs" ]]; then
  while IFS= read -r -d '' f; do files+=("$f"); done \
    < <(find "$target/tmp/test-logs" -type f -print0)
fi
if [[ $# -gt 0 && -f "$1" ]]; then files+=("$1"); fi
if [[ ${#files[@]} -eq 0 ]]; then
  echo "secrets check: no log or audit files found under $target/tmp/test-logs: nothing was checked" >&2
  exit 1
fi
bytes=$(cat "${files[@]}" | wc -c)
found=0
while IFS= read -r secret; do
  [[ -z "$secret" || "$secret" == \#* ]] && continue
  while IFS= read -r hit; do
    echo "SECRET LEAKED: '$secret' in $hit" >&2
    found=1
  done < <(grep -lF -- "$secret" "${files[@]}" || true)
done < "$secrets"
echo "secrets check: scanned ${#files[@]} files, $bytes bytes, for $(grep -cv '^#' "$secrets") secrets"
exit $found
