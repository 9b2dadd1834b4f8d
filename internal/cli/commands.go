package cli

import (
	"context"
	"fmt"
	"io"
	"strings"
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
	run     func(ctx context.Context, args []string, stdin io.Reader, stdout, stderr io.Writer, ext *Extension) int
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

// Main runs the idem command: it dispatches args (the command line without
// the program's name) to a subcommand, which reads stdin and writes stdout
// and stderr, and returns the exit status: usage with no arguments (status
// 2) or with -h (status 0), and status 2 with a message for an unknown
// command. ctx ends the command early (cmd/idem cancels it on SIGINT and
// SIGTERM). ext, if not nil, adds a source of databases to the commands
// that read and forget records; with a nil ext, Main is cmd/idem's idem.
func Main(ctx context.Context, args []string, stdin io.Reader, stdout, stderr io.Writer, ext *Extension) int {
	if len(args) == 0 {
		usage(stderr, ext)
		return exitUsage
	}
	switch args[0] {
	case "-h", "-help", "--help", "help":
		usage(stdout, ext)
		return exitOK
	}
	for _, c := range commands {
		if c.name == args[0] {
			return c.run(ctx, args[1:], stdin, stdout, stderr, ext)
		}
	}
	fmt.Fprintf(stderr, "idem: unknown command %q\nRun 'idem -h' for usage.\n", args[0])
	return exitUsage
}

// usage writes the list of subcommands to w, and what ext, if not nil,
// adds.
func usage(w io.Writer, ext *Extension) {
	fmt.Fprint(w, "idem is the command-line tool of the idem idempotency engine.\n\nUsage:\n\n\tidem <command> [arguments] [flags]\n\nThe commands are:\n\n")
	width := 0
	for _, c := range commands {
		width = max(width, len(c.name))
	}
	for _, c := range commands {
		fmt.Fprintf(w, "\t%-*s    %s\n", width, c.name, c.summary)
	}
	if ext != nil {
		fmt.Fprintf(w, "\n%s\n", strings.TrimSpace(ext.About))
	}
	fmt.Fprint(w, "\nExit status: 0 on success, 1 when the command failed, 2 when the command line is wrong.\nRun 'idem <command> -h' for a command's arguments, flags and an example.\n")
}
