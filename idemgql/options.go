package idemgql

import (
	"fmt"
	"log/slog"
	"maps"
)

// config is Options with the defaults filled in.
type config struct {
	Options
}

// newConfig returns a copy of opts with the defaults filled in. It panics on
// an invalid option.
func newConfig(opts *Options) config {
	var c config
	if opts != nil {
		c.Options = *opts
	}
	if c.MaxKeyLength < 0 {
		panic(fmt.Sprintf("idemgql: Options.MaxKeyLength is negative (%d)", c.MaxKeyLength))
	}
	if c.MaxKeyLength == 0 {
		c.MaxKeyLength = DefaultMaxKeyLength
	}
	if c.Wait == 0 {
		c.Wait = DefaultWait
	}
	if c.Logger == nil {
		c.Logger = slog.Default()
	}
	c.Mutations = maps.Clone(c.Mutations) // the caller may change theirs
	return c
}
