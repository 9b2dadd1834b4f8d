// Command idem is the command-line tool of the idem idempotency engine: it
// inspects and maintains a database without writing code, and measures the
// engine on this machine's disk.
//
// Usage:
//
//	idem <command> [arguments] [flags]
//
// The commands are:
//
//	stats        records by state, expiry range, expired records not swept
//	             yet, and Pebble's figures of a database
//	ls           list a database's records, as a table or JSON lines
//	get          show one record in full; a record of the idemhttp middleware
//	             as its client key, scope and stored response
//	interrupted  list the keys left in flight by a crash, to reconcile
//	forget       release keys (after reconciling them), asking first
//	sweep        remove the expired records now and compact, and report the
//	             records removed and the disk usage before and after
//	bench        a load on this machine's disk: throughput, latency, fsyncs
//	top          the rates of calls, executions, replays and conflicts and the
//	             latency percentiles, refreshed live: of a running service, or
//	             of a load as bench runs
//	demo         run a flaky payment client against an engine, with a restart
//	             in the middle, and check that no payment is charged twice and
//	             no acknowledged result is lost
//
// stats, ls, get and interrupted open the database read-only and change
// nothing in its directory. forget and sweep write; they refuse a directory
// that holds no idem database without creating anything in it. Every command
// that takes a database's directory refuses one that another process has
// open. stats, ls, get, interrupted and forget take --url instead of a
// directory: the URL of the admin handler (idemhttp.Admin) of the running
// service that has the database open, which they read and change through
// it, with the same output, without stopping the service.
//
// Exit status: 0 on success, 1 when the command failed (with a one-line
// message on standard error), 2 when the command line is wrong. Flags may
// come before or after the arguments, with one dash or two. Run
// "idem <command> -h" for a command's arguments, flags and an example.
package main

import (
	"context"
	"os"
	"os/signal"
	"syscall"

	"github.com/idemkv/idem/internal/cli"
)

// The command's code is in internal/cli, so that idemnats's idem command
// (idemnats/cmd/idem) runs the same one with --nats.

func main() {
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	code := cli.Main(ctx, os.Args[1:], os.Stdin, os.Stdout, os.Stderr, nil)
	stop()
	os.Exit(code)
}
