package console_test

import (
	"encoding/binary"
	"fmt"
	"io"
	"math"
	"runtime"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/gorilla/websocket"

	"github.com/audiofan/audiofan/codec"
	"github.com/audiofan/audiofan/subscribers/conformance"
	"github.com/audiofan/audiofan/subscribers/console"
)

// BenchmarkPages is a busy call (10 participants, one second of audio per
// op) with 1 or 10 pages open on it, each page reading the call's feed
// (watch), or reading it and listening in to the whole call (listen). It reports the process's CPU and allocations per frame
// (the embedded NATS server, the console and the pages' reads together) and
// the heap in use with the pages open: the console's cost should not grow
// with the pages beyond the bytes it writes to each.
func BenchmarkPages(b *testing.B) {
	for _, listen := range []bool{false, true} {
		for _, pages := range []int{1, 10} {
			name := fmt.Sprintf("watch/pages=%d", pages)
			if listen {
				name = fmt.Sprintf("listen/pages=%d", pages)
			}
			b.Run(name, func(b *testing.B) { benchPages(b, pages, listen) })
		}
	}
}

func benchPages(b *testing.B, pages int, listen bool) {
	e := start(b, nil)
	e.publish(live("busy"))
	tok := codec.EncodeToken("busy")
	conformance.WaitFor(b, "call listed", func() bool { return len(e.calls()) == 1 })
	for range pages {
		f := openFeed(b, e.srv.URL+"/api/calls/"+string(tok)+"/feed")
		go func() { _, _ = io.Copy(io.Discard, f.resp.Body) }()
		b.Cleanup(func() { f.resp.Body.Close() })
		if !listen {
			continue
		}
		ws, _, err := websocket.DefaultDialer.Dial("ws"+strings.TrimPrefix(e.srv.URL, "http")+"/api/calls/"+string(tok)+"/listen", nil)
		if err != nil {
			b.Fatal(err)
		}
		b.Cleanup(func() { ws.Close() })
		// The page reads raw bytes: parsing frames here would put the
		// browser's work in the console's figures (one process).
		go func() { _, _ = io.Copy(io.Discard, ws.UnderlyingConn()) }()
	}
	conformance.WaitFor(b, "the call read", func() bool { return console.Frames(e.c, tok) >= 400 })

	const parts, perOp = 10, 500 // 10 participants × 50 frames: one second
	subjects := make([]string, parts)
	pcm := make([][]byte, parts)
	for p := range parts {
		subjects[p] = e.ref.Prefix + "." + string(tok) + ".audio.p" + fmt.Sprint(p)
		pcm[p] = make([]byte, 640)
		for s := range 320 {
			binary.LittleEndian.PutUint16(pcm[p][2*s:], uint16(int16(6000*math.Sin(float64(s)*float64(p+1)/10))))
		}
	}
	t0 := time.Now()
	before := console.Frames(e.c, tok)
	runtime.GC()
	var ms0 runtime.MemStats
	runtime.ReadMemStats(&ms0)
	cpu0 := cpuTime()
	b.ResetTimer()
	n := 0
	for i := range b.N {
		for f := range perOp / parts {
			for p := range parts {
				data, _ := codec.Marshal(&codec.Frame{V: 1, Call: "busy", Participant: "p" + fmt.Sprint(p), Seq: uint64(n + 1),
					Timestamp: t0.Add(time.Duration(i*50+f) * 20 * time.Millisecond), SampleRate: 16000, Channels: 1,
					Encoding: codec.EncodingPCM16, Data: pcm[p]})
				if _, err := e.js.PublishAsync(subjects[p], data); err != nil {
					b.Fatal(err)
				}
			}
			n++
		}
		<-e.js.PublishAsyncComplete()
	}
	want := before + int64(perOp*b.N)
	conformance.WaitFor(b, "every frame read", func() bool { return console.Frames(e.c, tok) >= want })
	b.StopTimer()
	cpu := cpuTime() - cpu0
	var ms runtime.MemStats
	runtime.ReadMemStats(&ms)
	b.ReportMetric(float64(cpu.Nanoseconds())/float64(perOp*b.N), "cpu-ns/frame")
	b.ReportMetric(float64(ms.TotalAlloc-ms0.TotalAlloc)/float64(perOp*b.N), "alloc-B/frame")
	runtime.GC()
	runtime.ReadMemStats(&ms)
	b.ReportMetric(float64(ms.HeapInuse)/(1<<20), "heap-MiB")
}

func cpuTime() time.Duration {
	var ru syscall.Rusage
	_ = syscall.Getrusage(syscall.RUSAGE_SELF, &ru)
	return time.Duration(ru.Utime.Nano() + ru.Stime.Nano())
}
