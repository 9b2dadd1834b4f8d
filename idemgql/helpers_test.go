package idemgql_test

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"log/slog"
	"net/http"
	"net/http/httptest"
	"os"
	"runtime"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/99designs/gqlgen/graphql/handler"
	"github.com/99designs/gqlgen/graphql/handler/transport"

	"github.com/idemkv/idem"
	"github.com/idemkv/idem/idemgql"
	"github.com/idemkv/idem/idemgql/internal/testgql"
)

// TestMain fails the run if goroutines outlive the tests: every engine,
// server and waiter timer must be gone by then.
func TestMain(m *testing.M) {
	before := runtime.NumGoroutine()
	code := m.Run()
	if code == 0 {
		deadline := time.Now().Add(30 * time.Second)
		for runtime.NumGoroutine() > before {
			if time.Now().After(deadline) {
				buf := make([]byte, 1<<20)
				fmt.Fprintf(os.Stderr, "goroutines leaked: %d before the tests, %d after:\n%s", before, runtime.NumGoroutine(), buf[:runtime.Stack(buf, true)])
				code = 1
				break
			}
			time.Sleep(time.Millisecond)
		}
	}
	os.Exit(code)
}

// openEngine opens an engine in a new temporary directory, closed at the
// end of the test.
func openEngine(t testing.TB) (*idem.Engine, string) {
	t.Helper()
	dir := t.TempDir()
	return openDir(t, dir, nil), dir
}

// openDir opens the engine in dir, closed at the end of the test.
func openDir(t testing.TB, dir string, o *idem.Options) *idem.Engine {
	t.Helper()
	e, err := idem.Open(dir, o)
	if err != nil {
		t.Fatalf("idem.Open: %v", err)
	}
	t.Cleanup(func() { e.Close() })
	return e
}

// adjustPayload is the Go type of inventoryAdjustQuantities.
type adjustPayload = *testgql.InventoryAdjustQuantitiesPayload

// billingPayload is the Go type of subscriptionBillingAttemptCreate.
type billingPayload = *testgql.SubscriptionBillingAttemptCreatePayload

// options returns the options registering the test schema's two
// idempotent mutations.
func options() *idemgql.Options {
	return &idemgql.Options{
		Mutations: map[string]idemgql.Field{
			"inventoryAdjustQuantities":        idemgql.Mutation[adjustPayload]{},
			"subscriptionBillingAttemptCreate": idemgql.Mutation[billingPayload]{KeyArgument: "input.idempotencyKey"},
		},
	}
}

// shop is the state behind the test resolvers: inventory quantities, and
// how many times each resolver ran.
type shop struct {
	adjustRuns  atomic.Int64
	billingRuns atomic.Int64
	pingRuns    atomic.Int64

	mu         sync.Mutex     // protects quantities and order
	quantities map[string]int // by item and location
	order      []string       // the names of the adjustments, in the order they ran

	// adjust, if set, replaces the default resolver of inventoryAdjustQuantities.
	adjust func(ctx context.Context, in testgql.InventoryAdjustQuantitiesInput) (adjustPayload, error)
}

func newShop() *shop {
	return &shop{quantities: map[string]int{}}
}

// resolver returns the ResolverRoot on s.
func (s *shop) resolver() *testgql.Resolver {
	return &testgql.Resolver{
		Adjust: func(ctx context.Context, in testgql.InventoryAdjustQuantitiesInput) (adjustPayload, error) {
			s.adjustRuns.Add(1)
			if s.adjust != nil {
				return s.adjust(ctx, in)
			}
			return s.applyAdjustment(in), nil
		},
		BillingCreate: func(ctx context.Context, in testgql.SubscriptionBillingAttemptInput) (billingPayload, error) {
			n := s.billingRuns.Add(1)
			return &testgql.SubscriptionBillingAttemptCreatePayload{
				SubscriptionBillingAttempt: &testgql.SubscriptionBillingAttempt{
					ID:                     fmt.Sprintf("gid://shopify/SubscriptionBillingAttempt/%d", n),
					IdempotencyKey:         in.IdempotencyKey,
					SubscriptionContractID: in.SubscriptionContractID,
				},
				UserErrors: []*testgql.BillingAttemptUserError{},
			}, nil
		},
		Ping: func(ctx context.Context, message *string) (*string, error) {
			s.pingRuns.Add(1)
			return message, nil
		},
		Available: func(ctx context.Context, item, location string) (int, error) {
			s.mu.Lock()
			defer s.mu.Unlock()
			return s.quantities[item+"@"+location], nil
		},
	}
}

