package idemgql_test

import (
	"context"
	"testing"
	"time"

	"github.com/cockroachdb/pebble/v2/vfs"
	"github.com/stretchr/testify/require"
	"github.com/vektah/gqlparser/v2/gqlerror"

	"github.com/idemkv/idem"
	"github.com/idemkv/idem/idemgql"
	"github.com/idemkv/idem/idemgql/internal/testgql"
)

// blockAdjust makes s's adjustments signal entered and wait for release.
func blockAdjust(s *shop) (entered chan struct{}, release chan struct{}) {
	entered, release = make(chan struct{}, 16), make(chan struct{})
	s.adjust = func(ctx context.Context, in testgql.InventoryAdjustQuantitiesInput) (adjustPayload, error) {
		entered <- struct{}{}
		<-release
		return s.applyAdjustment(in), nil
	}
	return entered, release
}

// goPost posts in a goroutine; the response arrives on the channel.
func goPost(t *testing.T, srv *server, query string, vars map[string]any) <-chan response {
	ch := make(chan response, 1)
	go func() { ch <- srv.post(t, query, vars) }()
	return ch
}

func TestConcurrentDuplicatesWaitForTheResult(t *testing.T) {
	e, _ := openEngine(t)
	s := newShop()
	entered, release := blockAdjust(s)
	o := options()
	o.Wait = time.Hour // longer than the test: the duplicates wait for the result
	srv := newServer(t, e, s, o)

	const n = 8
	var chans []<-chan response
	chans = append(chans, goPost(t, srv, adjustQuery, vars("k", 1)))
	<-entered
	for range n - 1 {
		chans = append(chans, goPost(t, srv, adjustQuery, vars("k", 1)))
	}
	eventually(t, func() bool { return e.Stats().Waits == n-1 }, "the duplicates wait in the engine")
	close(release)

	first := <-chans[0]
	require.Empty(t, first.Errors)
	for _, ch := range chans[1:] {
		r := <-ch
		require.Empty(t, r.Errors)
		require.JSONEq(t, string(first.Data), string(r.Data))
	}
	require.Equal(t, int64(1), s.adjustRuns.Load())
}

// Calls that waited for a resolver that failed get its error; the key is
// free again.
func TestConcurrentDuplicatesShareAnError(t *testing.T) {
	e, _ := openEngine(t)
	s := newShop()
	entered, release := make(chan struct{}, 16), make(chan struct{})
	fail := true
	s.adjust = func(ctx context.Context, in testgql.InventoryAdjustQuantitiesInput) (adjustPayload, error) {
		entered <- struct{}{}
		<-release
		if fail {
			return nil, &gqlerror.Error{Message: "warehouse offline", Extensions: map[string]any{"code": "UNAVAILABLE"}}
		}
		return s.applyAdjustment(in), nil
	}
	o := options()
	o.Wait = time.Hour
	srv := newServer(t, e, s, o)

	const n = 4
	var chans []<-chan response
	chans = append(chans, goPost(t, srv, adjustQuery, vars("k", 1)))
	<-entered
	for range n - 1 {
		chans = append(chans, goPost(t, srv, adjustQuery, vars("k", 1)))
	}
	eventually(t, func() bool { return e.Stats().Waits == n-1 }, "the duplicates wait in the engine")
	close(release)
	for _, ch := range chans {
		r := <-ch
		require.Len(t, r.Errors, 1)
		require.Equal(t, "warehouse offline", r.Errors[0].Message)
		require.Equal(t, "UNAVAILABLE", r.Errors[0].Extensions["code"])
		require.Equal(t, []any{"inventoryAdjustQuantities"}, r.Errors[0].Path)
	}
	require.Equal(t, int64(1), s.adjustRuns.Load())

	fail = false
	srv.mustData(t, adjustQuery, vars("k", 1))
	<-entered
	require.Equal(t, int64(2), s.adjustRuns.Load(), "the retry ran the resolver")
}

