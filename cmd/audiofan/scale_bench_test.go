package main

import (
	"context"
	"fmt"
	"io"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"
	"github.com/prometheus/client_golang/prometheus"

	"github.com/audiofan/audiofan/broker"
	"github.com/audiofan/audiofan/broker/natstest"
	"github.com/audiofan/audiofan/codec"
	"github.com/audiofan/audiofan/subscribers"
	"github.com/audiofan/audiofan/subscribers/conformance"
)

// BenchmarkManyCalls measures what the subscriber roles cost the NATS server
// with many calls open: a nats-server process (built from go.mod), N calls
// open (AUDIOFAN_BENCH_CALLS, 3,000 by default), each sending one frame a
// second. Phase "bare": no subscriber. Phase "roles": the recorder,
// analytics and the moderator (one replica each, in this process) on the
// same load, and phase "rest": the roles with the calls open and silent.
// Reported: the server's CPU (cores) and RSS in each phase, and whether the
// roles kept up (every frame handled by the end).
func BenchmarkManyCalls(b *testing.B) {
	calls := 3000
	if v, err := strconv.Atoi(os.Getenv("AUDIOFAN_BENCH_CALLS")); err == nil && v > 0 {
		calls = v
	}
	const phase = 20 * time.Second
	for b.Loop() {
		natsBin := buildNATSServer(b)
		ns := startNATSProcess(b, natsBin)
		nc, err := nats.Connect(ns.url)
		if err != nil {
			b.Fatal(err)
		}
		js, _ := jetstream.New(nc, jetstream.WithPublishAsyncMaxPending(8192))
		sc := natstest.Defaults[broker.StreamConfig](b)
		if _, err := broker.EnsureStream(context.Background(), js, sc, natstest.Logger()); err != nil {
			b.Fatal(err)
		}
		load := func(prefix string, frames bool, d time.Duration) (cpu float64, rss int64) {
			open(b, js, sc.Subjects(), prefix, calls, codec.LifecycleStarted)
			time.Sleep(2 * time.Second) // let the starts settle
			c0, t0 := ns.cpu(b), time.Now()
			tick := time.NewTicker(10 * time.Millisecond)
			defer tick.Stop()
			seq := map[int]uint64{}
			i := 0
			for time.Since(t0) < d {
				<-tick.C
				if !frames {
					continue
				}
				// calls/100 frames every 10 ms: a frame a call a second.
				for range calls / 100 {
					c := i % calls
					seq[c]++
					publishFrame(b, js, sc.Subjects(), fmt.Sprintf("%s-%d", prefix, c), seq[c])
					i++
				}
			}
			cpu, rss = (ns.cpu(b)-c0).Seconds()/time.Since(t0).Seconds(), ns.rss(b)
			<-js.PublishAsyncComplete()
			return cpu, rss
		}
		bareCPU, bareRSS := load("bare", true, phase)

		ctx, cancel := context.WithCancel(context.Background())
		log := natstest.Logger()
		regs := map[string]*prometheus.Registry{}
		var stops []func()
		gc := natstest.Defaults[subscribers.GroupConfig](b)
		for _, c := range components {
			name := c.Role
			own := c.Settings()
			natstest.Fill(b, own)
			reg := prometheus.NewRegistry()
			regs[name] = reg
			g, stop, err := startGroup(ctx, ns.url, NATSSettings{}, sc.StreamRef, gc, "bench "+name, reg, log, c, own, b.TempDir())
			if err != nil {
				b.Fatal(err)
			}
			stops = append(stops, stop)
			conformance.WaitFor(b, name+" ready", func() bool { return g.Ready() == nil })
		}
		time.Sleep(5 * time.Second) // the partitions taken
		rolesCPU, rolesRSS := load("roles", true, phase)
		// Every frame of both phases handled by every role (the bare
		// phase's calls too: the roles start from the stream's start).
		want := float64(0)
		for name, reg := range regs {
			conformance.WaitFor(b, name+" caught up", func() bool {
				return conformance.Metric(b, reg, "audiofan_subscriber_lag_messages", "") == 0
			})
			if want == 0 {
				want = conformance.Metric(b, reg, "audiofan_subscriber_messages_total", subscribers.OutcomeHandled)
			}
		}
		restCPU, restRSS := load("rest", false, phase)
		cancel()
		for _, stop := range stops {
			stop()
		}
		b.ReportMetric(bareCPU, "server-cores-bare")
		b.ReportMetric(rolesCPU, "server-cores-roles")
		b.ReportMetric(restCPU, "server-cores-rest")
		b.ReportMetric(rolesCPU-bareCPU, "server-cores-overhead")
		b.ReportMetric(float64(bareRSS)/(1<<20), "server-MB-bare")
		b.ReportMetric(float64(rolesRSS)/(1<<20), "server-MB-roles")
		b.ReportMetric(float64(restRSS)/(1<<20), "server-MB-rest")
		b.ReportMetric(want, "messages-handled")
		nc.Close()
	}
}

