package idemhttp_test

import (
	"context"
	"encoding/base64"
	"encoding/json"
	"errors"
	"net/http"
	"net/http/httptest"
	"net/url"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/cockroachdb/pebble/v2/vfs"
	"github.com/stretchr/testify/require"

	"github.com/idemkv/idem"
	"github.com/idemkv/idem/idemhttp"
)

// crashedEngine returns an engine opened on the image of a crash taken
// while fn ran for each of the interrupted keys, after each of the
// completed keys had stored its value; opts are the new engine's options
// (its FS is the image). The engine is closed when the test ends.
func crashedEngine(t *testing.T, interrupted []string, completed map[string]string, opts *idem.Options) *idem.Engine {
	t.Helper()
	fs := vfs.NewCrashableMem()
	e1, err := idem.Open("db", &idem.Options{FS: fs, SweepInterval: -1, Logger: quietLogger()})
	require.NoError(t, err)
	ctx := context.Background()
	for k, v := range completed {
		_, err := e1.Do(ctx, k, nil, func(context.Context) ([]byte, error) { return []byte(v), nil })
		require.NoError(t, err)
	}
	started, release := make(chan struct{}), make(chan struct{})
	var wg sync.WaitGroup
	for _, k := range interrupted {
		wg.Add(1)
		go func() {
			defer wg.Done()
			e1.Do(ctx, k, nil, func(context.Context) ([]byte, error) {
				started <- struct{}{}
				<-release
				return []byte("too late"), nil
			})
		}()
	}
	for range interrupted {
		receive(t, started)
	}
	img := fs.CrashClone(vfs.CrashCloneCfg{UnsyncedDataPercent: 0})
	close(release)
	wg.Wait()
	require.NoError(t, e1.Close())
	var o idem.Options
	if opts != nil {
		o = *opts
	}
	o.FS = img
	return openEngine(t, &o)
}

// adminDo serves a request to the admin handler h and returns the response.
func adminDo(h http.Handler, method, target string) *http.Response {
	rr := httptest.NewRecorder()
	h.ServeHTTP(rr, httptest.NewRequest(method, target, nil))
	return rr.Result()
}

// adminJSON checks that resp is a 200 JSON answer and decodes it into v,
// refusing unknown fields: the answer has exactly the documented ones.
func adminJSON(t *testing.T, resp *http.Response, v any) {
	t.Helper()
	body := bodyOf(t, resp)
	require.Equal(t, http.StatusOK, resp.StatusCode, body)
	require.Equal(t, "application/json", resp.Header.Get("Content-Type"))
	require.Equal(t, "no-store", resp.Header.Get("Cache-Control"))
	dec := json.NewDecoder(strings.NewReader(body))
	dec.DisallowUnknownFields()
	require.NoError(t, dec.Decode(v))
}

// allowAll is an Authorize that lets everything through.
func allowAll(*http.Request, bool) error { return nil }

func TestAdminAuthorize(t *testing.T) {
	e := openEngine(t, nil)

	// No Authorize: every request is refused, reads too.
	for _, h := range []http.Handler{idemhttp.AdminHandler(e, nil), idemhttp.NewAdmin(nil).Handler(e)} {
		for _, rq := range [][2]string{{"GET", "/stats"}, {"GET", "/interrupted"}, {"GET", "/records/k"}, {"POST", "/forget/k"}, {"GET", "/nowhere"}} {
			p := requireProblem(t, adminDo(h, rq[0], rq[1]), http.StatusForbidden, idemhttp.ProblemAdminForbidden)
			require.Contains(t, p.Detail, "no AdminOptions.Authorize")
		}
	}

	// AllowReads: reads go through, forget does not.
	h := idemhttp.AdminHandler(e, &idemhttp.AdminOptions{Authorize: idemhttp.AllowReads})
	require.Equal(t, http.StatusOK, adminDo(h, "GET", "/stats").StatusCode)
	p := requireProblem(t, adminDo(h, "POST", "/forget/k"), http.StatusForbidden, idemhttp.ProblemAdminForbidden)
	require.Contains(t, p.Detail, "reads only")

	// A function of the request: its error's message is the detail, and
	// write says which requests change the engine.
	var writes []string
	var mu sync.Mutex
	h = idemhttp.AdminHandler(e, &idemhttp.AdminOptions{Authorize: func(r *http.Request, write bool) error {
		mu.Lock()
		defer mu.Unlock()
		if write {
			writes = append(writes, r.Method+" "+r.URL.Path)
		}
		if r.Header.Get("Authorization") != "Bearer s3cret" {
			return errors.New("send the operator token as Authorization: Bearer")
		}
		return nil
	}})
	p = requireProblem(t, adminDo(h, "GET", "/stats"), http.StatusForbidden, idemhttp.ProblemAdminForbidden)
	require.Equal(t, "send the operator token as Authorization: Bearer", p.Detail)
	rq := httptest.NewRequest("GET", "/stats", nil)
	rq.Header.Set("Authorization", "Bearer s3cret")
	rr := httptest.NewRecorder()
	h.ServeHTTP(rr, rq)
	require.Equal(t, http.StatusOK, rr.Code)
	for _, rq := range [][2]string{{"GET", "/records/k"}, {"POST", "/forget/k"}, {"DELETE", "/records/k"}, {"PUT", "/stats"}} {
		adminDo(h, rq[0], rq[1])
	}
	require.Equal(t, []string{"POST /forget/k", "DELETE /records/k", "PUT /stats"}, writes)
}

