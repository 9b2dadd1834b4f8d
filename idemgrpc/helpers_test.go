package idemgrpc_test

import (
	"bytes"
	"context"
	"fmt"
	"io"
	"log/slog"
	"net"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/stretchr/testify/require"
	"google.golang.org/genproto/googleapis/rpc/errdetails"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/credentials/insecure"
	"google.golang.org/grpc/metadata"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/reflect/protodesc"
	"google.golang.org/protobuf/reflect/protoreflect"
	"google.golang.org/protobuf/reflect/protoregistry"
	"google.golang.org/protobuf/types/descriptorpb"
	"google.golang.org/protobuf/types/dynamicpb"
	"google.golang.org/protobuf/types/known/wrapperspb"

	"github.com/idemkv/idem"
	"github.com/idemkv/idem/idemgrpc"
)

// hang is how long a test waits for something that must happen before it
// calls the server hung: a guard, never a timing assertion.
const hang = 30 * time.Second

// The test service, defined without protoc: a grpc.ServiceDesc by hand.
const (
	serviceName  = "idemgrpc.test.Test"
	methodEcho   = "/" + serviceName + "/Echo"
	methodOther  = "/" + serviceName + "/Other"
	methodCreate = "/" + serviceName + "/Create"
	methodBadKey = "/" + serviceName + "/BadKey"
)

// openEngine opens an engine in a new temporary directory with o (the
// defaults if nil), with the background sweeper off, and closes it when the
// test ends.
func openEngine(t testing.TB, o *idem.Options) *idem.Engine {
	t.Helper()
	var opts idem.Options
	if o != nil {
		opts = *o
	}
	if opts.SweepInterval == 0 {
		opts.SweepInterval = -1
	}
	if opts.Logger == nil {
		opts.Logger = quietLogger()
	}
	dir := "db"
	if opts.FS == nil {
		dir = t.TempDir()
	}
	e, err := idem.Open(dir, &opts)
	require.NoError(t, err)
	t.Cleanup(func() { e.Close() })
	return e
}

// slogTo returns a logger that writes text records to w.
func slogTo(w io.Writer) *slog.Logger {
	return slog.New(slog.NewTextHandler(w, nil))
}

func quietLogger() *slog.Logger {
	return slog.New(slog.NewTextHandler(io.Discard, nil))
}

// logBuffer is an io.Writer for a logger that the server's goroutines write
// to while the test reads it.
type logBuffer struct {
	mu  sync.Mutex // protects buf
	buf bytes.Buffer
}

func (b *logBuffer) Write(p []byte) (int, error) {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.buf.Write(p)
}

func (b *logBuffer) String() string {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.buf.String()
}

// gate blocks the handler calls that ask for it until it is opened.
type gate struct {
	started chan struct{} // closed when the first blocked call starts
	once    sync.Once     // closes started
	release chan struct{}
	open    func() // closes release; again does nothing
}

func newGate() *gate {
	g := &gate{started: make(chan struct{}), release: make(chan struct{})}
	g.open = sync.OnceFunc(func() { close(g.release) })
	return g
}

func (g *gate) start() { g.once.Do(func() { close(g.started) }) }

// service is the test service's implementation. It counts the runs of its
// handlers, and does what the request's value says:
//
//	"block"           wait for the gate, then answer
//	"code:N"          fail with code N, a message and an ErrorInfo detail
//	"gate:code:N"     wait for the gate, then fail with code N
//	"abandon"         on its first run, wait for the call's context to end
//	                  and return its error; then answer
//	"big:N"           answer with a value of N bytes
//	"panic-once"      panic on the first run; then answer
//	anything else     answer "<value> #<run>"
type service struct {
	runs atomic.Int64
	gate *gate
}