// open publishes the lifecycle message typ of calls calls named prefix-<i>.
func open(b *testing.B, js jetstream.JetStream, subj broker.Subjects, prefix string, calls int, typ string) {
	for c := range calls {
		lifecycle(b, js, subj, fmt.Sprintf("%s-%d", prefix, c), typ)
	}
	<-js.PublishAsyncComplete()
}

// lifecycle publishes a call's lifecycle message typ, not waiting for it.
func lifecycle(b *testing.B, js jetstream.JetStream, subj broker.Subjects, id, typ string) {
	data, err := codec.Marshal(&codec.Lifecycle{V: 1, Call: id, Type: typ, Stream: codec.StreamAudio, Connection: id,
		Receiver: "bench", SampleRate: 16000, Channels: 1, Encoding: codec.EncodingPCM16, Frames: map[string]uint64{}})
	if err != nil {
		b.Fatal(err)
	}
	if _, err := js.PublishAsync(subj.Lifecycle(codec.EncodeToken(id)), data); err != nil {
		b.Fatal(err)
	}
}

var benchPCM = make([]byte, 640)

func publishFrame(b *testing.B, js jetstream.JetStream, subj broker.Subjects, id string, seq uint64) {
	ts := time.Date(2026, 12, 1, 9, 0, 0, 0, time.UTC).Add(time.Duration(seq) * time.Second)
	data, err := codec.Marshal(&codec.Frame{V: 1, Call: id, Participant: "4:+14255550123", Seq: seq, Timestamp: ts, ReceivedAt: ts,
		SampleRate: 16000, Channels: 1, Encoding: codec.EncodingPCM16, Data: benchPCM})
	if err != nil {
		b.Fatal(err)
	}
	if _, err := js.PublishAsync(subj.Audio(codec.EncodeToken(id), "4_3A_2B14255550123"), data); err != nil {
		b.Fatal(err)
	}
}

// natsProcess is a nats-server started for a benchmark.
type natsProcess struct {
	cmd *exec.Cmd
	url string
}

func buildNATSServer(b *testing.B) string {
	bin := filepath.Join(b.TempDir(), "nats-server")
	if out, err := exec.Command("go", "build", "-o", bin, "github.com/nats-io/nats-server/v2").CombinedOutput(); err != nil {
		b.Fatalf("build nats-server: %v\n%s", err, out)
	}
	return bin
}

func startNATSProcess(b *testing.B, bin string) *natsProcess {
	addr := freePort(b)
	cmd := exec.Command(bin, "-a", "127.0.0.1", "-p", port(addr), "-js", "-sd", b.TempDir())
	if err := cmd.Start(); err != nil {
		b.Fatal(err)
	}
	b.Cleanup(func() { _ = cmd.Process.Kill(); _ = cmd.Wait() })
	p := &natsProcess{cmd: cmd, url: "nats://" + addr}
	waitNATS(b, p.url)
	return p
}

// waitNATS waits until a nats-server takes connections at url.
func waitNATS(t testing.TB, url string) {
	t.Helper()
	for i := 0; ; i++ {
		if nc, err := nats.Connect(url); err == nil {
			nc.Close()
			return
		}
		if i > 100 {
			t.Fatal("nats-server did not start")
		}
		time.Sleep(50 * time.Millisecond)
	}
}

// cpu is the process's user and system time so far.
func (p *natsProcess) cpu(b *testing.B) time.Duration { return procCPU(b, p.cmd.Process.Pid) }

// rss is the process's resident memory.
func (p *natsProcess) rss(b *testing.B) int64 { return procRSS(b, p.cmd.Process.Pid) }

// procCPU is a process's user and system time so far.
func procCPU(b testing.TB, pid int) time.Duration {
	raw, err := os.ReadFile(fmt.Sprintf("/proc/%d/stat", pid))
	if err != nil {
		b.Fatal(err)
	}
	f := strings.Fields(string(raw[strings.LastIndexByte(string(raw), ')')+2:]))
	u, _ := strconv.ParseInt(f[11], 10, 64)
	s, _ := strconv.ParseInt(f[12], 10, 64)
	return time.Duration(u+s) * time.Second / 100 // USER_HZ
}

