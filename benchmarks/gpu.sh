#!/usr/bin/env bash
# One GPU check for kn_lens: the CUDA tests, the encoder attribution benchmark (bert-base shape,
# against the knowledge-neurons package, prompts batched across a bag) and the decoder attribution
# benchmark (GPT-2-small shape), with the opt-in lower precisions (--dtype) on the bert-base shape.
# Builds every model from a config: no model files are needed.
# Writes OUT/gpu.json (the figures), OUT/encoder.json, OUT/decoder.json, OUT/cuda_tests.log.
# The decoder benchmark needs TransformerLens 3.x (HookedTransformer); on 4.x it is skipped and
# decoder.json says so.
# Sized to finish in under 8 minutes on one H100.
#
#   bash benchmarks/gpu.sh                     # --device cuda, the real sizes
#   bash benchmarks/gpu.sh --device cpu        # dry run: tiny sizes, a minute on a laptop CPU
#   bash benchmarks/gpu.sh --out DIR           # where the figures go (default: gpu-check)
#
# Needs beside kn_lens and torch only: pytest (CUDA tests), knowledge-neurons 0.0.2 + einops
# (`pip install --no-deps -r benchmarks/requirements.txt`). Without knowledge-neurons the encoder
# comparison is skipped and gpu.json says so.
set -euo pipefail
device=cuda
out=gpu-check
while [ $# -gt 0 ]; do
  case "$1" in
    --device) device="$2"; shift 2 ;;
    --out) out="$2"; shift 2 ;;
    -h|--help) sed -n '2,16p' "$0"; exit 0 ;;
    *) echo "gpu.sh: unknown option $1 (use --device cpu|cuda, --out DIR)" >&2; exit 2 ;;
  esac
done
here="$(cd "$(dirname "$0")" && pwd)"
root="$(dirname "$here")"
py="${PYTHON:-python3}"
mkdir -p "$out"
export PYTHONUNBUFFERED=1
t0=$(date +%s)

skip_kn=""
if ! "$py" -c "import knowledge_neurons" 2>/dev/null; then
  skip_kn="--skip-kn"
  echo "gpu.sh: knowledge-neurons is not installed; timing kn_lens alone" >&2
fi

if [ "$device" = cpu ]; then
  enc_args=(--models tiny --kn-prompts 2 --bags 1,2 --threads 1 --also-dtype bfloat16)
  dec_args=(--tiny --threads 1)
else
  enc_args=(--models base --kn-prompts 10 --bags 1,4,9,20 --also-dtype bfloat16,float16)
  dec_args=()
fi

echo "== CUDA tests ==" >&2
set +e
(cd "$root" && "$py" -m pytest -q -p no:cacheprovider -k cuda tests) > "$out/cuda_tests.log" 2>&1
tests_rc=$?
set -e
tail -n 3 "$out/cuda_tests.log" >&2

echo "== encoder attribution benchmark ==" >&2
"$py" "$here/attribution.py" --device "$device" "${enc_args[@]}" $skip_kn --json "$out/encoder.json"

echo "== decoder attribution benchmark ==" >&2
if (cd "$root" && "$py" -c "import sys; from kn_lens.models.backend import HAS_HOOKED_CLASSES as h; sys.exit(not h)"); then
  "$py" "$here/decoder_attribution.py" --device "$device" "${dec_args[@]}" --json "$out/decoder.json"
else  # it builds a HookedTransformer, which TransformerLens 4 removed
  echo '{"skipped": "needs TransformerLens 3.x (HookedTransformer); TransformerLens 4 is installed"}' > "$out/decoder.json"
  echo "gpu.sh: decoder benchmark skipped: it needs TransformerLens 3.x (HookedTransformer)" >&2
fi

"$py" "$here/gpu_summary.py" --out "$out" --device "$device" --tests-rc "$tests_rc" \
  --wall-s "$(( $(date +%s) - t0 ))"
