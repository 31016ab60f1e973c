#!/usr/bin/env bash
# chaos_cluster_short (issue 10): the delivery checker on the cluster shape.
# Three parleyd nodes on a real PostgreSQL and a real Redis (started here,
# scripts/lib/cluster_servers.sh), each user's devices on different nodes,
# kill -9 of a node (and crash points on every node) while the randomised
# workload runs; the devices fail over to the other nodes and parley-check
# must count zero lost, duplicated or reordered.
# Usage: cluster_chaos_test.sh PARLEY_CHAOS PARLEYD PARLEY_CHECK OUT_DIR
set -euo pipefail
chaos=$1 parleyd=$2 check=$3 out=$4
source "$(dirname "$0")/../../scripts/lib/cluster_servers.sh"
start_cluster_servers
"$chaos" --parleyd "$parleyd" --checker "$check" --out "$out" --nodes 3 --redis "$CLUSTER_REDIS" \
  --store "$CLUSTER_STORE" --duration-s 25 --users 6 --devices 3
