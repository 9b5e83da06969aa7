#!/usr/bin/env bash
# The one-shot GPU check: versions, GPU benchmarks, backend parity and the GPU-marked tests, in at most 8 minutes
# on a fresh machine without network, written to ONE JSON report, $OUT/gpu_check.json, with a log per part.
#
#   OUT=/some/dir bash benchmarks/gpu_check.sh            # on the GPU machine (CuPy and a CUDA device)
#   OUT=/some/dir bash benchmarks/gpu_check.sh --cpu      # the same plumbing on NumPy at tiny sizes (no GPU)
#
# Python packages the machine lacks are installed from .whl/ only (pip --no-index, into a folder on PYTHONPATH):
# the project's runtime wheels at the top of .whl/, and cupti-python with its CUDA libraries from .whl/cupti12/ or
# .whl/cupti13/ (chosen by the driver's CUDA major version) for the step profile. Every part runs under its own
# time limit, cut to what is left of the budget; a part that fails or runs out of time is recorded as such and
# the next one runs. Parts run in order of importance: benchmarks, profile, parity, the rest of the GPU tests.
# docs/GPU.md explains every figure of the report.

set -u -o pipefail
cd "$(dirname "$0")/.."
REPO=$PWD
MODE=gpu
[ "${1:-}" = "--cpu" ] && MODE=cpu
OUT=${OUT:-$REPO/benchmarks/results/gpu_check}
PYTHON=${PYTHON:-python3}
BUDGET_S=${BUDGET_S:-470}          # the whole check, seconds (8 min less a margin for writing the report)
START=$(date +%s)
SITE=${TMPDIR:-/tmp}/tme_site      # wheels from .whl/ that the machine lacked
CUPTI_SITE=${TMPDIR:-/tmp}/tme_cupti
mkdir -p "$OUT/parts"
export PYTHONUNBUFFERED=1 PYTHONPATH=$SITE:$REPO${PYTHONPATH:+:$PYTHONPATH}

if [ "$MODE" = gpu ]; then
  BACKEND=cupy SCALE=full
else
  BACKEND=numpy SCALE=tiny
fi

# run_part NAME CAP_S COMMAND...: run COMMAND with a limit of min(CAP_S, what is left of the budget), stdout and
# stderr to $OUT/NAME.log, and its status to $OUT/parts/NAME.json. SIGINT first, so pytest prints its summary.
run_part() {
  local name=$1 cap=$2; shift 2
  local left=$(( BUDGET_S - ($(date +%s) - START) ))
  local limit=$(( cap < left ? cap : left ))
  local log=$OUT/$name.log t0 rc status
  if [ "$left" -lt 5 ]; then
    printf '{"status": "skipped", "reason": "no time left in the %s s budget"}\n' "$BUDGET_S" > "$OUT/parts/$name.json"
    echo "== $name: skipped (budget spent)"
    return 0
  fi
  echo "== $name (limit ${limit} s)"
  t0=$(date +%s%N)
  timeout -s INT -k 15 "$limit" "$@" > "$log" 2>&1
  rc=$?
  local ms=$(( ($(date +%s%N) - t0) / 1000000 ))
  case $rc in
    0) status=ok ;;
    124|137) status=timeout ;;
    *) status=failed ;;
  esac
  printf '{"status": "%s", "rc": %d, "limit_s": %d, "wall_s": %d.%03d, "log": "%s"}\n' \
    "$status" "$rc" "$limit" $((ms / 1000)) $((ms % 1000)) "$name.log" > "$OUT/parts/$name.json"
  echo "   $status (rc $rc); tail of $log:"
  tail -n 3 "$log" | sed 's/^/   | /'
}

environment() {
  if [ "$MODE" = gpu ]; then
    nvidia-smi || true
    nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader || true
  fi
  "$PYTHON" - <<'EOF'
import platform, sys
import numpy
print("python", sys.version.split()[0], platform.platform())
print("numpy", numpy.__version__)
try:
    import cupy
    print("cupy", cupy.__version__, "runtime", cupy.cuda.runtime.runtimeGetVersion(),
          "driver", cupy.cuda.runtime.driverGetVersion())
except Exception as exc:
    print("cupy unavailable:", repr(exc))
for name in ("scipy", "h5py", "pydantic", "tomli_w", "tqdm", "pytest"):
    try:
        print(name, __import__(name).__version__)
    except Exception as exc:
        print(name, "unavailable:", repr(exc))
EOF
}

