package cli

import (
	"context"
	"flag"
	"fmt"
	"io"
	"math"
	"net/http"
	"os"
	"os/exec"
	"slices"
	"strings"
	"sync"
	"time"

	"github.com/idemkv/idem"
	"github.com/idemkv/idem/idemhttp"
)

// topCommand is the top subcommand.
func topCommand(ctx context.Context, args []string, stdin io.Reader, stdout, stderr io.Writer, _ *Extension) int {
	c := newCLI("top", "top --url URL [--interval D] [--count N] | top [--dir DIR] [--concurrency C] [--durability MODE] [--dup-ratio R] [--value-size N] [--interval D] [--count N]",
		`Top shows, refreshed every interval, the rates per second of an engine's
calls, executions (fn ran), replays, conflicts (ErrInFlight), waits,
mismatches and interrupted keys, and the latency percentiles (p50, p90, p99)
of its calls by outcome, of fn and of the store's requests over the last
interval.

With --url, the engine is that of the running service whose admin handler
(idemhttp) is at URL: the latencies need the handler of an idemhttp.Admin that
is the engine's Options.Observer (with idemhttp.AdminHandler, top shows the
rates only). Without --url, top runs a load on an engine of its own, as bench
does (the same flags), and shows it.

On a terminal, top takes the screen and redraws it; q or Ctrl-C quits and
gives the terminal back as it was (top reads keys through stty). Otherwise it
writes a line per interval, for a log: stop it with Ctrl-C, or --count.`,
		`idem top --url http://127.0.0.1:9090/idem
idem top --dir /data/idem-top --concurrency 64 --durability all`,
		stdin, stdout, stderr)
	var (
		rawURL     string
		interval   time.Duration
		count      int
		cfg        benchConfig
		durability string
	)
	c.flags.StringVar(&rawURL, "url", "", "show the engine of the running service whose admin handler is at `URL` (idemhttp.Admin),\ne.g. http://127.0.0.1:9090/idem; $IDEM_AUTHORIZATION, if set, is sent as the Authorization header")
	c.flags.DurationVar(&interval, "interval", time.Second, "time between refreshes")
	c.flags.IntVar(&count, "count", 0, "stop after `N` refreshes (0: until q or Ctrl-C)")
	addLoadFlags(c, &cfg, &durability)
	pos, code, ok := c.parse(args)
	if !ok {
		return code
	}
	var loadSet []string
	c.flags.Visit(func(f *flag.Flag) {
		for _, n := range loadFlags {
			if f.Name == n {
				loadSet = append(loadSet, "--"+n)
			}
		}
	})
	switch {
	case len(pos) > 0:
		return c.usageError("unexpected argument %q", pos[0])
	case interval <= 0:
		return c.usageError("--interval must be positive, not %v", interval)
	case count < 0:
		return c.usageError("--count must be 0 or more, not %d", count)
	case rawURL != "" && len(loadSet) > 0:
		return c.usageError("%s %s for a load of top's own, not with --url", strings.Join(loadSet, ", "), plural(len(loadSet), "is", "are"))
	}
	if code, ok := checkLoadFlags(c, &cfg, durability); !ok {
		return code
	}

	ctx, cancel := context.WithCancel(ctx)
	defer cancel()
	var (
		src   *remote
		title string
		err   error
	)
	if rawURL != "" {
		src, err = newRemote(ctx, rawURL, nil)
		title = rawURL
	} else {
		var ld *load
		ld, err = startLoad(cfg)
		if err == nil {
			defer ld.stop()
			src, err = newRemote(ctx, "http://idem-top.invalid/", &http.Client{Transport: handlerTransport{ld.admin.Handler(ld.e)}})
			title = fmt.Sprintf("a load: concurrency %d, durability %v, dup-ratio %g, value size %d B, dir %s",
				cfg.Concurrency, cfg.Durability, cfg.DupRatio, cfg.ValueSize, ld.where)
		}
	}
	if err != nil {
		return c.fail(err)
	}
	defer src.close()
	first, err := src.stats(false) // a service that cannot be read fails at once
	if err != nil {
		return c.fail(err)
	}
	t := &topRun{src: src, title: title, interval: interval, count: count, out: stdout}
	if isTerminal(stdout) {
		t.screen(ctx, first)
	} else {
		t.lines(ctx, first)
	}
	return exitOK
}

