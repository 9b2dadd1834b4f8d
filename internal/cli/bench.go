package cli

import (
	"context"
	"crypto/rand"
	"errors"
	"fmt"
	"io"
	mrand "math/rand/v2"
	"os"
	"strings"
	"sync"
	"sync/atomic"
	"text/tabwriter"
	"time"

	"github.com/cockroachdb/pebble/v2/vfs"

	"github.com/idemkv/idem"
	"github.com/idemkv/idem/internal/countfs"
)

// benchConfig is what the bench subcommand's flags set.
type benchConfig struct {
	Dir         string          // the engine's directory, empty or absent; "" for a temporary one, removed at the end
	Duration    time.Duration   // how long the load runs
	Concurrency int             // goroutines calling Do
	Durability  idem.Durability // the engine's durability mode
	DupRatio    float64         // the fraction of calls that reuse a key, in [0, 1]
	ValueSize   int             // the bytes fn returns
}

// The paths of a Do call that bench measures apart.
const (
	pathNew       = iota // fn ran: a new key
	pathReplay           // a retry of a stored key: answered from its record
	pathDuplicate        // a duplicate of a key whose call had just begun: waits for it, or replays
	numPaths
)

var pathNames = [numPaths]string{"new key", "replay", "duplicate"}

// benchCommand is the bench subcommand.
func benchCommand(ctx context.Context, args []string, stdin io.Reader, stdout, stderr io.Writer, _ *Extension) int {
	c := newCLI("bench", "bench [--dir DIR] [--duration D] [--concurrency C] [--durability MODE] [--dup-ratio R] [--value-size N]",
		`Bench runs a load on an idem engine on this machine's disk for a while and
reports its throughput, the latency of each path of Do, the fsyncs and the
bytes written. The calls are of three kinds: new keys (fn runs and returns
value-size random bytes), and, for a fraction dup-ratio of the calls, half
replays (a retry of a key already stored) and half duplicates (a call for the
key whose call began last, which waits for it while its fn and fsync run).
Each call is counted under the path it took: "new key" when fn ran for it.

The default directory is a temporary one (under $TMPDIR, which may be in
memory): pass --dir on the disk you want to measure. A progress line shows on
a terminal, plain lines otherwise (on standard error); the table goes to
standard output.`,
		`idem bench --dir /data/idem-bench --duration 30s --concurrency 64 --durability all`,
		stdin, stdout, stderr)
	var (
		cfg        benchConfig
		durability string
	)
	c.flags.DurationVar(&cfg.Duration, "duration", 10*time.Second, "how long to run the load")
	addLoadFlags(c, &cfg, &durability)
	pos, code, ok := c.parse(args)
	if !ok {
		return code
	}
	switch {
	case len(pos) > 0:
		return c.usageError("unexpected argument %q", pos[0])
	case cfg.Duration <= 0:
		return c.usageError("--duration must be positive, not %v", cfg.Duration)
	}
	if code, ok := checkLoadFlags(c, &cfg, durability); !ok {
		return code
	}

	rep, err := runBench(ctx, cfg, stdout, stderr, isTerminal(stderr))
	if err != nil {
		return c.fail(err)
	}
	switch {
	case rep.errors > 0:
		return c.failf("%d calls failed; the first: %v", rep.errors, rep.firstErr)
	case rep.canceled:
		return c.failf("interrupted after %v; the figures above are for that time", rep.elapsed.Round(100*time.Millisecond))
	}
	return exitOK
}

// loadFlags are the names of the flags of addLoadFlags.
var loadFlags = []string{"dir", "concurrency", "durability", "dup-ratio", "value-size"}

// addLoadFlags adds to c the flags of a load, bench's and top's, which set
// cfg and the name of its durability mode.
func addLoadFlags(c *cli, cfg *benchConfig, durability *string) {
	c.flags.StringVar(&cfg.Dir, "dir", "", "directory `DIR` for the engine, which must be empty or absent and is kept\n(default a temporary directory, removed at the end)")
	c.flags.IntVar(&cfg.Concurrency, "concurrency", 16, "number of goroutines calling Do")
	c.flags.StringVar(durability, "durability", "all", "the engine's durability `mode`: all, result or none")
	c.flags.Float64Var(&cfg.DupRatio, "dup-ratio", 0.2, "fraction of calls that reuse a key (half replays, half duplicates), from 0 to 1")
	c.flags.IntVar(&cfg.ValueSize, "value-size", 256, "bytes of the value fn returns")
}

