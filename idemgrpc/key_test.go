package idemgrpc_test

import (
	"bytes"
	"context"
	"net/http"
	"net/http/httptest"
	"strings"
	"testing"
	"time"

	"github.com/stretchr/testify/require"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/metadata"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/types/known/structpb"
	"google.golang.org/protobuf/types/known/wrapperspb"

	"github.com/idemkv/idem"
	"github.com/idemkv/idem/idemgrpc"
	"github.com/idemkv/idem/idemhttp"
)

// AIP-155: the key is the request's request_id field. A request without it
// passes through; a method whose request has no such field is not covered.
// Responses are dynamic messages, found by name in Options.Types.
func TestFieldKey(t *testing.T) {
	e := openEngine(t, nil)
	v := newEnv(t, e, &idemgrpc.Options{Key: idemgrpc.FieldKey("request_id"), Types: orderTypes})

	r := v.create(call{}, "r1", "book")
	requireOK(t, r, "order-1/book", false)
	requireOK(t, v.create(call{}, "r1", "book"), "order-1/book", true)
	requireStatus(t, v.create(call{}, "r1", "pen").err, codes.FailedPrecondition, idemgrpc.ReasonKeyMismatch)
	requireOK(t, v.create(call{}, "r2", "pen"), "order-2/pen", false)

	// No request_id: no key.
	requireOK(t, v.create(call{}, "", "pen"), "order-3/pen", false)
	requireOK(t, v.create(call{}, "", "pen"), "order-4/pen", false)
	// Echo's request has no request_id: the metadata key is not read.
	requireOK(t, v.do(call{key: "k1", value: "a"}), "a #5", false)
	requireOK(t, v.do(call{key: "k1", value: "a"}), "a #6", false)

	// A request_id that is not a string is the server's error.
	r = v.create(call{method: methodBadKey}, "", "")
	require.Equal(t, codes.Internal, status.Code(r.err))
	require.Contains(t, status.Convert(r.err).Message(), "not a singular string")

	// With Required, a request without request_id is refused.
	v = newEnv(t, e, &idemgrpc.Options{Key: idemgrpc.FieldKey("request_id"), Types: orderTypes, Required: true})
	requireStatus(t, v.create(call{}, "", "pen").err, codes.InvalidArgument, idemgrpc.ReasonKeyRequired)
}

// A stored response whose type cannot be found is the server's error:
// Internal, logged.
func TestReplayUnknownType(t *testing.T) {
	e := openEngine(t, nil)
	v := newEnv(t, e, &idemgrpc.Options{Key: idemgrpc.FieldKey("request_id"), Types: orderTypes})
	requireOK(t, v.create(call{}, "r1", "book"), "order-1/book", false)

	var logs logBuffer
	v = newEnv(t, e, &idemgrpc.Options{Key: idemgrpc.FieldKey("request_id"), Logger: slogTo(&logs)}) // GlobalTypes
	requireStatus(t, v.create(call{}, "r1", "book").err, codes.Internal, idemgrpc.ReasonInternal)
	require.Contains(t, logs.String(), "idemgrpc.test.Order")
	require.Equal(t, int64(0), v.svc.runs.Load())
}

func TestFieldKeyPanics(t *testing.T) {
	require.Panics(t, func() { idemgrpc.FieldKey("request-id") })
	require.Panics(t, func() { idemgrpc.FieldKey("") })
}

func TestMetadataKey(t *testing.T) {
	key := idemgrpc.MetadataKey("Idempotency-Key")
	ctx := context.Background()
	k, err := key(ctx, methodEcho, nil)
	require.NoError(t, err)
	require.Empty(t, k)

	in := metadata.NewIncomingContext(ctx, metadata.Pairs("idempotency-key", "abc"))
	k, err = key(in, methodEcho, nil)
	require.NoError(t, err)
	require.Equal(t, "abc", k)

	in = metadata.NewIncomingContext(ctx, metadata.Pairs("idempotency-key", "a", "idempotency-key", "b"))
	_, err = key(in, methodEcho, nil)
	require.ErrorContains(t, err, "2 values")
}