// A load is a bench load that runs until stopped, on an engine whose
// Observer is an idemhttp.Admin, for top.
type load struct {
	e       *idem.Engine
	admin   *idemhttp.Admin
	where   string // the directory, for the reader
	run     *benchRun
	wg      sync.WaitGroup // the workers
	cleanup func()         // removes a temporary directory
}

// startLoad opens an engine as cfg says and starts its workers.
func startLoad(cfg benchConfig) (*load, error) {
	dir, where, cleanup, err := loadDir(cfg.Dir)
	if err != nil {
		return nil, err
	}
	ld := &load{where: where, cleanup: cleanup}
	ld.admin = idemhttp.NewAdmin(&idemhttp.AdminOptions{Authorize: func(*http.Request, bool) error { return nil }})
	ld.e, err = idem.Open(dir, &idem.Options{Durability: cfg.Durability, Observer: ld.admin})
	if err != nil {
		cleanup()
		return nil, openError(dir, err)
	}
	cfg.Duration = 0 // until stopped
	ld.run = newBenchRun(cfg, ld.e)
	workers := make([]benchWorker, cfg.Concurrency)
	for i := range workers {
		ld.wg.Add(1)
		go func() {
			defer ld.wg.Done()
			ld.run.work(&workers[i], uint64(i))
		}()
	}
	return ld, nil
}

// stop stops the workers, closes the engine and removes a temporary
// directory.
func (ld *load) stop() {
	ld.run.stop.Store(true)
	ld.wg.Wait()
	ld.e.Close()
	ld.cleanup()
}

// topRun is a run of top: where it reads the stats, and how it shows them.
type topRun struct {
	src      *remote
	title    string
	interval time.Duration
	count    int // refreshes before stopping; 0 for no end
	out      io.Writer
}

// A sample is the answer to a request for the stats.
type sample struct {
	st  *idemhttp.AdminStats
	err error
}

// samples asks for the stats every interval and hands them to show, until
// ctx ends, quit receives, or count refreshes have been shown. One request
// at a time is in flight, in a goroutine of its own, so that a slow service
// does not hold up a key.
func (t *topRun) samples(ctx context.Context, quit <-chan struct{}, show func(sample)) {
	ctx, cancel := context.WithCancel(ctx)
	results := make(chan sample, 1)
	var wg sync.WaitGroup
	defer func() {
		cancel()
		wg.Wait()
	}()
	pending := false
	tick := time.NewTicker(t.interval)
	defer tick.Stop()
	src := *t.src
	src.ctx = ctx
	shown := 0
	for {
		select {
		case <-ctx.Done():
			return
		case <-quit:
			return
		case <-tick.C:
			if pending {
				continue // the last request is still out: skip this tick
			}
			pending = true
			wg.Add(1)
			go func() {
				defer wg.Done()
				st, err := src.stats(false)
				results <- sample{st, err}
			}()
		case s := <-results:
			pending = false
			show(s)
			if shown++; t.count > 0 && shown >= t.count {
				return
			}
		}
	}
}

// lines writes a line per interval: the rates and the latency of all calls.
func (t *topRun) lines(ctx context.Context, first *idemhttp.AdminStats) {
	fmt.Fprintf(t.out, "idem top: %s, every %v\n", t.title, t.interval)
	fmt.Fprintf(t.out, "%-8s  %10s  %12s  %10s  %11s  %8s  %8s\n", "TIME", "CALLS/S", "EXECUTIONS/S", "REPLAYS/S", "CONFLICTS/S", "P50", "P99")
	prev := first
	t.samples(ctx, nil, func(s sample) {
		now := time.Now().Format("15:04:05")
		if s.err != nil {
			fmt.Fprintf(t.out, "%-8s  error: %s\n", now, oneLine(s.err.Error()))
			return
		}
		d := diffStats(prev, s.st)
		prev = s.st
		p50, p99 := "-", "-"
		if d.all != nil && d.all.n > 0 {
			p50, p99 = formatLatency(d.all.quantile(0.5)), formatLatency(d.all.quantile(0.99))
		}
		fmt.Fprintf(t.out, "%-8s  %10.1f  %12.1f  %10.1f  %11.1f  %8s  %8s\n", now,
			d.rate(func(s *idemhttp.AdminStats) uint64 { return s.Calls }),
			d.rate(func(s *idemhttp.AdminStats) uint64 { return s.Executions }),
			d.rate(func(s *idemhttp.AdminStats) uint64 { return s.Replays }),
			d.rate(func(s *idemhttp.AdminStats) uint64 { return s.Conflicts }),
			p50, p99)
	})
}

