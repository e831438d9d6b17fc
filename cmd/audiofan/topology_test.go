package main

import (
	"bytes"
	"cmp"
	"context"
	"encoding/json"
	"fmt"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"sort"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"

	"github.com/audiofan/audiofan/broker"
	"github.com/audiofan/audiofan/broker/natstest"
	"github.com/audiofan/audiofan/cmd/audiofan/sim"
	"github.com/audiofan/audiofan/codec"
	"github.com/audiofan/audiofan/subscribers"
	"github.com/audiofan/audiofan/subscribers/conformance"
	"github.com/audiofan/audiofan/subscribers/recording"
)

// proc is a process of the topology: a NATS node or an audiofan role.
type proc struct {
	t    testing.TB
	name string
	bin  string
	args []string
	env  []string
	cmd  *exec.Cmd
	out  *syncBuffer
	done chan error
}

func (p *proc) start() {
	p.t.Helper()
	p.cmd = exec.Command(p.bin, p.args...)
	p.cmd.Env = append(os.Environ(), p.env...)
	if p.out == nil {
		p.out = &syncBuffer{}
	}
	p.cmd.Stdout, p.cmd.Stderr = p.out, p.out
	if err := p.cmd.Start(); err != nil {
		p.t.Fatalf("%s: %v", p.name, err)
	}
	p.done = make(chan error, 1)
	cmd, done := p.cmd, p.done
	go func() { done <- cmd.Wait() }()
}

// kill is kill -9.
func (p *proc) kill() {
	_ = p.cmd.Process.Kill()
	<-p.done
}

// wait waits for the process to exit and returns its exit code.
func (p *proc) wait(timeout time.Duration) (int, error) {
	select {
	case err := <-p.done:
		p.done <- err // for a later kill or stop
		return p.cmd.ProcessState.ExitCode(), nil
	case <-time.After(timeout):
		return -1, fmt.Errorf("%s did not stop in %v", p.name, timeout)
	}
}

// startProcs returns how a test starts its processes: each one started, and
// at the test's end every one still running killed (a frozen one too), its
// output written to AUDIOFAN_TOPOLOGY_LOGS when that is set, and its last
// lines logged when the test failed.
func startProcs(t testing.TB) func(*proc) *proc {
	var procs []*proc
	t.Cleanup(func() {
		for _, p := range procs {
			if p.cmd != nil && p.cmd.ProcessState == nil {
				_ = p.cmd.Process.Kill() // SIGKILL ends a stopped process too
				<-p.done
			}
		}
		if dir := os.Getenv("AUDIOFAN_TOPOLOGY_LOGS"); dir != "" {
			_ = os.MkdirAll(dir, 0o755)
			for _, p := range procs {
				_ = os.WriteFile(filepath.Join(dir, p.name+".log"), []byte(p.out.String()), 0o644)
			}
		}
		if t.Failed() {
			for _, p := range procs {
				out := p.out.String()
				if len(out) > 4000 {
					out = out[len(out)-4000:]
				}
				t.Logf("--- %s (last lines)\n%s", p.name, out)
			}
		}
	})
	return func(p *proc) *proc {
		p.t = t
		procs = append(procs, p)
		p.start()
		return p
	}
}

// buildBinaries builds audiofan and the NATS server of the module in go.mod,
// once per test binary: the tests that run them as processes share them.
func buildBinaries(t testing.TB) (audiofan, natsServer string) {
	t.Helper()
	built.once.Do(func() {
		dir, err := os.MkdirTemp("", "audiofan-bin-")
		if err != nil {
			built.err = err
			return
		}
		built.dir = dir
		built.audiofan, built.natsServer = filepath.Join(dir, "audiofan"), filepath.Join(dir, "nats-server")
		for _, b := range [][]string{{"-o", built.audiofan, "."}, {"-o", built.natsServer, "github.com/nats-io/nats-server/v2"}} {
			cmd := exec.Command("go", append([]string{"build"}, b...)...)
			if out, err := cmd.CombinedOutput(); err != nil {
				built.err = fmt.Errorf("go build %v: %v\n%s", b, err, out)
				return
			}
		}
	})
	if built.err != nil {
		t.Fatal(built.err)
	}
	return built.audiofan, built.natsServer
}

