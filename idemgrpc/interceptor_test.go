package idemgrpc_test

import (
	"context"
	"errors"
	"strconv"
	"strings"
	"testing"

	"github.com/cockroachdb/pebble/v2/vfs"
	"github.com/stretchr/testify/require"
	"google.golang.org/genproto/googleapis/rpc/errdetails"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/metadata"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/proto"

	"github.com/idemkv/idem"
	"github.com/idemkv/idem/idemgrpc"
)

// The handler runs once per key; retries get its response back with the
// replay header; other keys, and calls without a key, run it.
func TestRunsOncePerKey(t *testing.T) {
	e := openEngine(t, nil)
	v := newEnv(t, e, nil)

	requireOK(t, v.do(call{key: "k1", value: "a"}), "a #1", false)
	for range 3 {
		requireOK(t, v.do(call{key: "k1", value: "a"}), "a #1", true)
	}
	requireOK(t, v.do(call{key: "k2", value: "a"}), "a #2", false)
	requireOK(t, v.do(call{value: "a"}), "a #3", false) // no key: passes through
	requireOK(t, v.do(call{value: "a"}), "a #4", false)
	require.Equal(t, int64(4), v.svc.runs.Load())

	// The record is under EngineKey.
	rec, err := e.Lookup(idemgrpc.EngineKey("", "k1"))
	require.NoError(t, err)
	require.Equal(t, idem.StateCompleted, rec.State)
}

// The outcome survives a restart of the engine and the server.
func TestReplayAfterRestart(t *testing.T) {
	dir := t.TempDir()
	e1, err := idem.Open(dir, &idem.Options{SweepInterval: -1, Logger: quietLogger()})
	require.NoError(t, err)
	v1 := newEnv(t, e1, nil)
	requireOK(t, v1.do(call{key: "k1", value: "a"}), "a #1", false)
	v1.stop()
	require.NoError(t, e1.Close())

	e2, err := idem.Open(dir, &idem.Options{SweepInterval: -1, Logger: quietLogger()})
	require.NoError(t, err)
	t.Cleanup(func() { e2.Close() })
	v2 := newEnv(t, e2, nil)
	requireOK(t, v2.do(call{key: "k1", value: "a"}), "a #1", true)
	require.Equal(t, int64(0), v2.svc.runs.Load())
}

// A key reused for another request, or another method, is refused; the
// handler does not run.
func TestKeyMismatch(t *testing.T) {
	e := openEngine(t, nil)
	v := newEnv(t, e, nil)
	requireOK(t, v.do(call{key: "k1", value: "a"}), "a #1", false)

	requireStatus(t, v.do(call{key: "k1", value: "b"}).err, codes.FailedPrecondition, idemgrpc.ReasonKeyMismatch)
	requireStatus(t, v.do(call{method: methodOther, key: "k1", value: "a"}).err, codes.FailedPrecondition, idemgrpc.ReasonKeyMismatch)
	require.Equal(t, int64(1), v.svc.runs.Load())
	requireOK(t, v.do(call{key: "k1", value: "a"}), "a #1", true)
}

// Each status code is stored or not as DefaultStore says: a stored error is
// replayed as the same status, details included; one that is not stored
// lets the next call run the handler again.
func TestStoredErrors(t *testing.T) {
	e := openEngine(t, nil)
	v := newEnv(t, e, nil)
	for c := codes.Canceled; c <= codes.Unauthenticated; c++ {
		t.Run(c.String(), func(t *testing.T) {
			key := "code-" + c.String()
			value := "code:" + strconv.Itoa(int(c))
			before := v.svc.runs.Load()
			want := status.Convert(handlerStatus(c)).Proto()

			first := v.do(call{key: key, value: value})
			require.False(t, first.replayed())
			require.True(t, proto.Equal(want, status.Convert(first.err).Proto()), "%v", first.err)

			second := v.do(call{key: key, value: value})
			require.True(t, proto.Equal(want, status.Convert(second.err).Proto()), "%v", second.err)
			stored := idemgrpc.DefaultStore(c)
			require.Equal(t, stored, second.replayed(), "replayed")
			runs := int64(2)
			if stored {
				runs = 1
			}
			require.Equal(t, runs, v.svc.runs.Load()-before, "runs")
		})
	}
	// What DefaultStore stores, for the record.
	var stored []string
	for c := codes.OK; c <= codes.Unauthenticated; c++ {
		if idemgrpc.DefaultStore(c) {
			stored = append(stored, c.String())
		}
	}
	require.Equal(t, []string{"OK", "InvalidArgument", "NotFound", "AlreadyExists", "PermissionDenied", "FailedPrecondition", "OutOfRange"}, stored)
	require.False(t, idemgrpc.DefaultStore(codes.Code(17)))
}

