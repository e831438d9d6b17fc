package main

import (
	"context"
	"encoding/json"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"

	"github.com/audiofan/audiofan/broker"
	"github.com/audiofan/audiofan/broker/natstest"
	"github.com/audiofan/audiofan/cmd/audiofan/sim"
	"github.com/audiofan/audiofan/codec"
	"github.com/audiofan/audiofan/subscribers/conformance"
)

// outage is a run of roles as processes on loopback (one NATS node, a
// receiver, a recorder and analytics) through which sim streams calls of two
// participants, with faults injected: the recorder is frozen (SIGSTOP)
// mid-call and resumed, and one call's recording cannot be written (its
// folder's path is taken by a file) until the test repairs it and runs
// `audiofan redrive`.
type outage struct {
	calls               int
	duration            time.Duration // of each call
	freezeAt, freezeFor time.Duration
}

// outageResult is what a run measured.
type outageResult struct {
	catchUp       time.Duration // from the recorder's resumption until its backlog was under caughtUp
	analyticsLag  float64       // analytics' largest backlog meanwhile (stored, not yet delivered), in seconds of traffic
	analyticsHeld float64       // the same with what it was delivered and had not acknowledged yet (about a checkpoint's worth)
	recorderPeak  float64       // the recorder's largest backlog, in seconds of traffic
	trafficPerSec float64       // messages a second the calls store
}

// caughtUp is the backlog, in seconds of traffic, under which a role has
// caught up: what it holds between checkpoints (a second's) and a margin.
const caughtUp = 2.0

// catchUpFactor is how many times real time the recorder caught up at: the
// traffic stored while it was frozen over the time it took to work through.
func (r outageResult) catchUpFactor(o outage) float64 {
	return o.freezeFor.Seconds() / max(r.catchUp.Seconds(), 0.001)
}

