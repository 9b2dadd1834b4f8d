package cli

import (
	"strings"
	"testing"
	"time"

	"github.com/idemkv/idem/idemhttp"
)

// hist returns an admin histogram with the given counts by bucket bound.
func hist(buckets ...uint64) *idemhttp.AdminHistogram {
	h := &idemhttp.AdminHistogram{}
	for i := 0; i < len(buckets); i += 2 {
		h.Buckets = append(h.Buckets, idemhttp.AdminBucket{LeNs: buckets[i], Count: buckets[i+1]})
		h.Count += buckets[i+1]
	}
	return h
}

// TestWindow checks the latencies of an interval: the difference of two
// histograms, bucket by bucket, and its quantiles.
func TestWindow(t *testing.T) {
	prev := hist(1000, 5, 2000, 10)
	cur := hist(1000, 5, 2000, 90, 4000, 9, 8000, 1)
	w := histDiff(prev, cur)
	if w.n != 90 {
		t.Fatalf("%d durations in the interval, want 90", w.n)
	}
	for _, tt := range []struct {
		q    float64
		want time.Duration
	}{{0, 2000}, {0.5, 2000}, {0.88, 2000}, {0.9, 4000}, {0.98, 4000}, {0.99, 8000}, {1, 8000}} {
		if got := w.quantile(tt.q); got != tt.want {
			t.Errorf("quantile(%v) = %v, want %v", tt.q, got, tt.want)
		}
	}
	if got := histDiff(nil, cur).n; got != 105 {
		t.Errorf("histDiff from nothing: %d durations, want 105", got)
	}
	if got := histDiff(cur, prev).n; got != 0 {
		t.Errorf("histDiff of a histogram that went back: %d durations, want 0", got)
	}
	var empty window
	if empty.quantile(0.5) != 0 {
		t.Error("the quantile of an empty window is not 0")
	}
}

// TestRenderTop checks top's screen: rates from two samples, the
// latencies of the interval, and what it says without them.
func TestRenderTop(t *testing.T) {
	t0 := time.Date(2030, 1, 1, 12, 0, 0, 0, time.UTC)
	prev := &idemhttp.AdminStats{Time: t0, Calls: 100, Executions: 80, Replays: 20,
		Latency: &idemhttp.AdminLatency{Calls: map[string]*idemhttp.AdminHistogram{"executed": hist(1000, 80)}, Fn: hist(), Store: map[string]*idemhttp.AdminHistogram{}}}
	cur := &idemhttp.AdminStats{Time: t0.Add(2 * time.Second), Calls: 300, Executions: 230, Replays: 60, Conflicts: 10, DiskUsage: 3 << 20,
		Latency: &idemhttp.AdminLatency{
			Calls: map[string]*idemhttp.AdminHistogram{"executed": hist(1000, 80, 2000, 150), "replayed": hist(100, 40), "conflict": hist(50, 10)},
			Fn:    hist(500, 150), Store: map[string]*idemhttp.AdminHistogram{"complete": hist(700, 150)}}}
	screen := strings.Join(renderTop("http://svc/idem", "q: quit", diffStats(prev, cur), "", t0), "\n")
	t.Logf("\n%s", screen)
	for _, want := range [][]string{
		{"calls", "100.0", "300"},
		{"executions", "75.0", "230"},
		{"replays", "20.0", "60"},
		{"conflicts", "5.0", "10"},
		{"all", "calls", "200", "2µs", "2µs", "2µs"},
		{"executed", "150", "2µs", "2µs", "2µs"},
		{"replayed", "40", "100ns", "100ns", "100ns"},
		{"conflict", "10", "50ns", "50ns", "50ns"},
		{"fn", "150", "500ns", "500ns", "500ns"},
		{"store", "complete", "150", "700ns", "700ns", "700ns"},
		{"store", "claim", "0", "-", "-", "-"},
	} {
		if got := row(screen, want[0]); strings.Join(got, " ") != strings.Join(want, " ") && !hasRow(screen, want) {
			t.Errorf("no row %q", want)
		}
	}
	if !strings.Contains(screen, "disk usage 3.0 MiB") {
		t.Error("no disk usage")
	}

	// The first sample: totals, no rates, no latencies yet.
	screen = strings.Join(renderTop("t", "h", diffStats(nil, cur), "", t0), "\n")
	if got := row(screen, "calls"); strings.Join(got, " ") != "calls - 300" || !strings.Contains(screen, "latency: from the next refresh on") {
		t.Errorf("first screen:\n%s", screen)
	}
	// A restart: the counters went back.
	screen = strings.Join(renderTop("t", "h", diffStats(cur, prev), "", t0), "\n")
	if !strings.Contains(screen, "the service restarted") || strings.Join(row(screen, "calls"), " ") != "calls - 100" {
		t.Errorf("after a restart:\n%s", screen)
	}
	// No Admin: rates only.
	noLat := *cur
	noLat.Latency = nil
	screen = strings.Join(renderTop("t", "h", diffStats(prev, &noLat), "", t0), "\n")
	if !strings.Contains(screen, "latency: not measured") || strings.Join(row(screen, "calls"), " ") != "calls 100.0 300" {
		t.Errorf("without latencies:\n%s", screen)
	}
	// An Admin that is not the Observer.
	idle := *cur
	idle.Latency = prev.Latency
	screen = strings.Join(renderTop("t", "h", diffStats(prev, &idle), "", t0), "\n")
	if !strings.Contains(screen, "is the idemhttp.Admin the engine's Options.Observer?") {
		t.Errorf("with an Admin that sees no calls:\n%s", screen)
	}
	// An error.
	screen = strings.Join(renderTop("t", "h", diffStats(prev, cur), "connection refused", t0), "\n")
	if !strings.Contains(screen, "error: connection refused (the figures below are the last ones read)") {
		t.Errorf("with an error:\n%s", screen)
	}
}

// hasRow reports whether a line of screen has the fields want.
func hasRow(screen string, want []string) bool {
	for _, f := range fields(screen) {
		if strings.Join(f, " ") == strings.Join(want, " ") {
			return true
		}
	}
	return false
}

func TestCut(t *testing.T) {
	for _, tt := range []struct {
		line  string
		width int
		want  string
	}{
		{"abcdef", 0, "abcdef"},
		{"abcdef", 6, "abcdef"},
		{"abcdef", 4, "abcd" + escNo},
		{escBold + "idem" + escNo + " top", 6, escBold + "idem" + escNo + " t" + escNo},
		{"µs·µs", 3, "µs·" + escNo},
	} {
		if got := cut(tt.line, tt.width); got != tt.want {
			t.Errorf("cut(%q, %d) = %q, want %q", tt.line, tt.width, got, tt.want)
		}
	}
}

func TestEscapeKey(t *testing.T) {
	for key, want := range map[string]string{
		"pay-1":   "pay-1",
		"order/7": "order%2F7",
		"a key":   "a%20key",
		".":       "%2E",
		"..":      "%2E%2E",
		"0:k-1":   "0:k-1",
		"a/../b":  "a%2F..%2Fb",
	} {
		if got := escapeKey(key); got != want {
			t.Errorf("escapeKey(%q) = %q, want %q", key, got, want)
		}
	}
}