func TestAdminRouting(t *testing.T) {
	e := openEngine(t, nil)
	h := idemhttp.AdminHandler(e, &idemhttp.AdminOptions{Authorize: allowAll})
	for _, target := range []string{"/", "/nowhere", "/stats/x", "/interrupted/x", "/forget", "/idem/stats"} {
		p := requireProblem(t, adminDo(h, "GET", target), http.StatusNotFound, idemhttp.ProblemAdminNoEndpoint)
		require.Contains(t, p.Detail, "GET stats, GET interrupted, GET records, GET records/{key}, POST forget/{key}")
	}
	for _, rq := range [][3]string{{"POST", "/stats", "GET"}, {"DELETE", "/records/k", "GET"}, {"GET", "/forget/k", "POST"}} {
		resp := adminDo(h, rq[0], rq[1])
		requireProblem(t, resp, http.StatusMethodNotAllowed, idemhttp.ProblemAdminNoEndpoint)
		require.Equal(t, rq[2], resp.Header.Get("Allow"))
	}
	for _, target := range []string{
		"/interrupted?limit=0", "/interrupted?limit=x", "/records?limit=-1", "/records?state=done",
		"/records?after=a&after_base64=YQ==", "/records?after_base64=!!", "/stats?records=maybe",
		"/forget/",
	} {
		method := "GET"
		if strings.HasPrefix(target, "/forget") {
			method = "POST"
		}
		requireProblem(t, adminDo(h, method, target), http.StatusBadRequest, idemhttp.ProblemAdminBadRequest)
	}
	// A key longer than the engine's MaxKeySize cannot be valid.
	requireProblem(t, adminDo(h, "GET", "/records/"+strings.Repeat("k", idem.DefaultMaxKeySize+1)), http.StatusBadRequest, idemhttp.ProblemAdminBadRequest)
	// Mounted under a prefix.
	mux := http.NewServeMux()
	mux.Handle("/idem/", http.StripPrefix("/idem", h))
	require.Equal(t, http.StatusOK, adminDo(mux, "GET", "/idem/stats").StatusCode)
}

