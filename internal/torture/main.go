// Command torture is the worker process of idem's crash and fault tests
// (torture_test.go at the repository root). It is not a tool for users.
//
// It opens an engine on a real directory and calls Do from many goroutines
// over a key space until it is killed, fails, or has made -calls calls. Each
// fn appends its key to a side-effect log (O_APPEND, fsynced before fn
// returns): the external effect that must happen at most once per key. After
// Do returns an outcome, the worker appends key=value to an acknowledgement
// log, fsynced: the result that must never be lost. The test reads both logs
// and the engine's directory after the process is gone.
//
// Fault modes make the process fail as production processes do: errors
// injected into the WAL's writes or syncs (which Pebble treats as fatal), a
// full disk, faults while opening. With -recover, the goroutines calling Do
// recover panics, as net/http does for its handlers: a fatal Pebble error
// must stop the process all the same; should a panic be recovered instead,
// the worker closes the engine and exits 5.
//
// Exit status: 0 after -calls calls and a clean Close; 3 when Open fails; 4
// when a call returns something the contract forbids; 5 after a recovered
// panic and Close; 6 when it runs past -timeout (its goroutines on stderr);
// 2 (the Go runtime's) on a panic that stops the process.
//
// -timeout is the worker's own deadline. The test kills each worker and
// waits for it, and on Linux the kernel kills it if the test binary dies
// (Pdeathsig; see internal/testproc); elsewhere a worker whose test died
// mid-round ends at its deadline rather than running on.
package main

import (
	"bufio"
	"context"
	"errors"
	"flag"
	"fmt"
	"hash/crc32"
	"log/slog"
	"math/rand/v2"
	"os"
	"path/filepath"
	"runtime"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"time"

	"github.com/cockroachdb/pebble/v2/vfs"
	"github.com/cockroachdb/pebble/v2/vfs/errorfs"

	"github.com/idemkv/idem"
)

const (
	exitOpen      = 3
	exitContract  = 4
	exitRecovered = 5
	exitTimeout   = 6
)

type config struct {
	dir, effects, acks string
	durability         idem.Durability
	keys, hot, workers int
	calls              int64
	seed               uint64
	reconcile          bool
	recoverPanics      bool

	failWALSyncAfter  int64 // -1: off
	failWALWriteAfter int64 // -1: off
	diskQuota         int64 // -1: off
	ballast           int64
	openWriteFault    int64 // -1: off
}

func main() {
	var c config
	var durability string
	var timeout time.Duration
	flag.StringVar(&c.dir, "dir", "", "engine directory")
	flag.StringVar(&c.effects, "effects", "", "side-effect log")
	flag.StringVar(&c.acks, "acks", "", "acknowledgement log")
	flag.StringVar(&durability, "durability", "all", "all, result or none")
	flag.IntVar(&c.keys, "keys", 3000, "size of the key space")
	flag.IntVar(&c.hot, "hot", 32, "size of the hot key set that a quarter of the calls use")
	flag.IntVar(&c.workers, "workers", 16, "goroutines calling Do")
	flag.Int64Var(&c.calls, "calls", 0, "stop after this many calls, close and exit 0 (0: run until killed)")
	flag.Uint64Var(&c.seed, "seed", 1, "random seed")
	flag.BoolVar(&c.reconcile, "reconcile", true, "at start, forget the interrupted keys whose effect is not in the side-effect log")
	flag.BoolVar(&c.recoverPanics, "recover", false, "recover panics in Do's callers, then close the engine and exit 5")
	flag.Int64Var(&c.failWALSyncAfter, "fail-wal-sync-after", -1, "fail every WAL sync after this many")
	flag.Int64Var(&c.failWALWriteAfter, "fail-wal-write-after", -1, "fail every WAL write after this many")
	flag.Int64Var(&c.diskQuota, "disk-quota", -1, "bytes this process may write to the directory before writes fail with ENOSPC")
	flag.Int64Var(&c.ballast, "ballast", 0, "create a ballast file of this many bytes (counted in the quota), removed when the disk is full")
	flag.Int64Var(&c.openWriteFault, "open-write-fault", -1, "fail the n-th write operation of Open (0-based), then run normally")
	flag.DurationVar(&timeout, "timeout", 5*time.Minute, "exit with status 6 after this long, whatever the worker is doing (0: never)")
	flag.Parse()
	if timeout > 0 {
		time.AfterFunc(timeout, func() {
			buf := make([]byte, 1<<20)
			fmt.Fprintf(os.Stderr, "torture: ran past -timeout %v; goroutines:\n%s\n", timeout, buf[:runtime.Stack(buf, true)])
			os.Exit(exitTimeout)
		})
	}
	switch durability {
	case "all":
		c.durability = idem.SyncAll
	case "result":
		c.durability = idem.SyncResult
	case "none":
		c.durability = idem.SyncNone
	default:
		fatalf("unknown -durability %q", durability)
	}
	if c.dir == "" || c.effects == "" || c.acks == "" {
		fatalf("-dir, -effects and -acks are required")
	}
	run(c)
}

