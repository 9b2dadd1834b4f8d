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
	"fmt"
	"io"
	"os"
	"os/signal"
	"syscall"
)

// Exit statuses.
const (
	exitOK      = 0
	exitFailure = 1 // the command ran and failed
	exitUsage   = 2 // the command line is wrong
)

// A command is one subcommand of idem. run parses args (the arguments after
// the command's name) and returns the exit status.
type command struct {
	name    string
	summary string
	run     func(ctx context.Context, args []string, stdin io.Reader, stdout, stderr io.Writer) int
}

// commands lists the subcommands, in the order usage shows them.
var commands = []command{
	{
		name:    "stats",
		summary: "records by state, expiry range, expired records not swept yet and Pebble's figures of a database (read-only)",
		run:     statsCommand,
	},
	{
		name:    "ls",
		summary: "list a database's records, as a table or JSON lines (read-only)",
		run:     lsCommand,
	},
	{
		name:    "get",
		summary: "show one record in full; an idemhttp record as its HTTP response (read-only)",
		run:     getCommand,
	},
	{
		name:    "interrupted",
		summary: "list the keys left in flight by a crash, to reconcile (read-only)",
		run:     interruptedCommand,
	},
	{
		name:    "forget",
		summary: "release keys once reconciled, so that the next call runs fn again",
		run:     forgetCommand,
	},
	{
		name:    "sweep",
		summary: "remove the expired records now and compact: records removed, disk usage before and after",
		run:     sweepCommand,
	},
	{
		name:    "bench",
		summary: "run a load on this machine's disk: throughput, latency per path, fsyncs",
		run:     benchCommand,
	},
	{
		name:    "top",
		summary: "show the rates of calls, replays, conflicts and executions and the latency percentiles, live: of a service (--url) or of a load",
		run:     topCommand,
	},
	{
		name:    "demo",
		summary: "run a flaky payment client against an engine and check that no payment runs twice",
		run:     demoCommand,
	},
}

func main() {
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	code := run(ctx, os.Args[1:], os.Stdin, os.Stdout, os.Stderr)
	stop()
	os.Exit(code)
}

// run dispatches args to a subcommand and returns the exit status: usage
// with no arguments (status 2) or with -h (status 0), and status 2 with a
// message for an unknown command.
func run(ctx context.Context, args []string, stdin io.Reader, stdout, stderr io.Writer) int {
	if len(args) == 0 {
		usage(stderr)
		return exitUsage
	}
	switch args[0] {
	case "-h", "-help", "--help", "help":
		usage(stdout)
		return exitOK
	}
	for _, c := range commands {
		if c.name == args[0] {
			return c.run(ctx, args[1:], stdin, stdout, stderr)
		}
	}
	fmt.Fprintf(stderr, "idem: unknown command %q\nRun 'idem -h' for usage.\n", args[0])
	return exitUsage
}

// usage writes the list of subcommands to w.
func usage(w io.Writer) {
	fmt.Fprint(w, "idem is the command-line tool of the idem idempotency engine.\n\nUsage:\n\n\tidem <command> [arguments] [flags]\n\nThe commands are:\n\n")
	width := 0
	for _, c := range commands {
		width = max(width, len(c.name))
	}
	for _, c := range commands {
		fmt.Fprintf(w, "\t%-*s    %s\n", width, c.name, c.summary)
	}
	fmt.Fprint(w, "\nExit status: 0 on success, 1 when the command failed, 2 when the command line is wrong.\nRun 'idem <command> -h' for a command's arguments, flags and an example.\n")
}
