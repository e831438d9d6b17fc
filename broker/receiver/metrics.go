package receiver

import (
	"github.com/prometheus/client_golang/prometheus"

	"github.com/audiofan/audiofan/broker"
	"github.com/audiofan/audiofan/codec/acs"
)

// Reasons label why an inbound message was refused. The set is fixed so the
// metric's cardinality is too.
const (
	reasonJSON         = "json"
	reasonFieldType    = "field_type"
	reasonBase64       = "base64"
	reasonPCMLength    = "pcm_length"
	reasonTimestamp    = "timestamp"
	reasonNoMetadata   = "no_metadata"
	reasonSampleRate   = "sample_rate"
	reasonChannels     = "channels"
	reasonEncoding     = "encoding"
	reasonTooLarge     = "too_large"
	reasonBadID        = "bad_id"
	reasonParticipants = "too_many_participants"
	reasonFlood        = "flood"
	reasonFrameType    = "frame_type"
	dropBackpressure   = "backpressure"
	dropPublishFailed  = "publish_failed"
	dropRejected       = "rejected"
	dropTooLarge       = "too_large"
)

// metrics are the receiver's Prometheus collectors. None has a per-call label.
type metrics struct {
	conns         *prometheus.CounterVec
	closes        *prometheus.CounterVec
	messages      *prometheus.CounterVec
	invalid       *prometheus.CounterVec
	dropped       *prometheus.CounterVec
	stored        *prometheus.CounterVec
	retries       prometheus.Counter
	ackLatency    prometheus.Histogram
	inflight      prometheus.Gauge
	draining      prometheus.Gauge
	noMetadata    prometheus.Counter
	logSuppressed prometheus.Counter
	authFailures  *prometheus.CounterVec
	outbound      *prometheus.CounterVec
	batches       *prometheus.CounterVec

	// Resolved once: WithLabelValues hashes its labels on every call, and
	// these two count every frame.
	storedBy   map[broker.Kind]prometheus.Counter
	messagesBy map[acs.Kind]prometheus.Counter
}

// message counts one inbound message of kind k.
func (m *metrics) message(k acs.Kind) {
	if c, ok := m.messagesBy[k]; ok {
		c.Inc()
		return
	}
	m.messages.WithLabelValues(k.String()).Inc()
}

