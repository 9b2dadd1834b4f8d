package idemgrpc_test

import (
	"context"
	"fmt"
	"log"
	"net"
	"os"

	"google.golang.org/genproto/googleapis/rpc/errdetails"
	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials/insecure"
	"google.golang.org/grpc/metadata"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/types/known/wrapperspb"

	"github.com/idemkv/idem"
	"github.com/idemkv/idem/idemgrpc"
)

// The interceptor on a server: a client's retry of an order gets the first
// response back instead of a second order, and a reuse of the key for
// another order is refused.
func Example() {
	dir, err := os.MkdirTemp("", "idemgrpc-example")
	if err != nil {
		log.Fatal(err)
	}
	defer os.RemoveAll(dir)
	e, err := idem.Open(dir, nil)
	if err != nil {
		log.Fatal(err)
	}
	defer e.Close()

	srv := grpc.NewServer(grpc.UnaryInterceptor(idemgrpc.UnaryServerInterceptor(e, nil))) // the one line
	orders := 0
	srv.RegisterService(ordersDesc(func(_ context.Context, item *wrapperspb.StringValue) (*wrapperspb.StringValue, error) {
		orders++
		return wrapperspb.String(fmt.Sprintf("order %d: %s", orders, item.GetValue())), nil
	}), nil)
	lis, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		log.Fatal(err)
	}
	go srv.Serve(lis)
	defer srv.Stop()

	conn, err := grpc.NewClient(lis.Addr().String(), grpc.WithTransportCredentials(insecure.NewCredentials()))
	if err != nil {
		log.Fatal(err)
	}
	defer conn.Close()
	ctx := metadata.AppendToOutgoingContext(context.Background(), "idempotency-key", "8e03978e-40d5-43e8-bc93-6894a57f9324")
	for _, item := range []string{"book", "book", "pen"} {
		var (
			order  wrapperspb.StringValue
			header metadata.MD
		)
		err := conn.Invoke(ctx, "/example.Orders/Create", wrapperspb.String(item), &order, grpc.Header(&header))
		if err != nil {
			st := status.Convert(err)
			fmt.Println(st.Code(), st.Details()[0].(*errdetails.ErrorInfo).Reason)
			continue
		}
		fmt.Printf("%s (replayed: %q)\n", order.GetValue(), header.Get(idemgrpc.HeaderReplayed))
	}
	fmt.Println("orders:", orders)
	// Output:
	// order 1: book (replayed: [])
	// order 1: book (replayed: ["true"])
	// FailedPrecondition IDEMPOTENCY_KEY_PARAMETER_MISMATCH
	// orders: 1
}

// ordersDesc describes a service example.Orders whose one method, Create,
// is create: what protoc-gen-go-grpc generates, written by hand.
func ordersDesc(create func(context.Context, *wrapperspb.StringValue) (*wrapperspb.StringValue, error)) *grpc.ServiceDesc {
	return &grpc.ServiceDesc{
		ServiceName: "example.Orders",
		HandlerType: (*any)(nil),
		Methods: []grpc.MethodDesc{{
			MethodName: "Create",
			Handler: func(srv any, ctx context.Context, dec func(any) error, icpt grpc.UnaryServerInterceptor) (any, error) {
				in := new(wrapperspb.StringValue)
				if err := dec(in); err != nil {
					return nil, err
				}
				h := func(ctx context.Context, req any) (any, error) { return create(ctx, req.(*wrapperspb.StringValue)) }
				if icpt == nil {
					return h(ctx, in)
				}
				return icpt(ctx, in, &grpc.UnaryServerInfo{Server: srv, FullMethod: "/example.Orders/Create"}, h)
			},
		}},
	}
}
