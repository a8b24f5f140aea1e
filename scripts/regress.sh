#!/usr/bin/env bash
# Before/after check for refactors that must not move a number.
#
#   scripts/regress.sh run BIN DIR       # theory + a small Monte Carlo of every case into DIR
#   scripts/regress.sh compare OLD NEW   # byte-compare two such folders; exit 1 on a difference
#
# Typical use: build the old commit, `run` it into /tmp/before, build the new one, `run` it into
# /tmp/after, then `compare /tmp/before /tmp/after`. The cases cover the paper presets, post-LN,
# no-LN, causal, the tied head, biases, both backward modes, uMP logits, zero queries, uniform
# init and the book MLPs. Only the stats.csv files are compared (config.toml may gain keys).
set -euo pipefail

cases() {
  # name | --set flags (space separated)
  cat <<'CASES'
vit|model.preset=paper-vit model.width=64 model.layers=2 inputs.tokens=4 model.n_out=16
vit-pairs|model.preset=paper-vit model.width=64 model.layers=1 inputs.tokens=3 model.n_out=8 run.backward=pairs
lm-tied|model.preset=paper-lm model.width=64 model.layers=1 model.pattern=AM inputs.tokens=4 inputs.vocab=50 model.n_out=50
lm-tied-deep|model.preset=paper-lm model.width=64 model.layers=2 inputs.tokens=4 inputs.vocab=50 model.n_out=50
post|model.preset=paper-vit model.norm=post model.width=64 model.layers=2 inputs.tokens=4 model.n_out=16
none|model.preset=paper-vit model.norm=none model.width=64 model.layers=2 inputs.tokens=4 model.n_out=16 model.gamma_res=0.5
causal|model.preset=paper-vit model.causal=true model.width=64 model.layers=2 inputs.tokens=4 model.n_out=16
pooled-bias|model.preset=paper-vit model.head=pooled model.variances.bias=0.3 model.width=64 model.layers=2 inputs.tokens=4 inputs.sequences=2 model.n_out=8
standard|model.preset=standard model.width=64 model.layers=2 inputs.tokens=4 model.n_out=16
mup-zeroq|model.preset=paper-vit model.logit_exponent=1 model.zero_queries=true model.head_s=1 model.width=64 model.layers=2 inputs.tokens=4 model.n_out=16
uniform|model.preset=paper-vit model.init=uniform model.width=64 model.layers=1 inputs.tokens=4 model.n_out=16
mlp-relu|model.preset=mlp-book model.width=64 model.layers=6 inputs.sequences=2 inputs.tokens=1
mlp-tanh|model.preset=mlp-book model.activation=tanh model.variances.w=1 model.variances.stem=1 model.variances.head=1 model.width=64 model.layers=6 inputs.sequences=2 inputs.tokens=1
mlp-gelu-bias|model.preset=mlp-book model.activation=gelu model.variances.bias=0.1 model.width=64 model.layers=4 inputs.sequences=2 inputs.tokens=1
resid-mlp|model.preset=paper-vit model.pattern=M model.activation=relu model.width=64 model.layers=3 inputs.tokens=3 model.n_out=16
CASES
}

case "${1:-}" in
  run)
    bin=$2; dir=$3; mkdir -p "$dir"
    cases | while IFS='|' read -r name sets; do
      args=()
      for s in $sets; do args+=(--set "$s"); done
      "$bin" theory "${args[@]}" --out "$dir/$name/theory" >/dev/null 2>&1 || echo "$name: theory failed" >&2
      "$bin" simulate "${args[@]}" --samples 64 --threads 2 --out "$dir/$name/mc" >/dev/null 2>&1 || echo "$name: simulate failed" >&2
    done
    ;;
  compare)
    old=$2; new=$3; bad=0
    for f in $(cd "$old" && find . -name stats.csv | sort); do
      if ! cmp -s "$old/$f" "$new/$f"; then echo "differs: $f"; bad=1; fi
    done
    [ $bad = 0 ] && echo "all stats.csv identical"
    exit $bad
    ;;
  *) sed -n 2,11p "$0"; exit 2 ;;
esac