// echo is the handler of Echo and Other.
func (s *service) echo(ctx context.Context, req *wrapperspb.StringValue) (any, error) {
	run := s.runs.Add(1)
	v := req.GetValue()
	if rest, ok := strings.CutPrefix(v, "gate:"); ok {
		s.gate.start()
		<-s.gate.release
		v = rest
	}
	switch {
	case v == "block":
		s.gate.start()
		<-s.gate.release
	case strings.HasPrefix(v, "code:"):
		n, err := strconv.Atoi(strings.TrimPrefix(v, "code:"))
		if err != nil {
			return nil, err
		}
		return nil, handlerStatus(codes.Code(n))
	case v == "abandon" && run == 1:
		s.gate.start()
		<-ctx.Done()
		return nil, ctx.Err()
	case strings.HasPrefix(v, "big:"):
		n, err := strconv.Atoi(strings.TrimPrefix(v, "big:"))
		if err != nil {
			return nil, err
		}
		return wrapperspb.String(strings.Repeat("x", n)), nil
	case v == "panic-once" && run == 1:
		panic("the handler panics")
	}
	return wrapperspb.String(fmt.Sprintf("%s #%d", v, run)), nil
}

// handlerStatus is the status of the handler's "code:N".
func handlerStatus(c codes.Code) error {
	st, err := status.New(c, fmt.Sprintf("the handler says %v", c)).
		WithDetails(&errdetails.ErrorInfo{Reason: "HANDLER", Domain: "test", Metadata: map[string]string{"code": c.String()}})
	if err != nil {
		panic(err)
	}
	return st.Err()
}

// create is the handler of Create: AIP-155's shape, on dynamic messages.
func (s *service) create(_ context.Context, req *dynamicpb.Message) (any, error) {
	run := s.runs.Add(1)
	fields := req.Descriptor().Fields()
	order := dynamicpb.NewMessage(orderDesc)
	order.Set(orderDesc.Fields().ByName("id"), protoreflect.ValueOfString(fmt.Sprintf("order-%d", run)))
	order.Set(orderDesc.Fields().ByName("item"), req.Get(fields.ByName("item")))
	return order, nil
}

// method returns the description of the unary method name, whose requests
// newReq makes and call handles.
func method[Req proto.Message](name string, newReq func() Req, call func(context.Context, Req) (any, error)) grpc.MethodDesc {
	full := "/" + serviceName + "/" + name
	return grpc.MethodDesc{
		MethodName: name,
		Handler: func(srv any, ctx context.Context, dec func(any) error, icpt grpc.UnaryServerInterceptor) (any, error) {
			in := newReq()
			if err := dec(in); err != nil {
				return nil, err
			}
			h := func(ctx context.Context, req any) (any, error) { return call(ctx, req.(Req)) }
			if icpt == nil {
				return h(ctx, in)
			}
			return icpt(ctx, in, &grpc.UnaryServerInfo{Server: srv, FullMethod: full}, h)
		},
	}
}

// serviceDesc describes s.
func serviceDesc(s *service) *grpc.ServiceDesc {
	newCreate := func() *dynamicpb.Message { return dynamicpb.NewMessage(createDesc) }
	newBadKey := func() *dynamicpb.Message { return dynamicpb.NewMessage(badKeyDesc) }
	return &grpc.ServiceDesc{
		ServiceName: serviceName,
		HandlerType: (*any)(nil),
		Methods: []grpc.MethodDesc{
			method("Echo", func() *wrapperspb.StringValue { return new(wrapperspb.StringValue) }, s.echo),
			method("Other", func() *wrapperspb.StringValue { return new(wrapperspb.StringValue) }, s.echo),
			method("Create", newCreate, s.create),
			method("BadKey", newBadKey, s.create),
		},
	}
}

// The messages of Create, as AIP-155 has them: built at run time, with no
// generated code, and registered in orderTypes only (Options.Types).
var (
	createDesc, orderDesc, badKeyDesc protoreflect.MessageDescriptor
	orderTypes                        = new(protoregistry.Types)
)

