package moderation_test

import (
	"context"
	"encoding/binary"
	"math"
	"os"
	"path/filepath"
	"slices"
	"sync"
	"testing"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"
	"github.com/prometheus/client_golang/prometheus"
	"go.uber.org/goleak"

	"github.com/audiofan/audiofan/broker"
	"github.com/audiofan/audiofan/broker/natstest"
	"github.com/audiofan/audiofan/codec"
	"github.com/audiofan/audiofan/subscribers"
	"github.com/audiofan/audiofan/subscribers/conformance"
	"github.com/audiofan/audiofan/subscribers/moderation"
)

func TestMain(m *testing.M) { goleak.VerifyTestMain(m) }

var t0 = time.Date(2026, 11, 25, 15, 0, 0, 0, time.UTC)

// rig runs a moderator on a test server and collects its events and the
// outbound messages it sends.
type rig struct {
	t      *testing.T
	js     jetstream.JetStream
	ref    broker.StreamRef
	m      *moderation.Moderator
	reg    *prometheus.Registry
	mu     sync.Mutex
	out    []codec.Outbound
	cancel context.CancelFunc
}

func newRig(t *testing.T, rules string) *rig {
	bus := natstest.StartBus(t)
	nc, js, sc := bus.NC, bus.JS, bus.Stream
	cfg := natstest.Defaults[moderation.Config](t)
	cfg.Reload = 20 * time.Millisecond
	if rules != "" {
		cfg.Rules = filepath.Join(t.TempDir(), "rules.yaml")
		if err := os.WriteFile(cfg.Rules, []byte(rules), 0o644); err != nil {
			t.Fatal(err)
		}
	}
	r := &rig{t: t, js: js, ref: sc.StreamRef, reg: prometheus.NewRegistry()}
	var err error
	if r.m, err = moderation.New(cfg, sc.Published(), js, r.reg, natstest.Logger()); err != nil {
		t.Fatal(err)
	}
	if _, err := nc.Subscribe(sc.Subjects().Prefix+".*.outbound", func(m *nats.Msg) {
		var o codec.Outbound
		if codec.Unmarshal(m.Data, &o) == nil {
			r.mu.Lock()
			r.out = append(r.out, o)
			r.mu.Unlock()
		}
	}); err != nil {
		t.Fatal(err)
	}
	g, err := subscribers.NewGroup(conformance.Config(t), r.m.Role(), sc.StreamRef, nc, js, r.reg, natstest.Logger())
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	var wg sync.WaitGroup
	wg.Go(func() { _ = g.Run(ctx) })
	wg.Go(func() { r.m.Watch(ctx) })
	t.Cleanup(func() { cancel(); wg.Wait(); nc.Close() })
	return r
}

func (r *rig) publish(msgs ...conformance.Msg) {
	for _, m := range msgs {
		data, err := codec.Marshal(m.Payload)
		if err != nil {
			r.t.Fatal(err)
		}
		if _, err := r.js.Publish(context.Background(), r.ref.Prefix+"."+m.Subject, data); err != nil {
			r.t.Fatal(err)
		}
	}
}

// hits waits until n hit events of the call are stored (and a moment more,
// for any extra), and returns them.
func (r *rig) hits(call string, n int) []codec.Event {
	r.t.Helper()
	var evs []codec.Event
	deadline := time.Now().Add(20 * time.Second)
	for {
		evs = events(r.t, r.js, r.ref, call)
		if len(evs) >= n {
			break
		}
		if time.Now().After(deadline) {
			r.t.Fatalf("%d hit events, want %d: %+v", len(evs), n, evs)
		}
		time.Sleep(20 * time.Millisecond)
	}
	time.Sleep(200 * time.Millisecond)
	return events(r.t, r.js, r.ref, call)
}

func events(t *testing.T, js jetstream.JetStream, ref broker.StreamRef, call string) []codec.Event {
	return conformance.Events(t, js, ref, call, "moderation")
}

// call scripts a call: start, then frames of each participant whose
// amplitude at frame i the function gives, then transcripts, then the end.
type call struct {
	id    string
	parts []string
	n     int
	amp   func(p, i int) float64
	lines []codec.Transcript
}