func fatalf(format string, args ...any) {
	fmt.Fprintf(os.Stderr, "torture: "+format+"\n", args...)
	os.Exit(1)
}

// appendLog is a log of lines, each appended with one write and fsynced.
// A line is its payload, a space and the payload's CRC-32 in hex: SIGKILL
// can cut a write short at a page boundary, and the reader (the test, and
// readKeys) skips a line whose checksum does not match. openLog ends a torn
// last line, so that the next line starts afresh.
type appendLog struct{ f *os.File }

func openLog(path string) *appendLog {
	f, err := os.OpenFile(path, os.O_RDWR|os.O_APPEND|os.O_CREATE, 0o644)
	if err != nil {
		fatalf("%v", err)
	}
	if fi, err := f.Stat(); err == nil && fi.Size() > 0 {
		last := make([]byte, 1)
		if _, err := f.ReadAt(last, fi.Size()-1); err != nil {
			fatalf("reading %s: %v", path, err)
		}
		if last[0] != '\n' {
			if _, err := f.WriteString("\n"); err != nil {
				fatalf("appending to %s: %v", path, err)
			}
		}
	}
	return &appendLog{f}
}

func (l *appendLog) add(payload string) {
	line := fmt.Sprintf("%s %08x\n", payload, crc32.ChecksumIEEE([]byte(payload)))
	if _, err := l.f.WriteString(line); err != nil {
		fatalf("appending to %s: %v", l.f.Name(), err)
	}
	if err := l.f.Sync(); err != nil {
		fatalf("syncing %s: %v", l.f.Name(), err)
	}
}

// parseLine returns a log line's payload, or false for a torn line.
func parseLine(line string) (string, bool) {
	i := strings.LastIndexByte(line, ' ')
	if i < 0 {
		return "", false
	}
	return line[:i], line[i+1:] == fmt.Sprintf("%08x", crc32.ChecksumIEEE([]byte(line[:i])))
}

// readKeys returns the keys of the side-effect log.
func readKeys(path string) map[string]bool {
	keys := map[string]bool{}
	f, err := os.Open(path)
	if errors.Is(err, os.ErrNotExist) {
		return keys
	}
	if err != nil {
		fatalf("%v", err)
	}
	defer f.Close()
	sc := bufio.NewScanner(f)
	for sc.Scan() {
		if key, ok := parseLine(sc.Text()); ok {
			keys[key] = true
		}
	}
	if err := sc.Err(); err != nil {
		fatalf("reading %s: %v", path, err)
	}
	return keys
}

var errTransient = errors.New("transient failure before any effect")

