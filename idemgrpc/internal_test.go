package idemgrpc

import (
	"strings"
	"testing"
	"unicode/utf8"

	"github.com/stretchr/testify/require"
	"google.golang.org/genproto/googleapis/rpc/errdetails"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/reflect/protoregistry"
	"google.golang.org/protobuf/types/known/structpb"
	"google.golang.org/protobuf/types/known/wrapperspb"
)

// Responses and statuses come back as they were stored.
func TestRecordRoundTrip(t *testing.T) {
	s, err := structpb.NewStruct(map[string]any{"a": 1.0, "b": []any{"x", true}})
	require.NoError(t, err)
	for _, m := range []proto.Message{s, wrapperspb.String(""), wrapperspb.String("ü")} {
		b, err := encodeResponse(m, DefaultMaxStoredSize)
		require.NoError(t, err)
		d, err := decode(b, protoregistry.GlobalTypes)
		require.NoError(t, err)
		require.NoError(t, d.err)
		require.True(t, proto.Equal(m, d.resp), "%v", m)
	}

	// A nil response of a generated type is stored as an empty one.
	b, err := encodeResponse((*wrapperspb.StringValue)(nil), DefaultMaxStoredSize)
	require.NoError(t, err)
	d, err := decode(b, protoregistry.GlobalTypes)
	require.NoError(t, err)
	require.True(t, proto.Equal(&wrapperspb.StringValue{}, d.resp))

	st, err := status.New(codes.NotFound, "no such order \xff (not UTF-8)").
		WithDetails(&errdetails.ErrorInfo{Reason: "R", Domain: "d"}, &errdetails.BadRequest{})
	require.NoError(t, err)
	d, err = decode(encodeStatus(st, DefaultMaxStoredSize), protoregistry.GlobalTypes)
	require.NoError(t, err)
	require.True(t, proto.Equal(st.Proto(), status.Convert(d.err).Proto()))
}

// A status over the size limit loses its details, then the end of its
// message, on a UTF-8 boundary.
func TestRecordStatusTooLarge(t *testing.T) {
	st, err := status.New(codes.InvalidArgument, strings.Repeat("é", 100)).
		WithDetails(&errdetails.ErrorInfo{Reason: "R", Domain: strings.Repeat("d", 100)})
	require.NoError(t, err)
	for _, max := range []int{minStoredSize, minStoredSize + 1, 150, 230} {
		b := encodeStatus(st, max)
		require.LessOrEqual(t, len(b), max)
		d, err := decode(b, protoregistry.GlobalTypes)
		require.NoError(t, err)
		got := status.Convert(d.err)
		require.Equal(t, codes.InvalidArgument, got.Code())
		require.Empty(t, got.Details())
		require.True(t, utf8.ValidString(got.Message()))
		require.True(t, strings.HasPrefix(st.Message(), got.Message()))
	}
	d, err := decode(encodeStatus(st, 1000), protoregistry.GlobalTypes)
	require.NoError(t, err)
	require.Len(t, status.Convert(d.err).Details(), 1)
}

// A response over the size limit is stored as its size only.
func TestRecordResponseOmitted(t *testing.T) {
	b, err := encodeResponse(wrapperspb.String(strings.Repeat("x", 100)), minStoredSize)
	require.NoError(t, err)
	require.LessOrEqual(t, len(b), minStoredSize)
	d, err := decode(b, protoregistry.GlobalTypes)
	require.NoError(t, err)
	require.Equal(t, codes.FailedPrecondition, status.Code(d.err))
	require.Contains(t, status.Convert(d.err).Message(), "(102 bytes)")
}

// Damaged records are errors, never panics.
func TestRecordCorrupt(t *testing.T) {
	good, err := encodeResponse(wrapperspb.String("hello"), DefaultMaxStoredSize)
	require.NoError(t, err)
	bad := [][]byte{
		nil, {1}, {2, kindResponse}, {recordVersion, 9},
		{recordVersion, kindResponse, 0xff},
		{recordVersion, kindResponse, 50, 'a'},
		{recordVersion, kindStatus, 0},                 // code OK
		{recordVersion, kindStatus, 5, 10, 'a'},        // message cut
		{recordVersion, kindStatus, 5, 1, 'a', 0xff},   // details not a message
		{recordVersion, kindOmitted},                   // no size
		append(good[:len(good):len(good)], 0xff, 0xff), // trailing garbage in the message
	}
	for i := range len(good) {
		bad = append(bad, good[:i])
	}
	for _, b := range bad {
		d, err := decode(b, protoregistry.GlobalTypes)
		if err == nil {
			// A cut message may still unmarshal: then it is a message.
			require.NotNil(t, d.resp, "%x", b)
			continue
		}
		require.ErrorIs(t, err, errCorruptRecord, "%x", b)
	}
	_, err = decode([]byte{recordVersion, kindResponse, 3, 'a', '.', 'b'}, protoregistry.GlobalTypes)
	require.ErrorContains(t, err, "cannot be found")
}

func TestCheckKey(t *testing.T) {
	require.NoError(t, checkKey(" ~", 2))
	require.ErrorContains(t, checkKey("abc", 2), "above the limit of 2")
	require.ErrorContains(t, checkKey("a\x7f", 2), "offset 1")
	require.ErrorContains(t, checkKey("\x1f", 2), "offset 0")
}
