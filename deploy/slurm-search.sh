#!/usr/bin/env bash
# `emoma search` on a SLURM allocation: Ray's head on the first node, a worker on each other node, the search
# driven from the head. Submit from a folder on shared storage (the default --storage-path, results/search, is
# then shared by every node; or pass s3://...):
#   sbatch deploy/slurm-search.sh --num-samples 50 --data merged.csv --name wesad-50 [--storage-path s3://BUCKET/emoma]
# Extra arguments go to `emoma search`. EmoMA must be installed in the environment the job activates (set
# EMOMA_ENV to a virtualenv or conda prefix with bin/activate).
#SBATCH --job-name=emoma-search
#SBATCH --nodes=3
#SBATCH --ntasks-per-node=1
#SBATCH --cpus-per-task=16
#SBATCH --time=04:00:00
set -euo pipefail
if [[ -n "${EMOMA_ENV:-}" ]]; then
    source "$EMOMA_ENV/bin/activate"
fi
export RAY_AUTH_MODE=disabled  # inside the allocation's private network: no token to hand to every node
mapfile -t nodes < <(scontrol show hostnames "$SLURM_JOB_NODELIST")
head=${nodes[0]}
head_ip=$(srun --nodes=1 --ntasks=1 -w "$head" hostname --ip-address | awk '{print $1}')
port=6379
cpus=${SLURM_CPUS_PER_TASK:-1}
srun --nodes=1 --ntasks=1 -w "$head" \
    ray start --head --node-ip-address="$head_ip" --port="$port" --num-cpus="$cpus" --block &
sleep 20
for node in "${nodes[@]:1}"; do
    srun --nodes=1 --ntasks=1 -w "$node" \
        ray start --address="$head_ip:$port" --num-cpus="$cpus" --block &
done
sleep 10
# the driver joins the cluster from the batch step on the head node; the Ray nodes end with the allocation
emoma search --address "$head_ip:$port" "$@"
