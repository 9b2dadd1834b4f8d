#!/bin/sh
# test.sh runs go test, with the flags it is given, in every Go module of
# this repository: the root module, and each directory below it with a
# go.mod of its own (benchmarks/, idemnats/, ...), which `go test ./...` at
# the root does not reach, with or without a go.work.
#
#   ./test.sh                  the README's test command
#   ./test.sh -race            with the race detector (it needs cgo), as CI
#   IDEM_TEST_LONG=1 IDEM_TEST_SERIAL=1 ./test.sh -race -timeout=30m
#                              the long reliability runs, as CI (RELIABILITY.md)
#
# Each module is tested on its own go.mod (GOWORK=off), with its own
# dependencies and go version: a module below the root that needs the root
# module's code in this checkout says so with a replace directive, as
# benchmarks/ does.
#
# The modules' go test commands run at the same time: much of the modules'
# test time is spent waiting (for servers that start, for liveness windows
# to lapse, for fsync), which the others fill. Each one's output is kept in
# a file and printed whole, in the order the modules are listed, as soon as
# it and those before it have finished: the root module comes last, since
# its reliability tests take longest. IDEM_TEST_SERIAL=1 runs them one
# after another instead, as CI does with the long sizes and -race: side by
# side, those starve each other of the 2 cores (a NATS cluster's commits
# took longer than its 20 s timeout). In each module, its root package,
# which holds the slow tests, is given to go test after the others, since
# go test prints each package's result in the order it was given the
# packages.
set -eu
cd "$(dirname "$0")"
export GOWORK=off

dirs="$(find . -mindepth 2 -name go.mod -not -path './.git/*' -not -path '*/testdata/*' -not -path '*/vendor/*' |
  sed 's|/go.mod$||' | sort) ."
out=$(mktemp -d)
# A shell without job control starts its background jobs with SIGINT
# ignored, so ^C would not reach them: on an interrupt, send SIGTERM to the
# whole process group (the go test commands and their test binaries; the
# servers those start die with them), ignoring it here so that the
# outputs are still removed.
trap 'rm -rf "$out"' EXIT
trap 'trap "" INT TERM; kill 0 2>/dev/null; exit 130' INT TERM

# report prints the output of module $1 (its number) in directory $2 once
# it has finished, and notes a failure in status.
status=0
report() {
  while [ ! -f "$out/$1.rc" ]; do sleep 1; done
  echo "# $2"
  cat "$out/$1.out"
  [ "$(cat "$out/$1.rc")" = 0 ] || status=1
}

i=0
for dir in $dirs; do
  i=$((i + 1))
  (
    set +e
    # go list -e lists a package that does not compile; go test reports it.
    if mod=$(cd "$dir" && go list -m) && pkgs=$(cd "$dir" && go list -e ./...); then
      others=$(printf '%s\n' "$pkgs" | grep -vxF "$mod")
      own=$(printf '%s\n' "$pkgs" | grep -xF "$mod")
      # shellcheck disable=SC2086 # one argument per package
      (cd "$dir" && go test "$@" $others $own)
      rc=$?
    else
      rc=1
    fi
    echo "$rc" >"$out/$i.rc.tmp" && mv "$out/$i.rc.tmp" "$out/$i.rc"
  ) >"$out/$i.out" 2>&1 &
  if [ "${IDEM_TEST_SERIAL:-}" = 1 ]; then
    report "$i" "$dir"
  fi
done

if [ "${IDEM_TEST_SERIAL:-}" != 1 ]; then
  i=0
  for dir in $dirs; do
    i=$((i + 1))
    report "$i" "$dir"
  done
fi
wait
exit "$status"
