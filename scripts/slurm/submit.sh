#!/usr/bin/env bash
# Submit a sharded sweep: an array job of N shards (shards.sbatch) and the merge job (merge.sbatch),
# which starts when every shard has succeeded. Prints both job ids.
#
#   HARNESS_ARGS="--model flamingo --tasks easyvqa --shots 0 4 32 --seeds 0 1 2" \
#   HARNESS_OUTPUT=/shared/results HARNESS_DATA=/shared/data scripts/slurm/submit.sh 8
#
# Resources: SHARD_SBATCH (default "--gpus=1") and MERGE_SBATCH (default none; the merge needs no GPU)
# are added to each sbatch command, e.g. SHARD_SBATCH="--gpus=1 --partition=gpu --cpus-per-task=8".
# Logs: $HARNESS_OUTPUT/slurm-logs/ (HARNESS_LOGS to change). See shards.sbatch for the variables.
set -euo pipefail
n=${1:?usage: scripts/slurm/submit.sh NUMBER_OF_SHARDS}
here=$(cd "$(dirname "$0")" && pwd)
export HARNESS_REPO=${HARNESS_REPO:-$(cd "$here/../.." && pwd)}
: "${HARNESS_OUTPUT:?set HARNESS_OUTPUT to the results folder}"
: "${HARNESS_ARGS:?set HARNESS_ARGS to the run arguments}"
export HARNESS_OUTPUT HARNESS_ARGS HARNESS_DATA=${HARNESS_DATA:-} HARNESS_VENV=${HARNESS_VENV:-$HARNESS_REPO/.venv}
logs=${HARNESS_LOGS:-$HARNESS_OUTPUT/slurm-logs}
mkdir -p "$logs"
cd "$HARNESS_REPO"
# shellcheck disable=SC2086  (the resource options are words)
jid=$(sbatch --parsable --array="0-$((n - 1))" ${SHARD_SBATCH---gpus=1} --output="$logs/shard-%A_%a.out" \
      "$here/shards.sbatch")
jid=${jid%%;*}
# shellcheck disable=SC2086
mid=$(sbatch --parsable --dependency="afterok:$jid" --kill-on-invalid-dep=yes ${MERGE_SBATCH-} \
      --output="$logs/merge-%j.out" "$here/merge.sbatch")
mid=${mid%%;*}
echo "shards: job $jid (array 0-$((n - 1))); merge: job $mid, after every shard succeeded; logs in $logs"
