package idemgrpc

import (
	"encoding/binary"
	"errors"
	"fmt"
	"unicode/utf8"

	spb "google.golang.org/genproto/googleapis/rpc/status"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/reflect/protoreflect"
	"google.golang.org/protobuf/reflect/protoregistry"
)

// A stored outcome is a record of this versioned binary encoding, the value
// given to the engine:
//
//	version byte (1)
//	kind    byte
//	kindResponse: uvarint length of the message type's full name, the name,
//	              then the message's bytes (proto.Marshal), to the end
//	kindStatus:   uvarint code, uvarint length of the message, the message
//	              (raw bytes: gRPC does not require UTF-8 of it, protobuf
//	              strings do), then a google.rpc.Status holding only the
//	              details, marshalled, to the end
//	kindOmitted:  uvarint length of the marshalled response that was too
//	              large to store
//
// A record of another version is refused as corrupt: a new version adds a
// decoder and keeps this one.
const recordVersion = 1

// Kinds of stored outcome.
const (
	kindResponse byte = 1 // a response message
	kindStatus   byte = 2 // an error status
	kindOmitted  byte = 3 // a response over Options.MaxStoredSize
)

// errNotMessage is the error for a handler's response that is not a
// protocol buffers message, which cannot be stored: the key is released.
var errNotMessage = errors.New("idemgrpc: the handler's response is not a protocol buffers message, so it cannot be stored; a retry will run the handler again")

// encodeResponse returns the record of response m, or of its omission if
// the record would be longer than max bytes.
func encodeResponse(m proto.Message, max int) ([]byte, error) {
	name := m.ProtoReflect().Descriptor().FullName()
	buf := make([]byte, 0, 2+binary.MaxVarintLen64+len(name)+proto.Size(m))
	buf = append(buf, recordVersion, kindResponse)
	buf = binary.AppendUvarint(buf, uint64(len(name)))
	buf = append(buf, name...)
	at := len(buf)
	buf, err := proto.MarshalOptions{}.MarshalAppend(buf, m)
	if err != nil {
		return nil, fmt.Errorf("idemgrpc: marshalling the response to store it: %w", err)
	}
	if len(buf) > max {
		omitted := []byte{recordVersion, kindOmitted}
		return binary.AppendUvarint(omitted, uint64(len(buf)-at)), nil
	}
	return buf, nil
}

// encodeStatus returns the record of st, an error status, in max bytes at
// most: without its details if they do not fit, and with its message cut
// (at a UTF-8 boundary) if it does not fit either.
func encodeStatus(st *status.Status, max int) []byte {
	p := st.Proto()
	var details []byte
	if len(p.Details) > 0 {
		// Details are messages of any type; one that does not marshal
		// (none that gRPC sent would) is dropped with the rest.
		details, _ = proto.Marshal(&spb.Status{Details: p.Details})
	}
	msg := p.Message
	head := 2 + 2*binary.MaxVarintLen64
	if head+len(msg)+len(details) > max {
		details = nil
	}
	if head+len(msg) > max {
		n := max - head
		for n > 0 && !utf8.RuneStart(msg[n]) {
			n--
		}
		msg = msg[:n]
	}
	buf := make([]byte, 0, head+len(msg)+len(details))
	buf = append(buf, recordVersion, kindStatus)
	buf = binary.AppendUvarint(buf, uint64(p.Code))
	buf = binary.AppendUvarint(buf, uint64(len(msg)))
	buf = append(buf, msg...)
	return append(buf, details...)
}

// decoded is a stored outcome, decoded: a response, or an error (a status
// to replay).
type decoded struct {
	resp proto.Message
	err  error
}

// errCorruptRecord is wrapped by decode's errors.
var errCorruptRecord = errors.New("idemgrpc: corrupt stored outcome")

// decode decodes the record b. Response messages are built from their type
// in types.
func decode(b []byte, types protoregistry.MessageTypeResolver) (decoded, error) {
	if len(b) < 2 {
		return decoded{}, fmt.Errorf("%w: %d bytes", errCorruptRecord, len(b))
	}
	if b[0] != recordVersion {
		return decoded{}, fmt.Errorf("%w: unknown version %d", errCorruptRecord, b[0])
	}
	kind, b := b[1], b[2:]
	switch kind {
	case kindResponse:
		name, rest, err := lengthPrefixed(b)
		if err != nil {
			return decoded{}, err
		}
		fullName := protoreflect.FullName(name)
		mt, err := types.FindMessageByName(fullName)
		if err != nil {
			return decoded{}, fmt.Errorf("idemgrpc: the stored response's type %s cannot be found (Options.Types): %w", fullName, err)
		}
		m := mt.New().Interface()
		if err := proto.Unmarshal(rest, m); err != nil {
			return decoded{}, fmt.Errorf("%w: the stored %s does not unmarshal: %w", errCorruptRecord, fullName, err)
		}
		return decoded{resp: m}, nil
	case kindStatus:
		code, n := binary.Uvarint(b)
		if n <= 0 || code == uint64(codes.OK) || code > 1<<31-1 {
			return decoded{}, fmt.Errorf("%w: bad status code", errCorruptRecord)
		}
		msg, rest, err := lengthPrefixed(b[n:])
		if err != nil {
			return decoded{}, err
		}
		p := &spb.Status{}
		if err := proto.Unmarshal(rest, p); err != nil {
			return decoded{}, fmt.Errorf("%w: the stored status details do not unmarshal: %w", errCorruptRecord, err)
		}
		p.Code, p.Message = int32(code), string(msg)
		return decoded{err: status.ErrorProto(p)}, nil
	case kindOmitted:
		size, n := binary.Uvarint(b)
		if n <= 0 {
			return decoded{}, fmt.Errorf("%w: bad size", errCorruptRecord)
		}
		return decoded{err: newStatus(codes.FailedPrecondition, ReasonResponseNotStored, 0,
			"idemgrpc: a call with this idempotency key was processed, but its response (%d bytes) was too large to store, so it cannot be replayed", size)}, nil
	}
	return decoded{}, fmt.Errorf("%w: unknown kind %d", errCorruptRecord, kind)
}

// lengthPrefixed returns the bytes that b starts with, preceded by their
// length as a uvarint, and the rest.
func lengthPrefixed(b []byte) (v, rest []byte, err error) {
	l, n := binary.Uvarint(b)
	if n <= 0 || l > uint64(len(b)-n) {
		return nil, nil, fmt.Errorf("%w: bad length", errCorruptRecord)
	}
	return b[n : n+int(l)], b[n+int(l):], nil
}
