package cli

import (
	"context"
	"io"
	"iter"

	"github.com/idemkv/idem"
)

// An Extension adds a source of databases to the commands that read and
// forget records: stats, ls, get, interrupted and forget. A flag (as --nats
// URL), with the parameters that go with it (as --bucket NAME), names a
// database instead of a directory; the command opens an engine on it with
// Open, and works on the engine as on a directory's, with the same output
// (but stats, which shows the source's figures instead of Pebble's). sweep,
// bench, top and demo do not take it.
//
// The engine is one more engine on a database that others may share: the
// commands never call Do, Sweep or Compact on it, only Records,
// Interrupted, Lookup, Forget and ForgetInterrupted (forget, which uses
// ForgetInterrupted unless --any-state, as the admin handler of idemhttp
// does, since another engine may change the key between the check and the
// delete).
type Extension struct {
	// Flag is the name of the flag that names a database, without
	// dashes: "nats". It must not be the name of a flag of the commands
	// (url, state, prefix, limit, json, raw, http, scope, yes, any-state).
	Flag string
	// Usage is the flag's help, as the flag package shows it: a name in
	// back quotes is its value's ("`URL`").
	Usage string
	// Synopsis is how a command's usage line names the database after
	// "DIR|--url URL|": "--nats URL [--bucket B]".
	Synopsis string
	// About is a paragraph on the source, which the help of idem and of
	// each command that takes Flag ends with.
	About string
	// Params are string flags that go with Flag, as --bucket. A command
	// line that sets one without Flag is wrong.
	Params []Param
	// Open opens an engine on the database that req names. ctx ends when
	// the command is interrupted. Its error is shown on one line, after
	// "idem <command>: ", as the operator's message.
	Open func(ctx context.Context, req Request) (*Source, error)
}

// A Param is a string flag that goes with an Extension's Flag.
type Param struct {
	Name    string // the flag's name, without dashes: "bucket"
	Default string // its value when it is not given
	Usage   string // its help, as Extension.Usage
}

// A Request is the database that a command line names, for Extension.Open.
type Request struct {
	Value  string            // the value of the Extension's Flag
	Params map[string]string // the value of each Param by name: its Default if not given
	// Write is true for forget, which deletes records, and false for the
	// commands that only read.
	Write bool
	// Stderr is the command's standard error, where an extension may log.
	// The command writes Open's error itself.
	Stderr io.Writer
}

// A Source is a database that Extension.Open opened.
type Source struct {
	// Engine is the engine on the database.
	Engine *idem.Engine
	// Name names the database on the first line of stats: "bucket idem
	// on nats://127.0.0.1:4222".
	Name string
	// Figures, if not nil, returns the lines that stats shows after the
	// oldest and newest expiry, in place of a directory's lines on expired
	// records, disk usage, files and Pebble's figures.
	Figures func() ([]Figure, error)
	// Close closes Engine and releases what Open acquired (a connection).
	// A command calls it once, when it is done; if nil, it calls
	// Engine.Close.
	Close func() error
}

// A Figure is a line of stats: a name, a value and a note, shown in
// parentheses ("" for none).
type Figure struct {
	Name, Value, Note string
}

// shared is a database on an engine that an Extension opened: a database
// that other engines may have open, and change, at the same time.
type shared struct{ src *Source }

func (s shared) records(prefix, _ string) iter.Seq2[idem.Record, error] {
	return s.src.Engine.Records(prefix)
}

func (s shared) interrupted() iter.Seq2[idem.Record, error] { return s.src.Engine.Interrupted() }

func (s shared) lookup(key string) (idem.Record, error) { return s.src.Engine.Lookup(key) }

// forget forgets key; unless anyState, only if it is still interrupted
// when the engine deletes it: another engine may have changed it since
// lookup.
func (s shared) forget(key string, anyState bool) error {
	if anyState {
		return s.src.Engine.Forget(key)
	}
	return s.src.Engine.ForgetInterrupted(key)
}

func (s shared) close() error {
	if s.src.Close == nil {
		return s.src.Engine.Close()
	}
	return s.src.Close()
}
