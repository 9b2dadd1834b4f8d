#!/usr/bin/env bash
# run.sh compares idem with the usual Redis idempotency pattern on this
# machine (see doc.go for what each side does):
#
#   idem SyncNone  against  redis-server with appendfsync everysec
#   idem SyncAll   against  redis-server with appendfsync always
#
# at 1 and 64 concurrent callers, for new keys and for replays. It installs
# redis-server (apt-get) and benchstat (go install) if they are missing,
# starts redis-server on a free loopback port with the append-only file in a
# temporary directory, once per appendfsync mode, runs both sides against it
# COUNT times (alternating, so that a change in the machine's load hits both),
# prints the comparisons with benchstat and the ratios idem/Redis, and stops
# the server.
#
# Settings, from the environment:
#   COUNT=6        runs of each benchmark (benchstat needs 6 for a 95%
#                  confidence interval)
#   BENCHTIME=1s   -test.benchtime of each run
#   OUT=file       keep the raw benchmark output in file (default: not kept)
#
# With the defaults it takes 4 to 6 minutes on 2 CPUs, with the machine
# quiet or busy.
set -euo pipefail

COUNT=${COUNT:-6}
BENCHTIME=${BENCHTIME:-1s}
OUT=${OUT:-}
TARGET=5 # idem should do at least TARGET times Redis's ops/s

[[ -z $OUT || $OUT == /* ]] || OUT=$PWD/$OUT
cd "$(dirname "$0")"

work=$(mktemp -d "${TMPDIR:-/tmp}/idem-vs-redis.XXXXXX")
results=$work/results.txt
redis_pid=
port=

stop_redis() {
	if [[ -n $redis_pid ]]; then
		kill "$redis_pid" 2>/dev/null || true
		wait "$redis_pid" 2>/dev/null || true
		redis_pid=
	fi
}
cleanup() {
	stop_redis
	rm -rf "$work"
}
trap cleanup EXIT
trap 'exit 130' INT TERM

log() { echo "run.sh: $*" >&2; }

# --- Tools ---------------------------------------------------------------

if ! command -v redis-server >/dev/null || ! command -v redis-cli >/dev/null; then
	sudo=()
	[[ $(id -u) -eq 0 ]] || sudo=(sudo)
	log "installing redis-server from Debian's packages"
	"${sudo[@]}" apt-get update -qq
	"${sudo[@]}" env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq redis-server >/dev/null
fi

gobin=$(go env GOBIN)
[[ -n $gobin ]] || gobin=$(go env GOPATH | cut -d: -f1)/bin
if command -v benchstat >/dev/null; then
	benchstat=$(command -v benchstat)
else
	benchstat=$gobin/benchstat
	if [[ ! -x $benchstat ]]; then
		log "installing benchstat into $gobin"
		go install golang.org/x/perf/cmd/benchstat@latest
	fi
fi

log "building the benchmarks"
go test -c -o "$work/bench.test" .

# --- redis-server --------------------------------------------------------

# free_port prints a loopback port nothing listens on.
free_port() {
	local p
	for _ in $(seq 100); do
		p=$((20000 + RANDOM % 40000))
		if ! (exec 3<>"/dev/tcp/127.0.0.1/$p") 2>/dev/null; then
			echo "$p"
			return
		fi
	done
	log "no free port found"
	return 1
}

# start_redis starts redis-server with appendfsync $1, the append-only file
# in a new directory, and waits until it answers.
start_redis() {
	local mode=$1 dir=$work/redis-$1
	mkdir -p "$dir"
	for _ in 1 2 3; do # another process may take the port first
		port=$(free_port)
		redis-server --port "$port" --bind 127.0.0.1 --daemonize no \
			--appendonly yes --appendfsync "$mode" --save '' \
			--dir "$dir" --logfile "$dir/redis.log" &
		redis_pid=$!
		for _ in $(seq 100); do
			if [[ $(redis-cli -h 127.0.0.1 -p "$port" ping 2>/dev/null) == PONG ]]; then
				return
			fi
			kill -0 "$redis_pid" 2>/dev/null || break
			sleep 0.1
		done
		stop_redis
	done
	log "redis-server did not start; its log:"
	cat "$dir/redis.log" >&2
	exit 1
}

# --- Runs ----------------------------------------------------------------

# run_mode runs idem with durability $2 and Redis with appendfsync $1.
run_mode() {
	local mode=$1 durability=$2 out=$work/out.txt i
	start_redis "$mode"
	log "redis-server $(redis-server --version | grep -o 'v=[^ ]*') on 127.0.0.1:$port, appendfsync $mode; idem $durability"
	for i in $(seq "$COUNT"); do
		if ! IDEM_REDIS_ADDR=127.0.0.1:$port IDEM_REDIS_APPENDFSYNC=$mode TMPDIR=$work \
			"$work/bench.test" -test.run '^$' -test.bench "/impl=(idem-$durability|redis-$mode)/" \
			-test.benchtime "$BENCHTIME" -test.count 1 >"$out" 2>&1; then
			cat "$out" >&2
			log "the benchmarks failed"
			exit 1
		fi
		log "run $i/$COUNT done: $(grep -c '^Benchmark' "$out") benchmarks"
		cat "$out" >>"$results"
	done
	stop_redis
}

log "COUNT=$COUNT BENCHTIME=$BENCHTIME, $(nproc) CPUs, load average $(cut -d' ' -f1-3 /proc/loadavg)"
start=$SECONDS
run_mode everysec SyncNone
run_mode always SyncAll
log "benchmarks took $((SECONDS - start))s; load average now $(cut -d' ' -f1-3 /proc/loadavg)"
[[ -z $OUT ]] || cp "$results" "$OUT"

# --- Report --------------------------------------------------------------

# compare prints benchstat's table of idem against Redis (Redis is the
# base, so the deltas are idem's), then the ratio of the medians of ops/s.
compare() {
	local redis=$1 idem=$2
	echo
	echo "### idem $idem against Redis appendfsync ${redis#redis-}"
	echo
	"$benchstat" -filter "/impl:($redis OR idem-$idem)" -col "/impl@($redis idem-$idem)" "$results"
	echo
	"$benchstat" -format csv -filter "/impl:($redis OR idem-$idem)" -col "/impl@($redis idem-$idem)" "$results" 2>/dev/null |
		awk -F, -v target="$TARGET" '
			# The ops/s table: a header row naming the unit, then one row per
			# benchmark: name, Redis median, CI, idem median, CI, ...
			$2 ~ /ops\/s/ { ops = 1; next }
			ops && NF == 0 { ops = 0 }
			ops && $1 != "" && $1 != "geomean" && $2 + 0 > 0 {
				r = $4 / $2
				printf "  %-24s %12.0f ops/s  /  %10.0f ops/s  = %6.2f x  %s\n", $1, $4, $2, r, (r >= target ? "ok" : "below " target " x")
			}'
}

echo
echo "## idem against Redis: $COUNT runs of $BENCHTIME each, $(nproc) CPUs"
echo "## ratios: idem ops/s / Redis ops/s (medians); target >= $TARGET x"
compare redis-everysec SyncNone
compare redis-always SyncAll
