package main

import (
	"context"
	"encoding/json"
	"fmt"
	"os"
	"path/filepath"
	"slices"
	"sort"
	"strings"
	"testing"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"

	"github.com/audiofan/audiofan/broker"
	"github.com/audiofan/audiofan/cmd/audiofan/sim"
	"github.com/audiofan/audiofan/codec"
)

// A sharded bus on a 3-node cluster (R3, AUDIOFAN_STREAM_SHARDS=3, the
// nodes started from configuration files with the mappings
// `audiofan nats-accounts` writes): the shards' leaders are spread over
// the three nodes; then, with 12 calls streaming, the node leading shard 0
// is killed with SIGKILL and started again. Nothing is lost, duplicated or
// reordered, every call is recorded with every frame sent, and the leaders
// are spread again after the restart. Each shard's p99 of received→stored
// is logged, the killed leader's shard apart (a figure, not a pass mark).
func TestShardedCluster(t *testing.T) {
	if os.Getenv("AUDIOFAN_TOPOLOGY") == "" {
		t.Skip("set AUDIOFAN_TOPOLOGY=1 (make test-cluster): builds the binaries and runs a cluster of processes")
	}
	start := time.Now()
	audiofanBin, natsBin := buildBinaries(t)
	add := startProcs(t)
	layout := broker.Layout{Stream: "CALLS", Prefix: "calls", Partitions: 32, Shards: 3}

	var clients []string
	var nodes []*proc
	cluster := clusterConfigs(t, natsBin, 3, broker.Mappings(layout.Prefix, layout.Partitions))
	for i, n := range cluster {
		nodes = append(nodes, add(&proc{name: fmt.Sprintf("nats-%d", i+1), bin: natsBin, args: []string{"-c", n.file}}))
		clients = append(clients, n.client)
	}
	for i, n := range cluster { // healthy once JetStream has its quorum: every node started first
		nodes[i].ready("http://" + n.monitor + "/healthz")
	}
	natsURL := "nats://" + strings.Join(clients, ",nats://")
	dataDir := t.TempDir()
	common := []string{"NATS_URL=" + natsURL, "AUDIOFAN_STREAM_REPLICAS=3", "AUDIOFAN_STREAM_SHARDS=3", "AUDIOFAN_LEASE=3s",
		"AUDIOFAN_CONSOLE=off", "AUDIOFAN_LOG_LEVEL=info"}
	lossless := []string{"AUDIOFAN_PUBLISH_WINDOW=4096", "AUDIOFAN_PUBLISH_MAX_PENDING=131072", "AUDIOFAN_PUBLISH_BLOCK=30s",
		"AUDIOFAN_PUBLISH_ACK_TIMEOUT=2s"}
	role := func(name, cmd string, extra ...string) string {
		addr := freePort(t)
		p := add(&proc{name: name, bin: audiofanBin, args: []string{cmd},
			env: append(append(append([]string{}, common...), "AUDIOFAN_HTTP_ADDR="+addr, "AUDIOFAN_INSTANCE="+name), extra...)})
		p.ready("http://" + addr + "/readyz")
		return addr
	}
	rcv := role("receiver-1", "receiver", append(lossless, "AUDIOFAN_DRAIN_TIMEOUT=30s")...)
	role("recorder-1", "recorder", "AUDIOFAN_DATA_DIR="+dataDir)
	role("analytics-1", "analytics")

	nc, err := nats.Connect(natsURL, nats.MaxReconnects(-1))
	if err != nil {
		t.Fatal(err)
	}
	defer nc.Close()
	js, _ := jetstream.New(nc)
	ref := broker.StreamRef{Name: layout.Stream, Prefix: layout.Prefix}
	spread := func(what string) map[string]string {
		t.Helper()
		var leaders map[string]string
		for deadline := time.Now().Add(60 * time.Second); ; time.Sleep(500 * time.Millisecond) {
			leaders = shardLeaders(t, js, ref)
			seen := map[string]bool{}
			for _, l := range leaders {
				if l != "" {
					seen[l] = true
				}
			}
			if len(seen) == 3 {
				t.Logf("leaders %s: %v", what, leaders)
				return leaders
			}
			if time.Now().After(deadline) {
				t.Fatalf("leaders %s not spread: %v", what, leaders)
			}
		}
	}
	leaders := spread("at start")
	if n := durableConsumers(t, js); n != 2*layout.Partitions {
		t.Errorf("%d durable consumers over the shards, want %d (2 roles' partitions)", n, 2*layout.Partitions)
	}
	t.Logf("cluster up in %v", time.Since(start).Round(time.Second))

	ch := make(chan sim.Summary, 1)
	p := &proc{name: "sim", bin: audiofanBin, out: &syncBuffer{},
		args: []string{"sim", "--url", "ws://" + rcv + "/ws", "--calls", "12", "--participants", "2", "--duration", "12s",
			"--verify", "--json", "--call-prefix", "shard", "--settle", "60s"},
		env: []string{"NATS_URL=" + natsURL}}
	add(p)
	go func() {
		err := <-p.done
		p.done <- err
		var s sim.Summary
		out := p.out.String()
		if i := strings.Index(out, "{"); i >= 0 {
			_ = json.Unmarshal([]byte(out[i:strings.LastIndex(out, "}")+1]), &s)
		}
		ch <- s
	}()
	time.Sleep(4 * time.Second)
	victim := leaders[layout.ShardStream(0)]
	n := slices.IndexFunc(nodes, func(p *proc) bool { return p.name == "nats-"+strings.TrimPrefix(victim, "n") })
	t.Logf("kill -9 %s, the leader of %s", nodes[n].name, layout.ShardStream(0))
	nodes[n].kill()
	time.Sleep(3 * time.Second)
	nodes[n].start()

	var sum sim.Summary
	select {
	case sum = <-ch:
	case <-time.After(3 * time.Minute):
		t.Fatal("sim did not finish")
	}
	v := sum.Verify
	if v == nil || sum.CallsFailed != 0 || sum.Errors != 0 || v.Missing != 0 || v.Duplicates != 0 || v.OutOfOrder != 0 || v.Sent == 0 {
		t.Fatalf("sim: %+v\n%s", v, p.out.String())
	}
	t.Logf("sim: %d frames sent, %d stored once, 0 missing; p50 %.0f ms, p99 %.0f ms, max %.0f ms", v.Sent, v.Stored, v.LatencyP50ms, v.LatencyP99ms, v.LatencyMaxMS)
	calls := map[string]uint64{}
	for _, s := range v.Streams {
		calls[s.Call] += s.Sent
	}
	inShard := map[int]int{}
	for id, sent := range calls {
		inShard[layout.ShardOf(layout.Subjects().Partition(codec.EncodeToken(id)))]++
		if !fileWithin(filepath.Join(dataDir, "recordings", string(codec.EncodeToken(id)), "mix.wav"), 90*time.Second) {
			t.Fatalf("call %s: no recording", id)
		}
		if _, stored := renderStored(t, js, id); stored != int(sent) {
			t.Errorf("call %s: %d frames stored, %d sent", id, stored, sent)
		}
	}
	t.Logf("calls by shard: %v", inShard)
	for i, s := range shardLatencies(t, js, ref, "shard") {
		sort.Float64s(s)
		if len(s) > 0 {
			t.Logf("%s (%s): %d frames, received→stored p99 %.1f ms, max %.1f ms", layout.ShardStream(i),
				map[bool]string{true: "its leader killed", false: "unaffected"}[i == 0], len(s), s[len(s)*99/100], s[len(s)-1])
		}
	}
	spread("after the restart")
	t.Logf("sharded cluster test done in %v", time.Since(start).Round(time.Second))
}

