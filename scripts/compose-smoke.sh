#!/usr/bin/env bash
# make compose-smoke: build the CPU image and a Prometheus image from a local Debian base,
# run docker/compose.yaml's Ray head + duet job + Prometheus until the job finishes, and
# check Prometheus scraped the run. Needs a Docker engine (started here if there is none:
# Debian's docker.io, overlay2 storage where the kernel has it, else vfs; no bridge) and
# debootstrap for the base image; pulls nothing from an image registry. Slow: the image
# build installs the whole stack.
#
# Environment: SMOKE_COMMAND (the job, default a short train run on the embedded model),
# DUET_WHEELS (a folder of wheels to offer pip, e.g. one holding torch 2.13.0+cpu),
# EXTRA_CA (a CA bundle pip should trust during the build).
set -euo pipefail
cd "$(dirname "$0")/.."
say() { printf '\033[1m[compose-smoke]\033[0m %s\n' "$*"; }
BASE=duet-base:bookworm
PROJECT=duetsmoke

if ! docker info >/dev/null 2>&1; then
  # overlay2 shares image layers between containers; vfs copies the whole image (~5 GB)
  # into every container, so it is only the fallback.
  driver=vfs
  if grep -qw overlay /proc/filesystems; then driver=overlay2; fi
  say "starting dockerd ($driver storage, no bridge, no iptables)"
  (dockerd --iptables=false --bridge=none --storage-driver=$driver >/tmp/duet-dockerd.log 2>&1 &)
  for _ in $(seq 60); do docker info >/dev/null 2>&1 && break; sleep 1; done
  docker info >/dev/null
fi
say "docker storage driver: $(docker info --format '{{.Driver}}')"

if ! docker image inspect "$BASE" >/dev/null 2>&1; then
  say "making the base image $BASE with debootstrap"
  root=$(mktemp -d)
  debootstrap --variant=minbase bookworm "$root" http://deb.debian.org/debian >/tmp/duet-debootstrap.log
  tar -C "$root" -c . | docker import - "$BASE"
  rm -rf "$root"
fi

compose=(docker-compose -p "$PROJECT" -f docker/compose.yaml)
"${compose[@]}" down -v >/dev/null 2>&1 || true  # a previous smoke run's containers
rm -f docker/wheels/*.whl docker/certs/extra-ca.pem
if [ -n "${DUET_WHEELS:-}" ]; then cp "$DUET_WHEELS"/torch-2.13.0+cpu-*.whl docker/wheels/ 2>/dev/null || true; fi
if [ -n "${EXTRA_CA:-}" ]; then cp "$EXTRA_CA" docker/certs/extra-ca.pem; fi
trap 'rm -f docker/wheels/*.whl docker/certs/extra-ca.pem' EXIT

TORCH_INDEX=https://download.pytorch.org/whl/cpu
if ls docker/wheels/torch-*.whl >/dev/null 2>&1; then TORCH_INDEX=; fi
say "building duet-cpu (the whole stack; several minutes)"
docker build --network host -f docker/Dockerfile.cpu --build-arg BASE_IMAGE="$BASE" \
  --build-arg TORCH_INDEX="$TORCH_INDEX" -t duet-cpu . >/tmp/duet-build.log 2>&1 \
  || { tail -30 /tmp/duet-build.log; exit 1; }
say "building duet-prometheus"
docker build --network host -f docker/Dockerfile.prometheus --build-arg BASE_IMAGE="$BASE" \
  -t duet-prometheus docker >/tmp/duet-build-prometheus.log 2>&1 \
  || { tail -30 /tmp/duet-build-prometheus.log; exit 1; }

# Under vfs a container start copies the whole image: give the engine time.
export COMPOSE_HTTP_TIMEOUT=900
export DUET_IMAGE=duet-cpu PROMETHEUS_IMAGE=duet-prometheus
export DUET_COMMAND="${SMOKE_COMMAND:-train name=smoke steps=40 eval_every=20 output_dir=/data/runs cluster.metrics_port=29100}"
say "compose up: ray-head, prometheus, then the job: $DUET_COMMAND"
"${compose[@]}" up -d ray-head prometheus
start=$(date +%s)
"${compose[@]}" up --no-deps duet | tee /tmp/duet-compose-job.log
say "job container finished after $(( $(date +%s) - start )) s"
grep -q "run written to" /tmp/duet-compose-job.log || { say "the job did not finish"; exit 1; }
grep -qi "succeeded" /tmp/duet-compose-job.log || { say "the job did not succeed"; exit 1; }

say "asking Prometheus (127.0.0.1:29090) for the run's series"
python3 - <<'PY'
import json, urllib.parse, urllib.request
def q(expr):
    url = "http://127.0.0.1:29090/api/v1/query?" + urllib.parse.urlencode({"query": expr})
    res = json.loads(urllib.request.urlopen(url, timeout=10).read())["data"]["result"]
    return max((float(r["value"][1]) for r in res), default=0.0)
checks = ["max_over_time(duet_rollouts_total[1h])", "max_over_time(duet_steps_total[1h])",
          "max_over_time(duet_queue_put_groups_total[1h])"]
values = {c: q(c) for c in checks}
print(json.dumps(values, indent=1))
assert all(v > 0 for v in values.values()), values
PY
"${compose[@]}" down -v >/dev/null
say "OK: the job ran to completion in compose and Prometheus scraped it"
