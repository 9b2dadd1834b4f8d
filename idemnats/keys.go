package idemnats

import (
	"encoding/base64"
	"fmt"
	"regexp"
	"strconv"
)

// Key layout.
//
// A bucket is a JetStream stream, KV_<bucket>, over the subjects
// $KV.<bucket>.>, as nats.go's KeyValue makes it, so that the nats CLI and
// any KV client can read it. Three kinds of KV key live in it:
//
//	r.<base64url(key)>   the record of an idem key
//	h.<owner, 16 hex>    the heartbeat of an engine (liveness.go), in
//	                     bucket 0 only
//	m.buckets            the count of buckets (Options.Buckets), in
//	                     bucket 0 only, never expiring
//
// With Options.Buckets above 1 the records are spread over the buckets
// <Bucket> (bucket 0), <Bucket>-1 ... <Bucket>-(Buckets-1) by a hash of
// their keys (bucketIndex): each bucket is a stream of its own, with its
// own leader, laid out as above.
//
// idem keys are arbitrary bytes, and a KV key allows only [-/_=.a-zA-Z0-9]
// with dots between tokens; base64url without padding (RFC 4648 §5) maps
// every key to one token of [-_a-zA-Z0-9], 4/3 as long. It does not keep
// the keys' order, so Scan sorts the decoded keys (scan.go).
//
// The stream republishes the headers of every record it stores to
// _IDEM.WATCH.<bucket>.r.<base64url(key)>, with the stored sequence in
// Nats-Sequence: that is what Watch waits on.

const (
	recordsToken  = "r"         // the records' KV keys: r.<base64url key>
	livenessToken = "h"         // the heartbeats' KV keys: h.<owner hex>
	countKey      = "m.buckets" // the KV key of the count of buckets
	watchRoot     = "_IDEM.WATCH."
	apiPrefix     = "$JS.API."
)

// keyEncoding is how an idem key becomes a subject token. Strict: a token
// decodes only if it is the encoding of its bytes, so that every key has one
// subject.
var keyEncoding = base64.RawURLEncoding.Strict()

// bucketName is what nats.go accepts as a bucket name.
var bucketName = regexp.MustCompile(`^[a-zA-Z0-9_-]+$`)

// maxSubjectLen bounds the subjects a store publishes to: NATS refuses a
// protocol line longer than max_control_line (4 KiB by default), and the
// line carries the subject, a reply inbox and the sizes.
const maxSubjectLen = 3072

// subjects are a bucket's subjects and API subjects.
type subjects struct {
	bucket  string
	stream  string // KV_<bucket>
	all     string // $KV.<bucket>.>
	records string // $KV.<bucket>.r.
	hearts  string // $KV.<bucket>.h.
	count   string // $KV.<bucket>.m.buckets
	watch   string // _IDEM.WATCH.<bucket>.r.
	msgGet  string // $JS.API.STREAM.MSG.GET.KV_<bucket>
}

func newSubjects(bucket string) subjects {
	kv := "$KV." + bucket + "."
	return subjects{
		bucket:  bucket,
		stream:  "KV_" + bucket,
		all:     kv + ">",
		records: kv + recordsToken + ".",
		hearts:  kv + livenessToken + ".",
		count:   kv + countKey,
		watch:   watchRoot + bucket + "." + recordsToken + ".",
		msgGet:  apiPrefix + "STREAM.MSG.GET.KV_" + bucket,
	}
}

// rePublishSource and rePublishDest are the stream's RePublish.
func (s *subjects) rePublishSource() string { return s.records + ">" }
func (s *subjects) rePublishDest() string   { return s.watch + ">" }

// record returns the subject of key's record.
func (s *subjects) record(key string) string {
	return s.records + keyEncoding.EncodeToString([]byte(key))
}

// watchOf returns the subject on which the stream republishes key's record.
func (s *subjects) watchOf(key string) string {
	return s.watch + keyEncoding.EncodeToString([]byte(key))
}

// heart returns the subject of owner's heartbeat.
func (s *subjects) heart(owner uint64) string {
	return s.hearts + fmt.Sprintf("%016x", owner)
}

// maxKeySize returns the longest key whose subjects fit in maxSubjectLen.
func (s *subjects) maxKeySize() int {
	room := maxSubjectLen - max(len(s.records), len(s.watch))
	return room / 4 * 3
}

// keyOf decodes the idem key of a record's subject; ok is false for a
// subject that is not under the records' prefix or does not decode.
func (s *subjects) keyOf(subject string) (key string, ok bool) {
	if len(subject) <= len(s.records) || subject[:len(s.records)] != s.records {
		return "", false
	}
	b, err := keyEncoding.DecodeString(subject[len(s.records):])
	if err != nil {
		return "", false
	}
	return string(b), true
}

// bucketNameOf returns the name of bucket i of the buckets named after
// bucket: bucket itself for 0 (so that one bucket is laid out as it always
// was), and bucket-i for the others.
func bucketNameOf(bucket string, i int) string {
	if i == 0 {
		return bucket
	}
	return bucket + "-" + strconv.Itoa(i)
}

// bucketIndex returns the bucket, of n, that holds key's record: FNV-1a
// (64 bits) of the key's bytes, modulo n. It must give every process, of
// every version, the same answer, or engines would look for a record in
// different buckets: hence a hash with no seed (not hash/maphash's), fixed
// here, and tested against fixed values.
func bucketIndex(key string, n int) int {
	if n <= 1 {
		return 0
	}
	const offset64, prime64 = 14695981039346656037, 1099511628211
	h := uint64(offset64)
	for i := 0; i < len(key); i++ {
		h ^= uint64(key[i])
		h *= prime64
	}
	return int(h % uint64(n))
}

// ttlHeader formats a Nats-TTL of d: whole seconds, rounded up, at least
// one (the server's minimum) and at most maxTTL.
func ttlHeader(d int64) string {
	const sec = int64(1e9)
	switch {
	case d <= sec:
		return "1"
	case d >= maxTTL:
		return strconv.FormatInt(maxTTL/sec, 10)
	}
	return strconv.FormatInt((d+sec-1)/sec, 10)
}

// maxTTL is the longest Nats-TTL a store sets: about a century, so that the
// server's expiry time (its clock plus the TTL, in nanoseconds) cannot
// overflow. A record meant to live longer is removed by the server then.
const maxTTL = int64(100 * 365 * 24 * 3600 * 1e9)
