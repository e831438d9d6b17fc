package recording_test

import (
	"context"
	"runtime"
	"runtime/metrics"
	"sync/atomic"
	"testing"
	"time"

	"github.com/nats-io/nats.go/jetstream"
	"github.com/prometheus/client_golang/prometheus"

	"github.com/audiofan/audiofan/broker/natstest"
	"github.com/audiofan/audiofan/subscribers"
	"github.com/audiofan/audiofan/subscribers/conformance"
	"github.com/audiofan/audiofan/subscribers/recording"
)

// BenchmarkUploads records 100 stored calls (two participants of 20 s
// each: three WAVs, 1.9 MB a call) whose ends all wait at once, into Azure
// Blob Storage (Azurite, a process of its own) and into an S3-compatible
// store (gofakes3, in this process), each against the disk store in the
// same run, its baseline: the uploads' cost is the difference. Reported:
// the blob stores' MB/s of recordings and their time against the disk's
// (x-disk, 1 = as fast), the most uploads pending at once, and the peak
// live Go heap during the Azure run against the disk run's (the S3 fake keeps what
// it stores in this heap, so its peak says nothing of the recorder's).
// Needs AUDIOFAN_AZURITE, as the Azure tests do.
func BenchmarkUploads(b *testing.B) {
	const calls, parts, seconds = 100, 2, 20
	az := startAzurite(b)
	if _, err := az.client(b).CreateContainer(context.Background(), "recordings", nil); err != nil {
		b.Fatal(err)
	}
	b.Setenv("AZURE_STORAGE_CONNECTION_STRING", az.connector)
	s3 := conformance.StartS3(b, "recordings")
	bus := natstest.StartBus(b)
	conformance.StoreCalls(b, bus.JS, bus.Stream.Subjects(), calls, parts, seconds)
	bytes := float64(calls * (parts + 1) * (44 + seconds*50*640))

	type run struct {
		took             time.Duration
		peakHeap         uint64
		peakPending      float64
		name, store, dir string
	}
	record := func(store string) run {
		r := run{store: store, dir: b.TempDir()}
		var reg *prometheus.Registry
		var live atomic.Pointer[prometheus.Registry]
		stop := make(chan struct{})
		sampled := make(chan struct{})
		// The live heap as the last GC found it: what is held, not the
		// garbage between two collections (HeapInuse swung by ±30% run to
		// run with it).
		live0 := []metrics.Sample{{Name: "/gc/heap/live:bytes"}}
		runtime.GC()
		metrics.Read(live0)
		base := live0[0].Value.Uint64()
		go func() { // the live heap and the pending uploads, every 20 ms
			defer close(sampled)
			t := time.NewTicker(20 * time.Millisecond)
			defer t.Stop()
			for {
				select {
				case <-stop:
					return
				case <-t.C:
				}
				metrics.Read(live0)
				if h := live0[0].Value.Uint64(); h > base {
					r.peakHeap = max(r.peakHeap, h-base)
				}
				if g := live.Load(); g != nil {
					r.peakPending = max(r.peakPending, conformance.Metric(b, g, "audiofan_recorder_uploads_pending", ""))
				}
			}
		}()
		start := time.Now()
		r.name = conformance.RunToEnd(b, bus.NS, bus.Stream.StreamRef, calls, func(js jetstream.JetStream, g prometheus.Registerer) subscribers.Role {
			cfg := natstest.Defaults[recording.Config](b)
			cfg.Store = store
			rec, err := recording.New(context.Background(), cfg, r.dir, js, g, natstest.Logger())
			if err != nil {
				b.Fatal(err)
			}
			b.Cleanup(func() { rec.Close() })
			reg = g.(*prometheus.Registry)
			live.Store(reg)
			return rec.Role()
		})
		r.took = time.Since(start)
		close(stop)
		<-sampled
		conformance.ForgetRole(bus.JS, bus.Stream, r.name) // the next run is a role anew
		return r
	}
	var disk, azure, s3run run
	var azX, s3X, heapX float64
	for b.Loop() {
		disk = record("disk")
		azure = record("azblob://recordings")
		disk2 := record("disk")
		s3run = record(s3.URL("recordings", ""))
		d := (disk.took + disk2.took) / 2
		azX += azure.took.Seconds() / d.Seconds()
		s3X += s3run.took.Seconds() / d.Seconds()
		heapX += float64(azure.peakHeap) / float64(max(disk.peakHeap, disk2.peakHeap))
	}
	n := float64(b.N)
	b.ReportMetric(bytes/azure.took.Seconds()/1e6, "azblob-MB/s")
	b.ReportMetric(bytes/s3run.took.Seconds()/1e6, "s3-MB/s")
	b.ReportMetric(azX/n, "azblob-x-disk")
	b.ReportMetric(s3X/n, "s3-x-disk")
	b.ReportMetric(float64(azure.peakHeap)/1e6, "azblob-peak-heap-MB")
	b.ReportMetric(float64(disk.peakHeap)/1e6, "disk-peak-heap-MB")
	b.ReportMetric(heapX/n, "azblob-heap-x-disk")
	b.ReportMetric(max(azure.peakPending, s3run.peakPending), "max-pending")
}