// Options.Store replaces DefaultStore.
func TestStoreOption(t *testing.T) {
	e := openEngine(t, nil)
	v := newEnv(t, e, &idemgrpc.Options{Store: func(c codes.Code) bool { return c == codes.Unavailable }})

	// Unavailable is stored now.
	requireHandlerCode(t, v.do(call{key: "k1", value: "code:14"}), codes.Unavailable, false)
	requireHandlerCode(t, v.do(call{key: "k1", value: "code:14"}), codes.Unavailable, true)
	require.Equal(t, int64(1), v.svc.runs.Load())

	// OK is not: every call runs the handler.
	requireOK(t, v.do(call{key: "k2", value: "a"}), "a #2", false)
	requireOK(t, v.do(call{key: "k2", value: "a"}), "a #3", false)
}

// requireHandlerCode requires r to be the handler's error with code.
func requireHandlerCode(t testing.TB, r result, c codes.Code, replayed bool) {
	t.Helper()
	require.Equal(t, c, status.Code(r.err), "%v", r.err)
	require.Equal(t, "the handler says "+c.String(), status.Convert(r.err).Message())
	require.Equal(t, replayed, r.replayed(), "replayed")
}

// A response over Options.MaxStoredSize is given whole to the call that ran
// the handler; retries are told it was not stored, and do not run it again.
func TestResponseTooLarge(t *testing.T) {
	e := openEngine(t, nil)
	v := newEnv(t, e, &idemgrpc.Options{MaxStoredSize: 64})
	r := v.do(call{key: "k1", value: "big:200"})
	require.NoError(t, r.err)
	require.Len(t, r.value, 200)

	r = v.do(call{key: "k1", value: "big:200"})
	st := requireStatus(t, r.err, codes.FailedPrecondition, idemgrpc.ReasonResponseNotStored)
	require.Contains(t, st.Message(), "too large")
	require.True(t, r.replayed())
	require.Equal(t, int64(1), v.svc.runs.Load())

	// A small one is stored as usual.
	requireOK(t, v.do(call{key: "k2", value: "big:3"}), "xxx", false)
	requireOK(t, v.do(call{key: "k2", value: "big:3"}), "xxx", true)
}

// Invalid keys are refused with InvalidArgument; the handler does not run.
func TestInvalidKeys(t *testing.T) {
	e := openEngine(t, nil)
	v := newEnv(t, e, nil)
	for name, md := range map[string][]string{
		"empty":    {idemgrpc.DefaultMetadataKey, ""},
		"too long": {idemgrpc.DefaultMetadataKey, strings.Repeat("k", idemgrpc.DefaultMaxKeyLength+1)},
		"twice":    {idemgrpc.DefaultMetadataKey, "a", idemgrpc.DefaultMetadataKey, "b"},
	} {
		t.Run(name, func(t *testing.T) {
			st := requireStatus(t, v.do(call{md: md, value: "a"}).err, codes.InvalidArgument, idemgrpc.ReasonKeyInvalid)
			require.Contains(t, st.Message(), "invalid idempotency key")
		})
	}
	require.Equal(t, int64(0), v.svc.runs.Load())

	// The longest key, and every printable character, are fine.
	requireOK(t, v.do(call{key: strings.Repeat("k", idemgrpc.DefaultMaxKeyLength), value: "a"}), "a #1", false)
	printable := make([]byte, 0, '~'-' '+1)
	for c := byte(' '); c <= '~'; c++ {
		printable = append(printable, c)
	}
	requireOK(t, v.do(call{key: string(printable), value: "a"}), "a #2", false)

	// Bytes that are not printable ASCII, which gRPC's client does not send
	// in metadata, come through a request field.
	vf := newEnv(t, e, &idemgrpc.Options{Key: idemgrpc.FieldKey("request_id"), Types: orderTypes})
	for _, key := range []string{"caf\u00e9", "a\x01b", "tab\there", strings.Repeat("r", 256)} {
		requireStatus(t, vf.create(call{}, key, "book").err, codes.InvalidArgument, idemgrpc.ReasonKeyInvalid)
	}
	require.Equal(t, int64(0), vf.svc.runs.Load())

	// Options.MaxKeyLength.
	v4 := newEnv(t, e, &idemgrpc.Options{MaxKeyLength: 4})
	requireStatus(t, v4.do(call{key: "12345", value: "a"}).err, codes.InvalidArgument, idemgrpc.ReasonKeyInvalid)
	requireOK(t, v4.do(call{key: "1234", value: "a"}), "a #1", false)
}

