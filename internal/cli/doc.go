// Package cli is the code of the idem command: cmd/idem's main calls Main
// with no Extension, and idemnats's idem command (idemnats/cmd/idem) calls
// it with one that adds --nats, so that both binaries are one command
// line, with the same commands, flags, messages and output.
//
// The commands are in files by what they do: inspect.go (stats, ls, get,
// interrupted, which only read), maint.go (forget, sweep), bench.go, top.go
// and demo.go. database.go is the seam between a command and the database
// it works on: a directory (an engine this process opens), a running
// service's admin handler (remote.go, --url), or an engine that an
// Extension opens (extension.go).
package cli
