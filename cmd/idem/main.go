// Command idem is the command-line tool of the idem idempotency engine.
//
// Usage:
//
//	idem <command> [flags]
//
// The commands are:
//
//	demo    run a flaky payment client against an engine, with a restart
//	        in the middle, and check that no payment is charged twice and
//	        no acknowledged result is lost
//
// Run "idem <command> -h" for a command's flags.
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
	run     func(ctx context.Context, args []string, stdout, stderr io.Writer) int
}

// commands lists the subcommands, in the order usage shows them.
var commands = []command{
	{
		name:    "demo",
		summary: "run a flaky payment client against an engine and check that no payment runs twice",
		run:     demoCommand,
	},
}

func main() {
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	code := run(ctx, os.Args[1:], os.Stdout, os.Stderr)
	stop()
	os.Exit(code)
}

// run dispatches args to a subcommand and returns the exit status: usage
// with no arguments (status 2) or with -h (status 0), and status 2 with a
// message for an unknown command.
func run(ctx context.Context, args []string, stdout, stderr io.Writer) int {
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
			return c.run(ctx, args[1:], stdout, stderr)
		}
	}
	fmt.Fprintf(stderr, "idem: unknown command %q\nRun 'idem -h' for usage.\n", args[0])
	return exitUsage
}

// usage writes the list of subcommands to w.
func usage(w io.Writer) {
	fmt.Fprint(w, "idem is the command-line tool of the idem idempotency engine.\n\nUsage:\n\n\tidem <command> [flags]\n\nThe commands are:\n\n")
	width := 0
	for _, c := range commands {
		width = max(width, len(c.name))
	}
	for _, c := range commands {
		fmt.Fprintf(w, "\t%-*s    %s\n", width, c.name, c.summary)
	}
	fmt.Fprint(w, "\nRun 'idem <command> -h' for a command's flags.\n")
}