func init() {
	str := descriptorpb.FieldDescriptorProto_TYPE_STRING.Enum()
	field := func(name string, n int32, typ *descriptorpb.FieldDescriptorProto_Type) *descriptorpb.FieldDescriptorProto {
		return &descriptorpb.FieldDescriptorProto{Name: proto.String(name), Number: proto.Int32(n), Type: typ,
			Label: descriptorpb.FieldDescriptorProto_LABEL_OPTIONAL.Enum()}
	}
	fdp := &descriptorpb.FileDescriptorProto{
		Name:    proto.String("idemgrpc_test/orders.proto"),
		Package: proto.String("idemgrpc.test"),
		Syntax:  proto.String("proto3"),
		MessageType: []*descriptorpb.DescriptorProto{
			{Name: proto.String("CreateOrderRequest"), Field: []*descriptorpb.FieldDescriptorProto{
				field("request_id", 1, str), field("item", 2, str)}},
			{Name: proto.String("Order"), Field: []*descriptorpb.FieldDescriptorProto{
				field("id", 1, str), field("item", 2, str)}},
			{Name: proto.String("BadKeyRequest"), Field: []*descriptorpb.FieldDescriptorProto{
				field("request_id", 1, descriptorpb.FieldDescriptorProto_TYPE_INT64.Enum()), field("item", 2, str)}},
		},
	}
	fd, err := protodesc.NewFile(fdp, nil)
	if err != nil {
		panic(err)
	}
	msgs := fd.Messages()
	createDesc, orderDesc, badKeyDesc = msgs.ByName("CreateOrderRequest"), msgs.ByName("Order"), msgs.ByName("BadKeyRequest")
	for i := range msgs.Len() {
		if err := orderTypes.RegisterMessage(dynamicpb.NewMessageType(msgs.Get(i))); err != nil {
			panic(err)
		}
	}
}

// newCreate returns a CreateOrderRequest.
func newCreate(requestID, item string) *dynamicpb.Message {
	m := dynamicpb.NewMessage(createDesc)
	m.Set(createDesc.Fields().ByName("request_id"), protoreflect.ValueOfString(requestID))
	m.Set(createDesc.Fields().ByName("item"), protoreflect.ValueOfString(item))
	return m
}

// env is a test service served over loopback with the interceptor.
type env struct {
	svc  *service
	conn *grpc.ClientConn
	stop func() // stops the server and closes the client; again does nothing
}

// newEnv serves the test service on 127.0.0.1 with the interceptor on e
// with o (a quiet logger unless o has one), after the interceptors before,
// and returns a client connected to it. Everything is stopped when the test
// ends, before e is closed if e was opened first: the gate is opened, the
// client closed, the server stopped, and its handlers waited for.
func newEnv(t testing.TB, e *idem.Engine, o *idemgrpc.Options, before ...grpc.UnaryServerInterceptor) *env {
	t.Helper()
	var opts idemgrpc.Options
	if o != nil {
		opts = *o
	}
	if opts.Logger == nil {
		opts.Logger = quietLogger()
	}
	icpts := append(before[:len(before):len(before)], idemgrpc.UnaryServerInterceptor(e, &opts))
	return serve(t, grpc.ChainUnaryInterceptor(icpts...))
}

// serve serves the test service with the server options sopts.
func serve(t testing.TB, sopts ...grpc.ServerOption) *env {
	t.Helper()
	lis, err := net.Listen("tcp", "127.0.0.1:0")
	require.NoError(t, err)
	srv := grpc.NewServer(append(sopts, grpc.WaitForHandlers(true))...)
	svc := &service{gate: newGate()}
	srv.RegisterService(serviceDesc(svc), nil)
	served := make(chan error, 1)
	go func() { served <- srv.Serve(lis) }()
	conn, err := grpc.NewClient(lis.Addr().String(), grpc.WithTransportCredentials(insecure.NewCredentials()))
	if err != nil {
		srv.Stop()
		require.NoError(t, err)
	}
	v := &env{svc: svc, conn: conn}
	v.stop = sync.OnceFunc(func() {
		svc.gate.open()
		conn.Close()
		srv.Stop()
		<-served
	})
	t.Cleanup(v.stop)
	return v
}

// call is one call of the test service's Echo (or another method of the
// same types).
type call struct {
	method string // methodEcho if ""
	key    string // the idempotency-key metadata, none if ""
	value  string
	md     []string // more metadata, as pairs
	ctx    context.Context
}

// result is what a call returned.
type result struct {
	value  string // the response's
	header metadata.MD
	err    error
}

func (r result) replayed() bool { return r.header.Get(idemgrpc.HeaderReplayed) != nil }