func runOutage(t testing.TB, o outage) outageResult {
	audiofanBin, natsBin := buildBinaries(t)
	add := startProcs(t)
	client, monitor := freePort(t), freePort(t)
	node := add(&proc{name: "nats", bin: natsBin, args: []string{"-a", "127.0.0.1", "-p", port(client), "-js", "-sd", t.TempDir(), "-m", port(monitor)}})
	node.ready("http://" + monitor + "/healthz")
	natsURL := "nats://" + client
	dataDir := t.TempDir()
	common := []string{"NATS_URL=" + natsURL, "AUDIOFAN_CONSOLE=off", "AUDIOFAN_LEASE=3s", "AUDIOFAN_LOG_LEVEL=info"}
	role := func(name, cmd string, extra ...string) (*proc, string) {
		addr := freePort(t)
		p := add(&proc{name: name, bin: audiofanBin, args: []string{cmd},
			env: append(append(append([]string{}, common...), "AUDIOFAN_HTTP_ADDR="+addr, "AUDIOFAN_INSTANCE="+name), extra...)})
		p.ready("http://" + addr + "/readyz")
		return p, addr
	}
	_, rcvAddr := role("receiver", "receiver")
	recorder, recAddr := role("recorder", "recorder", "AUDIOFAN_DATA_DIR="+dataDir, "AUDIOFAN_PARK_AFTER=2s",
		"AUDIOFAN_REDRIVE_BACKOFF=10m") // only audiofan redrive brings the victim back within the test
	role("analytics", "analytics")

	// The victim: its recording folder's path is a file.
	const prefix = "8:acs:outage+"
	victim := prefix + "-3"
	blocker := filepath.Join(dataDir, "recordings", string(codec.EncodeToken(victim)))
	if err := os.MkdirAll(filepath.Dir(blocker), 0o755); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(blocker, []byte("in the way"), 0o644); err != nil {
		t.Fatal(err)
	}

	nc, err := nats.Connect(natsURL)
	if err != nil {
		t.Fatal(err)
	}
	defer nc.Close()
	js, _ := jetstream.New(nc)
	ref := natstest.Defaults[broker.StreamConfig](t).StreamRef
	// lag is a role's messages stored and not yet delivered, and those
	// plus the ones delivered and not yet acknowledged.
	lag := func(role string) (pending, held float64) {
		s, err := js.Stream(context.Background(), ref.Name)
		if err != nil {
			return 0, 0
		}
		for ci := range s.ListConsumers(context.Background()).Info() {
			if strings.HasPrefix(ci.Name, role+"-p") {
				pending += float64(ci.NumPending)
				held += float64(ci.NumPending) + float64(ci.NumAckPending)
			}
		}
		return pending, held
	}

	simOut := &syncBuffer{}
	simProc := add(&proc{name: "sim", bin: audiofanBin, out: simOut,
		args: []string{"sim", "--url", "ws://" + rcvAddr + "/ws", "--calls", strconv.Itoa(o.calls), "--participants", "2",
			"--duration", o.duration.String(), "--verify", "--json", "--call-prefix", prefix, "--settle", "120s"},
		env: []string{"NATS_URL=" + natsURL}})
	started := time.Now()
	traffic := float64(o.calls*2) * 50 // frames a second
	var res outageResult
	res.trafficPerSec = traffic
	resumed := time.Time{}
	frozen := false
	for simProc.cmd.ProcessState == nil && len(simProc.done) == 0 {
		el := time.Since(started)
		switch {
		case !frozen && resumed.IsZero() && el >= o.freezeAt:
			t.Logf("SIGSTOP recorder at %v", el.Round(time.Millisecond))
			_ = recorder.cmd.Process.Signal(syscall.SIGSTOP)
			frozen = true
		case frozen && el >= o.freezeAt+o.freezeFor:
			_ = recorder.cmd.Process.Signal(syscall.SIGCONT)
			frozen, resumed = false, time.Now()
			t.Logf("SIGCONT recorder at %v", el.Round(time.Millisecond))
		}
		_, rl := lag("recording")
		al, ah := lag("analytics")
		rl, al, ah = rl/traffic, al/traffic, ah/traffic
		res.recorderPeak = max(res.recorderPeak, rl)
		if !resumed.IsZero() {
			res.analyticsLag, res.analyticsHeld = max(res.analyticsLag, al), max(res.analyticsHeld, ah)
			if res.catchUp == 0 && rl < caughtUp {
				res.catchUp = time.Since(resumed)
				t.Logf("recorder caught up %v after resuming (backlog at its peak: %.1f s of traffic)", res.catchUp.Round(time.Millisecond), res.recorderPeak)
			}
		}
		time.Sleep(250 * time.Millisecond)
	}
	code, _ := simProc.wait(time.Second)
	var sum sim.Summary
	out := simOut.String()
	if i := strings.Index(out, "{"); i >= 0 {
		_ = json.Unmarshal([]byte(out[i:strings.LastIndex(out, "}")+1]), &sum)
	}
	if code != 0 || sum.Verify == nil || sum.Verify.Missing != 0 || sum.Verify.Duplicates != 0 {
		t.Fatalf("sim exit %d: %+v\n%s", code, sum.Verify, out)
	}
	if res.catchUp == 0 {
		_, held := lag("recording")
		t.Fatalf("the recorder had not caught up by the calls' end (backlog %.1f s of traffic)", held/traffic)
	}

	// The victim parks (its neighbours were recorded meanwhile, below),
	// then the fault is repaired and the call re-driven.
	conformance.WaitFor(t, "the victim parked", func() bool {
		return scrape(t, "http://"+recAddr+"/metrics", "audiofan_subscriber_calls_parked", "") >= 1
	})
	if err := os.Remove(blocker); err != nil {
		t.Fatal(err)
	}
	redrive := add(&proc{name: "redrive", bin: audiofanBin, args: []string{"redrive", "--role", "recording"}, env: []string{"NATS_URL=" + natsURL}})
	if code, err := redrive.wait(30 * time.Second); err != nil || code != 0 {
		t.Fatalf("audiofan redrive: exit %d, %v\n%s", code, err, redrive.out.String())
	}

	// Every call recorded whole: each participant's file within 2 frames of
	// what was sent, the call ended by its end, once.
	sent := map[string]map[string]uint64{}
	for _, s := range sum.Verify.Streams {
		if sent[s.Call] == nil {
			sent[s.Call] = map[string]uint64{}
		}
		sent[s.Call][s.Participant] += s.Sent
	}
	if len(sent) != o.calls {
		t.Fatalf("%d calls verified, want %d", len(sent), o.calls)
	}
	for id, parts := range sent {
		var evs []codec.Event
		deadline := time.Now().Add(90 * time.Second)
		for {
			evs = nil
			for _, ev := range conformance.Events(t, js, ref, id, codec.SourceRecording) {
				if ev.Type == codec.EventRecording {
					evs = append(evs, ev)
				}
			}
			if len(evs) > 0 || time.Now().After(deadline) {
				break
			}
			time.Sleep(250 * time.Millisecond)
		}
		if len(evs) != 1 {
			t.Errorf("call %s: %d recording events, want 1", id, len(evs))
			continue
		}
		var rec codec.Recording
		if err := codec.DecodeEventData(evs[0].Data, &rec); err != nil {
			t.Fatal(err)
		}
		if rec.Reason != "ended" {
			t.Errorf("call %s: recording finished as %q, want ended", id, rec.Reason)
		}
		for part, n := range parts {
			got := -1
			for _, f := range rec.Files {
				if f.Participant == part && !f.Mix && !f.Outbound {
					got = f.Frames
				}
			}
			if got < 0 || uint64(got)+2 < n {
				t.Errorf("call %s, %s: %d frames recorded of %d sent", id, part, got, n)
			}
		}
	}
	if v := scrape(t, "http://"+recAddr+"/metrics", "audiofan_subscriber_calls_parked", ""); v != 0 {
		t.Errorf("%v calls still parked after the repair", v)
	}
	// Every partition's floor passed the parked call: the recorder's
	// consumers end with nothing pending.
	conformance.WaitFor(t, "the recorder's consumers drained", func() bool {
		_, held := lag("recording")
		return held == 0
	})
	return res
}