install_missing() {
  local rc=0 major
  if "$PYTHON" -c "import pydantic, tomli_w" 2>/dev/null; then
    echo "project wheels: nothing missing"
  else
    ls .whl/*.whl
    "$PYTHON" -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target "$SITE" \
      .whl/*.whl || rc=1
    "$PYTHON" -c "import pydantic, tomli_w; print('pydantic', pydantic.__version__)" || rc=1
  fi
  [ "$MODE" = gpu ] || { echo "cupti-python: not needed on the CPU"; return $rc; }
  major=$("$PYTHON" -c "import cupy; print(cupy.cuda.runtime.driverGetVersion() // 1000)") || return 1
  if [ -d ".whl/cupti$major" ]; then
    "$PYTHON" -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --target "$CUPTI_SITE" \
      ".whl/cupti$major"/*.whl || rc=1
    echo "cupti-python for CUDA $major installed in $CUPTI_SITE"
  else
    echo "no .whl/cupti$major: the profile part will record that CUPTI is unavailable"
  fi
  return $rc
}

# CUPTI's shared library from the wheel (nvidia/cuda_cupti/lib for CUDA 12, nvidia/cu13/lib for CUDA 13).
cupti_libs() {
  find "$CUPTI_SITE" -name 'libcupti.so*' -printf '%h\n' 2>/dev/null | sort -u | paste -sd: -
}

profile() {
  local libs
  libs=$(cupti_libs)
  LD_LIBRARY_PATH=$libs${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH} "$PYTHON" benchmarks/gpu.py --backend "$BACKEND" \
    --scale "$SCALE" --parts profile --cupti-path "$CUPTI_SITE" --out "$OUT/gpu_profile.json"
}

# The parts that are shell functions run in a child bash (timeout runs programs, not functions).
export -f environment install_missing cupti_libs profile
export MODE OUT PYTHON SITE CUPTI_SITE BACKEND SCALE
run_part environment 30 bash -c environment
run_part install 60 bash -c install_missing
run_part benchmarks 150 "$PYTHON" benchmarks/gpu.py --backend "$BACKEND" --scale "$SCALE" \
  --parts solver step physicell memory --out "$OUT/gpu_benchmarks.json"
run_part profile 45 bash -c profile
run_part parity 200 "$PYTHON" -m pytest -q -p no:cacheprovider -rfEs tests/test_gpu_parity.py
run_part gpu_tests 300 "$PYTHON" -m pytest -q -p no:cacheprovider -rfE -m gpu --ignore=tests/test_gpu_parity.py tests

"$PYTHON" - "$OUT" "$MODE" "$START" "$BUDGET_S" <<'EOF'
"""Gather the parts' status, the pytest summaries and the benchmark reports into gpu_check.json."""
import json, re, sys, time
from pathlib import Path

out, mode, start, budget = Path(sys.argv[1]), sys.argv[2], int(sys.argv[3]), int(sys.argv[4])
report = {"check": "gpu", "mode": mode, "started_unix": start, "wall_s": time.time() - start, "budget_s": budget,
          "parts": {}}
for part in ("environment", "install", "benchmarks", "profile", "parity", "gpu_tests"):
    status_file, log = out / "parts" / f"{part}.json", out / f"{part}.log"
    entry = json.loads(status_file.read_text()) if status_file.exists() else {"status": "not run"}
    text = log.read_text(errors="replace") if log.exists() else ""
    if part in ("parity", "gpu_tests") and text:
        summary = [line for line in text.splitlines() if re.search(r"\d+ (passed|failed|skipped|error)", line)]
        counts = {k: int(n) for n, k in re.findall(r"(\d+) (passed|failed|skipped|errors?|deselected)",
                                                    summary[-1] if summary else "")}
        entry["counts"] = counts
        entry["failures"] = [line for line in text.splitlines() if line.startswith(("FAILED", "ERROR"))][:50]
        entry["summary"] = summary[-1] if summary else None
    if part == "environment":
        entry["output"] = text
    elif text:
        entry["log_tail"] = text[-2000:]
    report["parts"][part] = entry
for key, name in (("benchmarks", "gpu_benchmarks.json"), ("profile", "gpu_profile.json")):
    path = out / name
    report[key] = json.loads(path.read_text()) if path.exists() else None
report["ok"] = all(p.get("status") == "ok" for p in report["parts"].values())
(out / "gpu_check.json").write_text(json.dumps(report, indent=2))
print(f"gpu check ({mode}): " + ", ".join(f"{k} {v['status']}" for k, v in report["parts"].items())
      + f" -> {out / 'gpu_check.json'}")
EOF