func TestAdminStats(t *testing.T) {
	admin := idemhttp.NewAdmin(&idemhttp.AdminOptions{Authorize: allowAll})
	e := crashedEngine(t, []string{"int-1"}, map[string]string{"done-1": "v1"}, &idem.Options{Observer: admin})
	h := admin.Handler(e)
	ctx := context.Background()
	value := func(context.Context) ([]byte, error) { return []byte("value"), nil }
	for _, k := range []string{"a", "b", "c"} {
		_, err := e.Do(ctx, k, nil, value)
		require.NoError(t, err)
	}
	_, err := e.Do(ctx, "a", nil, value) // replayed
	require.NoError(t, err)
	_, err = e.Do(ctx, "a", []byte("other"), value) // mismatch
	require.ErrorIs(t, err, idem.ErrFingerprintMismatch)
	_, err = e.Do(ctx, "int-1", nil, value) // interrupted
	require.ErrorIs(t, err, idem.ErrInterrupted)
	_, err = e.Do(ctx, "d", nil, func(context.Context) ([]byte, error) { return nil, idem.Permanent(errors.New("declined")) })
	require.Error(t, err)

	var st idemhttp.AdminStats
	adminJSON(t, adminDo(h, "GET", "/stats"), &st)
	es := e.Stats()
	require.Equal(t, es.Calls, st.Calls)
	require.Equal(t, uint64(7), st.Calls)
	require.Equal(t, es.Executions, st.Executions)
	require.Equal(t, es.Replays, st.Replays)
	require.Equal(t, es.Mismatches, st.Mismatches)
	require.Equal(t, es.Interrupted, st.Interrupted)
	require.Equal(t, es.DiskUsage, st.DiskUsage)
	require.NotZero(t, st.DiskUsage)
	require.WithinDuration(t, time.Now(), st.Time, time.Hour)
	require.Nil(t, st.Records, "records without records=true")

	// The latencies, by outcome: one histogram per outcome that happened,
	// whose buckets add up to its count.
	require.NotNil(t, st.Latency)
	counts := map[string]uint64{}
	for name, hist := range st.Latency.Calls {
		counts[name] = hist.Count
		var n uint64
		for i, b := range hist.Buckets {
			n += b.Count
			if i > 0 {
				require.Greater(t, b.LeNs, hist.Buckets[i-1].LeNs)
			}
		}
		require.Equal(t, hist.Count, n)
	}
	require.Equal(t, map[string]uint64{"executed": 4, "replayed": 1, "mismatch": 1, "interrupted": 1}, counts)
	require.Equal(t, uint64(4), st.Latency.Fn.Count)
	require.Equal(t, uint64(4), st.Latency.Store["complete"].Count)
	require.Contains(t, st.Latency.Store, "claim")
	require.Contains(t, st.Latency.Store, "read")

	// records=true: the records by state, their size and expiry range.
	adminJSON(t, adminDo(h, "GET", "/stats?records=true"), &st)
	rs := st.Records
	require.NotNil(t, rs)
	require.Equal(t, 6, rs.Total)
	require.Equal(t, map[string]int{"completed": 4, "failed": 1, "in-flight": 0, "interrupted": 1, "corrupt": 0}, rs.ByState)
	require.Equal(t, int64(len("done-1abcdint-1")), rs.KeyBytes)
	require.Equal(t, int64(len("v1")+3*len("value")+len("declined")), rs.ValueBytes)
	require.Equal(t, "done-1", rs.OldestExpiry.Key, "the oldest: stored before the crash")
	require.True(t, rs.NewestExpiry.At.After(rs.OldestExpiry.At) || rs.NewestExpiry.At.Equal(rs.OldestExpiry.At))

	// AdminHandler has no latencies.
	var plain idemhttp.AdminStats
	adminJSON(t, adminDo(idemhttp.AdminHandler(e, &idemhttp.AdminOptions{Authorize: allowAll}), "GET", "/stats"), &plain)
	require.Nil(t, plain.Latency)
	require.Equal(t, st.Calls, plain.Calls)
}

// TestAdminStatsConcurrent reads the stats while calls run, under the race
// detector: an Admin's histograms take no lock.
func TestAdminStatsConcurrent(t *testing.T) {
	admin := idemhttp.NewAdmin(&idemhttp.AdminOptions{Authorize: allowAll})
	e := openEngine(t, &idem.Options{Observer: admin, Durability: idem.SyncNone})
	h := admin.Handler(e)
	const workers, calls = 4, 200
	var wg sync.WaitGroup
	for w := range workers {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for i := range calls {
				key := string(rune('a'+w)) + "-" + string(rune('0'+i%10))
				e.Do(context.Background(), key, nil, func(context.Context) ([]byte, error) { return []byte("v"), nil })
			}
		}()
	}
	done := make(chan struct{})
	go func() { wg.Wait(); close(done) }()
	for running := true; running; {
		select {
		case <-done:
			running = false
		default:
		}
		var st idemhttp.AdminStats
		adminJSON(t, adminDo(h, "GET", "/stats"), &st)
	}
	var st idemhttp.AdminStats
	adminJSON(t, adminDo(h, "GET", "/stats"), &st)
	var n uint64
	for _, hist := range st.Latency.Calls {
		n += hist.Count
	}
	require.Equal(t, uint64(workers*calls), n)
	require.Equal(t, uint64(workers*calls), st.Calls)
	require.Equal(t, uint64(workers*10), st.Executions)
}

// pageOf gets a page and returns its keys and cursor.
func pageOf(t *testing.T, h http.Handler, target string) ([]string, idemhttp.AdminPage) {
	t.Helper()
	var p idemhttp.AdminPage
	adminJSON(t, adminDo(h, "GET", target), &p)
	var keys []string
	for _, r := range p.Records {
		keys = append(keys, r.Key)
	}
	return keys, p
}