// do makes the call c.
func (v *env) do(c call) result {
	ctx := c.ctx
	if ctx == nil {
		// A guard against a hang, not a timing assertion.
		var cancel context.CancelFunc
		ctx, cancel = context.WithTimeout(context.Background(), hang)
		defer cancel()
	}
	md := append([]string(nil), c.md...)
	if c.key != "" {
		md = append(md, idemgrpc.DefaultMetadataKey, c.key)
	}
	if len(md) > 0 {
		ctx = metadata.AppendToOutgoingContext(ctx, md...)
	}
	m := c.method
	if m == "" {
		m = methodEcho
	}
	var (
		resp   wrapperspb.StringValue
		header metadata.MD
	)
	err := v.conn.Invoke(ctx, m, wrapperspb.String(c.value), &resp, grpc.Header(&header))
	return result{value: resp.GetValue(), header: header, err: err}
}

// create calls Create (or another method of its types) for item with the
// request ID; the result's value is the order's "<id>/<item>".
func (v *env) create(c call, requestID, item string) result {
	ctx := c.ctx
	if ctx == nil {
		var cancel context.CancelFunc
		ctx, cancel = context.WithTimeout(context.Background(), hang)
		defer cancel()
	}
	m := c.method
	if m == "" {
		m = methodCreate
	}
	if c.key != "" {
		ctx = metadata.AppendToOutgoingContext(ctx, idemgrpc.DefaultMetadataKey, c.key)
	}
	var header metadata.MD
	resp := dynamicpb.NewMessage(orderDesc)
	req := newCreate(requestID, item)
	if m == methodBadKey {
		req = dynamicpb.NewMessage(badKeyDesc)
		req.Set(badKeyDesc.Fields().ByName("request_id"), protoreflect.ValueOfInt64(42))
	}
	err := v.conn.Invoke(ctx, m, req, resp, grpc.Header(&header))
	fields := orderDesc.Fields()
	value := resp.Get(fields.ByName("id")).String() + "/" + resp.Get(fields.ByName("item")).String()
	return result{value: value, header: header, err: err}
}

// goDo makes the call c in a goroutine of its own.
func (v *env) goDo(c call) <-chan result {
	ch := make(chan result, 1)
	go func() { ch <- v.do(c) }()
	return ch
}

// receive returns the value of ch, failing t if none comes.
func receive[T any](t testing.TB, ch <-chan T) T {
	t.Helper()
	select {
	case v := <-ch:
		return v
	case <-time.After(hang):
		t.Fatal("hung: nothing received")
		panic("unreachable")
	}
}

// eventually waits until cond holds.
func eventually(t testing.TB, cond func() bool, msg string) {
	t.Helper()
	require.Eventually(t, cond, hang, time.Millisecond, msg)
}

// requireOK requires r to be a response with the value, replayed or not.
func requireOK(t testing.TB, r result, value string, replayed bool) {
	t.Helper()
	require.NoError(t, r.err)
	require.Equal(t, value, r.value)
	require.Equal(t, replayed, r.replayed(), "replayed")
}

// requireStatus requires err to be a status of the interceptor's with code
// and reason, and returns it.
func requireStatus(t testing.TB, err error, code codes.Code, reason string) *status.Status {
	t.Helper()
	st, ok := status.FromError(err)
	require.True(t, ok, "not a status: %v", err)
	require.Equal(t, code, st.Code(), "%v", st)
	var info *errdetails.ErrorInfo
	for _, d := range st.Details() {
		if ei, ok := d.(*errdetails.ErrorInfo); ok {
			info = ei
		}
	}
	require.NotNil(t, info, "no ErrorInfo in %v", st)
	require.Equal(t, idemgrpc.ErrorDomain, info.Domain)
	require.Equal(t, reason, info.Reason)
	return st
}

// retryDelay returns the delay of st's RetryInfo detail, or 0.
func retryDelay(st *status.Status) time.Duration {
	for _, d := range st.Details() {
		if ri, ok := d.(*errdetails.RetryInfo); ok {
			return ri.GetRetryDelay().AsDuration()
		}
	}
	return 0
}
