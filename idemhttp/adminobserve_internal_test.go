package idemhttp

import (
	"math"
	"math/rand/v2"
	"testing"
	"time"
)

// TestHistBuckets checks the buckets of the Admin's histograms: every value
// falls in the bucket whose bounds hold it, the buckets are contiguous, and
// a bucket is at most 1/16 of its values wide.
func TestHistBuckets(t *testing.T) {
	if got := bucketOf(math.MaxUint64); got != histBuckets-1 {
		t.Fatalf("bucketOf(MaxUint64) = %d, want the last bucket %d", got, histBuckets-1)
	}
	if bucketMax(histBuckets-1) != math.MaxUint64 {
		t.Fatalf("the last bucket ends at %d", bucketMax(histBuckets-1))
	}
	for i := 1; i < histBuckets; i++ {
		lo, hi := bucketMax(i-1)+1, bucketMax(i)
		if bucketOf(lo) != i || bucketOf(hi) != i || hi < lo {
			t.Fatalf("bucket %d is [%d, %d]: bucketOf gives %d and %d", i, lo, hi, bucketOf(lo), bucketOf(hi))
		}
		if lo >= histSub && float64(hi-lo+1) > float64(lo)/histSub {
			t.Fatalf("bucket %d is [%d, %d]: wider than 1/%d of its values", i, lo, hi, histSub)
		}
	}
	for range 10000 {
		v := rand.Uint64() >> rand.IntN(64)
		if b := bucketOf(v); v > bucketMax(b) || (b > 0 && v <= bucketMax(b-1)) {
			t.Fatalf("%d is in bucket %d, which ends at %d", v, b, bucketMax(b))
		}
	}
}

// TestHistSnapshot checks a histogram's snapshot: the count, the sum and
// the non-empty buckets.
func TestHistSnapshot(t *testing.T) {
	var h latencyHist
	for _, d := range []time.Duration{-5, 0, 3, 3, 100, time.Millisecond} {
		h.record(d)
	}
	s := h.snapshot()
	if s.Count != 6 || s.SumNs != 106+uint64(time.Millisecond) {
		t.Fatalf("count %d, sum %d", s.Count, s.SumNs)
	}
	want := []AdminBucket{{0, 2}, {3, 2}, {bucketMax(bucketOf(100)), 1}, {bucketMax(bucketOf(uint64(time.Millisecond))), 1}}
	if len(s.Buckets) != len(want) {
		t.Fatalf("buckets %v, want %v", s.Buckets, want)
	}
	for i := range want {
		if s.Buckets[i] != want[i] {
			t.Fatalf("buckets %v, want %v", s.Buckets, want)
		}
	}
}