// With Options.Required, a call without a key is refused; Options.Methods
// leaves other methods alone, key or not.
func TestRequiredAndMethods(t *testing.T) {
	e := openEngine(t, nil)
	v := newEnv(t, e, &idemgrpc.Options{
		Required: true,
		Methods:  func(m string) bool { return m == methodEcho },
	})
	st := requireStatus(t, v.do(call{value: "a"}).err, codes.InvalidArgument, idemgrpc.ReasonKeyRequired)
	require.Contains(t, st.Message(), methodEcho)
	require.Equal(t, int64(0), v.svc.runs.Load())

	requireOK(t, v.do(call{method: methodOther, value: "a"}), "a #1", false)
	requireOK(t, v.do(call{method: methodOther, key: "k1", value: "a"}), "a #2", false)
	requireOK(t, v.do(call{method: methodOther, key: "k1", value: "a"}), "a #3", false)
	requireOK(t, v.do(call{key: "k1", value: "a"}), "a #4", false)
	requireOK(t, v.do(call{key: "k1", value: "a"}), "a #4", true)
}

// Errors of Options.Key and Options.Fingerprint: a status is returned as
// it is, any other error as InvalidArgument.
func TestKeyAndFingerprintErrors(t *testing.T) {
	e := openEngine(t, nil)
	failWith := func(err error) func(context.Context, string, any) (string, error) {
		return func(context.Context, string, any) (string, error) { return "", err }
	}
	v := newEnv(t, e, &idemgrpc.Options{Key: failWith(status.Error(codes.Unauthenticated, "who are you"))})
	r := v.do(call{value: "a"})
	require.Equal(t, codes.Unauthenticated, status.Code(r.err))
	require.Equal(t, "who are you", status.Convert(r.err).Message())

	v = newEnv(t, e, &idemgrpc.Options{Key: failWith(errors.New("no good"))})
	st := requireStatus(t, v.do(call{value: "a"}).err, codes.InvalidArgument, idemgrpc.ReasonKeyInvalid)
	require.Contains(t, st.Message(), "no good")

	fp := func(err error) func(context.Context, string, any) ([]byte, error) {
		return func(context.Context, string, any) ([]byte, error) { return nil, err }
	}
	v = newEnv(t, e, &idemgrpc.Options{Fingerprint: fp(errors.New("cannot"))})
	st = requireStatus(t, v.do(call{key: "k1", value: "a"}).err, codes.InvalidArgument, idemgrpc.ReasonFingerprint)
	require.Contains(t, st.Message(), "cannot")
	v = newEnv(t, e, &idemgrpc.Options{Fingerprint: fp(status.Error(codes.OutOfRange, "too far"))})
	require.Equal(t, codes.OutOfRange, status.Code(v.do(call{key: "k1", value: "a"}).err))
	require.Equal(t, int64(0), v.svc.runs.Load())
}

