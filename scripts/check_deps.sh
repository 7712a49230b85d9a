#!/usr/bin/env bash
# Checks that each src/<folder> library's DEPS in CMakeLists.txt name exactly
# the optiq folders its sources include (no missing and no unused edges), so
# that the CMake graph is the real dependency graph. Exit 1 on a mismatch.
set -euo pipefail
root="$(cd "$(dirname "$0")/.." && pwd)"
status=0
while read -r line; do
  name=$(sed -E 's/optiq_component\(([a-z_]+).*/\1/' <<<"$line")
  declared=$( (grep -oE 'optiq_[a-z_]+' <<<"${line#*DEPS}" || true) | sed 's/optiq_//' | sort -u | tr '\n' ' ')
  included=$(grep -rhoE '#include "[a-z_]+/' "$root/src/$name" | sed -E 's/#include "([a-z_]+)\//\1/' \
             | grep -vx "$name" | sort -u | tr '\n' ' ' || true)
  if [[ "$declared" != "$included" ]]; then
    echo "src/$name: CMake DEPS [${declared% }] but its sources include [${included% }]"
    status=1
  fi
done < <(grep -E '^optiq_component\(' "$root/CMakeLists.txt")
[[ $status == 0 ]] && echo "CMake dependencies match the includes"
exit $status