func (c call) msgs() []conformance.Msg {
	tok := string(codec.EncodeToken(c.id))
	life := func(typ string) conformance.Msg {
		return conformance.Msg{Subject: tok + ".lifecycle", Payload: &codec.Lifecycle{V: 1, Call: c.id, Type: typ, Stream: "audio",
			Connection: c.id, SampleRate: 16000, Channels: 1, Encoding: codec.EncodingPCM16, Frames: map[string]uint64{}}}
	}
	out := []conformance.Msg{life(codec.LifecycleStarted)}
	for i := range c.n {
		for p, part := range c.parts {
			data := make([]byte, 640)
			amp := c.amp(p, i)
			for s := range 320 {
				v := amp * math.Sin(2*math.Pi*float64(300+100*p)*float64(i*320+s)/16000)
				binary.LittleEndian.PutUint16(data[2*s:], uint16(int16(max(min(v, 32767), -32768))))
			}
			out = append(out, conformance.Msg{Subject: tok + ".audio." + string(codec.EncodeToken(part)), Payload: &codec.Frame{V: 1,
				Call: c.id, Participant: part, Seq: uint64(i + 1), Timestamp: t0.Add(time.Duration(i) * 20 * time.Millisecond),
				SampleRate: 16000, Channels: 1, Encoding: codec.EncodingPCM16, Data: data}})
		}
	}
	for _, l := range c.lines {
		l.V, l.Call, l.Final, l.Words = 1, c.id, true, []codec.Word{}
		out = append(out, conformance.Msg{Subject: tok + ".transcript." + string(codec.EncodeToken(l.Participant)), Payload: &l})
	}
	return append(out, life(codec.LifecycleEnded))
}

func evidence(ev codec.Event) map[string]any { return ev.Data["evidence"].(map[string]any) }

func TestAudioRules(t *testing.T) {
	r := newRig(t, `
rules:
  - {name: loud, kind: shouting, level: -10, for: 2s, action: play, prompt: {tone: 660, duration: 200ms}}
  - {name: clip, kind: clipping, ratio: 0.5, for: 1s}
  - {name: quiet, kind: dead_air, for: 3s}
  - {name: hog, kind: dominating, share: 0.8, after: 4s}
`)
	// alice shouts (-4 dBFS) for 3 s and then clips for 1.5 s, with a 100 ms
	// breath every second; bob says a little at the start; then nobody
	// speaks for 4 s.
	c := call{id: "audio-rules", parts: []string{"alice", "bob"}, n: 450, amp: func(p, i int) float64 {
		switch {
		case p == 0 && i%50 >= 45:
			return 0
		case p == 0 && i < 150:
			return 20000
		case p == 0 && i < 225:
			return 60000
		case p == 1 && i < 20:
			return 3000
		}
		return 0
	}}
	r.publish(c.msgs()...)
	evs := r.hits(c.id, 4)
	byRule := map[string]codec.Event{}
	for _, ev := range evs {
		if _, dup := byRule[ev.Data["rule"].(string)]; dup {
			t.Errorf("rule %v hit twice within its cooldown", ev.Data["rule"])
		}
		byRule[ev.Data["rule"].(string)] = ev
	}
	if ev, ok := byRule["loud"]; !ok || ev.Participant != "alice" || ev.Data["callTimeMs"] != int64(2000) || ev.Data["action"] != "play" {
		t.Errorf("shouting: %+v", ev)
	}
	if ev, ok := byRule["clip"]; !ok || ev.Participant != "alice" {
		t.Errorf("clipping: %+v", ev)
	}
	if ev, ok := byRule["quiet"]; !ok || ev.Participant != "" || ev.Data["callTimeMs"] != int64(4500+3000-20) {
		t.Errorf("dead air: %+v", ev) // alice's last loud frame is at 4.48 s
	}
	if ev, ok := byRule["hog"]; !ok || ev.Participant != "alice" || ev.Data["callTimeMs"] != int64(4000) {
		t.Errorf("dominating: %+v", ev)
	}
	// The play action: a 200 ms tone at the call's rate, as Outbound audio.
	r.mu.Lock()
	defer r.mu.Unlock()
	if len(r.out) != 1 || r.out[0].Kind != "audio" || len(r.out[0].Data) != 6400 {
		t.Errorf("outbound %d messages", len(r.out))
	}
}

