package analytics

import (
	"testing"
	"time"

	"github.com/audiofan/audiofan/codec"
	"github.com/audiofan/audiofan/subscribers/speech"
)

// BenchmarkAnalysis is the analysis alone, without the bus: 100 streams of
// 30 s through level measurement and voice activity, a live summary every
// 5 s of call time. x-realtime is against the audio's own duration for the
// 100 streams.
func BenchmarkAnalysis(b *testing.B) {
	const streams, seconds = 100, 30
	voice, quiet := tone(0, 6000, 300), make([]byte, 640)
	frames := make([]codec.Frame, 0, streams*seconds*50)
	for i := range seconds * 50 {
		for p := range streams {
			data := quiet
			if (i/100)%4 == p%4 {
				data = voice
			}
			frames = append(frames, codec.Frame{Participant: string(rune('A' + p)), Timestamp: t0.Add(time.Duration(i) * speech.SlotDur),
				Channels: 1, Encoding: codec.EncodingPCM16, Data: data})
		}
	}
	b.ReportAllocs()
	start := time.Now()
	for b.Loop() {
		a := newAnalysis(3 * time.Second)
		for i := range frames {
			a.add(&frames[i])
			if i%(streams*250) == 0 {
				a.summary(false)
			}
		}
		a.summary(true)
	}
	per := time.Since(start) / time.Duration(b.N)
	b.ReportMetric(float64(len(frames))/per.Seconds(), "frames/s")
	b.ReportMetric(float64(streams*seconds)*float64(time.Second)/float64(per), "x-realtime")
}
