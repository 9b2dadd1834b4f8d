package idemhttp_test

import (
	"fmt"
	"io"
	"net/http"
	"net/http/httptest"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/stretchr/testify/require"

	"github.com/idemkv/idem/idemhttp"
)

// A loopback server and a real client: 200 requests over 50 keys from 20
// goroutines, each key's requests sent at the same time and retried on 409.
// The handler runs exactly once per key, and every response for a key is the
// first one.
//
// The handler of each key blocks until a duplicate of its request has been
// seen (with a negative Wait: answered 409; with Wait: arrived at the
// server), so that every key has a concurrent duplicate whatever the
// scheduling.
func TestEndToEnd(t *testing.T) {
	if testing.Short() {
		t.Skip("long test")
	}
	for _, wait := range []time.Duration{-1, time.Minute} {
		t.Run(fmt.Sprint("Wait=", wait), func(t *testing.T) {
			testEndToEnd(t, wait)
		})
	}
}

// keyState is the test's view of one key.
type keyState struct {
	runs      atomic.Int64
	arrived   atomic.Int64  // requests that reached the server
	duplicate chan struct{} // closed once a duplicate was seen
	dupOnce   sync.Once
}

func (k *keyState) sawDuplicate() { k.dupOnce.Do(func() { close(k.duplicate) }) }

// outcome is what the client saw for one request.
type outcome struct {
	status int
	header http.Header
	body   string
}

func testEndToEnd(t *testing.T, wait time.Duration) {
	const (
		keys       = 50
		perKey     = 4
		goroutines = 20
	)
	e := openEngine(t, nil)
	states := make(map[string]*keyState, keys)
	for i := range keys {
		states[fmt.Sprintf(`"key-%02d"`, i)] = &keyState{duplicate: make(chan struct{})}
	}
	var nonce atomic.Int64
	mux := http.NewServeMux()
	mux.HandleFunc("POST /orders/{id}", func(w http.ResponseWriter, r *http.Request) {
		st := states[r.Header.Get("Idempotency-Key")]
		st.runs.Add(1)
		<-st.duplicate
		body, err := io.ReadAll(r.Body)
		if err != nil {
			panic(err)
		}
		w.Header().Set("Content-Type", "application/json")
		w.Header().Set("Location", "/orders/"+r.PathValue("id"))
		w.Header().Set("X-Nonce", fmt.Sprint(nonce.Add(1)))
		w.WriteHeader(http.StatusCreated)
		fmt.Fprintf(w, `{"id":%q,"nonce":%d,"request":%q}`, r.PathValue("id"), nonce.Load(), body)
	})
	handler := idemhttp.New(e, &idemhttp.Options{Wait: wait, Logger: quietLogger()})(mux)
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		st := states[r.Header.Get("Idempotency-Key")]
		if st.arrived.Add(1) >= 2 && wait > 0 {
			st.sawDuplicate()
		}
		handler.ServeHTTP(w, r)
	}))
	defer srv.Close()
	client := srv.Client()
	client.Transport.(*http.Transport).MaxIdleConnsPerHost = goroutines

	type job struct{ key, id string }
	jobs := make(chan job)
	go func() {
		defer close(jobs)
		// A key's requests one after the other: different goroutines send
		// them at the same time.
		for i := range keys {
			for range perKey {
				jobs <- job{key: fmt.Sprintf(`"key-%02d"`, i), id: fmt.Sprint(i)}
			}
		}
	}()

	var (
		mu        sync.Mutex // protects outcomes and conflicts
		outcomes  = map[string][]outcome{}
		conflicts int
		wg        sync.WaitGroup
		errs      = make(chan error, goroutines)
	)
	for range goroutines {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for j := range jobs {
				for {
					o, err := post(client, srv.URL+"/orders/"+j.id, j.key, `{"item":"`+j.id+`"}`)
					if err != nil {
						errs <- err
						return
					}
					if o.status == http.StatusConflict {
						if o.header.Get("Retry-After") != "1" {
							errs <- fmt.Errorf("409 without Retry-After: 1: %v", o.header)
							return
						}
						mu.Lock()
						conflicts++
						mu.Unlock()
						states[j.key].sawDuplicate()
						continue // the client retries
					}
					mu.Lock()
					outcomes[j.key] = append(outcomes[j.key], o)
					mu.Unlock()
					break
				}
			}
		}()
	}
	wg.Wait()
	close(errs)
	for err := range errs {
		require.NoError(t, err)
	}

	require.Len(t, outcomes, keys)
	for key, st := range states {
		require.Equal(t, int64(1), st.runs.Load(), "handler runs for %s", key)
		got := outcomes[key]
		require.Len(t, got, perKey, key)
		var first *outcome
		for i := range got {
			if got[i].header.Get(idemhttp.HeaderReplayed) == "" {
				require.Nil(t, first, "one response per key is not a replay: %s", key)
				first = &got[i]
			}
		}
		require.NotNil(t, first, "one response per key is not a replay: %s", key)
		require.Equal(t, http.StatusCreated, first.status)
		for _, o := range got {
			require.Equal(t, first.status, o.status, key)
			require.Equal(t, first.body, o.body, key)
			h := o.header.Clone()
			h.Del(idemhttp.HeaderReplayed)
			require.Equal(t, first.header, h, key)
		}
	}
	if wait < 0 {
		require.GreaterOrEqual(t, conflicts, keys, "every key had a duplicate answered 409")
	} else {
		require.Zero(t, conflicts, "with Wait, duplicates wait")
	}
	t.Logf("409s: %d; engine: %+v", conflicts, e.Stats())
}

// post sends one request and reads the whole response.
func post(c *http.Client, url, key, body string) (outcome, error) {
	r, err := http.NewRequest(http.MethodPost, url, strings.NewReader(body))
	if err != nil {
		return outcome{}, err
	}
	r.Header.Set("Idempotency-Key", key)
	resp, err := c.Do(r)
	if err != nil {
		return outcome{}, err
	}
	defer resp.Body.Close()
	b, err := io.ReadAll(resp.Body)
	if err != nil {
		return outcome{}, err
	}
	h := resp.Header.Clone()
	h.Del("Date")
	return outcome{status: resp.StatusCode, header: h, body: string(b)}, nil
}
