#!/bin/sh
# test.sh runs go test, with the flags it is given, in every Go module of
# this repository: the root module, and each directory below it with a
# go.mod of its own (benchmarks/, ...), which `go test ./...` at the root
# does not reach, with or without a go.work.
#
#   ./test.sh -race            the README's test command
#   ./test.sh                  without the race detector (it needs cgo)
#   IDEM_TEST_LONG=1 ./test.sh -race -timeout=30m
#                              the long reliability runs, as CI (RELIABILITY.md)
#
# Each module is tested on its own go.mod (GOWORK=off), with its own
# dependencies and go version: a module below the root that needs the root
# module's code in this checkout says so with a replace directive, as
# benchmarks/ does. go test prints each package's result once
# it has finished, in the order it was given the packages, so a slow package
# holds back the lines of every package after it: the modules below the
# root come first, and in each module its root package, which holds the
# slow reliability tests, comes after the others.
set -eu
cd "$(dirname "$0")"
export GOWORK=off

dirs="$(find . -mindepth 2 -name go.mod -not -path './.git/*' -not -path '*/testdata/*' -not -path '*/vendor/*' |
  sed 's|/go.mod$||' | sort) ."
status=0
for dir in $dirs; do
  echo "# $dir"
  # go list -e lists a package that does not compile; go test reports it.
  if ! mod=$(cd "$dir" && go list -m) || ! pkgs=$(cd "$dir" && go list -e ./...); then
    status=1
    continue
  fi
  others=$(printf '%s\n' "$pkgs" | grep -vxF "$mod" || true)
  own=$(printf '%s\n' "$pkgs" | grep -xF "$mod" || true)
  # shellcheck disable=SC2086 # one argument per package
  (cd "$dir" && go test "$@" $others $own) || status=1
done
exit "$status"