// applyAdjustment applies in to the quantities and returns its payload.
// A change of zero is refused with a user error, as Shopify does.
func (s *shop) applyAdjustment(in testgql.InventoryAdjustQuantitiesInput) adjustPayload {
	s.mu.Lock()
	defer s.mu.Unlock()
	for i, c := range in.Changes {
		if c.Delta == 0 {
			code := testgql.InventoryAdjustQuantitiesUserErrorCodeInvalidQuantity
			return &testgql.InventoryAdjustQuantitiesPayload{UserErrors: []*testgql.InventoryAdjustQuantitiesUserError{{
				Field: []string{"input", "changes", fmt.Sprint(i), "delta"}, Message: "The quantity can't be zero.", Code: &code,
			}}}
		}
	}
	s.order = append(s.order, in.Name)
	g := &testgql.InventoryAdjustmentGroup{
		ID:        fmt.Sprintf("gid://shopify/InventoryAdjustmentGroup/%d", len(s.order)),
		Reason:    in.Reason,
		CreatedAt: time.Now(),
	}
	for _, c := range in.Changes {
		k := c.InventoryItemID + "@" + c.LocationID
		s.quantities[k] += c.Delta
		sku := "SKU-" + c.InventoryItemID
		g.Changes = append(g.Changes, &testgql.InventoryChange{
			Name: in.Name, Delta: c.Delta, QuantityAfterChange: s.quantities[k],
			Item: &testgql.InventoryItem{ID: c.InventoryItemID, Sku: &sku},
		})
	}
	return &testgql.InventoryAdjustQuantitiesPayload{InventoryAdjustmentGroup: g, UserErrors: []*testgql.InventoryAdjustQuantitiesUserError{}}
}

// server is a gqlgen server of the test schema with the extension,
// served over HTTP.
type server struct {
	url    string
	client *http.Client
	ext    *idemgql.Extension
	logs   *logBuffer
}

// newServer serves the test schema on s's resolvers, with the extension on
// e with opts (its Logger replaced by one the test can read), installed as
// the package documentation says.
func newServer(t testing.TB, e *idem.Engine, s *shop, opts *idemgql.Options) *server {
	t.Helper()
	return newServerWith(t, e, s, opts, nil)
}

// newServerWith is newServer with the handler wrapped by wrap, if not nil.
func newServerWith(t testing.TB, e *idem.Engine, s *shop, opts *idemgql.Options, wrap func(http.Handler) http.Handler) *server {
	t.Helper()
	o := *opts
	logs := &logBuffer{}
	o.Logger = slog.New(slog.NewTextHandler(logs, nil))
	ext := idemgql.New(e, &o)
	es := testgql.NewExecutableSchema(testgql.Config{
		Resolvers:  s.resolver(),
		Directives: testgql.DirectiveRoot{Idempotent: ext.Directive},
	})
	srv := handler.New(es)
	srv.AddTransport(transport.POST{})
	srv.Use(ext)
	var h http.Handler = srv
	if wrap != nil {
		h = wrap(srv)
	}
	return serve(t, h, ext, logs)
}

// serve serves h over HTTP until the end of the test.
func serve(t testing.TB, h http.Handler, ext *idemgql.Extension, logs *logBuffer) *server {
	t.Helper()
	ts := httptest.NewServer(h)
	client := &http.Client{Transport: &http.Transport{}}
	t.Cleanup(func() {
		client.CloseIdleConnections()
		ts.Close()
	})
	return &server{url: ts.URL, client: client, ext: ext, logs: logs}
}

// response is a GraphQL response.
type response struct {
	Data   json.RawMessage `json:"data"`
	Errors []gqlError      `json:"errors"`
}

type gqlError struct {
	Message    string         `json:"message"`
	Path       []any          `json:"path"`
	Extensions map[string]any `json:"extensions"`
}

// codes returns the extensions.code of the response's errors.
func (r response) codes() []string {
	var c []string
	for _, e := range r.Errors {
		s, _ := e.Extensions["code"].(string)
		c = append(c, s)
	}
	return c
}

