#!/usr/bin/env bash
# The study's `localize` (issue 22), from the repository root, after run.sh's steps 1-3:
#
#   nice -n 19 bash studies/smollm2-135m/localize.sh
#
# Resumable: each fact's measures are appended to run/localize_facts.jsonl as soon as the fact is
# done, and a later call skips them (a kill, even kill -9, loses at most the fact in progress).
# It runs in slices of SLICE facts (default 9, one per relation in turn); each slice rewrites
# run/results.json with the facts done so far (a partial result: `skipped_facts` names the facts
# still `not_yet_measured`). --batch-size 512: IG rows per pass, 2x faster than the CPU default of
# 64 on this model, the same scores. Stop it at any time; `SLICE=0 bash .../localize.sh` only
# summarises the facts already kept.
set -euo pipefail
cd "$(dirname "$0")/../.."
here=studies/smollm2-135m
data="${DATA:-../shared/data}"
slice="${SLICE:-9}"
args=(--model smollm2-135m --data "$data" --facts "$here/facts.txt" --max-prompts 8
  --batch-size 512 --out "$here/run" --no-progress)
left() {
  python -c "import json,sys; r=json.load(open(sys.argv[1]))['results'].get('localize'); \
print(-1 if r is None else list(r['skipped_facts'].values()).count('not_yet_measured'))" \
    "$here/run/results.json"
}
while :; do
  kn-lens localize "${args[@]}" --set "localize_max_new=$slice"
  n="$(left)"
  echo "localize: $n fact(s) still to measure" >&2
  if [ "$n" = 0 ] || [ "$slice" = 0 ]; then break; fi
done
