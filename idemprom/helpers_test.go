package idemprom_test

import (
	"bytes"
	"context"
	"fmt"
	"io"
	"net/http"
	"net/http/httptest"
	"sort"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/promhttp"
	"github.com/prometheus/client_golang/prometheus/testutil/promlint"
	dto "github.com/prometheus/client_model/go"
	"github.com/prometheus/common/expfmt"
	"github.com/prometheus/common/model"
	"github.com/stretchr/testify/require"

	"github.com/idemkv/idem"
)

// serve registers cs in a new registry and serves it with promhttp over
// loopback, as a Prometheus server would scrape it. It returns the
// scrape's URL.
func serve(t testing.TB, cs ...prometheus.Collector) string {
	t.Helper()
	reg := prometheus.NewRegistry()
	reg.MustRegister(cs...)
	srv := httptest.NewServer(promhttp.HandlerFor(reg, promhttp.HandlerOpts{ErrorHandling: promhttp.HTTPErrorOnError}))
	t.Cleanup(srv.Close)
	return srv.URL
}

// scrape fetches url and returns the body, in the text format (no Accept
// header asks for another).
func scrape(t testing.TB, url string) []byte {
	t.Helper()
	resp, err := http.Get(url)
	require.NoError(t, err)
	defer resp.Body.Close()
	body, err := io.ReadAll(resp.Body)
	require.NoError(t, err)
	require.Equal(t, http.StatusOK, resp.StatusCode, "%s", body)
	return body
}

// figures are the samples of a scrape, keyed as name{label="value",...}
// with the labels sorted; a histogram gives its _count and _sum (not its
// buckets).
type figures map[string]float64

// parse parses a scrape's body.
func parse(t testing.TB, body []byte) figures {
	t.Helper()
	p := expfmt.NewTextParser(model.LegacyValidation)
	mfs, err := p.TextToMetricFamilies(bytes.NewReader(body))
	require.NoError(t, err)
	f := make(figures)
	for name, mf := range mfs {
		for _, m := range mf.GetMetric() {
			var kv []string
			for _, l := range m.GetLabel() {
				kv = append(kv, l.GetName(), l.GetValue())
			}
			switch mf.GetType() {
			case dto.MetricType_COUNTER:
				f[key(name, kv...)] = m.GetCounter().GetValue()
			case dto.MetricType_GAUGE:
				f[key(name, kv...)] = m.GetGauge().GetValue()
			case dto.MetricType_HISTOGRAM:
				f[key(name+"_count", kv...)] = float64(m.GetHistogram().GetSampleCount())
				f[key(name+"_sum", kv...)] = m.GetHistogram().GetSampleSum()
			default:
				t.Fatalf("%s: unexpected type %v", name, mf.GetType())
			}
		}
	}
	return f
}

// key returns the key of figures for a sample of name with the labels
// given as name, value pairs.
func key(name string, kv ...string) string {
	if len(kv) == 0 {
		return name
	}
	pairs := make([]string, 0, len(kv)/2)
	for i := 0; i+1 < len(kv); i += 2 {
		pairs = append(pairs, fmt.Sprintf("%s=%q", kv[i], kv[i+1]))
	}
	sort.Strings(pairs)
	return name + "{" + strings.Join(pairs, ",") + "}"
}

// of returns key for the samples of the engine labelled engine.
func of(engine string) func(name string, kv ...string) string {
	return func(name string, kv ...string) string {
		return key(name, append(kv, "engine", engine)...)
	}
}

// volatile are the figures that move by themselves: Pebble's.
func volatile(k string) bool {
	for _, name := range []string{"idem_disk_usage_bytes", "idem_compactions_total", "idem_read_amplification"} {
		if k == name || strings.HasPrefix(k, name+"{") {
			return true
		}
	}
	return false
}

// moved checks the figures of after against those of before: each in want
// moved by exactly that much, each in between moved by an amount in that
// range, the sum of a histogram moved only if its count did, and nothing
// else moved, Pebble's figures aside.
func moved(t testing.TB, before, after figures, want map[string]float64, between map[string][2]float64) {
	t.Helper()
	for k := range want {
		require.Contains(t, after, k)
	}
	for k := range between {
		require.Contains(t, after, k)
	}
	require.Len(t, after, len(before), "the set of series changed")
	for k, v := range after {
		d := v - before[k]
		switch {
		case volatile(k):
		case strings.Contains(k, "_sum"):
			countKey := strings.Replace(k, "_sum", "_count", 1)
			if after[countKey] > before[countKey] {
				// (Not Greater: a clock may read the same time twice.)
				require.GreaterOrEqual(t, d, 0.0, "%s shrank", k)
			} else {
				require.Zero(t, d, "%s moved", k)
			}
		default:
			if r, ok := between[k]; ok {
				require.True(t, d >= r[0] && d <= r[1], "%s moved by %v, not in %v", k, d, r)
				continue
			}
			require.Equal(t, want[k], d, "%s", k)
		}
	}
}

// lint runs promlint, the linter of `promtool check metrics`, on a scrape's
// body and requires no problems.
func lint(t testing.TB, body []byte) {
	t.Helper()
	problems, err := promlint.New(bytes.NewReader(body)).Lint()
	require.NoError(t, err)
	require.Empty(t, problems)
}