// procRSS is a process's resident memory.
func procRSS(b testing.TB, pid int) int64 {
	raw, err := os.ReadFile(fmt.Sprintf("/proc/%d/status", pid))
	if err != nil {
		b.Fatal(err)
	}
	for _, l := range strings.Split(string(raw), "\n") {
		if v, ok := strings.CutPrefix(l, "VmRSS:"); ok {
			kb, _ := strconv.ParseInt(strings.TrimSpace(strings.TrimSuffix(strings.TrimSpace(v), "kB")), 10, 64)
			return kb << 10
		}
	}
	return 0
}

// BenchmarkClusterCalls measures the subscriber side on a 3-node cluster on
// loopback (nats-server processes built from go.mod, the stream and the
// roles' consumers R3, one recorder, analytics and moderator process each),
// the topology the README promises scale on:
//   - rest: the servers' CPU with the roles up and no call, against the
//     same cluster before the roles started;
//   - many calls: AUDIOFAN_BENCH_CALLS calls (3,000) open, a frame a second
//     each, before and after the roles start, and the roles' lag after;
//   - call starts: 2,000 calls started at 500 a second (each a started
//     message, 3 frames and an ended one), and how long after the last
//     start every role has finished every call.
func BenchmarkClusterCalls(b *testing.B) {
	calls := 3000
	if v, err := strconv.Atoi(os.Getenv("AUDIOFAN_BENCH_CALLS")); err == nil && v > 0 {
		calls = v
	}
	for b.Loop() {
		audiofanBin, natsBin := buildBinaries(b)
		var procs []*proc
		b.Cleanup(func() {
			for _, p := range procs {
				if p.cmd != nil && p.cmd.ProcessState == nil {
					_ = p.cmd.Process.Kill()
					<-p.done
				}
			}
		})
		var clientURLs, routes []string
		var natsArgs [][]string
		for i := range 3 {
			c, r, m := freePort(b), freePort(b), freePort(b)
			clientURLs, routes = append(clientURLs, "nats://"+c), append(routes, "nats://"+r)
			natsArgs = append(natsArgs, []string{"-a", "127.0.0.1", "-p", port(c), "-n", fmt.Sprintf("n%d", i+1), "-js",
				"-sd", b.TempDir(), "--cluster_name", "bench", "-cluster", "nats://" + r, "-m", port(m)})
		}
		var nodes []*natsProcess
		for i, a := range natsArgs {
			p := &proc{t: b, name: fmt.Sprintf("nats-%d", i+1), bin: natsBin, args: append(a, "-routes", strings.Join(routes, ","))}
			p.start()
			procs = append(procs, p)
			nodes = append(nodes, &natsProcess{cmd: p.cmd, url: clientURLs[i]})
		}
		natsURL := strings.Join(clientURLs, ",")
		nc, err := nats.Connect(natsURL, nats.RetryOnFailedConnect(true), nats.MaxReconnects(-1))
		if err != nil {
			b.Fatal(err)
		}
		defer nc.Close()
		js, _ := jetstream.New(nc, jetstream.WithPublishAsyncMaxPending(4096))
		sc := natstest.Defaults[broker.StreamConfig](b)
		sc.Replicas = 3
		ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
		if _, err := broker.EnsureStream(ctx, js, sc, natstest.Logger()); err != nil {
			b.Fatal(err)
		}
		cancel()
		cpu := func() time.Duration {
			var t time.Duration
			for _, n := range nodes {
				t += n.cpu(b)
			}
			return t
		}
		rss := func() (t int64) {
			for _, n := range nodes {
				t += n.rss(b)
			}
			return t
		}
		cores := func(d time.Duration, f func()) float64 {
			c0, t0 := cpu(), time.Now()
			f()
			if d > 0 {
				time.Sleep(d - time.Since(t0))
			}
			return (cpu() - c0).Seconds() / time.Since(t0).Seconds()
		}
		frameLoad := func(prefix string, d time.Duration) {
			open(b, js, sc.Subjects(), prefix, calls, codec.LifecycleStarted)
			tick := time.NewTicker(10 * time.Millisecond)
			defer tick.Stop()
			seq := map[int]uint64{}
			i := 0
			for t0 := time.Now(); time.Since(t0) < d; {
				<-tick.C
				for range calls / 100 {
					c := i % calls
					seq[c]++
					publishFrame(b, js, sc.Subjects(), fmt.Sprintf("%s-%d", prefix, c), seq[c])
					i++
				}
			}
			<-js.PublishAsyncComplete()
		}
		bareRest := cores(10*time.Second, func() {})
		bareLoad := cores(0, func() { frameLoad("bare", 20*time.Second) })
		bareRSS := rss()

		dataDir := b.TempDir()
		var metrics []string
		for _, r := range []struct{ name, cmd string }{{"recorder", "recorder"}, {"analytics", "analytics"}, {"moderator", "moderator"}} {
			addr := freePort(b)
			p := &proc{t: b, name: r.name, bin: audiofanBin, args: []string{r.cmd}, env: []string{"NATS_URL=" + natsURL,
				"AUDIOFAN_HTTP_ADDR=" + addr, "AUDIOFAN_CONSOLE=off", "AUDIOFAN_DATA_DIR=" + dataDir, "AUDIOFAN_LOG_LEVEL=warn"}}
			p.start()
			procs = append(procs, p)
			p.ready("http://" + addr + "/readyz")
			metrics = append(metrics, "http://"+addr+"/metrics")
		}
		sum := func(name, label string) float64 {
			v := 0.0
			for _, u := range metrics {
				v += scrape(b, u, name, label)
			}
			return v
		}
		caughtUp := func(what string) {
			deadline := time.Now().Add(3 * time.Minute)
			for sum("audiofan_subscriber_lag_messages", "") > 0 || sum("audiofan_subscriber_partitions_owned", "") < 3*float64(sc.Partitions) {
				if time.Now().After(deadline) {
					b.Fatalf("the roles did not catch up %s", what)
				}
				time.Sleep(200 * time.Millisecond)
			}
		}
		caughtUp("with the first calls")
		rolesRest := cores(10*time.Second, func() {})
		rolesLoad := cores(0, func() { frameLoad("roles", 20*time.Second) })
		rolesRSS := rss()
		t0 := time.Now()
		caughtUp("with the second calls")
		lagAfterLoad := time.Since(t0)

		// Call starts: 500 a second.
		const starts, rate = 2000, 500
		ended0 := sum("audiofan_subscriber_calls_total", string(subscribers.ResultEnded))
		tick := time.NewTicker(10 * time.Millisecond)
		for n := 0; n < starts; {
			<-tick.C
			for range rate / 100 {
				id := fmt.Sprintf("start-%d", n)
				lifecycle(b, js, sc.Subjects(), id, codec.LifecycleStarted)
				for f := range 3 {
					publishFrame(b, js, sc.Subjects(), id, uint64(f+1))
				}
				lifecycle(b, js, sc.Subjects(), id, codec.LifecycleEnded)
				n++
			}
		}
		tick.Stop()
		<-js.PublishAsyncComplete()
		last := time.Now()
		deadline := last.Add(3 * time.Minute)
		for sum("audiofan_subscriber_calls_total", string(subscribers.ResultEnded))-ended0 < 3*starts {
			if time.Now().After(deadline) {
				b.Fatalf("the roles finished %v of %d call starts", sum("audiofan_subscriber_calls_total", string(subscribers.ResultEnded))-ended0, 3*starts)
			}
			time.Sleep(50 * time.Millisecond)
		}
		b.ReportMetric(bareRest, "cores-rest-bare")
		b.ReportMetric(rolesRest, "cores-rest-roles")
		b.ReportMetric(rolesRest-bareRest, "cores-rest-overhead")
		b.ReportMetric(bareLoad, "cores-calls-bare")
		b.ReportMetric(rolesLoad, "cores-calls-roles")
		b.ReportMetric(float64(bareRSS)/(1<<20), "MB-bare")
		b.ReportMetric(float64(rolesRSS)/(1<<20), "MB-roles")
		b.ReportMetric(lagAfterLoad.Seconds(), "s-lag-after-calls")
		b.ReportMetric(time.Since(last).Seconds(), "s-after-last-start")
		nc.Close()
	}
}

// scrape reads one metric from a Prometheus endpoint, summed over series
// with a label of value label (all when empty).
func scrape(_ testing.TB, url, name, label string) float64 {
	resp, err := http.Get(url)
	if err != nil {
		return 0
	}
	defer resp.Body.Close()
	body, _ := io.ReadAll(resp.Body)
	v := 0.0
	for _, l := range strings.Split(string(body), "\n") {
		if !strings.HasPrefix(l, name) || (label != "" && !strings.Contains(l, `"`+label+`"`)) {
			continue
		}
		rest := strings.TrimPrefix(l, name)
		if rest == "" || (rest[0] != ' ' && rest[0] != '{') {
			continue
		}
		f := strings.Fields(l)
		x, _ := strconv.ParseFloat(f[len(f)-1], 64)
		v += x
	}
	return v
}
