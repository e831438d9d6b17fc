package main

import (
	"context"
	"fmt"
	"strconv"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"
	"github.com/synadia-io/orbit.go/jetstreamext"

	"github.com/audiofan/audiofan/broker"
	"github.com/audiofan/audiofan/broker/natstest"
	"github.com/audiofan/audiofan/codec"
)

// BenchmarkBusCostPerFrame measures what storing one audio frame costs the
// NATS server, side by side in one run on one nats-server process (built
// from go.mod, file storage, R1): 10 publishers ("sockets") of 5,000 real
// frames each (a msgpack Frame of 640 bytes of PCM, on its per-participant
// subject), published
//
//   - async, each with a Nats-Msg-Id, a window of 512 per socket (how the
//     receiver publishes today: the baseline);
//   - async without Nats-Msg-Id (what the de-duplication costs);
//   - as one fast batch per socket (ADR-50, the stream's allow_batched;
//     orbit.go's jetstreamext), acknowledged every 100 messages.
//
// It reports the server's CPU per stored frame (from /proc), the
// publishers' own, and each against the baseline. Exploration for the
// receiver's publishing path: the receiver itself is not in the loop here.
func BenchmarkBusCostPerFrame(b *testing.B) {
	bin := buildNATSServer(b)
	const sockets, perSocket = 10, 5000
	type variant struct {
		name    string
		batched bool
		plain   bool // a stream without the partitioning subject transform
		publish func(b *testing.B, js jetstream.JetStream, subjects []string, frame []byte, sock int)
	}
	async := func(msgID bool) func(*testing.B, jetstream.JetStream, []string, []byte, int) {
		return func(b *testing.B, js jetstream.JetStream, subjects []string, frame []byte, sock int) {
			for i := range perSocket {
				m := &nats.Msg{Subject: subjects[i%len(subjects)], Data: frame}
				if msgID {
					m.Header = nats.Header{jetstream.MsgIDHeader: []string{"conn" + strconv.Itoa(sock) + "/" + strconv.Itoa(i)}}
				}
				if _, err := js.PublishMsgAsync(m); err != nil {
					b.Error(err)
					return
				}
			}
		}
	}
	fastBatch := func(flow uint16) func(*testing.B, jetstream.JetStream, []string, []byte, int) {
		return func(b *testing.B, js jetstream.JetStream, subjects []string, frame []byte, _ int) {
			fp, err := jetstreamext.NewFastPublisher(js, jetstreamext.FastPublishFlowControl{Flow: flow, MaxOutstandingAcks: 4})
			if err != nil {
				b.Error(err)
				return
			}
			for i := range perSocket - 1 {
				if _, err := fp.Add(subjects[i%len(subjects)], frame); err != nil {
					b.Error(err)
					return
				}
			}
			if _, err := fp.Commit(context.Background(), subjects[0], frame); err != nil {
				b.Error(err)
			}
		}
	}
	variants := []variant{
		{name: "async+msgid", publish: async(true)},
		{name: "async", publish: async(false)},
		{name: "async+msgid-notransform", plain: true, publish: async(true)},
		{name: "fastbatch", batched: true, publish: fastBatch(100)},
		{name: "fastbatch500", batched: true, publish: fastBatch(500)},
		{name: "fastbatch500-notransform", batched: true, plain: true, publish: fastBatch(500)},
	}
	server := map[string]time.Duration{}
	client := map[string]time.Duration{}
	for b.Loop() {
		for _, v := range variants {
			p := startNATSProcess(b, bin)
			nc, err := nats.Connect(p.url)
			if err != nil {
				b.Fatal(err)
			}
			js, err := jetstream.New(nc, jetstream.WithPublishAsyncMaxPending(sockets*512))
			if err != nil {
				b.Fatal(err)
			}
			sc := natstest.Defaults[broker.StreamConfig](b)
			if v.plain {
				sc.Partitions = 0
				if _, err := js.CreateStream(context.Background(), jetstream.StreamConfig{Name: sc.Name, Subjects: []string{sc.Prefix + ".>"},
					Storage: jetstream.FileStorage, Duplicates: 2 * time.Minute}); err != nil {
					b.Fatal(err)
				}
			} else if _, err := broker.EnsureStream(context.Background(), js, sc, natstest.Logger()); err != nil {
				b.Fatal(err)
			}
			if v.batched {
				s, err := js.Stream(context.Background(), sc.Name)
				if err != nil {
					b.Fatal(err)
				}
				cfg := s.CachedInfo().Config
				cfg.AllowBatchPublish = true
				if _, err := js.UpdateStream(context.Background(), cfg); err != nil {
					b.Fatalf("allow_batched: %v", err)
				}
			}
			subj := sc.Subjects()
			f := codec.Frame{V: 1, Call: "bench", Participant: "8:acs:x", SampleRate: 16000, Channels: 1,
				Encoding: codec.EncodingPCM16, Data: make([]byte, 640), Timestamp: time.Now(), ReceivedAt: time.Now()}
			frame := codec.AppendFrame(nil, &f)
			s0, c0 := p.cpu(b), selfCPU(b)
			var wg sync.WaitGroup
			for sock := range sockets {
				call := codec.EncodeToken(fmt.Sprintf("call-%d", sock))
				subjects := []string{subj.Audio(call, codec.EncodeToken("8:acs:a")), subj.Audio(call, codec.EncodeToken("4:+14255550123"))}
				wg.Add(1)
				go func() { defer wg.Done(); v.publish(b, js, subjects, frame, sock) }()
			}
			wg.Wait()
			select {
			case <-js.PublishAsyncComplete():
			case <-time.After(60 * time.Second):
				b.Fatal("publishes not acknowledged")
			}
			server[v.name] += p.cpu(b) - s0
			client[v.name] += selfCPU(b) - c0
			info, err := js.Stream(context.Background(), sc.Name)
			if err != nil {
				b.Fatal(err)
			}
			if got := info.CachedInfo().State.Msgs; got != sockets*perSocket {
				b.Errorf("%s: %d stored, want %d", v.name, got, sockets*perSocket)
			}
			nc.Close()
			_ = p.cmd.Process.Kill()
			_ = p.cmd.Wait()
		}
	}
	frames := float64(b.N * sockets * perSocket)
	base := server["async+msgid"]
	for _, v := range variants {
		b.ReportMetric(float64(server[v.name].Microseconds())/frames, "server-µs/frame-"+v.name)
		b.ReportMetric(float64(client[v.name].Microseconds())/frames, "client-µs/frame-"+v.name)
		b.ReportMetric(float64(server[v.name])/float64(base), "server-vs-baseline-"+v.name)
	}
}

// selfCPU is this process's user and system time so far.
func selfCPU(b *testing.B) time.Duration {
	var ru syscall.Rusage
	if err := syscall.Getrusage(syscall.RUSAGE_SELF, &ru); err != nil {
		b.Fatal(err)
	}
	return time.Duration(ru.Utime.Nano() + ru.Stime.Nano())
}