// A custom fingerprint decides what a reuse of the key is.
func TestFingerprintOption(t *testing.T) {
	e := openEngine(t, nil)
	v := newEnv(t, e, &idemgrpc.Options{
		Fingerprint: func(_ context.Context, method string, _ any) ([]byte, error) { return []byte(method), nil },
	})
	requireOK(t, v.do(call{key: "k1", value: "a"}), "a #1", false)
	requireOK(t, v.do(call{key: "k1", value: "b"}), "a #1", true) // the request does not count
	requireStatus(t, v.do(call{method: methodOther, key: "k1", value: "a"}).err, codes.FailedPrecondition, idemgrpc.ReasonKeyMismatch)
}

// Scopes keep the same key of two clients apart; a gRPC key never meets an
// idemhttp key on a shared engine, even with the same scope.
func TestScope(t *testing.T) {
	e := openEngine(t, nil)
	tenant := func(ctx context.Context) string {
		if v := metadata.ValueFromIncomingContext(ctx, "tenant"); len(v) == 1 {
			return v[0]
		}
		return ""
	}
	v := newEnv(t, e, &idemgrpc.Options{Scope: tenant})
	requireOK(t, v.do(call{key: "k1", value: "a", md: []string{"tenant", "acme"}}), "a #1", false)
	requireOK(t, v.do(call{key: "k1", value: "a", md: []string{"tenant", "initech"}}), "a #2", false)
	requireOK(t, v.do(call{key: "k1", value: "a"}), "a #3", false)
	requireOK(t, v.do(call{key: "k1", value: "a", md: []string{"tenant", "acme"}}), "a #1", true)
	// Another request in another scope is no mismatch.
	requireOK(t, v.do(call{key: "k1", value: "b", md: []string{"tenant", "hooli"}}), "b #4", false)
	// The length of the scope makes the engine key unambiguous.
	requireOK(t, v.do(call{key: "mek1", value: "a", md: []string{"tenant", "ac"}}), "a #5", false)

	for _, scope := range []string{"acme", "initech", ""} {
		_, err := e.Lookup(idemgrpc.EngineKey(scope, "k1"))
		require.NoError(t, err, scope)
	}
	require.True(t, strings.HasPrefix(idemgrpc.EngineKey("acme", "k1"), "grpc:"))
	require.Equal(t, "grpc:4:acmek1", idemgrpc.EngineKey("acme", "k1"))
}

// The engine key of a long scope is over the engine's MaxKeySize: the
// server's error, logged, and Internal for the client.
func TestScopeTooLong(t *testing.T) {
	e := openEngine(t, nil)
	var logs logBuffer
	v := newEnv(t, e, &idemgrpc.Options{
		Scope:  func(context.Context) string { return strings.Repeat("s", idem.DefaultMaxKeySize) },
		Logger: slogTo(&logs),
	})
	requireStatus(t, v.do(call{key: "k1", value: "a"}).err, codes.Internal, idemgrpc.ReasonInternal)
	require.Equal(t, int64(0), v.svc.runs.Load())
	require.Contains(t, logs.String(), "engine key is too long")
}

// A closed engine, or a read-only one, answers Unavailable; calls without a
// key still pass through.
func TestEngineUnavailable(t *testing.T) {
	dir := t.TempDir()
	e, err := idem.Open(dir, &idem.Options{SweepInterval: -1, Logger: quietLogger()})
	require.NoError(t, err)
	v := newEnv(t, e, nil)
	requireOK(t, v.do(call{key: "k1", value: "a"}), "a #1", false)
	require.NoError(t, e.Close())

	st := requireStatus(t, v.do(call{key: "k1", value: "a"}).err, codes.Unavailable, idemgrpc.ReasonUnavailable)
	require.Contains(t, st.Message(), "closed")
	require.Equal(t, 5*1e9, float64(retryDelay(st)))
	requireStatus(t, v.do(call{key: "k2", value: "a"}).err, codes.Unavailable, idemgrpc.ReasonUnavailable)
	requireOK(t, v.do(call{value: "a"}), "a #2", false)
	v.stop()

	ro, err := idem.Open(dir, &idem.Options{ReadOnly: true, Logger: quietLogger()})
	require.NoError(t, err)
	t.Cleanup(func() { ro.Close() })
	v = newEnv(t, ro, nil)
	st = requireStatus(t, v.do(call{key: "k2", value: "a"}).err, codes.Unavailable, idemgrpc.ReasonUnavailable)
	require.Contains(t, st.Message(), "read-only")
	require.Equal(t, int64(0), v.svc.runs.Load())
}