func run(c config) {
	fs := faultFS(c)
	var fault *countingInjector
	if c.openWriteFault >= 0 {
		fault = &countingInjector{match: func(op errorfs.Op) bool { return op.Kind.ReadOrWrite() == errorfs.OpIsWrite }, at: c.openWriteFault}
		fs = errorfs.Wrap(fs, fault)
	}
	e, err := idem.Open(c.dir, &idem.Options{
		FS:         fs,
		Durability: c.durability,
		Logger:     slog.New(slog.NewTextHandler(os.Stderr, &slog.HandlerOptions{Level: slog.LevelWarn})),
	})
	if fault != nil {
		fault.disarm()
		fmt.Fprintf(os.Stderr, "torture: open-write-fault %d injected: %v\n", c.openWriteFault, fault.hit.Load())
	}
	if err != nil {
		fmt.Fprintf(os.Stderr, "torture: open: %v\n", err)
		os.Exit(exitOpen)
	}
	fmt.Fprintln(os.Stderr, "torture: opened")

	if c.reconcile {
		// The operator's reconciliation: a key whose fn never acted can run
		// again; one whose effect happened stays interrupted.
		done := readKeys(c.effects)
		var forgotten int
		for r, err := range e.Interrupted() {
			if err != nil {
				fatalf("listing interrupted keys: %v", err)
			}
			if !done[r.Key] {
				if err := e.Forget(r.Key); err != nil {
					fatalf("forget %s: %v", r.Key, err)
				}
				forgotten++
			}
		}
		fmt.Fprintf(os.Stderr, "torture: reconciled, %d interrupted keys without effect forgotten\n", forgotten)
	}

	effects, acks := openLog(c.effects), openLog(c.acks)
	pid := os.Getpid()
	var (
		seq       atomic.Int64
		calls     atomic.Int64
		stop      atomic.Bool
		recovered atomic.Bool
		wg        sync.WaitGroup
	)
	for w := range c.workers {
		wg.Add(1)
		go func() {
			defer wg.Done()
			rng := rand.New(rand.NewPCG(c.seed, uint64(w)))
			for !stop.Load() {
				if c.calls > 0 && calls.Add(1) > c.calls {
					return
				}
				k := rng.IntN(c.keys)
				if rng.IntN(4) == 0 {
					k = rng.IntN(min(c.hot, c.keys))
				}
				key := fmt.Sprintf("k%05d", k)
				outcome := rng.IntN(10) // 0: transient error, 1: Permanent, else a value
				fn := func(context.Context) ([]byte, error) {
					if outcome == 0 {
						return nil, errTransient
					}
					effects.add(key)
					n := seq.Add(1)
					if outcome == 1 {
						return nil, idem.Permanent(fmt.Errorf("declined %s@%d.%d", key, pid, n))
					}
					return []byte(fmt.Sprintf("%s@%d.%d", key, pid, n)), nil
				}
				res, panicked, err := do(e, key, fn, c.recoverPanics)
				if panicked != nil {
					fmt.Fprintf(os.Stderr, "torture: recovered a panic: %v\n", panicked)
					recovered.Store(true)
					stop.Store(true)
					return
				}
				var perm *idem.PermanentError
				switch {
				case err == nil:
					acks.add(key + "=" + string(res.Value))
				case errors.As(err, &perm):
					acks.add(key + "=!" + perm.Error())
				case errors.Is(err, idem.ErrInterrupted), errors.Is(err, errTransient):
				default:
					if c.recoverPanics && (recovered.Load() || strings.Contains(err.Error(), "fatal Pebble error")) {
						// The engine failed under another goroutine: a
						// follower of its key gets an error that says so.
						fmt.Fprintf(os.Stderr, "torture: Do(%s) after a fatal error: %v\n", key, err)
						recovered.Store(true)
						stop.Store(true)
						return
					}
					fmt.Fprintf(os.Stderr, "torture: Do(%s): unexpected error: %v\n", key, err)
					os.Exit(exitContract)
				}
			}
		}()
	}
	wg.Wait()
	if recovered.Load() {
		// The documented advice after a fatal Pebble error: close and exit.
		fmt.Fprintf(os.Stderr, "torture: closing after a recovered panic: %v\n", e.Close())
		os.Exit(exitRecovered)
	}
	if err := e.Close(); err != nil {
		fatalf("close: %v", err)
	}
	fmt.Fprintf(os.Stderr, "torture: %d calls, closed\n", min(calls.Load(), c.calls))
}

// do calls Do, recovering a panic if recoverPanics.
func do(e *idem.Engine, key string, fn func(context.Context) ([]byte, error), recoverPanics bool) (res idem.Result, panicked any, err error) {
	if recoverPanics {
		defer func() {
			if r := recover(); r != nil {
				panicked = r
			}
		}()
	}
	res, err = e.Do(context.Background(), key, []byte("fp-"+key), fn)
	return res, nil, err
}

// faultFS returns the file system of the fault modes: the operating
// system's, with the WAL's writes or syncs failing after a count, or with a
// quota of bytes beyond which writes fail with ENOSPC.
func faultFS(c config) vfs.FS {
	fs := vfs.Default
	if c.diskQuota >= 0 {
		q := &quotaFS{FS: fs, capacity: c.diskQuota + c.ballast}
		fs = q
		if c.ballast > 0 {
			ballast := filepath.Join(filepath.Dir(c.dir), "BALLAST")
			f, err := q.Create(ballast, vfs.WriteCategoryUnspecified)
			if err != nil {
				fatalf("ballast: %v", err)
			}
			if _, err := f.Write(make([]byte, c.ballast)); err != nil {
				fatalf("ballast: %v", err)
			}
			f.Close()
			fs = vfs.OnDiskFull(q, func() {
				// Called with new writes blocked; the ballast is removed
				// through the inner FS, as vfs.OnDiskFull's doc says.
				err := q.Remove(ballast)
				fmt.Fprintf(os.Stderr, "torture: disk full: ballast removed (%v)\n", err)
			})
		} else {
			fs = vfs.OnDiskFull(q, func() {
				fmt.Fprintln(os.Stderr, "torture: disk full: no ballast to remove")
			})
		}
	}
	var inj []errorfs.Injector
	isWAL := func(op errorfs.Op) bool { return strings.HasSuffix(op.Path, ".log") }
	if c.failWALSyncAfter >= 0 {
		inj = append(inj, &countingInjector{after: c.failWALSyncAfter, at: -1, match: func(op errorfs.Op) bool {
			return isWAL(op) && (op.Kind == errorfs.OpFileSync || op.Kind == errorfs.OpFileSyncData || op.Kind == errorfs.OpFileSyncTo)
		}})
	}
	if c.failWALWriteAfter >= 0 {
		inj = append(inj, &countingInjector{after: c.failWALWriteAfter, at: -1, match: func(op errorfs.Op) bool {
			return isWAL(op) && (op.Kind == errorfs.OpFileWrite || op.Kind == errorfs.OpFileWriteAt)
		}})
	}
	if len(inj) > 0 {
		fs = reuseWrapFS{errorfs.Wrap(fs, errorfs.Any(inj...)), errorfs.Any(inj...)}
	}
	return fs
}