// The default fingerprint: equal requests give equal fingerprints (map
// entries in any order), another method or request another one.
func TestRequestFingerprint(t *testing.T) {
	ctx := context.Background()
	fp := func(method string, m any) []byte {
		t.Helper()
		b, err := idemgrpc.RequestFingerprint(ctx, method, m)
		require.NoError(t, err)
		require.Len(t, b, 32)
		return b
	}
	// Maps marshal in a random order unless deterministic.
	fields := map[string]any{}
	for _, k := range []string{"a", "b", "c", "d", "e", "f", "g", "h"} {
		fields[k] = k
	}
	s1, err := structpb.NewStruct(fields)
	require.NoError(t, err)
	want := fp(methodEcho, s1)
	for range 20 {
		s2, err := structpb.NewStruct(fields)
		require.NoError(t, err)
		require.Equal(t, want, fp(methodEcho, s2))
	}
	require.NotEqual(t, want, fp(methodOther, s1))
	require.NotEqual(t, fp(methodEcho, wrapperspb.String("a")), fp(methodEcho, wrapperspb.String("b")))
	// The method's and the request's lengths keep them apart.
	require.NotEqual(t, fp("/a", wrapperspb.Bytes([]byte("b"))), fp("/ab", wrapperspb.Bytes(nil)))

	_, err = idemgrpc.RequestFingerprint(ctx, methodEcho, "not a message")
	require.Equal(t, codes.Internal, status.Code(err))
}

// An engine shared by idemhttp and idemgrpc, with the same scope and key on
// both: two records, two runs, never one's outcome for the other.
func TestSharedWithIdemhttp(t *testing.T) {
	e := openEngine(t, nil)
	v := newEnv(t, e, &idemgrpc.Options{Scope: func(context.Context) string { return "acme" }})
	httpRuns := 0
	h := idemhttp.New(e, &idemhttp.Options{Scope: func(*http.Request) string { return "acme" }, Logger: quietLogger()})(
		http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
			httpRuns++
			w.Write([]byte("http"))
		}))
	post := func() *httptest.ResponseRecorder {
		r := httptest.NewRequest(http.MethodPost, "/", bytes.NewReader([]byte("a")))
		r.Header.Set("Idempotency-Key", "k1")
		w := httptest.NewRecorder()
		h.ServeHTTP(w, r)
		return w
	}

	requireOK(t, v.do(call{key: "k1", value: "a"}), "a #1", false)
	require.Equal(t, "http", post().Body.String())
	require.Equal(t, "true", post().Header().Get(idemhttp.HeaderReplayed))
	requireOK(t, v.do(call{key: "k1", value: "a"}), "a #1", true)
	require.Equal(t, 1, httpRuns)
	require.Equal(t, int64(1), v.svc.runs.Load())

	require.NotEqual(t, idemhttp.EngineKey("acme", "k1"), idemgrpc.EngineKey("acme", "k1"))
	// The same encoding, behind the prefix.
	for _, sk := range [][2]string{{"", ""}, {"acme", "k1"}, {"a:b", "c"}, {strings.Repeat("s", 120), "k"}} {
		require.Equal(t, "grpc:"+idemhttp.EngineKey(sk[0], sk[1]), idemgrpc.EngineKey(sk[0], sk[1]))
	}
	for _, key := range []string{idemhttp.EngineKey("acme", "k1"), idemgrpc.EngineKey("acme", "k1")} {
		_, err := e.Lookup(key)
		require.NoError(t, err, key)
	}
	// No idemhttp key, whatever its scope and key, starts as a gRPC one.
	require.Regexp(t, `^[0-9]`, idemhttp.EngineKey("grpc:", "x"))
}

func TestOptionsPanic(t *testing.T) {
	e := openEngine(t, &idem.Options{})
	require.PanicsWithValue(t, "idemgrpc: UnaryServerInterceptor called with a nil *idem.Engine", func() {
		idemgrpc.UnaryServerInterceptor(nil, nil)
	})
	for name, o := range map[string]*idemgrpc.Options{
		"MaxKeyLength":  {MaxKeyLength: -1},
		"MaxStoredSize": {MaxStoredSize: 10},
		"negative":      {MaxStoredSize: -1},
	} {
		require.Panics(t, func() { idemgrpc.UnaryServerInterceptor(e, o) }, name)
	}
	// nil and zero options are the defaults; the caller's are not changed.
	require.NotNil(t, idemgrpc.UnaryServerInterceptor(e, nil))
	o := &idemgrpc.Options{Wait: -time.Second}
	idemgrpc.UnaryServerInterceptor(e, o)
	require.Equal(t, idemgrpc.Options{Wait: -time.Second}, *o)
}