func TestConcurrentDuplicateWithoutWaiting(t *testing.T) {
	for _, hook := range []bool{false, true} {
		name := map[bool]string{false: "GraphQL error", true: "userErrors"}[hook]
		t.Run(name, func(t *testing.T) {
			e, _ := openEngine(t)
			s := newShop()
			entered, release := blockAdjust(s)
			o := options()
			o.Wait = -1
			if hook {
				o.Mutations["inventoryAdjustQuantities"] = idemgql.Mutation[adjustPayload]{
					UserErrors: func(err *idemgql.Error) (adjustPayload, bool) {
						code := testgql.InventoryAdjustQuantitiesUserErrorCode(err.Code)
						return &testgql.InventoryAdjustQuantitiesPayload{UserErrors: []*testgql.InventoryAdjustQuantitiesUserError{{Message: err.Message, Code: &code}}}, true
					},
				}
			}
			srv := newServer(t, e, s, o)

			lead := goPost(t, srv, adjustQuery, vars("k", 1))
			<-entered
			for range 3 {
				if hook {
					got := srv.mustData(t, adjustQuery, vars("k", 1))
					contains(t, got, `"code":"IDEMPOTENCY_CONCURRENT_REQUEST"`, `"inventoryAdjustmentGroup":null`)
				} else {
					r := srv.wantCode(t, idemgql.CodeConcurrentRequest, adjustQuery, vars("k", 1))
					contains(t, r.Errors[0].Message, "still being processed")
				}
			}
			close(release)
			first := <-lead
			require.Empty(t, first.Errors)
			require.JSONEq(t, string(first.Data), srv.mustData(t, adjustQuery, vars("k", 1)), "a retry after the first call gets its result")
			require.Equal(t, int64(1), s.adjustRuns.Load())
		})
	}
}

// A duplicate waits Options.Wait, then gives up.
func TestConcurrentDuplicateGivesUpAfterWait(t *testing.T) {
	e, _ := openEngine(t)
	s := newShop()
	entered, release := blockAdjust(s)
	o := options()
	o.Wait = time.Millisecond
	srv := newServer(t, e, s, o)

	lead := goPost(t, srv, adjustQuery, vars("k", 1))
	<-entered
	// The resolver runs until the duplicate has its answer: the duplicate
	// cannot get the result.
	r := srv.wantCode(t, idemgql.CodeConcurrentRequest, adjustQuery, vars("k", 1))
	contains(t, r.Errors[0].Message, "after waiting 1ms")
	close(release)
	require.Empty(t, (<-lead).Errors)
	require.Equal(t, int64(1), s.adjustRuns.Load())
}

// A duplicate with other arguments is refused at once, even while the
// first call runs.
func TestConcurrentMismatchIsRefusedAtOnce(t *testing.T) {
	e, _ := openEngine(t)
	s := newShop()
	entered, release := blockAdjust(s)
	o := options()
	o.Wait = time.Hour
	srv := newServer(t, e, s, o)

	lead := goPost(t, srv, adjustQuery, vars("k", 1))
	<-entered
	srv.wantCode(t, idemgql.CodeKeyParameterMismatch, adjustQuery, vars("k", 2))
	close(release)
	require.Empty(t, (<-lead).Errors)
	require.Equal(t, int64(1), s.adjustRuns.Load())
}

// A key whose resolver was running when the process stopped reports its
// outcome as unknown, and the resolver does not run again until the key
// is forgotten.
func TestInterruptedKey(t *testing.T) {
	fs := vfs.NewCrashableMem()
	e := openDir(t, "db", &idem.Options{FS: fs})
	s := newShop()
	entered, release := blockAdjust(s)
	srv := newServer(t, e, s, options())
	lead := goPost(t, srv, adjustQuery, vars("k", 1))
	<-entered
	img := fs.CrashClone(vfs.CrashCloneCfg{UnsyncedDataPercent: 0}) // the machine stops while the resolver runs
	close(release)
	require.Empty(t, (<-lead).Errors)

	e2 := openDir(t, "db", &idem.Options{FS: img})
	s2 := newShop()
	srv2 := newServer(t, e2, s2, options())
	r := srv2.wantCode(t, idemgql.CodeOutcomeUnknown, adjustQuery, vars("k", 1))
	contains(t, r.Errors[0].Message, "whether it took effect is unknown")
	require.Equal(t, int64(0), s2.adjustRuns.Load())

	// Once reconciled, an operator forgets the key; the next call runs.
	n := 0
	for rec, err := range e2.Interrupted() {
		require.NoError(t, err)
		require.Equal(t, idemgql.EngineKey("", "k"), rec.Key)
		n++
	}
	require.Equal(t, 1, n)
	require.NoError(t, e2.Forget(idemgql.EngineKey("", "k")))
	srv2.mustData(t, adjustQuery, vars("k", 1))
	require.Equal(t, int64(1), s2.adjustRuns.Load())
}