func TestTranscriptRulesMaskAndRateLimit(t *testing.T) {
	r := newRig(t, `
rules:
  - {name: abuse, kind: keywords, words: [idiot, crème brûlée], cooldown: 10s}
  - {name: churn, kind: regex, pattern: "(?i)cancel (my|the) (account|card \\d[\\d ]+)", action: stop}
  - {name: pii, kind: sensitive, types: [card, email]}
`)
	line := func(sec float64, who, text string) codec.Transcript {
		return codec.Transcript{Participant: who, Text: text, Offset: int64(sec * 1e7), Duration: 1e7, ReceivedAt: t0}
	}
	c := call{id: "transcripts", parts: []string{"alice"}, n: 10, amp: func(int, int) float64 { return 0 }, lines: []codec.Transcript{
		line(1, "alice", "You IDIOT, that was idiotic"),
		line(3, "alice", "idiot again"),      // within the cooldown: no event
		line(5, "bob", "idiot from bob"),     // the cooldown is the rule's in the call, whoever speaks
		line(12, "alice", "idiot once more"), // past it
		line(14, "bob", "Please cancel the card 4111 1111 1111 1111, mail me at bob@example.com"),
		line(16, "bob", "a number 4111 1111 1111 1112 that fails Luhn"),
		line(25, "bob", "Une CREME BRULEE s'il vous plait"),
	}}
	r.publish(c.msgs()...)
	evs := r.hits(c.id, 5)
	var got []string
	for _, ev := range evs {
		got = append(got, ev.Data["rule"].(string)+"@"+ev.Participant)
	}
	if want := []string{"abuse@alice", "abuse@alice", "churn@bob", "pii@bob", "abuse@bob"}; !slices.Equal(got, want) {
		t.Fatalf("hits %v, want %v", got, want)
	}
	if m := evidence(evs[0])["matches"].([]any); len(m) != 1 || m[0] != "idiot" {
		t.Errorf("keyword matches %v", m)
	}
	if m := evidence(evs[4])["matches"].([]any); len(m) != 1 || m[0] != "creme brulee" {
		t.Errorf("accented phrase %v", m)
	}
	masked := "Please cancel the card **** **** **** 1111, mail me at b***@***.com"
	if e := evidence(evs[2]); e["text"] != masked || e["matches"].([]any)[0] != "cancel the card **** **** **** 1111" {
		t.Errorf("regex evidence %v", e)
	}
	if e := evidence(evs[3]); e["text"] != masked || len(e["types"].([]any)) != 2 || e["values"].([]any)[0] != "**** **** **** 1111" {
		t.Errorf("sensitive evidence %v", e)
	}
	if v := conformance.Metric(t, r.reg, "audiofan_moderation_suppressed_total", ""); v != 2 {
		t.Errorf("suppressed %v, want 2", v)
	}
	r.mu.Lock()
	defer r.mu.Unlock()
	if len(r.out) != 1 || r.out[0].Kind != "stop" {
		t.Errorf("outbound %+v, want one stop", r.out)
	}
}

// A changed rules file is picked up while running; a bad one is refused and
// the rules in force stay.
func TestHotReload(t *testing.T) {
	r := newRig(t, "rules:\n  - {name: a, kind: keywords, words: [alpha]}\n")
	say := func(id, text string) {
		r.publish(call{id: id, parts: []string{"x"}, n: 1, amp: func(int, int) float64 { return 0 },
			lines: []codec.Transcript{{Participant: "x", Text: text, ReceivedAt: t0}}}.msgs()...)
	}
	say("reload-1", "alpha")
	r.hits("reload-1", 1)

	path := r.m.Rules().Source
	if err := os.WriteFile(path, []byte("rules:\n  - {name: b, kind: keywords, words: [beta]}\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	conformance.WaitFor(t, "the new rules", func() bool { return r.m.Rules().List[0].Name == "b" })
	say("reload-2", "alpha beta")
	if evs := r.hits("reload-2", 1); len(evs) != 1 || evs[0].Data["rule"] != "b" {
		t.Errorf("after reload: %+v", evs)
	}

	if err := os.WriteFile(path, []byte("rules:\n  - {name: c, kind: nonsense}\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	conformance.WaitFor(t, "the bad file refused", func() bool {
		mfs, _ := r.reg.Gather()
		for _, mf := range mfs {
			if mf.GetName() == "audiofan_moderation_rule_loads_total" {
				for _, m := range mf.GetMetric() {
					if m.GetLabel()[0].GetValue() == "refused" && m.GetCounter().GetValue() == 1 {
						return true
					}
				}
			}
		}
		return false
	})
	if r.m.Rules().List[0].Name != "b" {
		t.Error("a bad file replaced the rules in force")
	}
}

func TestConformance(t *testing.T) {
	rules := filepath.Join(t.TempDir(), "rules.yaml")
	// Rules that hit in the conformance call: its speakers' tones (about
	// -15 dBFS) count as shouting, its transcript lines as keywords.
	if err := os.WriteFile(rules, []byte(`
rules:
  - {name: loud, kind: shouting, level: -20, for: 400ms, cooldown: 1s}
  - {name: lines, kind: keywords, words: [line], cooldown: 1s}
  - {name: quiet, kind: dead_air, for: 1s}
`), 0o644); err != nil {
		t.Fatal(err)
	}
	conformance.Run(t, conformance.Spec{
		NewRole: func(t *testing.T, _ string, _ *nats.Conn, js jetstream.JetStream) subscribers.Role {
			cfg := natstest.Defaults[moderation.Config](t)
			cfg.Rules = rules
			m, err := moderation.New(cfg, natstest.Defaults[broker.StreamRef](t).Published(), js, prometheus.NewRegistry(), natstest.Logger())
			if err != nil {
				t.Fatal(err)
			}
			return m.Role()
		},
		Result: func(*testing.T, string, jetstream.JetStream, subscribers.CallInfo) any { return nil },
	})
}
