package cli

import (
	"encoding/json"
	"fmt"
	"net/http"
	"net/http/httptest"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/cockroachdb/pebble/v2/vfs"

	"github.com/idemkv/idem"
	"github.com/idemkv/idem/idemhttp"
)

// makeHTTPDB makes a database of idemhttp records and returns its
// directory: k-1 without a scope (201, JSON), k-2 in the scope "acme" (a
// binary body), k-big whose body was too large to store, and k-3 whose
// handler was running when the process stopped (interrupted). As makeDB, it
// is the image of a crash, taken on a crashable in-memory FS.
func makeHTTPDB(t testing.TB) string {
	t.Helper()
	mem := vfs.NewCrashableMem()
	e, err := idem.Open("db", &idem.Options{FS: mem, Now: func() time.Time { return fixtureTime }, SweepInterval: -1})
	if err != nil {
		t.Fatal(err)
	}
	started, release := make(chan struct{}), make(chan struct{})
	app := http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		switch r.Header.Get("Idempotency-Key") {
		case "k-1":
			w.Header().Set("Content-Type", "application/json")
			w.Header().Set("Location", "/orders/7")
			w.WriteHeader(http.StatusCreated)
			w.Write([]byte(`{"id":7}`))
		case "k-2":
			w.Header().Set("Content-Type", "application/octet-stream")
			w.Write([]byte{0, 1, 2, 0xff})
		case "k-big":
			w.Write([]byte(strings.Repeat("x", 100)))
		case "k-3":
			started <- struct{}{}
			<-release
		}
	})
	plain := idemhttp.New(e, nil)(app)
	acme := idemhttp.New(e, &idemhttp.Options{Scope: func(*http.Request) string { return "acme" }})(app)
	small := idemhttp.New(e, &idemhttp.Options{MaxStoredSize: 64})(app)
	send := func(h http.Handler, key string) int {
		rq := httptest.NewRequest(http.MethodPost, "/orders", strings.NewReader("{}"))
		rq.Header.Set("Idempotency-Key", key)
		w := httptest.NewRecorder()
		h.ServeHTTP(w, rq)
		return w.Code
	}
	for _, s := range []struct {
		h    http.Handler
		key  string
		want int
	}{{plain, "k-1", 201}, {acme, "k-2", 200}, {small, "k-big", 200}} {
		if got := send(s.h, s.key); got != s.want {
			t.Fatalf("request with key %s: status %d, want %d", s.key, got, s.want)
		}
	}
	var wg sync.WaitGroup
	wg.Add(1)
	go func() {
		defer wg.Done()
		send(plain, "k-3")
	}()
	<-started
	return crashImage(t, mem, e, release, &wg)
}