// built is what buildBinaries built; TestMain removes it.
var built struct {
	once                      sync.Once
	dir, audiofan, natsServer string
	err                       error
}

func waitHTTP(t testing.TB, what, url string, timeout time.Duration, exited func() bool) {
	t.Helper()
	deadline := time.Now().Add(timeout)
	for {
		resp, err := http.Get(url)
		if err == nil {
			resp.Body.Close()
			if resp.StatusCode == http.StatusOK {
				return
			}
		}
		if exited != nil && exited() {
			t.Fatalf("%s exited before it was ready at %s", what, url)
		}
		if time.Now().After(deadline) {
			t.Fatalf("%s not ready at %s: %v", what, url, err)
		}
		time.Sleep(100 * time.Millisecond)
	}
}

// ready waits for the process to answer 200 at url, and fails the test at
// once if it exits first.
func (p *proc) ready(url string) {
	p.t.Helper()
	done := p.done
	waitHTTP(p.t, p.name, url, 60*time.Second, func() bool { return len(done) > 0 })
}

// The distributed topology as separate processes on loopback: 3 clustered
// NATS nodes (the stream with 3 replicas), 2 receivers, 2 recorders, 2
// analytics, 1 moderator. 20 calls through both receivers, checked by
// `audiofan sim --verify`; during the calls one NATS node and one recorder
// are killed with SIGKILL and started again. Then: nothing lost or
// duplicated on the stream, every recording complete and the same as the
// stored frames render to, every call's analytics summary present. Last, a
// receiver scaled in with SIGTERM while calls are open: they finish, and no
// new call lands on it.
func TestTopology(t *testing.T) {
	if os.Getenv("AUDIOFAN_TOPOLOGY") == "" {
		t.Skip("set AUDIOFAN_TOPOLOGY=1 (make test-cluster): builds the binaries and runs a cluster of processes")
	}
	start := time.Now()
	audiofanBin, natsBin := buildBinaries(t)
	t.Logf("built in %v", time.Since(start).Round(time.Second))

	add := startProcs(t)

	// Three NATS nodes in one cluster.
	var clientURLs, routes, monitors []string
	var natsArgs [][]string
	for i := range 3 {
		c, r, m := freePort(t), freePort(t), freePort(t)
		clientURLs = append(clientURLs, "nats://"+c)
		routes = append(routes, "nats://"+r)
		monitors = append(monitors, "http://"+m)
		natsArgs = append(natsArgs, []string{"-a", "127.0.0.1", "-p", port(c), "-n", fmt.Sprintf("n%d", i+1), "-js",
			"-sd", t.TempDir(), "--cluster_name", "audiofan", "-cluster", "nats://" + r, "-m", port(m)})
	}
	var nodes []*proc
	for i, a := range natsArgs {
		nodes = append(nodes, add(&proc{name: fmt.Sprintf("nats-%d", i+1), bin: natsBin,
			args: append(a, "-routes", strings.Join(routes, ","))}))
	}
	for i, m := range monitors {
		nodes[i].ready(m + "/healthz")
	}
	natsURL := strings.Join(clientURLs, ",")

	dataDir := t.TempDir() // the recorders' shared volume
	// The processes listen on loopback, where each would serve the console
	// too: off, so the test measures the pipeline alone.
	common := []string{"NATS_URL=" + natsURL, "AUDIOFAN_STREAM_REPLICAS=3", "AUDIOFAN_LEASE=3s", "AUDIOFAN_CONSOLE=off",
		"AUDIOFAN_LOG_LEVEL=" + cmp.Or(os.Getenv("AUDIOFAN_TOPOLOGY_LOG_LEVEL"), "info")}
	// Receivers ride out a NATS node's death (reconnecting, and a stream
	// leader election when the leader was on it) by waiting, not shedding:
	// a window of 27 s of a 3-speaker call, resent after 2 s unanswered.
	lossless := []string{"AUDIOFAN_PUBLISH_WINDOW=4096", "AUDIOFAN_PUBLISH_MAX_PENDING=131072", "AUDIOFAN_PUBLISH_BLOCK=30s",
		"AUDIOFAN_PUBLISH_ACK_TIMEOUT=2s"}
	role := func(name, cmd string, extra ...string) *proc {
		addr := freePort(t)
		p := add(&proc{name: name, bin: audiofanBin, args: []string{cmd},
			env: append(append(append([]string{}, common...), "AUDIOFAN_HTTP_ADDR="+addr, "AUDIOFAN_INSTANCE="+name), extra...)})
		p.ready("http://" + addr + "/readyz")
		return p
	}
	var receivers []string
	var rcvProcs []*proc
	for i := range 2 {
		addr := freePort(t)
		p := add(&proc{name: fmt.Sprintf("receiver-%d", i+1), bin: audiofanBin, args: []string{"receiver"},
			env: append(append(append([]string{}, common...), lossless...), "AUDIOFAN_HTTP_ADDR="+addr,
				fmt.Sprintf("AUDIOFAN_INSTANCE=receiver-%d", i+1), "AUDIOFAN_DRAIN_TIMEOUT=60s")})
		p.ready("http://" + addr + "/readyz")
		receivers, rcvProcs = append(receivers, addr), append(rcvProcs, p)
	}
	recorders := []*proc{
		role("recorder-1", "recorder", "AUDIOFAN_DATA_DIR="+dataDir),
		role("recorder-2", "recorder", "AUDIOFAN_DATA_DIR="+dataDir),
	}
	role("analytics-1", "analytics")
	role("analytics-2", "analytics")
	role("moderator-1", "moderator")
	t.Logf("cluster up in %v", time.Since(start).Round(time.Second))
	cnc, err := nats.Connect(natsURL)
	if err != nil {
		t.Fatal(err)
	}
	defer cnc.Close()
	cjs, _ := jetstream.New(cnc)
	wantConsumers := 3 * natstest.Defaults[broker.StreamConfig](t).Partitions
	if n := durableConsumers(t, cjs); n != wantConsumers {
		t.Errorf("%d durable consumers before any call, want %d (3 roles' partitions)", n, wantConsumers)
	}

	// 20 calls, 10 through each receiver, 3 speakers and a transcription
	// socket each, 12 s in real time.
	type simResult struct {
		sum  sim.Summary
		out  string
		code int
	}
	runSim := func(url, prefix string, calls int, dur time.Duration) (chan simResult, *proc) {
		ch := make(chan simResult, 1)
		p := &proc{name: "sim-" + prefix, bin: audiofanBin, out: &syncBuffer{},
			args: []string{"sim", "--url", "ws://" + url + "/ws", "--calls", fmt.Sprint(calls), "--participants", "3",
				"--duration", dur.String(), "--transcription", "--verify", "--json", "--call-prefix", prefix, "--settle", "60s"},
			env: []string{"NATS_URL=" + natsURL}}
		add(p)
		go func() {
			err := <-p.done
			p.done <- err
			var r simResult
			r.code, r.out = p.cmd.ProcessState.ExitCode(), p.out.String()
			if i := strings.Index(r.out, "{"); i >= 0 {
				_ = json.Unmarshal([]byte(r.out[i:strings.LastIndex(r.out, "}")+1]), &r.sum)
			}
			ch <- r
		}()
		return ch, p
	}
	sim1, _ := runSim(receivers[0], "east", 10, 12*time.Second)
	sim2, _ := runSim(receivers[1], "west", 10, 12*time.Second)

	time.Sleep(4 * time.Second)
	t.Log("kill -9 nats-3 and recorder-1")
	nodes[2].kill()
	recorders[0].kill()
	time.Sleep(3 * time.Second)
	nodes[2].start()
	recorders[0].start()
	t.Log("nats-3 and recorder-1 started again")

	var calls []string
	sent := map[string]uint64{}
	for _, ch := range []chan simResult{sim1, sim2} {
		select {
		case r := <-ch:
			// Order holds through the node's death and a leader
			// election: the receivers hold new frames while they send
			// refused ones again.
			v := r.sum.Verify
			if v == nil || r.sum.CallsFailed != 0 || r.sum.Errors != 0 || v.Duplicates != 0 || v.Sent == 0 || v.OutOfOrder != 0 {
				t.Fatalf("sim exit %d, summary %+v\n%s", r.code, v, r.out)
			}
			t.Logf("sim: %d calls, %d frames sent; its verifier read %d once (%d missing), %d out of order; p50 %.0f ms, p99 %.0f ms, max %.0f ms",
				r.sum.Calls, v.Sent, v.Stored, v.Missing, v.OutOfOrder, v.LatencyP50ms, v.LatencyP99ms, v.LatencyMaxMS)
			for _, s := range r.sum.Verify.Streams {
				if len(calls) == 0 || calls[len(calls)-1] != s.Call {
					calls = append(calls, s.Call)
				}
				sent[s.Call] += s.Sent
			}
		case <-time.After(4 * time.Minute):
			t.Fatal("sim did not finish")
		}
	}
	sort.Strings(calls)
	calls = compact(calls)
	if len(calls) != 20 {
		t.Fatalf("%d calls verified, want 20", len(calls))
	}

	// Every recording complete: the files equal what the stored frames
	// render to. Every call's analytics summary in the bucket.
	nc, err := nats.Connect(natsURL)
	if err != nil {
		t.Fatal(err)
	}
	defer nc.Close()
	js, _ := jetstream.New(nc)
	kv, err := js.KeyValue(context.Background(), "call-analytics")
	if err != nil {
		t.Fatal(err)
	}
	for _, id := range calls {
		tok := codec.EncodeToken(id)
		dir := filepath.Join(dataDir, "recordings", string(tok))
		if !fileWithin(filepath.Join(dir, "mix.wav"), 90*time.Second) {
			t.Errorf("call %s: no recording", id)
			diagnose(t, js, "recording", string(tok))
			if os.Getenv("AUDIOFAN_TOPOLOGY_LOGS") != "" { // stacks of the recorders, for the logs
				for _, p := range recorders {
					_ = p.cmd.Process.Signal(syscall.SIGQUIT)
				}
				time.Sleep(time.Second)
			}
			t.FailNow()
		}
		wantDir, stored := renderStored(t, js, id)
		if stored != int(sent[id]) {
			t.Errorf("call %s: %d frames stored, %d sent", id, stored, sent[id])
		}
		if diff := diffDirs(t, dir, wantDir); diff != "" {
			t.Errorf("call %s: the recording differs from what the stored frames render to: %s", id, diff)
		}
		deadline := time.Now().Add(60 * time.Second)
		for {
			e, err := kv.Get(context.Background(), string(tok))
			var ev codec.Event
			if err == nil && codec.Unmarshal(e.Value(), &ev) == nil && ev.Type == "summary" && len(ev.Data["participants"].([]any)) == 3 {
				break
			}
			if time.Now().After(deadline) {
				t.Errorf("call %s: no analytics summary (%v)", id, err)
				diagnose(t, js, "analytics", string(tok))
				t.FailNow()
			}
			time.Sleep(100 * time.Millisecond)
		}
	}
	t.Logf("20 recordings and analytics summaries checked at %v", time.Since(start).Round(time.Second))
	// A consumer whose node was just restarted can be left out of a
	// listing (the API's "missing") while its Raft group recovers: the
	// count is taken again until it settles.
	for deadline := time.Now().Add(20 * time.Second); ; time.Sleep(500 * time.Millisecond) {
		n := durableConsumers(t, js)
		if n == wantConsumers {
			break
		}
		if time.Now().After(deadline) {
			t.Errorf("%d durable consumers after 20 calls, want %d as before", n, wantConsumers)
			break
		}
	}

	// Scale in receiver-2 while calls are open on it.
	sim3, _ := runSim(receivers[1], "drain", 3, 6*time.Second)
	time.Sleep(2 * time.Second)
	_ = rcvProcs[1].cmd.Process.Signal(syscall.SIGTERM)
	time.Sleep(300 * time.Millisecond)
	if resp, err := http.Get("http://" + receivers[1] + "/ws"); err == nil {
		if resp.StatusCode != http.StatusServiceUnavailable {
			t.Errorf("a new socket on the draining receiver: HTTP %d, want 503", resp.StatusCode)
		}
		resp.Body.Close()
	}
	select {
	case r := <-sim3:
		if r.code != 0 || !r.sum.OK || r.sum.Verify.Missing != 0 {
			t.Errorf("calls open during the scale-in: exit %d %+v\n%s", r.code, r.sum.Verify, r.out)
		}
	case <-time.After(2 * time.Minute):
		t.Fatal("the draining receiver's calls did not finish")
	}
	if code, err := rcvProcs[1].wait(30 * time.Second); err != nil || code != 0 {
		t.Errorf("receiver-2 exit %d, %v", code, err)
	}
	t.Logf("topology test done in %v", time.Since(start).Round(time.Second))
}

