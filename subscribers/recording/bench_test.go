package recording

import (
	"context"
	"fmt"
	"path/filepath"
	"runtime"
	"testing"
	"time"

	"github.com/audiofan/audiofan/codec"
)

// BenchmarkRender spools 100 participant streams of 30 s each (one call of
// 100 tracks) and renders them and their mix to files: the recorder's disk
// work, without the bus. It reports how many times faster than real time
// that is (the baseline is the audio's own duration); the target
// for the whole recorder is 100×.
func BenchmarkRender(b *testing.B) {
	const streams, seconds = 100, 30
	frames := make([]codec.Frame, 0, streams*seconds*50)
	for p := 0; p < streams; p++ {
		for i := 0; i < seconds*50; i++ {
			frames = append(frames, frame("bench", fmt.Sprintf("p%d", p), p, i, time.Duration(i)*20*time.Millisecond))
		}
	}
	dir := b.TempDir()
	b.ReportAllocs()
	start := time.Now()
	for b.Loop() {
		spoolAndRender(b, dir, frames)
	}
	perRun := time.Since(start) / time.Duration(b.N)
	b.ReportMetric(float64(streams*seconds*time.Second)/float64(perRun), "x-realtime")
	b.ReportMetric(float64(streams*seconds*50)/perRun.Seconds(), "frames/s")
}

// BenchmarkRenderColliding renders one stream of frames all stamped alike
// (a sender with a stuck clock, faster than real time) at 20,000 and 80,000
// frames. Placing them is linear: the time per frame of the larger is about
// that of the smaller, its baseline (it was quadratic: 21.6 s and 93 s of a
// core for 40,000 and 80,000).
func BenchmarkRenderColliding(b *testing.B) {
	for _, n := range []int{20_000, 80_000} {
		b.Run(fmt.Sprintf("frames=%d", n), func(b *testing.B) {
			frames := make([]codec.Frame, n)
			for i := range frames {
				frames[i] = frame("bench", "p", 0, i, 0)
			}
			dir := b.TempDir()
			start := time.Now()
			for b.Loop() {
				spoolAndRender(b, dir, frames)
			}
			b.ReportMetric(float64(time.Since(start).Nanoseconds())/float64(b.N*n), "ns/frame")
		})
	}
}

// spoolAndRender spools frames into a new spool under dir and renders them.
func spoolAndRender(b *testing.B, dir string, frames []codec.Frame) {
	sp, err := NewSpool(filepath.Join(dir, "spool"))
	if err != nil {
		b.Fatal(err)
	}
	for i := range frames {
		if err := sp.Add(&frames[i]); err != nil {
			b.Fatal(err)
		}
	}
	if _, err := sp.Render(context.Background(), filepath.Join(dir, "out")); err != nil {
		b.Fatal(err)
	}
	if err := sp.Close(); err != nil {
		b.Fatal(err)
	}
}

// BenchmarkSpoolMemory is the heap a call's spool holds while the call goes
// on, by its length (two participants): with the index spilling to disk
// (spilled), and, in the same run, with every entry kept in memory as
// before (in-memory). Reported in bytes a call; flat means it does not
// grow with the call's length.
func BenchmarkSpoolMemory(b *testing.B) {
	for _, minutes := range []int{1, 10} {
		for _, mode := range []struct {
			name    string
			spillAt int
		}{{"spilled", 0}, {"in-memory", 1 << 30}} {
			b.Run(fmt.Sprintf("%dmin/%s", minutes, mode.name), func(b *testing.B) {
				data := pcm(0, 0, 640)
				for b.Loop() {
					sp, err := NewSpool(b.TempDir())
					if err != nil {
						b.Fatal(err)
					}
					sp.spillAt = mode.spillAt
					before := heapInUse()
					for i := range minutes * 60 * 50 {
						for _, id := range []string{"8:acs:a", "4:+14255550100"} {
							f := codec.Frame{V: 1, Participant: id, Seq: uint64(i + 1), Timestamp: t0.Add(time.Duration(i) * 20 * time.Millisecond),
								SampleRate: 16000, Channels: 1, Encoding: codec.EncodingPCM16, Data: data}
							if err := sp.Add(&f); err != nil {
								b.Fatal(err)
							}
						}
					}
					b.ReportMetric(float64(heapInUse()-before), "heap-B/call")
					sp.Close()
				}
			})
		}
	}
}

func heapInUse() int64 {
	runtime.GC()
	var m runtime.MemStats
	runtime.ReadMemStats(&m)
	return int64(m.HeapInuse)
}