// The escape sequences of the screen (ECMA-48 and xterm's).
const (
	escAltScreen   = "\x1b[?1049h" // switch to the alternate screen
	escMainScreen  = "\x1b[?1049l" // and back, as it was
	escHideCursor  = "\x1b[?25l"
	escShowCursor  = "\x1b[?25h"
	escHome        = "\x1b[H" // cursor to the top left
	escClearLine   = "\x1b[K" // erase to the end of the line
	escClearBelow  = "\x1b[J" // erase to the end of the screen
	escBold, escNo = "\x1b[1m", "\x1b[m"
)

// screen redraws the terminal every interval until q, Ctrl-C or count, and
// gives it back as it was.
func (t *topRun) screen(ctx context.Context, first *idemhttp.AdminStats) {
	quit := make(chan struct{}, 1)
	keys, stopKeys := readKeys(quit)
	defer stopKeys()
	fmt.Fprint(t.out, escAltScreen+escHideCursor)
	defer fmt.Fprint(t.out, escShowCursor+escMainScreen)

	help := "Ctrl-C: quit"
	width := 0 // the terminal's columns, if known: longer lines are cut, not wrapped
	if keys {
		help = "q or Ctrl-C: quit"
		if size, err := stty("size"); err == nil {
			fmt.Sscanf(size, "%d %d", new(int), &width)
		}
	}
	draw := func(d statsDiff, errMsg string) {
		lines := renderTop(t.title, help, d, errMsg, time.Now())
		var b strings.Builder
		b.WriteString(escHome)
		for _, l := range lines {
			b.WriteString(cut(l, width) + escClearLine + "\r\n")
		}
		b.WriteString(escClearBelow)
		io.WriteString(t.out, b.String())
	}
	prev := first
	last := diffStats(nil, first)
	draw(last, "")
	t.samples(ctx, quit, func(s sample) {
		if s.err != nil {
			draw(last, s.err.Error())
			return
		}
		last = diffStats(prev, s.st)
		prev = s.st
		draw(last, "")
	})
}

// cut returns line cut to width columns (no cut if width <= 0), counting
// each rune as a column and escape sequences (ESC [ ... letter) as none.
func cut(line string, width int) string {
	if width <= 0 {
		return line
	}
	cols, esc := 0, false
	for i, r := range line {
		switch {
		case esc:
			esc = !(r >= '@' && r <= '~' && r != '[')
		case r == '\x1b':
			esc = true
		default:
			if cols == width {
				return line[:i] + escNo
			}
			cols++
		}
	}
	return line
}

// readKeys reads the keys typed on the terminal, one at a time and unechoed
// (stty -icanon -echo), and sends on quit when one is q or Ctrl-C. ok is
// false when it cannot (no terminal, no stty): top then quits on Ctrl-C's
// signal only. stop puts the terminal back as it was and stops reading.
//
// It opens /dev/tty rather than using standard input: a file of its own,
// which the runtime polls, so that stop can end a read in progress; and a
// non-blocking mode set on it does not leak to the shell's file.
func readKeys(quit chan<- struct{}) (ok bool, stop func()) {
	saved, err := stty("-g")
	if err == nil {
		_, err = stty("-icanon", "-echo", "min", "1", "time", "0")
	}
	if err != nil {
		return false, func() {}
	}
	tty, err := os.OpenFile("/dev/tty", os.O_RDONLY, 0)
	if err != nil {
		stty(saved)
		return false, func() {}
	}
	// Ctrl-C stays a signal (isig), which main turns into the end of ctx;
	// the byte is checked too, for a terminal that sends it as a key.
	pollable := tty.SetReadDeadline(time.Time{}) == nil
	var wg sync.WaitGroup
	wg.Add(1)
	go func() {
		defer wg.Done()
		buf := make([]byte, 64)
		for {
			n, err := tty.Read(buf)
			for _, b := range buf[:n] {
				if b == 'q' || b == 'Q' || b == 3 {
					select {
					case quit <- struct{}{}:
					default:
					}
				}
			}
			if err != nil {
				return
			}
		}
	}()
	return true, func() {
		stty(saved)
		if pollable {
			tty.SetReadDeadline(time.Now()) // ends the read in progress
			wg.Wait()
		}
		// Else the read goes on until a key or the end of the process,
		// which comes next: top is the command's last work.
		tty.Close()
	}
}