func port(addr string) string { return addr[strings.LastIndexByte(addr, ':')+1:] }

func compact(s []string) []string {
	out := s[:0]
	for i, v := range s {
		if i == 0 || v != s[i-1] {
			out = append(out, v)
		}
	}
	return out
}

func fileWithin(path string, timeout time.Duration) bool {
	deadline := time.Now().Add(timeout)
	for {
		if _, err := os.Stat(path); err == nil {
			return true
		}
		if time.Now().After(deadline) {
			return false
		}
		time.Sleep(100 * time.Millisecond)
	}
}

// diagnose logs where a role's work on a call stands: the consumer of its
// partition and whether the partition's checkpoint has it finished.
func diagnose(t *testing.T, js jetstream.JetStream, role, tok string) {
	ctx := context.Background()
	sc := natstest.Defaults[broker.StreamConfig](t)
	part := sc.Subjects().Partition(codec.Token(tok))
	name := subscribers.PartitionConsumer(role, part)
	bus, err := broker.FindBus(ctx, js, sc.StreamRef)
	if err != nil {
		t.Logf("bus: %v", err)
		return
	}
	c, err := bus.Stream(part).Consumer(ctx, name)
	if err != nil {
		t.Logf("consumer %s: %v", name, err)
	} else {
		info, _ := c.Info(ctx)
		t.Logf("consumer %s: pending %d, ack pending %d, redelivered %d, waiting %d, delivered %+v, floor %+v, groups %+v, leader %s",
			name, info.NumPending, info.NumAckPending, info.NumRedelivered, info.NumWaiting, info.Delivered, info.AckFloor,
			info.PriorityGroups, info.Cluster.Leader)
	}
	done, err := subscribers.Finished(ctx, js, sc.StreamRef, role, codec.Token(tok))
	t.Logf("%s finished %s: %v %v", role, tok, done, err)
}

