#!/usr/bin/env bash
# Run (or resume) the restoration tables of issues 4 and 5 in dependency order, as shard I of N.
#
#   bash benchmarks/tools/run_tables.sh I N [DIFFINV]      # e.g. 0 2 and 1 2 on a 2-core CPU
#
# Each step is `diffinv bench TASK --shard I/N`: it skips every unit that already has a row, so
# rerunning the script after a kill loses at most the batch in flight. On a CPU start one process
# per core with OMP_NUM_THREADS=1 (as the tables here were run: 2 cores, shards 0/2 and 1/2); on a
# GPU run one shard per device. The order: the DMPlug convergence
# study first (it fixes the budget and (W, P) of the DMPlug tables: run benchmarks/tools/pick_wmv.py
# and set them before going on), then the linear table's slow methods, mnist32, the DMPlug tables
# (the cost table, ~3.5 CPU-h, before Table 5: ~10 CPU-h by its first batches; its committed rows
# ran on one H100 in ~20 minutes, see benchmarks/README.md, --split batches).
set -euo pipefail
I=${1:?shard index I}
N=${2:?number of shards N}
DIFFINV=${3:-diffinv}
cd "$(dirname "$0")/../.."
run() { echo "=== $* ($(date -u +%FT%TZ))"; "$DIFFINV" bench "$@" --shard "$I/$N" --no-progress; }
run benchmarks/tasks/dmplug_convergence.toml
run benchmarks/tasks/linear.toml --only method=dps
run benchmarks/tasks/linear.toml --only method=mcg
run benchmarks/tasks/linear.toml
run benchmarks/tasks/linear_mnist32.toml
if grep -l PROVISIONAL benchmarks/tasks/dmplug_{linear,nonlinear,noise,cost}.toml; then
    echo "the DMPlug budget and (W, P) above are still provisional: run benchmarks/tools/pick_wmv.py" \
         "on the convergence rows and set them first" >&2
    exit 3
fi
run benchmarks/tasks/dmplug_linear.toml
run benchmarks/tasks/dmplug_nonlinear.toml
run benchmarks/tasks/dmplug_cost.toml
run benchmarks/tasks/dmplug_noise.toml
