#!/usr/bin/env bash
# One SSO round on a Slurm cluster: an array job builds shard i of N on one GPU each, then a job that starts when
# every shard has succeeded merges them into one dataset and, if REPO_ID is set, publishes it.
#
#   bash examples/slurm_shards.sh                          # from the repository root, on a login node
#   SHARDS=16 WORK=/shared/sso/round0 REPO_ID=my-org/sso-round0 bash examples/slurm_shards.sh
#
# Settings (environment variables):
#   CONFIG   the build's settings file (default examples/build.yaml; flags below override its output)
#   SHARDS   how many shards, one array task each (default 8)
#   WORK     a folder every node can read and write: shards go to WORK/shards/<i>, the merge to WORK/merged
#   REPO_ID  the Hub dataset to publish the merge to (ORG/NAME); not set, nothing is published
# sbatch reads its own defaults from the environment too (SBATCH_PARTITION, SBATCH_ACCOUNT, SBATCH_TIMELIMIT, ...).
# The merge job needs a Hub token (HF_TOKEN, or `hf auth login` on the cluster) when REPO_ID is set.
#
# Re-running is safe. A shard that was killed, pre-empted or timed out resumes from its finished chunks when its build
# runs again, a finished shard returns at once, and the merge adds only queries it does not hold yet. If a task fails,
# Slurm never starts the merge: run this script again (with the same settings) once the cause is fixed.
set -euo pipefail

CONFIG=${CONFIG:-examples/build.yaml}
SHARDS=${SHARDS:-8}
WORK=${WORK:-$PWD/sso-round0}

case "${1:-submit}" in
submit)
    mkdir -p "$WORK/logs"
    # A pre-empted task gets SIGTERM: ssogen keeps its finished chunks and exits 130; --requeue runs it again.
    build_job=$(sbatch --parsable --job-name=sso-build --array="0-$((SHARDS - 1))" \
        --gres=gpu:1 --cpus-per-task=8 --mem=64G --requeue \
        --output="$WORK/logs/build-%a.out" \
        --export=ALL,CONFIG="$CONFIG",SHARDS="$SHARDS",WORK="$WORK" \
        "$0" shard)
    sbatch --parsable --job-name=sso-merge --dependency="afterok:$build_job" \
        --cpus-per-task=4 --mem=32G \
        --output="$WORK/logs/merge.out" \
        --export=ALL,CONFIG="$CONFIG",SHARDS="$SHARDS",WORK="$WORK",REPO_ID="${REPO_ID:-}" \
        "$0" merge
    echo "submitted shards (job $build_job) and their merge; logs in $WORK/logs"
    ;;
shard)
    # Each task builds the queries whose id falls in shard SLURM_ARRAY_TASK_ID, into its own folder.
    ssogen build --config "$CONFIG" --num-shards "$SHARDS" --shard-index "$SLURM_ARRAY_TASK_ID" \
        --output "$WORK/shards/$SLURM_ARRAY_TASK_ID"
    ;;
merge)
    ssogen merge "$WORK"/shards/* --output "$WORK/merged"
    ssogen inspect "$WORK/merged"
    if [[ -n "${REPO_ID:-}" ]]; then
        ssogen push "$WORK/merged" "$REPO_ID"
    fi
    ;;
*)
    echo "usage: $0 [submit|shard|merge]" >&2
    exit 2
    ;;
esac