// durableConsumers counts the durable consumers on the bus's streams: the
// roles' partitions, however many calls come and go.
func durableConsumers(t testing.TB, js jetstream.JetStream) int {
	return len(durableConsumerNames(t, js))
}

// durableConsumerNames names the durable consumers on every shard of the
// bus, as "stream/consumer".
func durableConsumerNames(t testing.TB, js jetstream.JetStream) []string {
	bus, err := broker.FindBus(context.Background(), js, natstest.Defaults[broker.StreamRef](t))
	if err != nil {
		t.Fatal(err)
	}
	var names []string
	for _, name := range bus.Layout.Streams() {
		for _, c := range conformance.DurableConsumerNames(t, js, name) {
			names = append(names, name+"/"+c)
		}
	}
	return names
}

// renderStored renders a call's frames as the stream holds them: what the
// recorders must have written. A read that stalls (the cluster still
// settling after the node's restart) starts over.
func renderStored(t *testing.T, js jetstream.JetStream, id string) (string, int) {
	t.Helper()
	var err error
	for attempt := 0; attempt < 5; attempt++ {
		var dir string
		var n int
		if dir, n, err = tryRender(t, js, id); err == nil {
			return dir, n
		}
	}
	t.Fatalf("call %s: reading its frames: %v", id, err)
	return "", 0
}

