package broker

import (
	"context"
	"fmt"
	"strconv"

	"github.com/prometheus/client_golang/prometheus"
)

// BusMetrics are the bus's size per shard, as the receivers see it: what
// the shards hold and whether they share the calls evenly. The label is
// the shard's number (at most MaxShards values), never a call.
type BusMetrics struct {
	messages, bytes, maxBytes *prometheus.GaugeVec
	leaderMoves               prometheus.Counter
}

// NewBusMetrics registers the bus's metrics on reg.
func NewBusMetrics(reg prometheus.Registerer) (*BusMetrics, error) {
	m := &BusMetrics{
		messages: prometheus.NewGaugeVec(prometheus.GaugeOpts{Name: "audiofan_bus_shard_messages",
			Help: "Messages a shard of the bus holds (its stream's state), by shard."}, []string{"shard"}),
		bytes: prometheus.NewGaugeVec(prometheus.GaugeOpts{Name: "audiofan_bus_shard_bytes",
			Help: "Bytes a shard of the bus holds (its stream's state), by shard."}, []string{"shard"}),
		maxBytes: prometheus.NewGaugeVec(prometheus.GaugeOpts{Name: "audiofan_bus_shard_max_bytes",
			Help: "The byte limit of a shard of the bus (its stream's max_bytes; -1: none), by shard: past it the oldest messages go."}, []string{"shard"}),
		leaderMoves: prometheus.NewCounter(prometheus.CounterOpts{Name: "audiofan_bus_leader_moves_total",
			Help: "Shard leaders this process moved to spread them over the nodes."}),
	}
	for _, c := range []prometheus.Collector{m.messages, m.bytes, m.maxBytes, m.leaderMoves} {
		if err := reg.Register(c); err != nil {
			return nil, fmt.Errorf("bus metrics: %w", err)
		}
	}
	return m, nil
}

// observe reads every shard's state into the gauges.
func (m *BusMetrics) observe(ctx context.Context, b *Bus) error {
	for i, s := range b.streams {
		info, err := s.Info(ctx)
		if err != nil {
			return fmt.Errorf("bus metrics: %w", err)
		}
		l := strconv.Itoa(i)
		m.messages.WithLabelValues(l).Set(float64(info.State.Msgs))
		m.bytes.WithLabelValues(l).Set(float64(info.State.Bytes))
		m.maxBytes.WithLabelValues(l).Set(float64(info.Config.MaxBytes))
	}
	return nil
}
