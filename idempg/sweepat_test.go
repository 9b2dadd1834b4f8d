package idempg

import (
	"math"
	"testing"
	"time"
)

// sweepAt rounds an expiry up to a whole second, saturating, and leaves
// whole seconds (and times before 1970) as they are: never earlier than the
// expiry, less than a second later.
func TestSweepAt(t *testing.T) {
	const sec = int64(time.Second)
	for _, c := range []struct{ in, want int64 }{
		{0, 0},
		{1, sec},
		{sec - 1, sec},
		{sec, sec},
		{sec + 1, 2 * sec},
		{1_764_500_000_123_456_789, 1_764_500_001_000_000_000},
		{-1, -1},
		{-sec - 1, -sec - 1},
		{math.MaxInt64 - sec, 9_223_372_036_000_000_000},
		{math.MaxInt64 - 1, math.MaxInt64},
		{math.MaxInt64, math.MaxInt64},
	} {
		got := sweepAt(c.in)
		if got != c.want {
			t.Errorf("sweepAt(%d) = %d, want %d", c.in, got, c.want)
		}
		if got < c.in {
			t.Errorf("sweepAt(%d) = %d: earlier than the expiry", c.in, got)
		}
	}
}