// checkLoadFlags checks the flags of addLoadFlags, once parsed, and sets
// cfg.Durability; it returns a usage error for a bad one.
func checkLoadFlags(c *cli, cfg *benchConfig, durability string) (int, bool) {
	switch {
	case cfg.Concurrency < 1:
		return c.usageError("--concurrency must be at least 1, not %d", cfg.Concurrency), false
	case !(cfg.DupRatio >= 0 && cfg.DupRatio <= 1):
		return c.usageError("--dup-ratio must be from 0 to 1, not %v", cfg.DupRatio), false
	case cfg.ValueSize < 0 || cfg.ValueSize > idem.DefaultMaxValueSize:
		return c.usageError("--value-size must be from 0 to %d, not %d", idem.DefaultMaxValueSize, cfg.ValueSize), false
	}
	d, ok := parseDurability(durability)
	if !ok {
		return c.usageError("--durability must be all, result or none, not %q", durability), false
	}
	cfg.Durability = d
	return exitOK, true
}

// loadDir returns the directory of a load: dir, which must be empty or
// absent, or a new temporary one if dir is "", which cleanup removes. where
// names it for the reader.
func loadDir(dir string) (path, where string, cleanup func(), err error) {
	if dir == "" {
		tmp, err := os.MkdirTemp("", "idem-bench-")
		if err != nil {
			return "", "", nil, err
		}
		return tmp, tmp + " (temporary)", func() { os.RemoveAll(tmp) }, nil
	}
	if ents, err := os.ReadDir(dir); err == nil && len(ents) > 0 {
		return "", "", nil, fmt.Errorf("--dir %s is not empty: the load needs an empty or absent directory", dir)
	} else if err != nil && !errors.Is(err, os.ErrNotExist) {
		return "", "", nil, err
	}
	return dir, dir, func() {}, nil
}

// benchReport holds the figures of a bench run.
type benchReport struct {
	cfg      benchConfig
	dir      string
	elapsed  time.Duration
	canceled bool // ctx ended before the duration
	hist     [numPaths]histogram
	errors   uint64 // failed Do calls
	firstErr error
	syncs    uint64 // fsyncs of Pebble's files and directories
	written  uint64 // bytes written to Pebble's files
	stats    idem.Stats
}

// benchWorker is one goroutine's share of a run: its own histograms, so
// that recording takes no lock.
type benchWorker struct {
	hist     [numPaths]histogram
	errors   uint64
	firstErr error
	mine     []string // the last keys this worker stored, for replays
	next     int      // where the next key goes in mine once it is full
}

// replayKeys is how many of its stored keys a worker keeps for replays.
const replayKeys = 1024

// benchRun is the state the workers share.
type benchRun struct {
	cfg    benchConfig
	e      *idem.Engine
	values []byte                 // random bytes that values are cut from
	seq    atomic.Uint64          // numbers the new keys
	latest atomic.Pointer[string] // the last new key whose call began: duplicates reuse it
	ops    atomic.Uint64          // calls done, for the progress line
	stop   atomic.Bool            // set when the workers must stop
}

// newBenchRun returns the state of a run of the load of cfg on e.
func newBenchRun(cfg benchConfig, e *idem.Engine) *benchRun {
	r := &benchRun{cfg: cfg, e: e, values: make([]byte, cfg.ValueSize+64<<10)}
	rand.Read(r.values)
	return r
}

