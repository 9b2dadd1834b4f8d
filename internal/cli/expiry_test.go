package cli

import (
	"bytes"
	"fmt"
	"strings"
	"testing"
	"time"
)

// TestStatsExpired checks that stats counts the records that have expired
// but that no sweep has removed, apart from the live ones, with their size.
func TestStatsExpired(t *testing.T) {
	dir := makeExpiringDB(t, 50)
	before := snapshot(t, dir)
	r := mustRun(t, exitOK, "stats", dir)
	if got := row(r.stdout, "records"); len(got) != 2 || got[1] != "3" {
		t.Errorf("records row %q, want the 3 live records:\n%s", got, r.stdout)
	}
	// 50 records of a 9-byte key and a 4 KiB value.
	want := fmt.Sprintf("expired 50 (not swept yet: %s of keys and values that the next sweep removes; 'idem sweep %s' does it now)",
		formatBytes(50*(9+4096)), dir)
	if got := strings.Join(row(r.stdout, "expired"), " "); got != want {
		t.Errorf("expired row %q, want %q:\n%s", got, want, r.stdout)
	}
	checkUnchanged(t, dir, before, "stats")

	r = mustRun(t, exitOK, "stats", makeDB(t))
	if got := row(r.stdout, "expired"); len(got) < 2 || got[1] != "0" {
		t.Errorf("expired row %q, want 0:\n%s", got, r.stdout)
	}
}

// TestStatsReadAmplification checks that stats shows the engine's read
// amplification, whatever it is, on the read-only engine it opens.
func TestStatsReadAmplification(t *testing.T) {
	dir := makeExpiringDB(t, 10) // with sstables
	e, err := openReadOnly(dir, newClock(seeAll))
	if err != nil {
		t.Fatal(err)
	}
	defer e.Close()
	var stdout, stderr bytes.Buffer
	c := newCLI("stats", "", "", "", nil, &stdout, &stderr)
	if code := c.stats(e, dir, time.Now()); code != exitOK {
		t.Fatalf("stats: exit status %d: %s", code, stderr.String())
	}
	want := fmt.Sprint(e.Stats().ReadAmplification)
	if got := row(stdout.String(), "read"); len(got) < 3 || got[2] != want {
		t.Errorf("read amplification row %q, want %s (Stats.ReadAmplification)", got, want)
	}
}

// TestClockSeesAll checks the clock that stats and sweep give the engine:
// at seeAll, every record is visible, however far in the past it expired.
func TestClockSeesAll(t *testing.T) {
	clk := newClock(seeAll)
	if got := clk.now().UnixNano(); got != seeAll {
		t.Fatalf("clock at seeAll reads %d, want %d", got, int64(seeAll))
	}
	if !clk.now().Before(time.Unix(0, 1)) {
		t.Errorf("clock at seeAll is not before the Unix epoch: %v", clk.now())
	}
	now := time.Now()
	clk.set(now)
	if !clk.now().Equal(now) {
		t.Errorf("clock reads %v, set to %v", clk.now(), now)
	}
}