// post sends the query with the variables, and the header fields in
// header (name, value, ...), and returns the response.
func (s *server) post(t testing.TB, query string, vars map[string]any, header ...string) response {
	t.Helper()
	b, err := json.Marshal(map[string]any{"query": query, "variables": vars})
	if err != nil {
		t.Fatal(err)
	}
	req, err := http.NewRequest(http.MethodPost, s.url, bytes.NewReader(b))
	if err != nil {
		t.Fatal(err)
	}
	req.Header.Set("Content-Type", "application/json")
	for i := 0; i+1 < len(header); i += 2 {
		req.Header.Set(header[i], header[i+1])
	}
	resp, err := s.client.Do(req)
	if err != nil {
		t.Error(err) // Error, not Fatal: post may run in a goroutine
		return response{}
	}
	defer resp.Body.Close()
	var r response
	if err := json.NewDecoder(resp.Body).Decode(&r); err != nil {
		t.Errorf("decoding the response (status %d): %v", resp.StatusCode, err)
	}
	return r
}

// mustData posts and returns the response's data, failing the test on any
// error.
func (s *server) mustData(t testing.TB, query string, vars map[string]any, header ...string) string {
	t.Helper()
	r := s.post(t, query, vars, header...)
	if len(r.Errors) != 0 {
		t.Fatalf("errors: %+v", r.Errors)
	}
	return string(r.Data)
}

// wantCode posts and checks that the response has exactly one error, with
// code, and returns the response.
func (s *server) wantCode(t testing.TB, code, query string, vars map[string]any, header ...string) response {
	t.Helper()
	r := s.post(t, query, vars, header...)
	if len(r.Errors) != 1 || r.codes()[0] != code {
		t.Fatalf("want one error with code %s, got %+v (data %s)", code, r.Errors, r.Data)
	}
	return r
}

// logBuffer collects log output, for concurrent writers.
type logBuffer struct {
	mu  sync.Mutex // protects buf
	buf bytes.Buffer
}

func (l *logBuffer) Write(p []byte) (int, error) {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.buf.Write(p)
}

func (l *logBuffer) String() string {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.buf.String()
}

// The queries of the tests.
const (
	// adjustQuery adjusts item 1 at location 1 by $delta, with key $key,
	// and selects the whole payload.
	adjustQuery = `mutation Adjust($key: String!, $delta: Int!, $name: String! = "available") {
  inventoryAdjustQuantities(input: {reason: "correction", name: $name, changes: [{inventoryItemId: "1", locationId: "1", delta: $delta}]}) @idempotent(key: $key) {
    inventoryAdjustmentGroup { id reason createdAt changes { name delta quantityAfterChange item { id sku } } }
    userErrors { field message code }
  }
}`
	// billingQuery creates a billing attempt with the key in its input.
	billingQuery = `mutation Bill($key: String!, $contract: ID!) {
  subscriptionBillingAttemptCreate(input: {subscriptionContractId: $contract, idempotencyKey: $key}) {
    subscriptionBillingAttempt { id idempotencyKey subscriptionContractId }
    userErrors { field message code }
  }
}`
)

// vars returns the variables of adjustQuery.
func vars(key string, delta int) map[string]any {
	return map[string]any{"key": key, "delta": delta}
}

// mustPanic calls f and returns the message of its panic; the test fails if
// it does not panic.
func mustPanic(t testing.TB, f func()) (msg string) {
	t.Helper()
	defer func() {
		r := recover()
		if r == nil {
			t.Fatal("no panic")
		}
		msg = fmt.Sprint(r)
	}()
	f()
	return ""
}

// contains fails the test if s does not contain every one of subs.
func contains(t testing.TB, s string, subs ...string) {
	t.Helper()
	for _, sub := range subs {
		if !strings.Contains(s, sub) {
			t.Fatalf("%q does not contain %q", s, sub)
		}
	}
}

// eventually waits for cond, for up to a minute: not a timing assumption,
// a bound on a wait for something that must happen.
func eventually(t testing.TB, cond func() bool, what string) {
	t.Helper()
	deadline := time.Now().Add(time.Minute)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("timed out waiting: %s", what)
		}
		time.Sleep(time.Millisecond)
	}
}
