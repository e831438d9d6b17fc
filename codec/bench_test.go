package codec

import (
	"testing"
	"time"

	"github.com/vmihailenco/msgpack/v5"
)

// BenchmarkUnmarshalFrame decodes a 20 ms 16 kHz frame by hand, beside
// msgpack/v5's reflective decoder on the same bytes in the same run.
func BenchmarkUnmarshalFrame(b *testing.B) {
	msg := AppendFrame(nil, &Frame{V: 1, Call: "6f1e2d3c-aaaa-4bbb-8ccc-0123456789ab", Participant: "8:acs:6a1f0c2e-1111-2222-3333-000000000000",
		Seq: 12345, Timestamp: time.Now(), ReceivedAt: time.Now(), SampleRate: 16000, Channels: 1, Encoding: EncodingPCM16, Data: make([]byte, 640)})
	var f Frame
	b.ReportAllocs()
	start := time.Now()
	for b.Loop() {
		if err := UnmarshalFrame(msg, &f); err != nil {
			b.Fatal(err)
		}
	}
	fast := time.Since(start)
	start = time.Now()
	for range b.N {
		var g Frame
		if err := msgpack.Unmarshal(msg, &g); err != nil {
			b.Fatal(err)
		}
	}
	b.ReportMetric(float64(time.Since(start))/float64(fast), "x-reflective")
}
