package cli

import (
	"io"
	"math"
	"math/rand/v2"
	"slices"
	"sort"
	"strings"
	"testing"
	"time"
)

// raceEnabled is true when the tests run with the race detector
// (race_test.go).
var raceEnabled bool

func TestParseInterspersed(t *testing.T) {
	for _, tt := range []struct {
		args   []string
		pos    []string
		state  string
		limit  int
		asJSON bool
		code   int
		ok     bool
	}{
		{args: []string{"dir"}, pos: []string{"dir"}, ok: true},
		{args: []string{"dir", "--state", "failed", "-limit=3", "--json"}, pos: []string{"dir"}, state: "failed", limit: 3, asJSON: true, ok: true},
		{args: []string{"--json", "dir", "-state=x", "key"}, pos: []string{"dir", "key"}, state: "x", asJSON: true, ok: true},
		{args: []string{"dir", "--", "--state", "-"}, pos: []string{"dir", "--state", "-"}, ok: true},
		{args: []string{"-", "dir"}, pos: []string{"-", "dir"}, ok: true},
		{args: []string{"dir", "--json=false", "--state", "--json"}, pos: []string{"dir"}, state: "--json", ok: true},
		{args: []string{"dir", "--limit"}, code: exitUsage},
		{args: []string{"dir", "--bogus"}, code: exitUsage},
		{args: []string{"dir", "-h"}, code: exitOK},
	} {
		c := newCLI("ls", "ls DIR", "about", "idem ls DIR", nil, io.Discard, io.Discard)
		var (
			state  string
			limit  int
			asJSON bool
		)
		c.flags.StringVar(&state, "state", "", "")
		c.flags.IntVar(&limit, "limit", 0, "")
		c.flags.BoolVar(&asJSON, "json", false, "")
		pos, code, ok := c.parse(tt.args)
		if ok != tt.ok || (!ok && code != tt.code) {
			t.Errorf("parse(%q): code %d, ok %v; want %d, %v", tt.args, code, ok, tt.code, tt.ok)
			continue
		}
		if ok && (!slices.Equal(pos, tt.pos) || state != tt.state || limit != tt.limit || asJSON != tt.asJSON) {
			t.Errorf("parse(%q): %q state %q limit %d json %v; want %q %q %d %v", tt.args, pos, state, limit, asJSON, tt.pos, tt.state, tt.limit, tt.asJSON)
		}
	}
}

// TestHistogram checks the histogram's quantiles against the exact ones of
// a sorted sample: within the 1/32 of a bucket's width.
func TestHistogram(t *testing.T) {
	var h histogram
	if h.quantile(0.5) != 0 || h.mean() != 0 {
		t.Error("an empty histogram has non-zero quantiles")
	}
	r := rand.New(rand.NewPCG(1, 2))
	var ds []time.Duration
	for range 100_000 {
		// Log-uniform from 10ns to 1s.
		d := time.Duration(10 * math.Pow(1e8, r.Float64()))
		ds = append(ds, d)
		h.record(d)
	}
	sort.Slice(ds, func(i, j int) bool { return ds[i] < ds[j] })
	for _, q := range []float64{0, 0.5, 0.9, 0.99, 0.999, 1} {
		exact := ds[max(int(q*float64(len(ds)))-1, 0)]
		got := h.quantile(q)
		if got < exact || float64(got) > float64(exact)*(1+1.0/32)+1 {
			t.Errorf("quantile(%v) = %v, exact %v", q, got, exact)
		}
	}
	if h.quantile(1) != ds[len(ds)-1] || h.max != ds[len(ds)-1] {
		t.Errorf("quantile(1) = %v, max %v; want %v", h.quantile(1), h.max, ds[len(ds)-1])
	}
	var m histogram
	m.merge(&h)
	m.merge(&h)
	if m.n != 2*h.n || m.quantile(0.5) != h.quantile(0.5) {
		t.Errorf("merged: n %d, median %v; want %d, %v", m.n, m.quantile(0.5), 2*h.n, h.quantile(0.5))
	}
	for v := uint64(0); v < 1<<16; v++ {
		if b := bucketOf(v); v > bucketMax(b) || (b > 0 && v <= bucketMax(b-1)) {
			t.Fatalf("value %d in bucket %d of [%d, %d]", v, b, bucketMax(b-1)+1, bucketMax(b))
		}
	}
	if b := bucketOf(^uint64(0)); b != histBuckets-1 || bucketMax(b) != ^uint64(0) {
		t.Errorf("the largest value is in bucket %d of %d", b, histBuckets)
	}
}

func TestFormatting(t *testing.T) {
	for _, tt := range []struct {
		n    int64
		want string
	}{{0, "0 B"}, {1023, "1023 B"}, {1024, "1.0 KiB"}, {1536, "1.5 KiB"}, {5 << 20, "5.0 MiB"}, {-2048, "-2.0 KiB"}} {
		if got := formatBytes(tt.n); got != tt.want {
			t.Errorf("formatBytes(%d) = %q, want %q", tt.n, got, tt.want)
		}
	}
	for _, tt := range []struct{ key, want string }{
		{"pay-1", "pay-1"}, {"a b", `"a b"`}, {"\x00\xff", `"\x00\xff"`}, {"é/ü", "é/ü"}, {`a"b`, `"a\"b"`}, {"", `""`},
	} {
		if got := displayKey(tt.key); got != tt.want {
			t.Errorf("displayKey(%q) = %s, want %s", tt.key, got, tt.want)
		}
	}
	for _, tt := range []struct {
		d    time.Duration
		want string
	}{{0, "0ns"}, {999, "999ns"}, {1500, "1.5µs"}, {2 * time.Millisecond, "2ms"}, {1234567, "1.23ms"}, {3 * time.Second, "3s"}} {
		if got := formatLatency(tt.d); got != tt.want {
			t.Errorf("formatLatency(%v) = %q, want %q", tt.d, got, tt.want)
		}
	}
	if !isText([]byte("a\tb\nc")) || isText([]byte{0}) || isText([]byte{0xff}) || !isText(nil) {
		t.Error("isText")
	}
	if oneLine("a\nb  c") != "a ; b c" || strings.Contains(oneLine("x\n"), "\n") {
		t.Errorf("oneLine: %q", oneLine("a\nb  c"))
	}
}
