#!/usr/bin/env bash
# Performance regression gate: benchmarks/regress.sh BASE [HEAD]
#
# Runs the asv `track_speedup_*` benchmarks (fastbp ÷ NumPy reference, each a ratio
# measured inside one process, so machine load cancels to first order) of both commits
# with `asv continuous` (same machine, one after the other, rounds interleaved), then
# compares them and exits 1 when any speed-up of HEAD dropped below BASE's by more than
# the factor REGRESS_FACTOR (default 1.5: HEAD < BASE / 1.5), or a benchmark that ran
# on BASE fails on HEAD; 0 otherwise.
#
# asv ranks every number as "smaller is better", so its own exit status calls a lower
# speed-up an improvement; the verdict here is taken from `asv compare` instead, where a
# drop of a speed-up is the '-' mark. HEAD defaults to HEAD. Both commits are built into
# asv's virtualenv (asv.conf.json); results accumulate in .asv/results, so
# `asv publish` afterwards includes them (see benchmarks/README.md).
#
# Both BLAS libraries run one thread (OPENBLAS_NUM_THREADS=1 unless set): on a shared
# machine a two-thread OpenBLAS pool collapses at random (the reference's numpy BLAS
# included), which moved the speed-up of one unchanged commit by 0.44-3.8x between runs.
#
# Environment: REGRESS_FACTOR (1.5), REGRESS_BENCH (asv --bench regex,
# default '^bench_training\.TrackSpeedup\.track_speedup_'), FASTBP_BENCH_SIZE (quick),
# OPENBLAS_NUM_THREADS (1), PYTHON (python3: the interpreter whose asv runs),
# NUMBA_CACHE_DIR.
set -euo pipefail

if [ $# -lt 1 ] || [ $# -gt 2 ]; then
    echo "usage: $0 BASE [HEAD]" >&2
    exit 2
fi
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$root"
base="$(git rev-parse --verify "$1^{commit}")"
head="$(git rev-parse --verify "${2:-HEAD}^{commit}")"
factor="${REGRESS_FACTOR:-1.5}"
bench="${REGRESS_BENCH:-^bench_training\.TrackSpeedup\.track_speedup_}"
python="${PYTHON:-python3}"
export FASTBP_BENCH_SIZE="${FASTBP_BENCH_SIZE:-quick}"
export OPENBLAS_NUM_THREADS="${OPENBLAS_NUM_THREADS:-1}"
export NUMBA_CACHE_DIR="${NUMBA_CACHE_DIR:-${TMPDIR:-/tmp}/fastbp-regress-numba-cache}"
asv=("$python" -m asv)

"${asv[@]}" machine --yes >/dev/null
echo "== asv continuous ${base:0:8} ${head:0:8} (bench $bench, FASTBP_BENCH_SIZE=$FASTBP_BENCH_SIZE," \
     "OPENBLAS_NUM_THREADS=$OPENBLAS_NUM_THREADS)"
# asv's exit status is ignored: it would call a lower speed-up an improvement
"${asv[@]}" continuous --interleave-rounds --factor "$factor" --bench "$bench" --show-stderr \
    "$base" "$head" || true

echo "== asv compare --factor $factor ${base:0:8} ${head:0:8}"
report="$("${asv[@]}" compare --factor "$factor" --no-stats "$base" "$head")"
echo "$report"
# rows of asv's table whose Change column is '-' (HEAD smaller: the speed-up dropped)
# or '!' (failed on HEAD only)
bad="$(echo "$report" | grep -E '^\|[[:space:]]*[-!][[:space:]]*\|' | grep -E 'track_speedup_' || true)"
if [ -n "$bad" ]; then
    echo "regress: FAILED: speed-up dropped by more than ${factor}x (or failed) on ${head:0:8}:" >&2
    echo "$bad" >&2
    exit 1
fi
if ! echo "$report" | grep -q 'track_speedup_'; then
    echo "regress: FAILED: no track_speedup_ result to compare (did the builds fail?)" >&2
    exit 1
fi
echo "regress: ok (no speed-up dropped by more than ${factor}x)"
