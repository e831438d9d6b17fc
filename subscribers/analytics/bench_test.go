package analytics_test

import (
	"context"
	"testing"

	"github.com/nats-io/nats.go/jetstream"
	"github.com/prometheus/client_golang/prometheus"

	"github.com/audiofan/audiofan/broker/natstest"
	"github.com/audiofan/audiofan/subscribers"
	"github.com/audiofan/audiofan/subscribers/analytics"
	"github.com/audiofan/audiofan/subscribers/conformance"
)

// BenchmarkAnalytics is analytics end to end on the bus (see
// conformance.Throughput): 100 participant streams (25 calls of 4) of 30 s,
// with a live event every 5 s of call time; target 200× real time.
func BenchmarkAnalytics(b *testing.B) {
	conformance.Throughput(b, 25, 4, 30, func(b *testing.B, _ string, js jetstream.JetStream, reg prometheus.Registerer) subscribers.Role {
		a, err := analytics.New(context.Background(), natstest.Defaults[analytics.Config](b), js, reg, natstest.Logger())
		if err != nil {
			b.Fatal(err)
		}
		return a.Role()
	})
}
