package forward

import (
	"fmt"

	"github.com/prometheus/client_golang/prometheus"
)

// Why a message for a target was not sent.
type dropReason string

const (
	dropSlow   dropReason = "slow"   // its socket's queue was full: the oldest went
	dropRedial dropReason = "redial" // queued while its socket was down: a new socket starts at live audio
)

// What became of a message a target sent back.
type backResult string

const (
	backRelayed  backResult = "relayed"   // into the call's outbound subject
	backInvalid  backResult = "invalid"   // not an outbound message ACS would take
	backTooLarge backResult = "too_large" // past AUDIOFAN_FORWARD_MAX_MESSAGE
	backMuted    backResult = "muted"     // the target has speak=false
	backFailed   backResult = "failed"    // the publish failed
)

// metrics are the forwarder's, labelled by the target's configured name.
type metrics struct {
	open     *prometheus.GaugeVec
	sent     *prometheus.CounterVec
	dropped  *prometheus.CounterVec
	redials  *prometheus.CounterVec
	latency  *prometheus.HistogramVec
	back     *prometheus.CounterVec
	dialErrs *prometheus.CounterVec
}

func newMetrics(reg prometheus.Registerer) (*metrics, error) {
	m := &metrics{
		open: prometheus.NewGaugeVec(prometheus.GaugeOpts{Name: "audiofan_forward_sockets_open",
			Help: "Sockets open to a target (one a call)."}, []string{"target"}),
		sent: prometheus.NewCounterVec(prometheus.CounterOpts{Name: "audiofan_forward_messages_sent_total",
			Help: "Messages written to a target, metadata included."}, []string{"target"}),
		dropped: prometheus.NewCounterVec(prometheus.CounterOpts{Name: "audiofan_forward_dropped_total",
			Help: "Messages for a target not sent: slow (its queue full, the oldest dropped), redial (queued while its socket was down)."}, []string{"target", "reason"}),
		redials: prometheus.NewCounterVec(prometheus.CounterOpts{Name: "audiofan_forward_redials_total",
			Help: "Dials of a target after a failed dial or a lost socket."}, []string{"target"}),
		dialErrs: prometheus.NewCounterVec(prometheus.CounterOpts{Name: "audiofan_forward_dial_failures_total",
			Help: "Dials of a target that failed (refused, timed out, TLS, upgrade)."}, []string{"target"}),
		latency: prometheus.NewHistogramVec(prometheus.HistogramOpts{Name: "audiofan_forward_send_seconds",
			Help:    "From a message's storing on the bus to its write to a target.",
			Buckets: []float64{.0005, .001, .002, .003, .005, .0075, .01, .025, .05, .1, .25, .5, 1, 2.5, 5}}, []string{"target"}),
		back: prometheus.NewCounterVec(prometheus.CounterOpts{Name: "audiofan_forward_backchannel_total",
			Help: "Messages a target sent back, by result: relayed, invalid, too_large, muted, failed."}, []string{"target", "result"}),
	}
	for _, c := range []prometheus.Collector{m.open, m.sent, m.dropped, m.redials, m.dialErrs, m.latency, m.back} {
		if err := reg.Register(c); err != nil {
			return nil, fmt.Errorf("forwarder metrics: %w", err)
		}
	}
	return m, nil
}

// targetMetrics are one target's series, looked up once: a socket counts
// every message it writes, and a label lookup per frame is work the hot
// path need not do.
type targetMetrics struct {
	open                     prometheus.Gauge
	sent, redials, dialErrs  prometheus.Counter
	droppedSlow, droppedDown prometheus.Counter
	latency                  prometheus.Observer
	back                     map[backResult]prometheus.Counter
}

// forTarget resolves a target's series, each there from the start at 0.
func (m *metrics) forTarget(name string) *targetMetrics {
	tm := &targetMetrics{open: m.open.WithLabelValues(name), sent: m.sent.WithLabelValues(name),
		redials: m.redials.WithLabelValues(name), dialErrs: m.dialErrs.WithLabelValues(name),
		droppedSlow: m.dropped.WithLabelValues(name, string(dropSlow)), droppedDown: m.dropped.WithLabelValues(name, string(dropRedial)),
		latency: m.latency.WithLabelValues(name), back: map[backResult]prometheus.Counter{}}
	for _, r := range []backResult{backRelayed, backInvalid, backTooLarge, backMuted, backFailed} {
		tm.back[r] = m.back.WithLabelValues(name, string(r))
	}
	return tm
}
