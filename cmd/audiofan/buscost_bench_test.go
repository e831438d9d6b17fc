package main

import (
	"context"
	"errors"
	"fmt"
	"os/exec"
	"strconv"
	"strings"
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
// NATS servers, side by side in one run, on one nats-server process (R1) and
// on a 3-node cluster on loopback (R3), both built from go.mod, file storage:
// 10 publishers ("sockets") of 5,000 real frames each (a msgpack Frame of 640
// bytes of PCM, on its per-participant subject), published
//
//   - async, each with a Nats-Msg-Id, a window of 512 per socket (how the
//     receiver published before: the baseline);
//   - async without Nats-Msg-Id (what the de-duplication costs);
//   - as one fast batch per socket (ADR-50, the stream's allow_batched;
//     orbit.go's jetstreamext), acknowledged every 100 or 500 messages;
//   - on R1, to a stream in persist_mode async: the server writes stored
//     messages to its files in batches instead of one write(2) each (R3
//     streams already do, their Raft log backing them). Measured, not
//     offered: a server that dies uncleanly loses its last few milliseconds
//     of stored messages and, by design (filestore's recovery skips its
//     last-sequence guard when flushing async), hands their sequence
//     numbers out again, and the roles' checkpoints are stream sequences:
//     a role would skip the new messages that reused them.
//
// It reports the servers' CPU per stored frame (from /proc), the
// publishers' own, and each against the baseline of the same size.
func BenchmarkBusCostPerFrame(b *testing.B) {
	bin := buildNATSServer(b)
	b.Run("R1", func(b *testing.B) {
		busCost(b, 1, func(b *testing.B) natsServers {
			p := startNATSProcess(b, bin)
			return natsServers{url: p.url, procs: []*natsProcess{p}}
		})
	})
	b.Run("R3", func(b *testing.B) { busCost(b, 3, func(b *testing.B) natsServers { return startNATSCluster(b, bin) }) })
}

// natsServers are nats-server processes serving one URL.
type natsServers struct {
	url   string
	procs []*natsProcess
}

func (s natsServers) cpu(b *testing.B) (t time.Duration) {
	for _, p := range s.procs {
		t += p.cpu(b)
	}
	return t
}

func (s natsServers) stop() {
	for _, p := range s.procs {
		_ = p.cmd.Process.Kill()
		_ = p.cmd.Wait()
	}
}

// startNATSCluster starts a 3-node JetStream cluster on loopback and waits
// for its meta leader.
func startNATSCluster(b *testing.B, bin string) natsServers {
	var clients, routes []string
	for range 3 {
		clients, routes = append(clients, freePort(b)), append(routes, "nats://"+freePort(b))
	}
	var s natsServers
	for i := range 3 {
		cmd := exec.Command(bin, "-a", "127.0.0.1", "-p", port(clients[i]), "-n", fmt.Sprintf("n%d", i+1), "-js", "-sd", b.TempDir(),
			"--cluster_name", "buscost", "-cluster", routes[i], "-routes", strings.Join(routes, ","))
		if err := cmd.Start(); err != nil {
			b.Fatal(err)
		}
		p := &natsProcess{cmd: cmd, url: "nats://" + clients[i]}
		b.Cleanup(func() { _ = cmd.Process.Kill(); _ = cmd.Wait() })
		s.procs = append(s.procs, p)
	}
	s.url = "nats://" + strings.Join(clients, ",nats://")
	nc, err := nats.Connect(s.url, nats.RetryOnFailedConnect(true), nats.MaxReconnects(-1))
	if err != nil {
		b.Fatal(err)
	}
	defer nc.Close()
	js, _ := jetstream.New(nc)
	for i := 0; ; i++ {
		ctx, cancel := context.WithTimeout(context.Background(), time.Second)
		_, err := js.AccountInfo(ctx)
		cancel()
		if err == nil {
			return s
		}
		if i > 60 {
			b.Fatalf("cluster not ready: %v", err)
		}
		time.Sleep(500 * time.Millisecond)
	}
}

func busCost(b *testing.B, replicas int, start func(*testing.B) natsServers) {
	const sockets, perSocket = 10, 5000
	type variant struct {
		name    string
		batched bool
		plain   bool // a stream without the partitioning subject transform
		persist bool // the stream's persist_mode async
		publish func(b *testing.B, js jetstream.JetStream, subjects []string, frame []byte, sock int)
	}
	async := func(msgID bool) func(*testing.B, jetstream.JetStream, []string, []byte, int) {
		return func(b *testing.B, js jetstream.JetStream, subjects []string, frame []byte, sock int) {
			for i := range perSocket {
				m := &nats.Msg{Subject: subjects[i%len(subjects)], Data: frame}
				if msgID {
					m.Header = nats.Header{jetstream.MsgIDHeader: []string{"conn" + strconv.Itoa(sock) + "/" + strconv.Itoa(i)}}
				}
				for {
					_, err := js.PublishMsgAsync(m)
					if errors.Is(err, jetstream.ErrTooManyStalledMsgs) {
						continue // the window stayed full past the stall wait: wait on
					}
					if err != nil {
						b.Error(err)
						return
					}
					break
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
		{name: "fastbatch", batched: true, publish: fastBatch(100)},
		{name: "fastbatch500", batched: true, publish: fastBatch(500)},
	}
	if replicas == 1 {
		variants = append(variants,
			variant{name: "async+msgid-notransform", plain: true, publish: async(true)},
			variant{name: "async+msgid+persistasync", persist: true, publish: async(true)},
			variant{name: "async+persistasync", persist: true, publish: async(false)},
			variant{name: "fastbatch500+persistasync", batched: true, persist: true, publish: fastBatch(500)},
		)
	}
	server := map[string]time.Duration{}
	client := map[string]time.Duration{}
	for b.Loop() {
		for _, v := range variants {
			srv := start(b)
			nc, err := nats.Connect(srv.url)
			if err != nil {
				b.Fatal(err)
			}
			js, err := jetstream.New(nc, jetstream.WithPublishAsyncMaxPending(sockets*512))
			if err != nil {
				b.Fatal(err)
			}
			sc := natstest.Defaults[broker.StreamConfig](b)
			sc.Replicas = replicas
			ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
			if v.plain {
				sc.Partitions = 0
				if _, err := js.CreateStream(ctx, jetstream.StreamConfig{Name: sc.Name, Subjects: []string{sc.Prefix + ".>"},
					Storage: jetstream.FileStorage, Duplicates: 2 * time.Minute, Replicas: replicas}); err != nil {
					b.Fatal(err)
				}
			} else if _, err := broker.EnsureStream(ctx, js, sc, natstest.Logger()); err != nil {
				b.Fatal(err)
			}
			if v.batched || v.persist {
				s, err := js.Stream(ctx, sc.Name)
				if err != nil {
					b.Fatal(err)
				}
				cfg := s.CachedInfo().Config
				cfg.AllowBatchPublish = v.batched
				if v.persist {
					// Fixed at creation: made again.
					cfg.PersistMode = jetstream.AsyncPersistMode
					if err := js.DeleteStream(ctx, sc.Name); err != nil {
						b.Fatal(err)
					}
					_, err = js.CreateStream(ctx, cfg)
				} else {
					_, err = js.UpdateStream(ctx, cfg)
				}
				if err != nil {
					b.Fatalf("%s: %v", v.name, err)
				}
			}
			cancel()
			subj := sc.Subjects()
			f := codec.Frame{V: 1, Call: "bench", Participant: "8:acs:x", SampleRate: 16000, Channels: 1,
				Encoding: codec.EncodingPCM16, Data: make([]byte, 640), Timestamp: time.Now(), ReceivedAt: time.Now()}
			frame := codec.AppendFrame(nil, &f)
			s0, c0 := srv.cpu(b), selfCPU(b)
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
			server[v.name] += srv.cpu(b) - s0
			client[v.name] += selfCPU(b) - c0
			info, err := js.Stream(context.Background(), sc.Name)
			if err != nil {
				b.Fatal(err)
			}
			if got := info.CachedInfo().State.Msgs; got != sockets*perSocket {
				b.Errorf("%s: %d stored, want %d", v.name, got, sockets*perSocket)
			}
			nc.Close()
			srv.stop()
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

// BenchmarkBusReadCost measures what delivering one stored frame to a role
// costs the NATS server (one process, file storage, R1), side by side in one
// run: 50,000 real frames are stored once, then read whole by a durable pull
// consumer per variant, in pulls of 64, 512 (the roles' partitions) or 2,048
// messages, acknowledged each (AckExplicit) or once per 1,000 (AckAll, as the
// roles' checkpoints do, about once a second). Each role reads every frame,
// so this cost is paid once per role.
func BenchmarkBusReadCost(b *testing.B) {
	bin := buildNATSServer(b)
	const frames = 50_000
	type variant struct {
		name     string
		pull     int
		ackEvery int // 1: AckExplicit, each message; else AckAll every ackEvery
	}
	variants := []variant{
		{"pull512-ackall1000", 512, 1000}, // the roles' (the baseline)
		{"pull64-ackall1000", 64, 1000},
		{"pull2048-ackall1000", 2048, 1000},
		{"pull512-ackeach", 512, 1},
	}
	server := map[string]time.Duration{}
	for b.Loop() {
		p := startNATSProcess(b, bin)
		nc, err := nats.Connect(p.url)
		if err != nil {
			b.Fatal(err)
		}
		js, _ := jetstream.New(nc, jetstream.WithPublishAsyncMaxPending(4096))
		sc := natstest.Defaults[broker.StreamConfig](b)
		ctx := context.Background()
		s, err := broker.EnsureStream(ctx, js, sc, natstest.Logger())
		if err != nil {
			b.Fatal(err)
		}
		f := codec.Frame{V: 1, Call: "bench", Participant: "8:acs:x", SampleRate: 16000, Channels: 1,
			Encoding: codec.EncodingPCM16, Data: make([]byte, 640), Timestamp: time.Now(), ReceivedAt: time.Now()}
		frame := codec.AppendFrame(nil, &f)
		subj := sc.Subjects()
		for i := range frames {
			call := codec.EncodeToken(fmt.Sprintf("call-%d", i%50))
			for {
				_, err := js.PublishAsync(subj.Audio(call, codec.EncodeToken("8:acs:a")), frame)
				if errors.Is(err, jetstream.ErrTooManyStalledMsgs) {
					continue
				}
				if err != nil {
					b.Fatal(err)
				}
				break
			}
		}
		<-js.PublishAsyncComplete()
		for _, v := range variants {
			cfg := jetstream.ConsumerConfig{Durable: "read-" + strconv.Itoa(v.pull) + "-" + strconv.Itoa(v.ackEvery), AckPolicy: jetstream.AckAllPolicy,
				MaxAckPending: 4096, MemoryStorage: true}
			if v.ackEvery == 1 {
				cfg.AckPolicy = jetstream.AckExplicitPolicy
			}
			cons, err := s.CreateConsumer(ctx, cfg)
			if err != nil {
				b.Fatal(err)
			}
			s0 := p.cpu(b)
			it, err := cons.Messages(jetstream.PullMaxMessages(v.pull))
			if err != nil {
				b.Fatal(err)
			}
			for n := 1; n <= frames; n++ {
				msg, err := it.Next()
				if err != nil {
					b.Fatal(err)
				}
				if v.ackEvery == 1 || n%v.ackEvery == 0 || n == frames {
					if err := msg.Ack(); err != nil {
						b.Fatal(err)
					}
				}
			}
			it.Stop()
			server[v.name] += p.cpu(b) - s0
		}
		nc.Close()
		_ = p.cmd.Process.Kill()
		_ = p.cmd.Wait()
	}
	base := server[variants[0].name]
	for _, v := range variants {
		b.ReportMetric(float64(server[v.name].Microseconds())/float64(b.N*frames), "server-µs/frame-"+v.name)
		b.ReportMetric(float64(server[v.name])/float64(base), "server-vs-baseline-"+v.name)
	}
}