// tryRender reads and renders the call's stored frames, counting them once
// each (by sequence within their participant's socket).
func tryRender(t *testing.T, js jetstream.JetStream, id string) (string, int, error) {
	ctx := context.Background()
	bus, err := broker.FindBus(ctx, js, natstest.Defaults[broker.StreamConfig](t).StreamRef)
	if err != nil {
		return "", 0, err
	}
	tok := codec.EncodeToken(id)
	oc, err := bus.Stream(bus.Subjects().Partition(tok)).OrderedConsumer(ctx, jetstream.OrderedConsumerConfig{
		FilterSubjects: []string{bus.Subjects().StoredKind(tok, broker.KindAudio)}})
	if err != nil {
		return "", 0, err
	}
	seen := map[string]bool{}
	dir := t.TempDir()
	sp, err := recording.NewSpool(dir)
	if err != nil {
		t.Fatal(err)
	}
	defer sp.Close()
	it, err := oc.Messages()
	if err != nil {
		return "", 0, err
	}
	defer it.Stop()
	for {
		m, err := it.Next(jetstream.NextMaxWait(10 * time.Second))
		if err != nil {
			return "", 0, err
		}
		var f codec.Frame
		if err := codec.Unmarshal(m.Data(), &f); err != nil {
			t.Fatal(err)
		}
		seen[fmt.Sprint(f.Participant, "/", f.Seq)] = true
		if err := sp.Add(&f); err != nil {
			t.Fatal(err)
		}
		if md, err := m.Metadata(); err != nil || md.NumPending == 0 {
			break
		}
	}
	if _, err := sp.Render(context.Background(), filepath.Join(dir, "out")); err != nil {
		t.Fatal(err)
	}
	return filepath.Join(dir, "out"), len(seen), nil
}

