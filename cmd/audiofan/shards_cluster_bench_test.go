package main

import (
	"context"
	"fmt"
	"os"
	"os/exec"
	"slices"
	"strconv"
	"testing"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"

	"github.com/audiofan/audiofan/broker"
	"github.com/audiofan/audiofan/broker/natstest"
)

// BenchmarkShardsCluster measures what shards buy on a cluster: three
// nats-server processes (R3, file store, every publish acknowledged), a
// receiver on each node, and 30 WebSocket clients of distinct calls spread
// over the receivers, flooding as fast as they take, with
// AUDIOFAN_STREAM_SHARDS = 1 and 3 (the shards' leaders spread, one a
// node) in AUDIOFAN_BENCH_ROUNDS rounds (3), interleaved. It reports each
// setting's median stored frames/s, S3/S1, and how evenly the nodes share
// the servers' CPU: the busiest node's CPU over the mean (1 is even; with
// one stream, its leader does the leader work of every call).
func BenchmarkShardsCluster(b *testing.B) {
	bin := buildNATSServer(b)
	rounds := 3
	if v, err := strconv.Atoi(os.Getenv("AUDIOFAN_BENCH_ROUNDS")); err == nil && v > 0 {
		rounds = v
	}
	rate, spread := map[int][]float64{}, map[int][]float64{}
	for b.Loop() {
		for range rounds {
			for _, s := range []int{1, 3} {
				fps, sp := clusterFloodOnce(b, bin, s)
				rate[s], spread[s] = append(rate[s], fps), append(spread[s], sp)
			}
		}
	}
	for _, s := range []int{1, 3} {
		b.ReportMetric(median(rate[s]), fmt.Sprintf("frames/s-S%d", s))
		b.ReportMetric(median(spread[s]), fmt.Sprintf("busiest/mean-CPU-S%d", s))
	}
	b.ReportMetric(median(rate[3])/median(rate[1]), "S3/S1")
	b.Logf("frames/s by round: %v; busiest node's CPU over the mean: %v", rate, spread)
}

// clusterFloodOnce floods a fresh 3-node cluster whose bus has s shards:
// frames stored a second, and the busiest node's share of the servers' CPU
// over the mean share.
func clusterFloodOnce(b *testing.B, bin string, shards int) (float64, float64) {
	sc := natstest.Defaults[broker.StreamConfig](b)
	sc.Shards, sc.Replicas = shards, 3
	nodes := clusterConfigs(b, bin, 3, natstest.MappingsFor(sc))
	var procs []*natsProcess
	for _, n := range nodes {
		cmd := exec.Command(bin, "-c", n.file)
		if err := cmd.Start(); err != nil {
			b.Fatal(err)
		}
		p := &natsProcess{cmd: cmd, url: "nats://" + n.client}
		procs = append(procs, p)
		defer func() { _ = cmd.Process.Kill(); _ = cmd.Wait() }()
	}
	for _, p := range procs {
		waitNATS(b, p.url)
	}
	nc, err := nats.Connect(procs[0].url)
	if err != nil {
		b.Fatal(err)
	}
	defer nc.Close()
	js, _ := jetstream.New(nc)
	for deadline := time.Now().Add(30 * time.Second); ; time.Sleep(200 * time.Millisecond) {
		if _, err := js.AccountInfo(context.Background()); err == nil {
			break // the cluster has its meta leader
		}
		if time.Now().After(deadline) {
			b.Fatal("the cluster's JetStream did not come up")
		}
	}
	var rcvs []*natstest.Receiver
	for _, n := range nodes { // one receiver a node, as behind a load balancer
		r := natstest.StartReceiverStream(b, &natstest.Server{Addr: n.client}, sc, nil)
		defer r.Stop()
		rcvs = append(rcvs, r)
	}
	bus, err := broker.FindBus(context.Background(), js, sc.StreamRef)
	if err != nil {
		b.Fatal(err)
	}
	if shards > 1 {
		for deadline := time.Now().Add(30 * time.Second); len(distinctLeaders(b, js, sc.StreamRef)) < shards; time.Sleep(500 * time.Millisecond) {
			if _, err := broker.SpreadLeaders(context.Background(), js, bus, natstest.Logger()); err != nil {
				b.Logf("spreading the leaders: %v", err)
			}
			if time.Now().After(deadline) {
				b.Fatalf("leaders not spread: %v", shardLeaders(b, js, sc.StreamRef))
			}
		}
	}
	res := flood(b, rcvs, js, sc, fmt.Sprintf("c%d", shards), 30, procs)
	total := 0.0
	for _, c := range res.cpu {
		total += c.Seconds()
	}
	busiest := slices.Max(res.cpu).Seconds()
	return res.stored / res.elapsed.Seconds(), busiest / (total / float64(len(res.cpu)))
}

// distinctLeaders are the nodes leading the bus's shards.
func distinctLeaders(b testing.TB, js jetstream.JetStream, ref broker.StreamRef) map[string]bool {
	seen := map[string]bool{}
	for _, l := range shardLeaders(b, js, ref) {
		if l != "" {
			seen[l] = true
		}
	}
	return seen
}