func TestAdminInterruptedPages(t *testing.T) {
	interrupted := []string{"k-1", "k-2", "k-3", "k-4", "k-5"}
	e := crashedEngine(t, interrupted, map[string]string{"k-0": "v", "k-25": "v", "z": "v"}, nil)
	h := idemhttp.AdminHandler(e, &idemhttp.AdminOptions{Authorize: allowAll})

	keys, p := pageOf(t, h, "/interrupted")
	require.Equal(t, interrupted, keys)
	require.Empty(t, p.Next)
	for _, r := range p.Records {
		require.Equal(t, "interrupted", r.State)
		require.NotNil(t, r.Created)
		require.NotNil(t, r.Expires)
		require.Nil(t, r.ValueSize)
	}

	// Pages of 2, each starting after the last key of the one before.
	var all []string
	target := "/interrupted?limit=2"
	for range 10 {
		keys, p := pageOf(t, h, target)
		all = append(all, keys...)
		if p.Next == "" {
			break
		}
		require.Len(t, keys, 2)
		require.Equal(t, keys[len(keys)-1], p.Next)
		target = "/interrupted?limit=2&after=" + url.QueryEscape(p.Next)
	}
	require.Equal(t, interrupted, all)

	// A page of exactly the rest has no next.
	keys, p = pageOf(t, h, "/interrupted?limit=2&after=k-3")
	require.Equal(t, []string{"k-4", "k-5"}, keys)
	require.Empty(t, p.Next)
	// After a key that is not interrupted, or has no record.
	keys, _ = pageOf(t, h, "/interrupted?after=k-25")
	require.Equal(t, []string{"k-3", "k-4", "k-5"}, keys)
	keys, _ = pageOf(t, h, "/interrupted?limit=100000&after=k-5")
	require.Empty(t, keys)
}

func TestAdminRecordsPages(t *testing.T) {
	binKey := "bin-\xff\xfe"
	e := crashedEngine(t, []string{"pay-3"}, map[string]string{"pay-1": "a", "pay-2": "bb", "ord-1": "c", binKey: "d", "pay-4": "e"}, nil)
	h := idemhttp.AdminHandler(e, &idemhttp.AdminOptions{Authorize: allowAll})

	keys, _ := pageOf(t, h, "/records")
	require.Equal(t, []string{"bin-\uFFFD\uFFFD", "ord-1", "pay-1", "pay-2", "pay-3", "pay-4"}, keys)
	keys, _ = pageOf(t, h, "/records?prefix=pay-&state=completed")
	require.Equal(t, []string{"pay-1", "pay-2", "pay-4"}, keys)
	keys, _ = pageOf(t, h, "/records?state=interrupted")
	require.Equal(t, []string{"pay-3"}, keys)
	keys, _ = pageOf(t, h, "/records?state=corrupt")
	require.Empty(t, keys)
	_, p := pageOf(t, h, "/records?prefix=pay-2")
	require.Len(t, p.Records, 1)
	require.Equal(t, 2, *p.Records[0].ValueSize)
	require.Nil(t, p.Records[0].Value, "a page has no values")

	// A key that is not UTF-8: its exact bytes in base64, and a cursor
	// that carries them.
	_, p = pageOf(t, h, "/records?limit=1")
	require.Equal(t, base64.StdEncoding.EncodeToString([]byte(binKey)), p.Records[0].KeyBase64)
	require.Equal(t, p.Records[0].KeyBase64, p.NextBase64)
	keys, _ = pageOf(t, h, "/records?limit=1&after_base64="+url.QueryEscape(p.NextBase64))
	require.Equal(t, []string{"ord-1"}, keys)
}

func TestAdminRecord(t *testing.T) {
	e := crashedEngine(t, []string{"int/1"}, map[string]string{"text": "hello\nworld", "bin": "\x00\x01\xff", ".": "dot", "a/../b": "slashes"}, nil)
	h := idemhttp.AdminHandler(e, &idemhttp.AdminOptions{Authorize: allowAll})
	get := func(key string) idemhttp.AdminRecord {
		t.Helper()
		esc := url.PathEscape(key)
		if key == "." {
			esc = "%2E"
		}
		var r idemhttp.AdminRecord
		adminJSON(t, adminDo(h, "GET", "/records/"+esc), &r)
		require.Equal(t, key, r.Key)
		return r
	}
	r := get("text")
	require.Equal(t, "completed", r.State)
	require.Equal(t, "hello\nworld", *r.Value)
	require.Equal(t, 11, *r.ValueSize)
	require.Nil(t, r.HTTP)
	r = get("bin")
	require.Nil(t, r.Value)
	require.Equal(t, "AAH/", *r.ValueBase64)
	require.Equal(t, "dot", *get(".").Value)
	require.Equal(t, "slashes", *get("a/../b").Value)
	r = get("int/1")
	require.Equal(t, "interrupted", r.State)
	require.Nil(t, r.ValueSize)

	p := requireProblem(t, adminDo(h, "GET", "/records/nope"), http.StatusNotFound, idemhttp.ProblemAdminNoRecord)
	require.Equal(t, "no record for key nope (there is none, or it has expired)", p.Detail)
}