// diffDirs compares two folders of WAV files; "" when they are equal.
func diffDirs(t *testing.T, got, want string) string {
	t.Helper()
	read := func(dir string) map[string][]byte {
		entries, err := os.ReadDir(dir)
		if err != nil {
			t.Fatal(err)
		}
		out := map[string][]byte{}
		for _, e := range entries {
			b, err := os.ReadFile(filepath.Join(dir, e.Name()))
			if err != nil {
				t.Fatal(err)
			}
			out[e.Name()] = b
		}
		return out
	}
	g, w := read(got), read(want)
	var diffs []string
	for name, wb := range w {
		gb, ok := g[name]
		switch {
		case !ok:
			diffs = append(diffs, name+" missing")
		case !bytes.Equal(gb, wb):
			i := 0
			for i < min(len(gb), len(wb)) && gb[i] == wb[i] {
				i++
			}
			diffs = append(diffs, fmt.Sprintf("%s: %d bytes, want %d, first difference at byte %d (frame %d)", name, len(gb), len(wb), i, (i-44)/640))
		}
	}
	if len(g) != len(w) {
		diffs = append(diffs, fmt.Sprintf("%d files, want %d", len(g), len(w)))
	}
	sort.Strings(diffs)
	return strings.Join(diffs, "; ")
}