// A key whose handler was running when the process stopped: its outcome is
// unknown, the handler does not run again until the key is forgotten.
func TestInterrupted(t *testing.T) {
	fs := vfs.NewCrashableMem()
	e1, err := idem.Open("db", &idem.Options{FS: fs, SweepInterval: -1, Logger: quietLogger()})
	require.NoError(t, err)
	v1 := newEnv(t, e1, nil)
	first := v1.goDo(call{key: "k1", value: "block"})
	receive(t, v1.svc.gate.started)
	img := fs.CrashClone(vfs.CrashCloneCfg{UnsyncedDataPercent: 0}) // a crash while the handler runs
	v1.svc.gate.open()
	requireOK(t, receive(t, first), "block #1", false)
	v1.stop()
	require.NoError(t, e1.Close())

	e2 := openEngine(t, &idem.Options{FS: img})
	v2 := newEnv(t, e2, nil)
	for range 2 {
		r := v2.do(call{key: "k1", value: "block"})
		st := requireStatus(t, r.err, codes.FailedPrecondition, idemgrpc.ReasonOutcomeUnknown)
		require.Contains(t, st.Message(), "unknown")
		require.False(t, r.replayed())
	}
	requireStatus(t, v2.do(call{key: "k1", value: "other"}).err, codes.FailedPrecondition, idemgrpc.ReasonKeyMismatch)
	require.Equal(t, int64(0), v2.svc.runs.Load())

	// Reconciled by an operator: the handler may run.
	require.NoError(t, e2.Forget(idemgrpc.EngineKey("", "k1")))
	v2.svc.gate.open()
	requireOK(t, v2.do(call{key: "k1", value: "block"}), "block #1", false)
}

// A panic in the handler releases the key: a recovery interceptor before
// the interceptor answers the call, and the next call runs the handler.
func TestHandlerPanics(t *testing.T) {
	e := openEngine(t, nil)
	recovery := func(ctx context.Context, req any, _ *grpc.UnaryServerInfo, h grpc.UnaryHandler) (resp any, err error) {
		defer func() {
			if r := recover(); r != nil {
				err = status.Errorf(codes.Internal, "recovered: %v", r)
			}
		}()
		return h(ctx, req)
	}
	v := newEnv(t, e, nil, recovery)
	r := v.do(call{key: "k1", value: "panic-once"})
	require.Equal(t, codes.Internal, status.Code(r.err))
	require.Contains(t, status.Convert(r.err).Message(), "recovered: the handler panics")
	requireOK(t, v.do(call{key: "k1", value: "panic-once"}), "panic-once #2", false)
	requireOK(t, v.do(call{key: "k1", value: "panic-once"}), "panic-once #2", true)
}

// The status-code table of the package documentation: every status the
// interceptor makes carries an ErrorInfo; the retryable ones a RetryInfo.
func TestStatusDetails(t *testing.T) {
	e := openEngine(t, nil)
	v := newEnv(t, e, &idemgrpc.Options{Wait: -1})
	first := v.goDo(call{key: "k1", value: "block"})
	receive(t, v.svc.gate.started)
	st := requireStatus(t, v.do(call{key: "k1", value: "block"}).err, codes.Aborted, idemgrpc.ReasonConcurrentRequest)
	require.Equal(t, float64(1e9), float64(retryDelay(st)))
	v.svc.gate.open()
	receive(t, first)

	st = requireStatus(t, v.do(call{key: "k1", value: "x"}).err, codes.FailedPrecondition, idemgrpc.ReasonKeyMismatch)
	require.Zero(t, retryDelay(st))
	var infos int
	for _, d := range st.Details() {
		if _, ok := d.(*errdetails.ErrorInfo); ok {
			infos++
		}
	}
	require.Equal(t, 1, infos)
}
