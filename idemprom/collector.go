package idemprom

import (
	"github.com/prometheus/client_golang/prometheus"

	"github.com/idemkv/idem"
)

// statsDescs describe the figures of Engine.Stats.
type statsDescs struct {
	calls, executions, replays, waits, mismatches, interrupted, swept *prometheus.Desc
	diskUsage, compactions, readAmp                                   *prometheus.Desc
}

func newStatsDescs(ns string, labels prometheus.Labels) statsDescs {
	d := func(name, help string) *prometheus.Desc {
		return prometheus.NewDesc(prometheus.BuildFQName(ns, "", name), help, nil, labels)
	}
	return statsDescs{
		calls:       d("calls_total", "Do calls that passed validation (a valid key and fn, on an open, writable engine), since the engine was opened."),
		executions:  d("executions_total", "Times fn was called, since the engine was opened."),
		replays:     d("replays_total", "Do calls answered with a stored outcome (read, or shared by a concurrent call of the key that stored it), since the engine was opened."),
		waits:       d("waits_total", "Do calls that waited for a concurrent call of the same key, since the engine was opened."),
		mismatches:  d("mismatches_total", "Do calls refused with ErrFingerprintMismatch: a key reused for another request, since the engine was opened."),
		interrupted: d("interrupted_total", "Do calls that found their key's earlier run cut off (a crash, or an outcome that could not be stored): ErrInterrupted, or a new run with Options.RetryInterrupted, since the engine was opened."),
		swept:       d("swept_total", "Expired records removed by sweeps, since the engine was opened."),
		diskUsage:   d("disk_usage_bytes", "Bytes on disk of the engine's Pebble database; 0 on other stores and once the engine is closed."),
		compactions: d("compactions_total", "Compactions of the engine's Pebble database since it was opened; 0 on other stores and once the engine is closed."),
		readAmp:     d("read_amplification", "Read amplification of the engine's Pebble database: the sstables a read may look in; 0 on other stores and once the engine is closed."),
	}
}

// collector is what Metrics.Collector returns: m's histograms and counters,
// and e's Stats.
type collector struct {
	m *Metrics
	e *idem.Engine
}

// Describe implements prometheus.Collector.
func (c *collector) Describe(ch chan<- *prometheus.Desc) {
	d := &c.m.stats
	for _, desc := range []*prometheus.Desc{
		d.calls, d.executions, d.replays, d.waits, d.mismatches, d.interrupted, d.swept,
		d.diskUsage, d.compactions, d.readAmp,
	} {
		ch <- desc
	}
	c.m.callVec.Describe(ch)
	c.m.fn.Describe(ch)
	c.m.storeVec.Describe(ch)
	c.m.storeErrVec.Describe(ch)
	c.m.wait.Describe(ch)
	c.m.conflictVec.Describe(ch)
}

// Collect implements prometheus.Collector.
func (c *collector) Collect(ch chan<- prometheus.Metric) {
	s := c.e.Stats()
	d := &c.m.stats
	counter := func(desc *prometheus.Desc, v uint64) {
		ch <- prometheus.MustNewConstMetric(desc, prometheus.CounterValue, float64(v))
	}
	counter(d.calls, s.Calls)
	counter(d.executions, s.Executions)
	counter(d.replays, s.Replays)
	counter(d.waits, s.Waits)
	counter(d.mismatches, s.Mismatches)
	counter(d.interrupted, s.Interrupted)
	counter(d.swept, s.Swept)
	ch <- prometheus.MustNewConstMetric(d.diskUsage, prometheus.GaugeValue, float64(s.DiskUsage))
	counter(d.compactions, s.Compactions)
	ch <- prometheus.MustNewConstMetric(d.readAmp, prometheus.GaugeValue, float64(s.ReadAmplification))
	c.m.callVec.Collect(ch)
	c.m.fn.Collect(ch)
	c.m.storeVec.Collect(ch)
	c.m.storeErrVec.Collect(ch)
	c.m.wait.Collect(ch)
	c.m.conflictVec.Collect(ch)
}