// TestGetHTTPRecord checks that get shows an idemhttp record as the
// response it stores, with the client's key and scope, and finds it by the
// client's key with --http and --scope.
func TestGetHTTPRecord(t *testing.T) {
	dir := makeHTTPDB(t)
	before := snapshot(t, dir)
	tail := func(r result) string { // the lines after created and expires
		lines := strings.Split(strings.TrimSuffix(r.stdout, "\n"), "\n")
		for i, l := range lines {
			if strings.HasPrefix(l, "expires:  ") {
				return strings.Join(lines[i+1:], "\n")
			}
		}
		t.Fatalf("no expires line:\n%s", r.stdout)
		return ""
	}
	// size is the size line of key's record: the length of its stored
	// value, which idemhttp's encoding decides.
	size := func(key string) string {
		t.Helper()
		e, err := idem.Open(dir, &idem.Options{ReadOnly: true})
		if err != nil {
			t.Fatal(err)
		}
		defer e.Close()
		rec, err := e.Lookup(key)
		if err != nil {
			t.Fatal(err)
		}
		return fmt.Sprintf("size:     %d bytes (the stored response, encoded)", len(rec.Value))
	}
	for _, tt := range []struct {
		args []string
		head string // the output's first lines
		tail string // its lines after the expires line
	}{
		{
			[]string{"get", dir, "0:k-1"},
			"key:      0:k-1\nhttp key: k-1 (the client's Idempotency-Key)\nscope:    (none)\nstate:    completed\n",
			size("0:k-1") + "\nstatus:   201 Created\nheader:   Content-Type: application/json\n          Location: /orders/7\nbody:     8 bytes, text:\n{\"id\":7}",
		},
		{
			[]string{"get", dir, "--http", "k-1"},
			"key:      0:k-1\nhttp key: k-1 (the client's Idempotency-Key)\n",
			size("0:k-1") + "\nstatus:   201 Created\nheader:   Content-Type: application/json\n          Location: /orders/7\nbody:     8 bytes, text:\n{\"id\":7}",
		},
		{
			[]string{"get", dir, "k-2", "--scope", "acme"},
			"key:      4:acmek-2\nhttp key: k-2 (the client's Idempotency-Key)\nscope:    acme\nstate:    completed\n",
			size("4:acmek-2") + "\nstatus:   200 OK\nheader:   Content-Type: application/octet-stream\nbody:     4 bytes, base64:\nAAEC/w==",
		},
		{
			[]string{"get", dir, "--http", "k-big"},
			"key:      0:k-big\n",
			size("0:k-big") + "\nstatus:   200 OK\nheader:   Content-Type: text/plain; charset=utf-8\nbody:     not stored: the response was over MaxStoredSize (replays carry Idempotent-Body-Omitted: true)",
		},
		{
			[]string{"get", dir, "--http", "k-3"},
			"key:      0:k-3\nhttp key: k-3 (if the idemhttp middleware wrote this record: the client's Idempotency-Key)\nscope:    (none)\nstate:    interrupted\n",
			"value:    none: fn was running when a process stopped, so its outcome is unknown.\n          Reconcile it, then: idem forget " + dir + " 0:k-3",
		},
	} {
		r := mustRun(t, exitOK, tt.args...)
		if !strings.HasPrefix(r.stdout, tt.head) {
			t.Errorf("idem %q:\n%s\nwant it to start with:\n%s", tt.args, r.stdout, tt.head)
		}
		if got := tail(r); got != tt.tail {
			t.Errorf("idem %q: ends with\n%s\nwant\n%s", tt.args, got, tt.tail)
		}
	}

	// --json adds the decoded response to the stored value.
	r := mustRun(t, exitOK, "get", dir, "--scope", "acme", "k-2", "--json")
	var j struct {
		Key         string
		ValueBase64 string `json:"value_base64"`
		HTTP        struct {
			Key, Scope string
			Status     int
			Header     http.Header
			BodyBase64 string `json:"body_base64"`
		}
	}
	if err := json.Unmarshal([]byte(r.stdout), &j); err != nil {
		t.Fatalf("get --json: %v\n%s", err, r.stdout)
	}
	if j.Key != "4:acmek-2" || j.ValueBase64 == "" || j.HTTP.Key != "k-2" || j.HTTP.Scope != "acme" || j.HTTP.Status != 200 ||
		j.HTTP.Header.Get("Content-Type") != "application/octet-stream" || j.HTTP.BodyBase64 != "AAEC/w==" {
		t.Errorf("get --json:\n%s", r.stdout)
	}
	if r := mustRun(t, exitOK, "get", dir, "--http", "k-1", "--json"); !strings.Contains(r.stdout, `"http":{"key":"k-1","scope":"","status":201,`) ||
		!strings.Contains(r.stdout, `"body":"{\"id\":7}"`) {
		t.Errorf("get --json:\n%s", r.stdout)
	}

	// The client's key alone is not the engine key: get says where it is.
	checkOneLine(t, mustRun(t, exitFailure, "get", dir, "k-1"),
		"no record for key k-1; the idemhttp middleware's record of the client key k-1 (no scope) is under 0:k-1: idem get "+dir+" --http k-1")
	checkOneLine(t, mustRun(t, exitFailure, "get", dir, "--scope", "other", "k-2"), "no record for key 5:otherk-2")
	checkUnchanged(t, dir, before, "get")
}

func TestParseEngineKey(t *testing.T) {
	for _, tt := range []struct{ scope, key string }{
		{"", "k-1"},
		{"acme", "k-1"},
		{"12:34", "5:x"},
		{"", "a quoted key with spaces"},
		{strings.Repeat("s", 123), "~"},
	} {
		scope, key, ok := idemhttp.ParseEngineKey(idemhttp.EngineKey(tt.scope, tt.key))
		if !ok || scope != tt.scope || key != tt.key {
			t.Errorf("ParseEngineKey(EngineKey(%q, %q)) = %q, %q, %v", tt.scope, tt.key, scope, key, ok)
		}
	}
	for _, k := range []string{"", "k-1", ":k", "0:", "4:acme", "5:acme", "01:ak", "+1:ak", "-1:k", "0:k\x00", "0:ké", "99999999999999999999:k"} {
		if scope, key, ok := idemhttp.ParseEngineKey(k); ok {
			t.Errorf("ParseEngineKey(%q) = %q, %q, true; want false", k, scope, key)
		}
	}
}