// A recorder frozen mid-call catches up and loses nothing: every recording
// whole and ended by its end; a call whose recording cannot be written is
// parked while its neighbours are recorded, and recorded whole once the
// fault is repaired and `audiofan redrive` is run. (Speed is reported here
// and measured by BenchmarkRoleOutage.)
func TestRoleOutage(t *testing.T) {
	if os.Getenv("AUDIOFAN_TOPOLOGY") == "" {
		t.Skip("set AUDIOFAN_TOPOLOGY=1 (make test-cluster): builds the binaries and runs the roles as processes")
	}
	o := outage{calls: 20, duration: 30 * time.Second, freezeAt: 5 * time.Second, freezeFor: 15 * time.Second}
	r := runOutage(t, o)
	t.Logf("%d calls × 2 participants, recorder frozen %v: caught up in %v (%.1f× real time); analytics meanwhile at most %.2f s of traffic behind (%.2f s with what it held unacknowledged)",
		o.calls, o.freezeFor, r.catchUp.Round(time.Millisecond), r.catchUpFactor(o), r.analyticsLag, r.analyticsHeld)
}

// BenchmarkRoleOutage is the outage at its size: 30 calls × 2
// participants (60 streams), the recorder frozen for 90 s of 150 s calls.
// It reports how many times real time the recorder caught up at, and
// analytics' largest backlog meanwhile (seconds of traffic).
func BenchmarkRoleOutage(b *testing.B) {
	o := outage{calls: 30, duration: 150 * time.Second, freezeAt: 20 * time.Second, freezeFor: 90 * time.Second}
	for b.Loop() {
		r := runOutage(b, o)
		b.ReportMetric(r.catchUpFactor(o), "catchup_x")
		b.ReportMetric(r.analyticsLag, "analytics_lag_s")
		b.ReportMetric(r.analyticsHeld, "analytics_held_s")
		b.ReportMetric(r.recorderPeak, "recorder_backlog_s")
	}
}