// runBench runs the load of cfg, writes the progress to progress (as a
// line rewritten in place when tty) and the table to w, and returns the
// figures. An error means the run could not be made.
func runBench(ctx context.Context, cfg benchConfig, w, progress io.Writer, tty bool) (*benchReport, error) {
	dir, where, cleanup, err := loadDir(cfg.Dir)
	if err != nil {
		return nil, err
	}
	defer cleanup()
	fs := countfs.New(vfs.Default)
	e, err := idem.Open(dir, &idem.Options{Durability: cfg.Durability, FS: fs})
	if err != nil {
		return nil, openError(dir, err)
	}
	defer e.Close()

	fmt.Fprintf(w, "idem bench: %v, concurrency %d, durability %v, dup-ratio %g, value size %d B, dir %s\n",
		cfg.Duration, cfg.Concurrency, cfg.Durability, cfg.DupRatio, cfg.ValueSize, where)
	r := newBenchRun(cfg, e)

	syncs0, written0 := fs.Syncs(), fs.Written()
	start := time.Now()
	workers := make([]benchWorker, cfg.Concurrency)
	var wg sync.WaitGroup
	for i := range workers {
		wg.Add(1)
		go func() {
			defer wg.Done()
			r.work(&workers[i], uint64(i))
		}()
	}
	progressDone := make(chan struct{})
	var progressWG sync.WaitGroup
	progressWG.Add(1)
	go func() {
		defer progressWG.Done()
		r.progress(progress, tty, start, progressDone)
	}()
	timer := time.NewTimer(cfg.Duration)
	canceled := false
	select {
	case <-timer.C:
	case <-ctx.Done():
		timer.Stop()
		canceled = true
	}
	r.stop.Store(true)
	wg.Wait()
	rep := &benchReport{
		cfg:      cfg,
		dir:      dir,
		elapsed:  time.Since(start),
		canceled: canceled,
		syncs:    fs.Syncs() - syncs0,
		written:  fs.Written() - written0,
		stats:    e.Stats(),
	}
	close(progressDone)
	progressWG.Wait()
	for i := range workers {
		wk := &workers[i]
		for p := range rep.hist {
			rep.hist[p].merge(&wk.hist[p])
		}
		rep.errors += wk.errors
		if rep.firstErr == nil {
			rep.firstErr = wk.firstErr
		}
	}
	writeBenchReport(w, rep)
	if err := e.Close(); err != nil {
		return nil, err
	}
	return rep, nil
}

// work calls Do until the run stops, choosing each call's kind at random.
func (r *benchRun) work(wk *benchWorker, id uint64) {
	rng := mrand.New(mrand.NewPCG(uint64(time.Now().UnixNano()), id))
	ctx := context.Background() // the run stops between calls, never inside one
	for !r.stop.Load() {
		var key string
		replay := false
		switch x := rng.Float64(); {
		case x < r.cfg.DupRatio/2 && len(wk.mine) > 0:
			key, replay = wk.mine[rng.IntN(len(wk.mine))], true
		case x < r.cfg.DupRatio:
			if p := r.latest.Load(); p != nil {
				key = *p
			}
		}
		if key == "" {
			n := r.seq.Add(1)
			key = fmt.Sprintf("bench/%010d", n)
			r.latest.Store(&key)
		}
		ran := false
		start := time.Now()
		_, err := r.e.Do(ctx, key, nil, func(context.Context) ([]byte, error) {
			ran = true
			return r.value(key), nil
		})
		d := time.Since(start)
		r.ops.Add(1)
		if err != nil {
			if wk.errors++; wk.firstErr == nil {
				wk.firstErr = fmt.Errorf("key %s: %w", key, err)
			}
			continue
		}
		switch {
		case ran:
			wk.hist[pathNew].record(d)
			wk.remember(key)
		case replay:
			wk.hist[pathReplay].record(d)
		default:
			wk.hist[pathDuplicate].record(d)
		}
	}
}

// value returns the value stored for key: ValueSize random bytes, which
// differ from key to key so that Pebble cannot compress them away.
func (r *benchRun) value(key string) []byte {
	var h uint64
	for i := 0; i < len(key); i++ {
		h = h*31 + uint64(key[i])
	}
	off := int(h % uint64(len(r.values)-r.cfg.ValueSize+1))
	return r.values[off : off+r.cfg.ValueSize : off+r.cfg.ValueSize]
}

// remember keeps key for later replays, in place of the oldest when full.
func (wk *benchWorker) remember(key string) {
	if len(wk.mine) < replayKeys {
		wk.mine = append(wk.mine, key)
		return
	}
	wk.mine[wk.next] = key
	wk.next = (wk.next + 1) % replayKeys
}

// progressTick is how often the progress line is rewritten on a terminal.
const progressTick = 250 * time.Millisecond

