#!/usr/bin/env bash
# run.sh (`make run`): boot cvmd locally in development mode and run the sample
# computation end to end, the way a user would by hand (README repeats these
# steps):
#   1. build bin/cvmd and bin/cvm (make does it before calling us) and the
#      sample algorithm (examples/iris/algo, a static Go binary);
#   2. generate a key pair with `cvm keys`;
#   3. start the development manager (`cvm manager`) with the computation;
#   4. start `cvmd supervise --dev` (simulated attestation) pointed at it;
#   5. fetch and verify attestation evidence, upload the algorithm and the
#      dataset, download and unpack the result;
#   6. print the result, the attestation verdict and the events the manager saw;
#   7. stop the computation and shut everything down.
# Run as root (cvmd's sandboxes need it). RUN_SAMPLE=python|bin picks the sample
# (default: python when Debian's sklearn is installed, else bin).
set -euo pipefail
cd "$(dirname "$0")/.."
ROOT=$PWD
BIN=${CVMD_BIN:-$ROOT/bin}
WORK=${RUN_DIR:-$(mktemp -d /tmp/cvmd-run.XXXXXX)}
MANAGER_ADDR=${MANAGER_ADDR:-127.0.0.1:7001}
AGENT_ADDR=${AGENT_ADDR:-127.0.0.1:7002}
step() { printf '\n\033[1m==> %s\033[0m\n' "$*"; }
die() { echo "run: $*" >&2; exit 1; }

[ "$(id -u)" = 0 ] || die "run as root: cvmd makes namespaces, cgroups and sandboxes"
[ -x "$BIN/cvmd" ] && [ -x "$BIN/cvm" ] || die "no $BIN/cvmd or $BIN/cvm: run 'make run' (it builds them)"

SUP_PID= MGR_PID=
cleanup() {
	local rc=$?
	step "shutting down"
	if [ -n "$SUP_PID" ] && kill -0 "$SUP_PID" 2>/dev/null; then
		kill -TERM "$SUP_PID" 2>/dev/null || true
		for _ in $(seq 100); do kill -0 "$SUP_PID" 2>/dev/null || break; sleep 0.1; done
		kill -KILL "$SUP_PID" 2>/dev/null || true
	fi
	if [ -n "$MGR_PID" ] && kill -0 "$MGR_PID" 2>/dev/null; then
		exec 3>&- 2>/dev/null || true
		kill -TERM "$MGR_PID" 2>/dev/null || true
		wait "$MGR_PID" 2>/dev/null || true
	fi
	echo "logs kept in $WORK (supervisor.log, manager.log)"
	exit $rc
}
trap cleanup EXIT INT TERM

step "workspace $WORK"
mkdir -p "$WORK/state" "$WORK/keys" "$WORK/out"
cd "$WORK"

# The sample: python + Debian's sklearn when the base image has it (make deps
# installs python3-sklearn, python3-pandas, python3-joblib), else a static Go
# binary. RUN_SAMPLE=python|bin forces one.
SAMPLE=${RUN_SAMPLE:-auto}
if [ "$SAMPLE" = auto ]; then
	SAMPLE=bin
	/usr/bin/python3 -c 'import sklearn, pandas, joblib' 2>/dev/null && SAMPLE=python
fi
if [ "$SAMPLE" = python ]; then
	step "sample algorithm: examples/iris/lin_reg.py (python, Debian sklearn, offline)"
	ALGO=$ROOT/examples/iris/lin_reg.py ALGO_TYPE=python
else
	step "building the sample algorithm: examples/iris/algo (static Go, type bin)"
	if [ -n "${RUN_ALGO:-}" ]; then cp "$RUN_ALGO" "$WORK/algo"; else CGO_ENABLED=0 go -C "$ROOT" build -trimpath -o "$WORK/algo" ./examples/iris/algo; fi
	ALGO=$WORK/algo ALGO_TYPE=bin
fi
cp "$ROOT/examples/iris/iris.csv" "$WORK/iris.csv"

step "cvm keys: one ECDSA key pair for every role"
"$BIN/cvm" keys -k ecdsa --dir "$WORK/keys"

step "cvm manager: development CVMS server on $MANAGER_ADDR with the computation"
mkfifo "$WORK/manager.in"
"$BIN/cvm" manager --listen "$MANAGER_ADDR" --id iris-1 --name "iris sample" \
	--algo "$ALGO" --algo-type "$ALGO_TYPE" --dataset "$WORK/iris.csv" \
	--public-key "$WORK/keys/public.pem" <"$WORK/manager.in" >"$WORK/manager.log" 2>&1 &