// waitUntil returns once cond holds, polling: the test's -timeout bounds it.
func waitUntil(cond func() bool) {
	for !cond() {
		time.Sleep(time.Millisecond)
	}
}

// holder runs Do for a key on an engine with an fn that blocks until
// release: the key is in flight meanwhile.
type holder struct {
	running, release chan struct{}
	done             chan error
}

// hold starts a Do call for key on e whose fn blocks, and returns once fn
// runs.
func hold(e *idem.Engine, key string) *holder {
	h := &holder{running: make(chan struct{}), release: make(chan struct{}), done: make(chan error, 1)}
	go func() {
		_, err := e.Do(context.Background(), key, nil, func(context.Context) ([]byte, error) {
			close(h.running)
			<-h.release
			return []byte("v"), nil
		})
		h.done <- err
	}()
	<-h.running
	return h
}

// finish lets fn return and waits for the Do call.
func (h *holder) finish(t testing.TB) {
	t.Helper()
	close(h.release)
	require.NoError(t, <-h.done)
}

// deadlineCtx is a context whose deadline passes when pass is called: a
// waiter's deadline, with no timer.
type deadlineCtx struct {
	context.Context
	done chan struct{}
	once sync.Once
}

func newDeadlineCtx() *deadlineCtx {
	return &deadlineCtx{Context: context.Background(), done: make(chan struct{})}
}

func (c *deadlineCtx) pass()                                   { c.once.Do(func() { close(c.done) }) }
func (c *deadlineCtx) Deadline() (deadline time.Time, ok bool) { return time.Time{}, false }
func (c *deadlineCtx) Done() <-chan struct{}                   { return c.done }
func (c *deadlineCtx) Err() error {
	select {
	case <-c.done:
		return context.DeadlineExceeded
	default:
		return nil
	}
}

// flakyStore is a Store of a map, whose next request of a chosen kind
// fails: the store errors that Pebble's store never returns but other
// stores (a network away) do.
type flakyStore struct {
	mu   sync.Mutex // guards the fields below
	recs map[string]idem.StoredRecord
	revs map[string]uint64
	rev  uint64
	fail string // "get", or the Write ("claim", "result", "release") that fails next
}

var errStore = fmt.Errorf("flaky store: request failed")

func newFlakyStore() *flakyStore {
	return &flakyStore{recs: make(map[string]idem.StoredRecord), revs: make(map[string]uint64)}
}

// failNext makes the next request of kind op fail.
func (s *flakyStore) failNext(op string) {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.fail = op
}

// failing reports whether the request of kind op fails; s.mu is held.
func (s *flakyStore) failing(op string) bool {
	if s.fail == op {
		s.fail = ""
		return true
	}
	return false
}

func writeName(w idem.Write) string {
	switch w {
	case idem.WriteClaim:
		return "claim"
	case idem.WriteResult:
		return "result"
	case idem.WriteRelease:
		return "release"
	}
	return "forget"
}

func (s *flakyStore) Info() idem.StoreInfo { return idem.StoreInfo{Owner: 1} }

func (s *flakyStore) Get(ctx context.Context, key string) (idem.StoredRecord, uint64, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.failing("get") {
		return idem.StoredRecord{}, 0, errStore
	}
	rec, ok := s.recs[key]
	if !ok {
		return idem.StoredRecord{}, 0, idem.ErrNotFound
	}
	return rec, s.revs[key], nil
}

func (s *flakyStore) put(key string, rec idem.StoredRecord) uint64 {
	s.rev++
	s.recs[key], s.revs[key] = rec, s.rev
	return s.rev
}

func (s *flakyStore) Create(ctx context.Context, key string, rec idem.StoredRecord, w idem.Write) (uint64, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.failing(writeName(w)) {
		return 0, errStore
	}
	if _, ok := s.recs[key]; ok {
		return 0, idem.ErrStoreConflict
	}
	return s.put(key, rec), nil
}

func (s *flakyStore) Update(ctx context.Context, key string, rec idem.StoredRecord, rev uint64, w idem.Write) (uint64, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.failing(writeName(w)) {
		return 0, errStore
	}
	if cur, ok := s.revs[key]; !ok || cur != rev {
		return 0, idem.ErrStoreConflict
	}
	return s.put(key, rec), nil
}

func (s *flakyStore) Delete(ctx context.Context, key string, rev uint64, w idem.Write) error {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.failing(writeName(w)) {
		return errStore
	}
	cur, ok := s.revs[key]
	if rev != 0 && (!ok || cur != rev) {
		return idem.ErrStoreConflict
	}
	delete(s.recs, key)
	delete(s.revs, key)
	return nil
}

func (s *flakyStore) Scan(ctx context.Context, prefix, after string, limit int, fn func(key string, rec idem.StoredRecord, err error)) (string, error) {
	s.mu.Lock()
	var keys []string
	for k := range s.recs {
		if strings.HasPrefix(k, prefix) && k > after {
			keys = append(keys, k)
		}
	}
	sort.Strings(keys)
	next := ""
	if len(keys) > limit {
		keys, next = keys[:limit], keys[limit-1]
	}
	recs := make([]idem.StoredRecord, len(keys))
	for i, k := range keys {
		recs[i] = s.recs[k]
	}
	s.mu.Unlock()
	for i, k := range keys {
		fn(k, recs[i], nil)
	}
	return next, nil
}

func (s *flakyStore) Close() error { return nil }