// progress reports the run's progress until done is closed: a line
// rewritten in place on a terminal (erased at the end), else a plain line
// every tenth of the duration (at least a second apart) and one at the end.
func (r *benchRun) progress(w io.Writer, tty bool, start time.Time, done <-chan struct{}) {
	every := progressTick
	if !tty {
		every = max(time.Second, (r.cfg.Duration / 10).Round(time.Second))
	}
	t := time.NewTicker(every)
	defer t.Stop()
	type sample struct {
		at  time.Time
		ops uint64
	}
	samples := []sample{{start, 0}}
	report := func(now time.Time) {
		ops := r.ops.Load()
		samples = append(samples, sample{now, ops})
		// The rate over the last second or so.
		for len(samples) > 2 && now.Sub(samples[1].at) >= time.Second {
			samples = samples[1:]
		}
		from := samples[0]
		rate := float64(ops-from.ops) / max(now.Sub(from.at).Seconds(), 1e-9)
		elapsed := now.Sub(start)
		remaining := max(r.cfg.Duration-elapsed, 0)
		line := fmt.Sprintf("%s elapsed, %s remaining, %.0f ops/s, %d ops",
			elapsed.Round(100*time.Millisecond), remaining.Round(time.Second), rate, ops)
		if tty {
			fmt.Fprintf(w, "\r%s\x1b[K", line)
		} else {
			fmt.Fprintf(w, "idem bench: %s\n", line)
		}
	}
	for {
		select {
		case <-done:
			if tty {
				fmt.Fprint(w, "\r\x1b[K")
			} else {
				report(time.Now())
			}
			return
		case now := <-t.C:
			report(now)
		}
	}
}

// writeBenchReport writes rep as two tables: latency per path, then the
// totals.
func writeBenchReport(w io.Writer, rep *benchReport) {
	secs := rep.elapsed.Seconds()
	var all histogram
	for p := range rep.hist {
		all.merge(&rep.hist[p])
	}
	fmt.Fprintln(w)
	tw := tabwriter.NewWriter(w, 0, 8, 2, ' ', tabwriter.AlignRight)
	// The table is right-aligned; the path's name is padded to stay left.
	fmt.Fprintf(tw, "%-9s\tops\tops/s\tmean\tp50\tp90\tp99\tp99.9\tmax\t\n", "path")
	row := func(name string, h *histogram) {
		fmt.Fprintf(tw, "%-9s\t%d\t%.0f\t%s\t%s\t%s\t%s\t%s\t%s\t\n", name, h.n, float64(h.n)/secs,
			formatLatency(h.mean()), formatLatency(h.quantile(0.50)), formatLatency(h.quantile(0.90)),
			formatLatency(h.quantile(0.99)), formatLatency(h.quantile(0.999)), formatLatency(h.max))
	}
	for p := range rep.hist {
		row(pathNames[p], &rep.hist[p])
	}
	row("all", &all)
	tw.Flush()
	fmt.Fprintln(w)

	news := float64(rep.hist[pathNew].n)
	perNew := func(x float64, format string) string {
		if news == 0 {
			return ""
		}
		return fmt.Sprintf(format, x/news)
	}
	tw = tabwriter.NewWriter(w, 0, 8, 2, ' ', 0)
	fmt.Fprintf(tw, "throughput\t%.0f ops/s\t(%d ops in %s, %d goroutines)\n", float64(all.n)/secs, all.n, rep.elapsed.Round(10*time.Millisecond), rep.cfg.Concurrency)
	fmt.Fprintf(tw, "fsyncs\t%d\t(%.0f/s%s)\n", rep.syncs, float64(rep.syncs)/secs, perNew(float64(rep.syncs), ", %.2f per new key"))
	fmt.Fprintf(tw, "bytes written\t%s\t(%s/s%s: log, sstables, manifest)\n", formatBytes(int64(rep.written)),
		formatBytes(int64(float64(rep.written)/secs)), perNew(float64(rep.written), ", %.0f B per new key"))
	fmt.Fprintf(tw, "disk usage\t%s\n", formatBytes(int64(rep.stats.DiskUsage)))
	fmt.Fprintf(tw, "compactions\t%d\n", rep.stats.Compactions)
	fmt.Fprintf(tw, "read amplification\t%d\n", rep.stats.ReadAmplification)
	fmt.Fprintf(tw, "waits\t%d\t(duplicates that waited for the call running fn)\n", rep.stats.Waits)
	fmt.Fprintf(tw, "errors\t%d\n", rep.errors)
	tw.Flush()
}

// formatLatency returns d with three significant digits or so, as "1.23ms".
func formatLatency(d time.Duration) string {
	switch {
	case d < time.Microsecond:
		return fmt.Sprintf("%dns", d)
	case d < time.Millisecond:
		return trimZeros(fmt.Sprintf("%.1f", float64(d)/1e3)) + "µs"
	case d < time.Second:
		return trimZeros(fmt.Sprintf("%.2f", float64(d)/1e6)) + "ms"
	}
	return trimZeros(fmt.Sprintf("%.2f", d.Seconds())) + "s"
}

func trimZeros(s string) string {
	if strings.Contains(s, ".") {
		s = strings.TrimRight(strings.TrimRight(s, "0"), ".")
	}
	return s
}