// clusterNode is a node of a cluster of configuration files: its file,
// client address and monitoring address.
type clusterNode struct{ file, client, monitor string }

// clusterConfigs writes the configuration files of an n-node cluster on
// loopback (server_name n1…, JetStream, the mappings given), each checked
// with nats-server -t.
func clusterConfigs(t testing.TB, bin string, n int, mappings []broker.Mapping) []clusterNode {
	t.Helper()
	var nodes []clusterNode
	var routes []string
	for range n {
		nodes = append(nodes, clusterNode{client: freePort(t), monitor: freePort(t)})
		routes = append(routes, freePort(t))
	}
	for i := range nodes {
		dir := t.TempDir()
		var conf strings.Builder
		fmt.Fprintf(&conf, "server_name: n%d\nlisten: %q\nhttp: %q\njetstream { store_dir: %q }\n", i+1, nodes[i].client, nodes[i].monitor, filepath.Join(dir, "js"))
		fmt.Fprintf(&conf, "cluster {\n  name: audiofan\n  listen: %q\n  routes: [\n", routes[i])
		for _, r := range routes {
			fmt.Fprintf(&conf, "    \"nats://%s\"\n", r)
		}
		conf.WriteString("  ]\n}\n")
		nodes[i].file = writeNATSConfig(t, bin, dir, conf.String(), mappings)
	}
	return nodes
}

// shardLeaders are the shards' leaders, by stream ("" while electing).
func shardLeaders(t testing.TB, js jetstream.JetStream, ref broker.StreamRef) map[string]string {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	out := map[string]string{}
	bus, err := broker.FindBus(ctx, js, ref)
	if err != nil {
		return out
	}
	for _, s := range bus.Shards() {
		info, err := s.Info(ctx)
		if err == nil && info.Cluster != nil {
			out[info.Config.Name] = info.Cluster.Leader
		}
	}
	return out
}

// shardLatencies are, per shard, the ms from the receiver's receiving to
// the stream's storing of every frame of the calls named with prefix.
func shardLatencies(t *testing.T, js jetstream.JetStream, ref broker.StreamRef, prefix string) [][]float64 {
	t.Helper()
	ctx := context.Background()
	bus, err := broker.FindBus(ctx, js, ref)
	if err != nil {
		t.Fatal(err)
	}
	out := make([][]float64, len(bus.Shards()))
	for i, s := range bus.Shards() {
		oc, err := s.OrderedConsumer(ctx, jetstream.OrderedConsumerConfig{FilterSubjects: []string{bus.Subjects().AllKind(broker.KindAudio)}})
		if err != nil {
			t.Fatal(err)
		}
		for empty := 0; empty < 5; {
			batch, err := oc.Fetch(1000, jetstream.FetchMaxWait(2*time.Second))
			if err != nil {
				t.Fatal(err)
			}
			n, last := 0, false
			for m := range batch.Messages() {
				n++
				md, _ := m.Metadata()
				var f codec.Frame
				if codec.UnmarshalFrame(m.Data(), &f) == nil && strings.HasPrefix(f.Call, prefix) && md != nil {
					out[i] = append(out[i], float64(md.Timestamp.Sub(f.ReceivedAt).Microseconds())/1000)
				}
				last = md != nil && md.NumPending == 0
			}
			if last {
				break
			}
			if n == 0 {
				empty++
			}
		}
	}
	return out
}
