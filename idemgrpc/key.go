package idemgrpc

import (
	"context"
	"crypto/sha256"
	"encoding/binary"
	"errors"
	"fmt"
	"strconv"

	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/metadata"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/reflect/protoreflect"
)

// enginePrefix starts every engine key of this package. No idemhttp engine
// key starts with it: those start with a decimal digit.
const enginePrefix = "grpc:"

// EngineKey returns the key under which the interceptor stores the outcome
// of a call with the client's key in scope (Options.Scope; "" without
// one): "grpc:", then what idemhttp.EngineKey(scope, key) is, the scope's
// length in decimal, a colon, the scope and the key, as "grpc:4:acme" +
// key. The scope's length makes the combination unambiguous (scope "a" with
// key "bc" and scope "ab" with key "c" never meet), and the prefix keeps it
// apart from every idemhttp key (which starts with a digit): an engine
// shared by an HTTP API and a gRPC service never gives one's outcome to the
// other, whatever their scopes and keys. Use it to find a key's record with
// the engine's Lookup, or to Forget a key whose outcome is unknown once it
// has been reconciled.
//
// (The encoding is written out here rather than imported, so that a gRPC
// server does not link package idemhttp and its net/http middleware; a test
// keeps the two equal.)
func EngineKey(scope, key string) string {
	return enginePrefix + strconv.Itoa(len(scope)) + ":" + scope + key
}

// MetadataKey returns an Options.Key that reads the key from the incoming
// metadata name (gRPC metadata keys are lower case; name is lowered as
// metadata.MD.Get does). A call without it has no key. A name sent with
// several values, or with an empty one, is an invalid key.
func MetadataKey(name string) func(ctx context.Context, method string, req any) (string, error) {
	return func(ctx context.Context, _ string, _ any) (string, error) {
		values := metadata.ValueFromIncomingContext(ctx, name)
		switch {
		case len(values) == 0:
			return "", nil
		case len(values) > 1:
			return "", fmt.Errorf("the %s metadata has %d values; send one key", name, len(values))
		case values[0] == "":
			return "", fmt.Errorf("the %s metadata is empty", name)
		}
		return values[0], nil
	}
}

// FieldKey returns an Options.Key that reads the key from the request's
// field name, a singular string field, as Google's AIP-155 request_id:
// FieldKey("request_id"). A request whose message type has no such field
// (the method has none), or whose field is empty, has no key; so has a
// request that is not a protocol buffers message. A field of that name that
// is not a singular string is the server's error: the call fails with
// Internal. FieldKey panics if name is not a valid field name.
//
// The lookup is a map access on the message's descriptor
// (protoreflect), for any message type: generated, or dynamic.
func FieldKey(name string) func(ctx context.Context, method string, req any) (string, error) {
	n := protoreflect.Name(name)
	if !n.IsValid() {
		panic(fmt.Sprintf("idemgrpc: FieldKey called with an invalid field name %q", name))
	}
	return func(_ context.Context, _ string, req any) (string, error) {
		m, ok := req.(proto.Message)
		if !ok {
			return "", nil
		}
		r := m.ProtoReflect()
		fd := r.Descriptor().Fields().ByName(n)
		if fd == nil {
			return "", nil
		}
		if fd.Kind() != protoreflect.StringKind || fd.Cardinality() == protoreflect.Repeated {
			return "", status.Errorf(codes.Internal, "idemgrpc: the field %s of %s, which FieldKey reads the idempotency key from, is not a singular string",
				name, r.Descriptor().FullName())
		}
		return r.Get(fd).String(), nil
	}
}

// checkKey returns an error if key, which is not empty, is longer than max
// bytes or has a byte that is not printable ASCII.
func checkKey(key string, max int) error {
	if len(key) > max {
		return fmt.Errorf("the key is %d bytes long, above the limit of %d", len(key), max)
	}
	for i := 0; i < len(key); i++ {
		if c := key[i]; c < ' ' || c > '~' {
			return fmt.Errorf("the key has a byte that is not printable ASCII at offset %d", i)
		}
	}
	return nil
}

// errNotProto is RequestFingerprint's error for a request that is not a
// protocol buffers message.
var errNotProto = errors.New("idemgrpc: RequestFingerprint: the request is not a protocol buffers message")

// RequestFingerprint is the default Options.Fingerprint: the SHA-256 of the
// full method name and the request marshalled with
// proto.MarshalOptions{Deterministic: true}, each preceded by its length, so
// that no two different calls share their input. A key reused for another
// method or another request fails with FailedPrecondition.
//
// Deterministic marshalling gives equal messages equal bytes (map entries
// sorted) within one binary; protobuf does not promise the same bytes
// across versions of its library or of the message's schema. So a key
// retried across a deploy that changed them may be refused as reused: a
// service that must accept such retries fingerprints selected fields
// instead. Unknown fields count: a client that sends a field the server does
// not know, then retries without it, is refused.
//
// A request that is not a protocol buffers message (a custom codec's) is
// the server's error: the call fails with Internal.
func RequestFingerprint(_ context.Context, method string, req any) ([]byte, error) {
	m, ok := req.(proto.Message)
	if !ok {
		return nil, status.Error(codes.Internal, errNotProto.Error())
	}
	buf := make([]byte, 8, 8+len(method)+8+proto.Size(m))
	binary.BigEndian.PutUint64(buf, uint64(len(method)))
	buf = append(buf, method...)
	buf = append(buf, make([]byte, 8)...) // the request's length, once known
	at := len(buf)
	buf, err := proto.MarshalOptions{Deterministic: true}.MarshalAppend(buf, m)
	if err != nil {
		return nil, fmt.Errorf("marshalling the request: %w", err)
	}
	binary.BigEndian.PutUint64(buf[at-8:at], uint64(len(buf)-at))
	sum := sha256.Sum256(buf)
	return sum[:], nil
}