// TestAdminHTTPRecord shows a record of the middleware as the response it
// stores.
func TestAdminHTTPRecord(t *testing.T) {
	e := openEngine(t, nil)
	app := http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		w.Header().Set("Content-Type", "application/json")
		w.Header().Set("Location", "/orders/7")
		w.WriteHeader(http.StatusCreated)
		w.Write([]byte(`{"id":7}`))
	})
	mw := wrap(e, &idemhttp.Options{Scope: func(*http.Request) string { return "acme" }}, app)
	require.Equal(t, http.StatusCreated, send(mw, req{key: "k-1", body: "{}"}).StatusCode)

	h := idemhttp.AdminHandler(e, &idemhttp.AdminOptions{Authorize: allowAll})
	var r idemhttp.AdminRecord
	adminJSON(t, adminDo(h, "GET", "/records/"+url.PathEscape(idemhttp.EngineKey("acme", "k-1"))), &r)
	require.Equal(t, "4:acmek-1", r.Key)
	require.NotNil(t, r.HTTP)
	require.Equal(t, "k-1", r.HTTP.Key)
	require.Equal(t, "acme", r.HTTP.Scope)
	require.Equal(t, http.StatusCreated, r.HTTP.Status)
	require.Equal(t, "/orders/7", r.HTTP.Header.Get("Location"))
	require.Equal(t, `{"id":7}`, *r.HTTP.Body)
	require.Nil(t, r.HTTP.BodyBase64)
}

func TestAdminForget(t *testing.T) {
	e := crashedEngine(t, []string{"int-1", "int-2"}, map[string]string{"done": "v"}, nil)
	h := idemhttp.AdminHandler(e, &idemhttp.AdminOptions{Authorize: allowAll})

	var r idemhttp.AdminRecord
	adminJSON(t, adminDo(h, "POST", "/forget/int-1"), &r)
	require.Equal(t, "int-1", r.Key)
	require.Equal(t, "interrupted", r.State)
	requireProblem(t, adminDo(h, "GET", "/records/int-1"), http.StatusNotFound, idemhttp.ProblemAdminNoRecord)
	requireProblem(t, adminDo(h, "POST", "/forget/int-1"), http.StatusNotFound, idemhttp.ProblemAdminNoRecord)
	// The next call runs fn.
	res, err := e.Do(context.Background(), "int-1", nil, func(context.Context) ([]byte, error) { return []byte("again"), nil })
	require.NoError(t, err)
	require.False(t, res.Replayed)

	// A completed key only with any_state=true.
	p := requireProblem(t, adminDo(h, "POST", "/forget/done"), http.StatusConflict, idemhttp.ProblemAdminNotInterrupted)
	require.Contains(t, p.Detail, "key done is not interrupted (the record is completed)")
	adminJSON(t, adminDo(h, "POST", "/forget/done?any_state=true"), &r)
	require.Equal(t, "completed", r.State)
	requireProblem(t, adminDo(h, "GET", "/records/done"), http.StatusNotFound, idemhttp.ProblemAdminNoRecord)

	// A key whose fn is running cannot be forgotten, even with any_state.
	started, release := make(chan struct{}), make(chan struct{})
	done := make(chan error, 1)
	go func() {
		_, err := e.Do(context.Background(), "running", nil, func(context.Context) ([]byte, error) {
			close(started)
			<-release
			return []byte("v"), nil
		})
		done <- err
	}()
	receive(t, started)
	requireProblem(t, adminDo(h, "POST", "/forget/running"), http.StatusConflict, idemhttp.ProblemInFlight)
	resp := adminDo(h, "POST", "/forget/running?any_state=1")
	requireProblem(t, resp, http.StatusConflict, idemhttp.ProblemInFlight)
	require.Equal(t, "1", resp.Header.Get("Retry-After"))
	close(release)
	require.NoError(t, receive(t, done))

	// A closed engine: 503.
	require.NoError(t, e.Close())
	resp = adminDo(h, "POST", "/forget/int-2")
	requireProblem(t, resp, http.StatusServiceUnavailable, idemhttp.ProblemUnavailable)
	require.Equal(t, "5", resp.Header.Get("Retry-After"))
	requireProblem(t, adminDo(h, "GET", "/interrupted"), http.StatusServiceUnavailable, idemhttp.ProblemUnavailable)
}
