package cli

import (
	"math"
	"math/bits"
	"time"
)

// histogram is a log-linear histogram of durations: exact below 32 ns, and
// within about 3% above (32 buckets per power of two). Its memory is fixed
// whatever the count. It is not safe for concurrent use: bench keeps one per
// worker and path and merges them at the end.
type histogram struct {
	counts [histBuckets]uint64
	n      uint64
	sum    time.Duration
	max    time.Duration
}

const (
	histSubBits = 5
	histSub     = 1 << histSubBits // buckets per power of two
	// histBuckets covers every uint64: the histSub values below histSub
	// have a bucket each, then each power of two from histSub up (64 -
	// histSubBits of them) has histSub buckets.
	histBuckets = (64 - histSubBits + 1) * histSub
)

// bucketOf returns the bucket of v nanoseconds.
func bucketOf(v uint64) int {
	if v < histSub {
		return int(v)
	}
	shift := bits.Len64(v) - histSubBits - 1 // v>>shift is in [histSub, 2*histSub)
	return (shift+1)*histSub + int(v>>shift) - histSub
}

// bucketMax returns the largest value of bucket i.
func bucketMax(i int) uint64 {
	if i < histSub {
		return uint64(i)
	}
	shift := i/histSub - 1
	top := uint64(i%histSub + histSub)
	return (top+1)<<shift - 1
}

// record adds one duration.
func (h *histogram) record(d time.Duration) {
	d = max(d, 0)
	h.counts[bucketOf(uint64(d))]++
	h.n++
	h.sum += d
	h.max = max(h.max, d)
}

// merge adds o's durations to h.
func (h *histogram) merge(o *histogram) {
	for i, c := range o.counts {
		h.counts[i] += c
	}
	h.n += o.n
	h.sum += o.sum
	h.max = max(h.max, o.max)
}

// quantile returns the duration below or at which a fraction q of the
// durations fall (q in [0, 1]): the upper bound of its bucket, at most the
// largest duration recorded. It is 0 for an empty histogram.
func (h *histogram) quantile(q float64) time.Duration {
	if h.n == 0 {
		return 0
	}
	rank := uint64(math.Ceil(q * float64(h.n)))
	rank = min(max(rank, 1), h.n)
	var seen uint64
	for i, c := range h.counts {
		seen += c
		if seen >= rank {
			return min(time.Duration(bucketMax(i)), h.max)
		}
	}
	return h.max
}

// mean returns the mean duration, 0 for an empty histogram.
func (h *histogram) mean() time.Duration {
	if h.n == 0 {
		return 0
	}
	return h.sum / time.Duration(h.n)
}
