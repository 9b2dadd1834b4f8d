package idemnats

import (
	"context"
	"errors"
	"fmt"
	"slices"
	"strings"
	"time"

	"github.com/nats-io/nats.go/jetstream"

	"github.com/idemkv/idem"
)

// Scan, the operator's view (Engine.Records, Engine.Interrupted).
//
// A stream keeps its messages in sequence order, and the records' subjects
// encode their keys in an order that is not the keys' (keys.go), so Scan
// cannot read a key range. It lists every record subject of every bucket
// (the stream info's subject list, which the server sends 100,000 subjects
// per request), decodes the keys and sorts them all together (which merges
// the buckets in key order), and reads the records of the page asked for,
// each with the leader's read. The sorted list is kept for the pages that
// follow (a Scan that continues after a key, with the same prefix, within
// listingReuse), so a whole iteration over N keys costs one listing per
// bucket, O(N log N) time and O(N) memory (the keys), and N reads. Records
// written after the listing are not seen; deleted ones are skipped. A
// record in a bucket that is not its key's (written there by another
// client than idemnats) is reported as corrupt, as is a subject that does
// not decode: no engine would find either.

// listingReuse is how long a listing serves the pages that follow it.
const listingReuse = time.Minute

// listing is the sorted keys under a prefix.
type listing struct {
	prefix string
	keys   []listedKey
	at     time.Time
}

// listedKey is a key of a listing.
type listedKey struct {
	// key is the decoded key or, for a subject that does not decode, its
	// KV key token (bad).
	key string
	bad bool
	b   int // the index of its bucket
}

// Scan calls fn for up to limit records whose keys start with prefix, in
// key order, after the key after; see the comment above for its cost.
func (s *store) Scan(ctx context.Context, prefix, after string, limit int, fn func(key string, rec idem.StoredRecord, err error)) (string, error) {
	keys, err := s.keys(ctx, prefix, after)
	if err != nil {
		return "", fmt.Errorf("idemnats: listing the keys: %w", err)
	}
	i, _ := slices.BinarySearchFunc(keys, after, func(k listedKey, after string) int {
		if k.key <= after {
			return -1
		}
		return 1
	})
	n := 0
	for ; i < len(keys); i++ {
		if limit > 0 && n == limit {
			return keys[i-1].key, nil
		}
		k := keys[i]
		b := s.buckets[k.b]
		if k.bad {
			fn(k.key, idem.StoredRecord{}, fmt.Errorf("idemnats: KV key %q of bucket %s is not an encoded idem key: %w", recordsToken+"."+k.key, b.name, idem.ErrCorrupt))
			n++
			continue
		}
		if own := s.bucketOf(k.key); own != b {
			fn(k.key, idem.StoredRecord{}, fmt.Errorf("idemnats: key %q has a record in bucket %s, and its hash puts it in bucket %s: %w", k.key, b.name, own.name, idem.ErrCorrupt))
			n++
			continue
		}
		rec, _, err := s.Get(ctx, k.key)
		switch {
		case errors.Is(err, idem.ErrNotFound):
			continue // deleted since the listing
		case err != nil && !errors.Is(err, idem.ErrCorrupt):
			return "", err
		}
		fn(k.key, rec, err)
		n++
	}
	return "", nil
}

// keys returns the sorted keys under prefix: the last listing's, for a scan
// that continues it, or a new one.
func (s *store) keys(ctx context.Context, prefix, after string) ([]listedKey, error) {
	s.scanMu.Lock()
	defer s.scanMu.Unlock()
	if l := s.listing; after != "" && l != nil && l.prefix == prefix && time.Since(l.at) < listingReuse {
		return l.keys, nil
	}
	s.listing = nil
	var keys []listedKey
	for i, b := range s.buckets {
		info, err := b.st.Info(ctx, jetstream.WithSubjectFilter(b.subj.records+">"))
		if err != nil {
			return nil, fmt.Errorf("bucket %s: %w", b.name, err)
		}
		keys = slices.Grow(keys, len(info.State.Subjects))
		for subject := range info.State.Subjects {
			key, ok := b.subj.keyOf(subject)
			if !ok {
				key = strings.TrimPrefix(subject, b.subj.records)
			}
			if strings.HasPrefix(key, prefix) {
				keys = append(keys, listedKey{key: key, bad: !ok, b: i})
			}
		}
	}
	// Sorted by key, and a key found in two buckets (see above) in the
	// buckets' order.
	slices.SortFunc(keys, func(a, b listedKey) int {
		if c := strings.Compare(a.key, b.key); c != 0 {
			return c
		}
		return a.b - b.b
	})
	s.listing = &listing{prefix: prefix, keys: keys, at: time.Now()}
	return keys, nil
}