// newMetrics registers the receiver's metrics; open reads the number of
// sockets open (or being opened) now.
func newMetrics(reg prometheus.Registerer, open func() float64) *metrics {
	m := &metrics{
		conns: prometheus.NewCounterVec(prometheus.CounterOpts{Name: "audiofan_receiver_connections_total",
			Help: "WebSocket upgrade requests by result: accepted, draining, limit, rate_limited, unauthorized, bad_request, upgrade_failed."}, []string{"result"}),
		closes: prometheus.NewCounterVec(prometheus.CounterOpts{Name: "audiofan_receiver_connections_closed_total",
			Help: "Closed connections by reason: peer, error, drain, invalid, flood, too_large, idle."}, []string{"reason"}),
		messages: prometheus.NewCounterVec(prometheus.CounterOpts{Name: "audiofan_receiver_messages_total",
			Help: "ACS messages read, by kind (AudioData, AudioMetadata, ..., Unknown)."}, []string{"kind"}),
		invalid: prometheus.NewCounterVec(prometheus.CounterOpts{Name: "audiofan_receiver_invalid_messages_total",
			Help: "ACS messages refused, by reason."}, []string{"reason"}),
		dropped: prometheus.NewCounterVec(prometheus.CounterOpts{Name: "audiofan_receiver_dropped_total",
			Help: "Valid messages not stored: backpressure (publish window full), publish_failed (retries ran out), rejected (JetStream refused), too_large (over the server's max_payload once encoded)."}, []string{"reason"}),
		stored: prometheus.NewCounterVec(prometheus.CounterOpts{Name: "audiofan_receiver_stored_total",
			Help: "Messages acknowledged by JetStream, by subject kind."}, []string{"kind"}),
		retries: prometheus.NewCounter(prometheus.CounterOpts{Name: "audiofan_receiver_publish_retries_total", Help: "Publishes sent again with the same Nats-Msg-Id."}),
		ackLatency: prometheus.NewHistogram(prometheus.HistogramOpts{Name: "audiofan_receiver_publish_ack_seconds",
			Help:    "Time from receiving an ACS message to JetStream's acknowledgement of it, as seen when the socket next looks.",
			Buckets: []float64{.0005, .001, .002, .005, .01, .02, .05, .1, .25, .5, 1, 2.5, 5, 10}}),
		inflight:      prometheus.NewGauge(prometheus.GaugeOpts{Name: "audiofan_receiver_publish_inflight", Help: "Messages published and not yet acknowledged, all sockets."}),
		draining:      prometheus.NewGauge(prometheus.GaugeOpts{Name: "audiofan_receiver_draining", Help: "1 while the receiver drains for shutdown."}),
		noMetadata:    prometheus.NewCounter(prometheus.CounterOpts{Name: "audiofan_receiver_connections_without_metadata_total", Help: "Connections that closed before any metadata message."}),
		logSuppressed: prometheus.NewCounter(prometheus.CounterOpts{Name: "audiofan_receiver_log_suppressed_total", Help: "Warnings about bad input not logged because of the log rate limit."}),
		authFailures: prometheus.NewCounterVec(prometheus.CounterOpts{Name: "audiofan_receiver_auth_failures_total",
			Help: "Upgrades refused with 401, by reason: missing_token, malformed, signature, unknown_key, expired, not_yet_valid, audience, issuer, claims, secret."}, []string{"reason"}),
	}
	m.outbound = prometheus.NewCounterVec(prometheus.CounterOpts{Name: "audiofan_receiver_outbound_total",
		Help: "Outbound messages (calls.<call>.outbound) by result: relayed, stop, not_here (no media socket of the call on this receiver), invalid, queue_full, write_failed."}, []string{"result"})
	m.batches = prometheus.NewCounterVec(prometheus.CounterOpts{Name: "audiofan_receiver_fast_batches_total",
		Help: "Fast batches ended (AUDIOFAN_PUBLISH_MODE=batch), by how: committed (all stored), gap (the server missed a message), error, timeout (no acknowledgement in time); all but committed send their unacknowledged messages again."}, []string{"result"})
	connsOpen := prometheus.NewGaugeFunc(prometheus.GaugeOpts{Name: "audiofan_receiver_connections_open",
		Help: "ACS WebSocket connections open now (those being upgraded included)."}, open)
	reg.MustRegister(connsOpen, m.conns, m.closes, m.messages, m.invalid, m.dropped, m.stored, m.retries, m.ackLatency, m.inflight, m.draining, m.noMetadata, m.logSuppressed, m.authFailures, m.outbound, m.batches)
	for _, r := range []string{reasonJSON, reasonFieldType, reasonBase64, reasonPCMLength, reasonTimestamp, reasonNoMetadata, reasonSampleRate,
		reasonChannels, reasonEncoding, reasonTooLarge, reasonBadID, reasonParticipants, reasonFlood, reasonFrameType} {
		m.invalid.WithLabelValues(r)
	}
	for _, r := range []string{dropBackpressure, dropPublishFailed, dropRejected, dropTooLarge} {
		m.dropped.WithLabelValues(r)
	}
	for _, r := range []string{batchCommitted, batchGap, batchError, batchTimeout} {
		m.batches.WithLabelValues(r)
	}
	m.storedBy = map[broker.Kind]prometheus.Counter{}
	for _, k := range []broker.Kind{broker.KindAudio, broker.KindTranscript, broker.KindDtmf, broker.KindLifecycle} {
		m.storedBy[k] = m.stored.WithLabelValues(string(k))
	}
	m.messagesBy = map[acs.Kind]prometheus.Counter{}
	for _, k := range []acs.Kind{acs.KindUnknown, acs.KindAudioMetadata, acs.KindAudioData, acs.KindDtmfData,
		acs.KindTranscriptionMetadata, acs.KindTranscriptionData} {
		m.messagesBy[k] = m.messages.WithLabelValues(k.String())
	}
	return m
}
