package recording_test

import (
	"context"
	"testing"

	"github.com/nats-io/nats.go/jetstream"
	"github.com/prometheus/client_golang/prometheus"

	"github.com/audiofan/audiofan/broker/natstest"
	"github.com/audiofan/audiofan/subscribers"
	"github.com/audiofan/audiofan/subscribers/conformance"
	"github.com/audiofan/audiofan/subscribers/recording"
)

// BenchmarkRecorder is the recorder end to end on the bus (see
// conformance.Throughput): 100 participant streams (25 calls of 4) of 30 s,
// consumed, decoded, spooled and rendered to files, events published;
// target 100× real time.
func BenchmarkRecorder(b *testing.B) {
	conformance.Throughput(b, 25, 4, 30, func(b *testing.B, dir string, js jetstream.JetStream, reg prometheus.Registerer) subscribers.Role {
		rec, err := recording.New(context.Background(), natstest.Defaults[recording.Config](b), dir, js, reg, natstest.Logger())
		if err != nil {
			b.Fatal(err)
		}
		b.Cleanup(func() { rec.Close() })
		return rec.Role()
	})
}
