#!/usr/bin/env bash
# The SmolLM2-135M study, from the repository root (resumable: run it again after a stop and it
# scores only the facts not yet stored under studies/smollm2-135m/run/attribution/).
#
#   bash studies/smollm2-135m/run.sh            # all steps
#   bash studies/smollm2-135m/run.sh select     # only steps 1-2 (known facts, the sample)
#
# 1. known_facts.py: which PARAREL facts the model knows (200 seeded facts per relation).
# 2. select_facts.py: the study's facts (facts.txt, selection.json).
# 3. kn-lens reproduce on those facts, at most 8 prompts per fact, float32, the paper's settings;
#    erasure of the four best-known relations (the paper's P19, P27, P106 and P937 are
#    almost unknown to this model: see README.md).
set -euo pipefail
here="$(cd "$(dirname "$0")" && pwd)"
data="${DATA:-../shared/data}"
python "$here/known_facts.py" --data "$data" --out "$here" --per-relation 200
python "$here/select_facts.py" --dir "$here"
[ "${1:-}" = select ] && exit 0
erase="$(python -c "import json,sys; s=json.load(open('$here/selection.json'))['relations']; print(','.join(sorted(s, key=lambda r: -s[r]['known'])[:4]))")"
kn-lens reproduce --model smollm2-135m --data "$data" --facts "$here/facts.txt" --max-prompts 8 \
  --erase "$erase" --out "$here/run"