// stty runs stty with args on the terminal, and returns what it wrote. Its
// standard input is a file of /dev/tty of its own: handing a file to a child
// makes it blocking, and readKeys's must stay polled.
func stty(args ...string) (string, error) {
	tty, err := os.Open("/dev/tty")
	if err != nil {
		return "", err
	}
	defer tty.Close()
	cmd := exec.Command("stty", args...)
	cmd.Stdin = tty
	out, err := cmd.Output()
	return strings.TrimSpace(string(out)), err
}

// statsDiff is what changed between two samples of the stats.
type statsDiff struct {
	prev, cur *idemhttp.AdminStats // prev is nil for the first sample, or after a restart
	secs      float64              // the time between them
	restarted bool                 // the counters went back: the service restarted

	all   *window            // every call
	calls map[string]*window // by outcome
	fn    *window
	store map[string]*window // by store request
}

// diffStats returns the changes from prev (nil for none) to cur.
func diffStats(prev, cur *idemhttp.AdminStats) statsDiff {
	d := statsDiff{prev: prev, cur: cur}
	if prev != nil && cur.Calls < prev.Calls {
		d.prev, d.restarted = nil, true
	}
	if d.prev == nil {
		return d
	}
	d.secs = cur.Time.Sub(prev.Time).Seconds()
	if cur.Latency == nil || prev.Latency == nil {
		return d
	}
	d.all, d.calls, d.store = &window{}, map[string]*window{}, map[string]*window{}
	for name, h := range cur.Latency.Calls {
		d.calls[name] = histDiff(prev.Latency.Calls[name], h)
		d.all.merge(d.calls[name])
	}
	d.fn = histDiff(prev.Latency.Fn, cur.Latency.Fn)
	for name, h := range cur.Latency.Store {
		d.store[name] = histDiff(prev.Latency.Store[name], h)
	}
	return d
}

// rate returns the rate per second of the counter that f reads, -1 without
// two samples.
func (d *statsDiff) rate(f func(*idemhttp.AdminStats) uint64) float64 {
	if d.prev == nil || d.secs <= 0 {
		return -1
	}
	return float64(f(d.cur)-f(d.prev)) / d.secs
}

// A window is the durations of one interval, in the buckets of the admin
// handler's histograms.
type window struct {
	counts map[uint64]uint64 // by bucket: its largest duration, in ns
	n      uint64
}

// add adds n durations of bucket le.
func (w *window) add(le, n uint64) {
	if w.counts == nil {
		w.counts = map[uint64]uint64{}
	}
	w.counts[le] += n
	w.n += n
}

// merge adds o's durations to w.
func (w *window) merge(o *window) {
	for le, n := range o.counts {
		w.add(le, n)
	}
}

// quantile returns the duration below or at which a fraction q of the
// durations fall: the largest duration of its bucket. It is 0 for an empty
// window.
func (w *window) quantile(q float64) time.Duration {
	if w.n == 0 {
		return 0
	}
	les := make([]uint64, 0, len(w.counts))
	for le := range w.counts {
		les = append(les, le)
	}
	slices.Sort(les)
	rank := min(max(uint64(math.Ceil(q*float64(w.n))), 1), w.n)
	var seen uint64
	for _, le := range les {
		if seen += w.counts[le]; seen >= rank {
			return time.Duration(min(le, math.MaxInt64))
		}
	}
	return time.Duration(min(les[len(les)-1], math.MaxInt64))
}

// histDiff returns the durations of cur that are not in prev (nil for
// none).
func histDiff(prev, cur *idemhttp.AdminHistogram) *window {
	w := &window{}
	if cur == nil {
		return w
	}
	before := map[uint64]uint64{}
	if prev != nil {
		for _, b := range prev.Buckets {
			before[b.LeNs] = b.Count
		}
	}
	for _, b := range cur.Buckets {
		if n := b.Count - min(before[b.LeNs], b.Count); n > 0 {
			w.add(b.LeNs, n)
		}
	}
	return w
}