MGR_PID=$!
exec 3>"$WORK/manager.in" # keep the manager's stdin open: we send it commands
for _ in $(seq 50); do grep -q "listening" "$WORK/manager.log" && break; sleep 0.1; done
grep -q "listening" "$WORK/manager.log" || { cat "$WORK/manager.log"; die "manager did not start"; }

step "cvmd supervise --dev (simulated attestation), manager link to $MANAGER_ADDR"
cat >"$WORK/environment" <<EOF
AGENT_CVM_GRPC_URL=$MANAGER_ADDR
AGENT_CVM_ID=run-sh
AGENT_LOG_LEVEL=info
EOF
"$BIN/cvmd" supervise --dev --state "$WORK/state" --listen "$AGENT_ADDR" \
	--env "$WORK/environment" --attestation simulated >"$WORK/supervisor.log" 2>&1 &
SUP_PID=$!

step "waiting for the manager to see the computation accepted (run_res)"
for _ in $(seq 300); do
	grep -q 'run_res computation "iris-1"' "$WORK/manager.log" && break
	kill -0 "$SUP_PID" 2>/dev/null || { tail -30 "$WORK/supervisor.log"; die "cvmd exited"; }
	sleep 0.1
done
grep 'run_res computation "iris-1"' "$WORK/manager.log" || { tail -30 "$WORK/supervisor.log"; die "no run response from the guest"; }
grep -q 'run_res computation "iris-1" error ""' "$WORK/manager.log" || die "the guest refused the computation"

export AGENT_GRPC_URL=$AGENT_ADDR
cvm() { "$BIN/cvm" "$@"; }
retry() { for _ in $(seq 50); do "$@" && return 0; sleep 0.2; done; "$@"; }

step "cvm attestation get snp-vtpm + verify (simulated platform, so --allow-simulated)"
# Fresh nonces: the token must be bound to them. SNP+vTPM binds the TPM AK to
# the SNP report, so no AK has to be trusted beforehand.
TEE=$(head -c 64 /dev/urandom | od -An -tx1 | tr -d ' \n')
VTPM=$(head -c 32 /dev/urandom | od -An -tx1 | tr -d ' \n')
VERDICT="not checked"
if retry cvm attestation get snp-vtpm --tee "$TEE" --vtpm "$VTPM" -o "$WORK/attestation.bin"; then
	if cvm attestation verify "$WORK/attestation.bin" --tee "$TEE" --vtpm "$VTPM" --allow-simulated >"$WORK/verify.txt" 2>&1; then
		VERDICT="$(grep -m1 '^OK:' "$WORK/verify.txt") [SIMULATED platform: proves nothing about hardware]"
	else
		VERDICT="REFUSED: $(tail -1 "$WORK/verify.txt")"
	fi
fi
echo "$VERDICT"

step "cvm algo: upload $(basename "$ALGO") ($ALGO_TYPE)"
retry cvm algo "$ALGO" "$WORK/keys/private.pem" -a "$ALGO_TYPE"

step "cvm data: upload iris.csv"
cvm data "$WORK/iris.csv" "$WORK/keys/private.pem"

step "cvm result: wait for the run and download results.zip"
for _ in $(seq 300); do
	cvm result "$WORK/keys/private.pem" -o "$WORK/out" -f results.zip 2>"$WORK/result.err" && break
	grep -q "not yet ready\|current state" "$WORK/result.err" || { cat "$WORK/result.err"; die "result download failed"; }
	sleep 0.2
done
[ -s "$WORK/out/results.zip" ] || die "no results.zip"
( cd "$WORK/out" && python3 -m zipfile -e results.zip results >/dev/null 2>&1 || unzip -qo results.zip -d results )

step "result"
for f in "$WORK"/out/results/*; do
	if grep -Iq . "$f"; then echo "--- $(basename "$f")"; head -c 2000 "$f"; echo
	else echo "--- $(basename "$f") ($(stat -c %s "$f") bytes, binary)"; fi
done
echo
echo "attestation: $VERDICT"

step "stopping the computation through the manager"
echo "stop iris-1" >&3
for _ in $(seq 50); do grep -q 'stop_res' "$WORK/manager.log" && break; sleep 0.1; done

step "events the manager received"
grep '^event' "$WORK/manager.log" || echo "(none)"
echo
echo "control answers:"
grep -E '^(run_res|stop_res|state_res|attestation_report)' "$WORK/manager.log" || true
echo
echo "log lines received by the manager: $(grep -c '^log' "$WORK/manager.log" || true)"