// countingInjector injects errorfs.ErrInjected into the operations that
// match: every one after the first `after` (after >= 0), or only the one
// numbered at (at >= 0, counting from 0), until disarmed.
type countingInjector struct {
	match    func(errorfs.Op) bool
	after    int64
	at       int64
	n        atomic.Int64
	hit      atomic.Int64
	disarmed atomic.Bool
}

func (c *countingInjector) String() string { return "countingInjector" }

func (c *countingInjector) disarm() { c.disarmed.Store(true) }

func (c *countingInjector) MaybeError(op errorfs.Op) error {
	if c.disarmed.Load() || !c.match(op) {
		return nil
	}
	n := c.n.Add(1) - 1
	if (c.at >= 0 && n == c.at) || (c.at < 0 && n >= c.after) {
		c.hit.Add(1)
		return errorfs.ErrInjected
	}
	return nil
}

// reuseWrapFS is errorfs's FS, whose ReuseForWrite (Pebble's WAL recycling)
// returns an unwrapped file: this one wraps it too.
type reuseWrapFS struct {
	*errorfs.FS
	inj errorfs.Injector
}

func (fs reuseWrapFS) ReuseForWrite(oldname, newname string, c vfs.DiskWriteCategory) (vfs.File, error) {
	f, err := fs.FS.ReuseForWrite(oldname, newname, c)
	if err != nil {
		return nil, err
	}
	return errorfs.WrapFile(f, fs.inj), nil
}

// quotaFS fails writes with ENOSPC once the bytes written through it (less
// those of the files it removed) would exceed capacity: a disk that fills.
type quotaFS struct {
	vfs.FS
	capacity int64
	used     atomic.Int64
}

type quotaFile struct {
	vfs.File
	fs   *quotaFS
	name string
}

func (q *quotaFS) reserve(name string, n int) error {
	if q.used.Add(int64(n)) > q.capacity {
		q.used.Add(-int64(n))
		return &os.PathError{Op: "write", Path: name, Err: syscall.ENOSPC}
	}
	return nil
}

func (q *quotaFS) wrap(name string, f vfs.File, err error) (vfs.File, error) {
	if err != nil {
		return nil, err
	}
	return &quotaFile{File: f, fs: q, name: name}, nil
}

func (q *quotaFS) Create(name string, c vfs.DiskWriteCategory) (vfs.File, error) {
	if q.used.Load() >= q.capacity {
		return nil, &os.PathError{Op: "open", Path: name, Err: syscall.ENOSPC}
	}
	f, err := q.FS.Create(name, c)
	return q.wrap(name, f, err)
}

func (q *quotaFS) ReuseForWrite(oldname, newname string, c vfs.DiskWriteCategory) (vfs.File, error) {
	f, err := q.FS.ReuseForWrite(oldname, newname, c)
	return q.wrap(newname, f, err)
}

func (q *quotaFS) OpenReadWrite(name string, c vfs.DiskWriteCategory, opts ...vfs.OpenOption) (vfs.File, error) {
	f, err := q.FS.OpenReadWrite(name, c, opts...)
	return q.wrap(name, f, err)
}

func (q *quotaFS) Remove(name string) error {
	var size int64
	if fi, err := q.FS.Stat(name); err == nil {
		size = fi.Size()
	}
	err := q.FS.Remove(name)
	if err == nil {
		q.used.Add(-size)
	}
	return err
}

func (f *quotaFile) Write(p []byte) (int, error) {
	if err := f.fs.reserve(f.name, len(p)); err != nil {
		return 0, err
	}
	return f.File.Write(p)
}

func (f *quotaFile) WriteAt(p []byte, off int64) (int, error) {
	if err := f.fs.reserve(f.name, len(p)); err != nil {
		return 0, err
	}
	return f.File.WriteAt(p, off)
}