// renderTop returns the lines of top's screen for d, at now: title and help
// in the header, errMsg (if not "") under it.
func renderTop(title, help string, d statsDiff, errMsg string, now time.Time) []string {
	cur := d.cur
	lines := []string{
		escBold + "idem top" + escNo + "  " + title,
		fmt.Sprintf("%s  ·  %s", now.Format("15:04:05"), help),
	}
	switch {
	case errMsg != "":
		lines = append(lines, "error: "+oneLine(errMsg)+" (the figures below are the last ones read)")
	case d.restarted:
		lines = append(lines, "the counters went back: the service restarted")
	default:
		lines = append(lines, "")
	}
	lines = append(lines, fmt.Sprintf("%-14s %12s %14s", "", "per second", "total"))
	for _, c := range []struct {
		name string
		f    func(*idemhttp.AdminStats) uint64
	}{
		{"calls", func(s *idemhttp.AdminStats) uint64 { return s.Calls }},
		{"executions", func(s *idemhttp.AdminStats) uint64 { return s.Executions }},
		{"replays", func(s *idemhttp.AdminStats) uint64 { return s.Replays }},
		{"conflicts", func(s *idemhttp.AdminStats) uint64 { return s.Conflicts }},
		{"waits", func(s *idemhttp.AdminStats) uint64 { return s.Waits }},
		{"mismatches", func(s *idemhttp.AdminStats) uint64 { return s.Mismatches }},
		{"interrupted", func(s *idemhttp.AdminStats) uint64 { return s.Interrupted }},
	} {
		rate := "-"
		if r := d.rate(c.f); r >= 0 {
			rate = fmt.Sprintf("%.1f", r)
		}
		lines = append(lines, fmt.Sprintf("%-14s %12s %14d", c.name, rate, c.f(cur)))
	}
	lines = append(lines, "")
	switch {
	case cur.Latency == nil:
		lines = append(lines, "latency: not measured: the service mounts idemhttp.AdminHandler; the Handler of an",
			"idemhttp.Admin that is the engine's Options.Observer shows it")
	case d.prev == nil:
		lines = append(lines, "latency: from the next refresh on")
	default:
		lines = append(lines, fmt.Sprintf("%-14s %12s %10s %10s %10s", fmt.Sprintf("latency, %.1fs", d.secs), "calls", "p50", "p90", "p99"))
		row := func(name string, h *window) {
			if h == nil {
				h = &window{}
			}
			q := func(x float64) string {
				if h.n == 0 {
					return "-"
				}
				return formatLatency(h.quantile(x))
			}
			lines = append(lines, fmt.Sprintf("%-14s %12d %10s %10s %10s", name, h.n, q(0.5), q(0.9), q(0.99)))
		}
		row("all calls", d.all)
		// The outcomes in idem's order, then any other.
		var names []string
		for i := idem.OutcomeExecuted; i <= idem.OutcomeError; i++ {
			if i == idem.OutcomeExecuted || i == idem.OutcomeReplayed || d.calls[i.String()] != nil {
				names = append(names, i.String())
			}
		}
		var others []string
		for name := range d.calls {
			if !slices.Contains(names, name) {
				others = append(others, name)
			}
		}
		slices.Sort(others)
		for _, name := range append(names, others...) {
			row("  "+name, d.calls[name])
		}
		row("fn", d.fn)
		for _, op := range []idem.StoreOp{idem.StoreRead, idem.StoreClaim, idem.StoreComplete, idem.StoreRelease} {
			if h := d.store[op.String()]; h != nil || op != idem.StoreRelease {
				row("store "+op.String(), h)
			}
		}
		if d.all.n == 0 && cur.Calls > d.prev.Calls {
			lines = append(lines, "no latency observed while the engine counted calls: is the idemhttp.Admin the engine's Options.Observer?")
		}
	}
	lines = append(lines, "", fmt.Sprintf("disk usage %s  ·  read amplification %d  ·  compactions %d  ·  swept %d",
		formatBytes(int64(cur.DiskUsage)), cur.ReadAmplification, cur.Compactions, cur.Swept))
	return lines
}
