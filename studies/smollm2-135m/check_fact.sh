#!/usr/bin/env bash
# Re-run one fact of the study from scratch and compare its knowledge neurons with the committed
# ones (studies/smollm2-135m/run/neurons.json), from the repository root:
#
#   bash studies/smollm2-135m/check_fact.sh P36/12        # any key of facts.txt
#
# It runs the study's own command (run.sh: same model, data, --max-prompts 8, seed, float32) on
# that one fact into a fresh folder, with the sharing threshold p fixed at the value the adaptive
# procedure chose for the fact's whole relation in the committed run (p depends on every fact of
# the relation, so one fact alone would otherwise start the adaptive search again). Then it
# compares the neurons and the integrated-gradients scores with the committed ones, and exits
# non-zero if the neurons differ.
set -euo pipefail
here="$(cd "$(dirname "$0")" && pwd)"
data="${DATA:-../shared/data}"
key="${1:?usage: check_fact.sh RELATION/INDEX (a key of facts.txt)}"
grep -qx "$key" "$here/facts.txt" || { echo "check_fact.sh: $key is not a key of $here/facts.txt" >&2; exit 2; }
out="${OUT:-$(mktemp -d)/check}"
rel="${key%%/*}"
# The Python that runs kn-lens (its script's #! line), not whatever `python` is first on PATH;
# PYTHON=... overrides it.
kn="$(command -v kn-lens)" || { echo "check_fact.sh: kn-lens is not on PATH" >&2; exit 2; }
py="${PYTHON:-$(sed -n '1s/^#![[:space:]]*//p' "$kn")}"
[ -x "${py%% *}" ] || py="$(command -v python3)"
p="$($py -c "import json; print(json.load(open('$here/run/neurons.json'))['relations']['$rel']['ours']['p'])")"
echo "$key" > "$out.facts.txt"
kn-lens attribute --model smollm2-135m --data "$data" --facts "$out.facts.txt" --max-prompts 8 \
  --out "$out" --no-progress
kn-lens identify --model smollm2-135m --data "$data" --facts "$out.facts.txt" --max-prompts 8 \
  --set "p=$p" --set p_rounds=1 --out "$out"
$py - "$key" "$here/run" "$out" <<'EOF'
import json, sys
from pathlib import Path

key, committed, fresh = sys.argv[1], Path(sys.argv[2]), Path(sys.argv[3])
rel = key.split("/")[0]


def neurons(run):
    return json.loads((run / "neurons.json").read_text())["neurons"]["ours"][key]


def ig(run):
    for line in (run / "attribution" / f"{rel}.jsonl").read_text().splitlines():
        rec = json.loads(line)
        if rec.get("key") == key:
            return {
                (i, layer, idx): s
                for i, ps in enumerate(rec["scores"]["ig"])
                for layer, idx, s in ps["neurons"]
            }
    raise SystemExit(f"{key} not in {run}/attribution/{rel}.jsonl")


a, b = ig(committed), ig(fresh)
common = set(a) & set(b)
worst = max((abs(a[k] - b[k]) / max(abs(a[k]), 1e-12) for k in common), default=0.0)
print(f"{key}: stored scores {len(a)} committed / {len(b)} re-run, {len(common)} in both; "
      f"largest relative difference {worst:.2e}")
old, new = neurons(committed), neurons(fresh)
print(f"committed neurons: {old}\nre-run neurons:    {new}")
if sorted(map(tuple, old)) != sorted(map(tuple, new)):
    raise SystemExit(f"{key}: the re-run's knowledge neurons differ from the committed ones")
print(f"{key}: identical knowledge neurons")
EOF
