#!/usr/bin/env bash
# Cold featurization throughput (RDKit parse + OGB features + scaffold) of N ZINC molecules over
# every core, to size a molpcba build (437,929 molecules). Usage: bash bench/featurize.sh [N]
set -euo pipefail
cd "$(dirname "$0")/.."
.venv/bin/python - "${1:-50000}" <<'PY'
import os, sys, time
import pandas as pd
from ggt_search.molecules import featurize, parallel_map
n = int(sys.argv[1])
smiles = pd.read_csv("../shared/data/zinc-moses/train.csv.gz", nrows=n)["SMILES"].tolist()
tic = time.perf_counter()
graphs = parallel_map(featurize, smiles)
seconds = time.perf_counter() - tic
cores = len(os.sched_getaffinity(0))
rate = n / seconds
print(f"{n} molecules on {cores} cores: {seconds:.1f} s, {rate:.0f} molecules/s ({rate / cores:.0f} per core); "
      f"molpcba (437,929) at this rate: {437929 / rate:.0f} s; on 16 cores at the same per-core rate: {437929 / (16 * rate / cores):.0f} s")
PY
