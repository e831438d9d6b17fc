package forward_test

import (
	"bytes"
	"context"
	"encoding/base64"
	"encoding/binary"
	"net"
	"net/http"
	"net/http/httptest"
	"net/url"
	"os"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/gorilla/websocket"
	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"
	"github.com/prometheus/client_golang/prometheus"

	"github.com/audiofan/audiofan/broker/natstest"
	"github.com/audiofan/audiofan/codec/acs"
	"github.com/audiofan/audiofan/subscribers"
	"github.com/audiofan/audiofan/subscribers/conformance"
	"github.com/audiofan/audiofan/subscribers/forward"
)

// target is an ACS-speaking service as a test runs it: it records every
// socket it is given (the upgrade's headers, each message in order) and
// answers as answer says.
type target struct {
	srv     *httptest.Server
	mu      sync.Mutex
	sockets []*socket
	refuse  atomic.Int32 // upgrades still to refuse (503)
	downTo  atomic.Int64 // refuse upgrades until then (unix nanoseconds)
	stall   atomic.Bool  // never read: a target too slow for the call
	quit    chan struct{}
	answer  func(c *websocket.Conn, first []byte)
}

type socket struct {
	header http.Header
	conn   *websocket.Conn
	mu     sync.Mutex
	msgs   [][]byte
	at     []time.Time // when each message was read
	closed chan struct{}
	code   int
}

func newTarget(t testing.TB) *target {
	tg := &target{quit: make(chan struct{})}
	up := websocket.Upgrader{}
	tg.srv = httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if time.Now().UnixNano() < tg.downTo.Load() {
			http.Error(w, "down", http.StatusServiceUnavailable)
			return
		}
		if tg.refuse.Load() > 0 {
			tg.refuse.Add(-1)
			http.Error(w, "not yet", http.StatusServiceUnavailable)
			return
		}
		c, err := up.Upgrade(w, r, nil)
		if err != nil {
			return
		}
		s := &socket{header: r.Header.Clone(), conn: c, closed: make(chan struct{})}
		tg.mu.Lock()
		tg.sockets = append(tg.sockets, s)
		tg.mu.Unlock()
		defer close(s.closed)
		defer c.Close()
		if tg.stall.Load() {
			defer func() { <-tg.quit }()
			// A small window, never read: the forwarder's writes back up
			// into its own queue within a few kilobytes.
			if tc, ok := c.NetConn().(*net.TCPConn); ok {
				_ = tc.SetReadBuffer(4096)
			}
			return
		}
		for {
			_, m, err := c.ReadMessage()
			if err != nil {
				var ce *websocket.CloseError
				if ok := asClose(err, &ce); ok {
					s.code = ce.Code
				}
				return
			}
			s.mu.Lock()
			s.msgs = append(s.msgs, m)
			s.at = append(s.at, time.Now())
			first := len(s.msgs) == 1
			s.mu.Unlock()
			if first && tg.answer != nil {
				tg.answer(c, m)
			}
		}
	}))
	t.Cleanup(tg.srv.Close)
	t.Cleanup(func() { close(tg.quit) }) // first: a stalled handler returns
	return tg
}

func asClose(err error, ce **websocket.CloseError) bool {
	c, ok := err.(*websocket.CloseError)
	*ce = c
	return ok
}

func (tg *target) url(opts string) string {
	return "ws" + strings.TrimPrefix(tg.srv.URL, "http") + "/media" + opts
}

func (tg *target) all() []*socket {
	tg.mu.Lock()
	defer tg.mu.Unlock()
	return append([]*socket(nil), tg.sockets...)
}

// down takes the target down for d: its sockets are cut (no close
// handshake, as a crash or a network fault does) and upgrades refused.
func (tg *target) down(d time.Duration) {
	tg.downTo.Store(time.Now().Add(d).UnixNano())
	for _, s := range tg.all() {
		_ = s.conn.NetConn().Close()
	}
}

func (s *socket) messages() [][]byte {
	s.mu.Lock()
	defer s.mu.Unlock()
	return append([][]byte(nil), s.msgs...)
}

// rig is a receiver on a test server and forwarder replicas reading it.
type rig struct {
	t   testing.TB
	ns  *natstest.Server
	rcv *natstest.Receiver
}

func newRig(t testing.TB) *rig {
	ns := natstest.Start(t)
	return &rig{t: t, ns: ns, rcv: natstest.StartReceiver(t, ns, nil)}
}

// replica is a forwarder replica a test runs.
type replica struct {
	reg   *prometheus.Registry
	stop  func() // a clean stop (its calls handed over); idempotent
	crash func() // a kill -9 as the bus sees it: the connection cut first
}

// forwarder runs a replica with AUDIOFAN_FORWARD_URL targets (the other
// settings their defaults, changed by modify) until stopped or the test's
// end.
func (r *rig) forwarder(targets string, modify func(*forward.Config)) replica {
	cfg := natstest.Defaults[forward.Config](r.t)
	cfg.URL = targets
	if modify != nil {
		modify(&cfg)
	}
	if err := cfg.Validate(); err != nil {
		r.t.Fatal(err)
	}
	nc, err := nats.Connect(r.ns.URL())
	if err != nil {
		r.t.Fatal(err)
	}
	js, _ := jetstream.New(nc)
	reg := prometheus.NewRegistry()
	f, err := forward.New(&cfg, r.rcv.Stream.Published(), nc, reg, natstest.Logger())
	if err != nil {
		r.t.Fatal(err)
	}
	g, err := subscribers.NewGroup(conformance.Config(r.t), f.Role(), r.rcv.Stream.StreamRef, nc, js, reg, natstest.Logger())
	if err != nil {
		r.t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan struct{})
	go func() { defer close(done); _ = g.Run(ctx) }()
	var once sync.Once
	end := func(first func()) {
		once.Do(func() {
			first()
			cancel()
			<-done
			f.Wait()
			nc.Close()
		})
	}
	rep := replica{reg: reg, stop: func() { end(func() {}) }, crash: func() { end(nc.Close) }}
	r.t.Cleanup(rep.stop)
	conformance.WaitFor(r.t, "the forwarder ready", func() bool { return g.Ready() == nil })
	return rep
}

// acsCall is ACS's side of a call: its socket to the receiver.
type acsCall struct {
	id string
	ws *websocket.Conn
}

func (r *rig) dialACS(id string) *acsCall {
	h := http.Header{"x-ms-call-connection-id": {id}, "x-ms-call-correlation-id": {"corr-" + id}}
	ws, _, err := websocket.DefaultDialer.Dial(r.rcv.URL(""), h)
	if err != nil {
		r.t.Fatal(err)
	}
	c := &acsCall{id: id, ws: ws}
	c.send(acs.AppendAudioMetadata(nil, "sub-"+id, 16000))
	return c
}

func (c *acsCall) send(msg []byte) {
	if err := c.ws.WriteMessage(websocket.TextMessage, msg); err != nil {
		panic(err)
	}
}

func (c *acsCall) hangUp() {
	_ = c.ws.WriteMessage(websocket.CloseMessage, websocket.FormatCloseMessage(websocket.CloseNormalClosure, "call over"))
}

var t0 = time.Date(2026, 12, 7, 9, 0, 0, 0, time.UTC)

func pcm(p, i int) []byte {
	b := make([]byte, 640)
	for j := 0; j < 640; j += 2 {
		binary.LittleEndian.PutUint16(b[j:], uint16(int16(300*(p+1)+(i*17+j)%500)))
	}
	return b
}

// frame is what a target was sent for one AudioData.
type frame struct {
	ts     time.Time
	part   string
	silent bool
	data   []byte
}

// parse reads what a socket carried with ACS's own message shapes: its
// kinds in order, and its frames.
func parse(t *testing.T, msgs [][]byte) (kinds []string, frames []frame, meta acs.AudioMetadata) {
	t.Helper()
	var p acs.Parser
	for _, m := range msgs {
		var in acs.Inbound
		if err := p.Parse(m, &in); err != nil {
			t.Fatalf("a message ACS would not send: %v: %s", err, m)
		}
		kinds = append(kinds, in.Kind.String())
		switch in.Kind {
		case acs.KindAudioMetadata:
			meta = in.AudioMetadata
		case acs.KindAudioData:
			frames = append(frames, frame{ts: in.AudioData.Timestamp, part: string(in.AudioData.Participant), silent: in.AudioData.Silent,
				data: bytes.Clone(in.AudioData.PCM)})
		}
	}
	return kinds, frames, meta
}

// A call is forwarded to two targets as ACS sends it: the upgrade carries
// ACS's call headers and the target's own token, AudioMetadata comes first,
// then every AudioData with its original timestamp, participant, silence
// flag and PCM byte for byte; DTMF goes only to the target that asked for
// it; the sockets close normally when the call ends.
func TestForwardCall(t *testing.T) {
	r := newRig(t)
	a, b := newTarget(t), newTarget(t)
	token := t.TempDir() + "/token"
	if err := writeFile(token, "s3cret-token\n"); err != nil {
		t.Fatal(err)
	}
	reg := r.forwarder(a.url("#name=agent&kinds=audio,dtmf&token_file="+url.QueryEscape(token))+","+b.url("#name=scribe"), nil).reg
	id := "4:+14255550123"
	c := r.dialACS(id)
	parts := []string{"8:acs:alice", "4:+14255550199"}
	const n = 60
	// The sender's clock jumps back an hour two thirds in: the forwarder
	// passes timestamps on as they came, never mends them.
	tsOf := func(i int) time.Time {
		ts := t0.Add(time.Duration(i) * 20 * time.Millisecond)
		if i >= 40 {
			ts = ts.Add(-time.Hour)
		}
		return ts
	}
	for i := range n {
		for p, part := range parts {
			c.send(acs.AppendAudioData(nil, tsOf(i), part, pcm(p, i), i%7 == 0))
		}
		if i == 30 {
			c.send(acs.AppendDtmf(nil, t0.Add(600*time.Millisecond), parts[0], "5"))
		}
	}
	c.hangUp()
	for _, tg := range []*target{a, b} {
		conformance.WaitFor(t, "the target's socket closed", func() bool {
			s := tg.all()
			if len(s) != 1 {
				return false
			}
			select {
			case <-s[0].closed:
				return true
			default:
				return false
			}
		})
	}
	sa, sb := a.all()[0], b.all()[0]
	if got := sa.header.Get("x-ms-call-connection-id"); got != id {
		t.Errorf("x-ms-call-connection-id %q", got)
	}
	if got := sa.header.Get("x-ms-call-correlation-id"); got != "corr-"+id {
		t.Errorf("x-ms-call-correlation-id %q", got)
	}
	if got := sa.header.Get("Authorization"); got != "Bearer s3cret-token" {
		t.Errorf("Authorization %q", got)
	}
	if got := sb.header.Get("Authorization"); got != "" {
		t.Errorf("a target without credentials got Authorization %q", got)
	}
	if sa.code != websocket.CloseNormalClosure {
		t.Errorf("closed with %d, want a normal closure", sa.code)
	}
	for name, s := range map[string]*socket{"agent": sa, "scribe": sb} {
		kinds, frames, meta := parse(t, s.messages())
		if len(kinds) == 0 || kinds[0] != "AudioMetadata" || meta.SampleRate != 16000 || meta.SubscriptionID != "sub-"+id {
			t.Fatalf("%s: first %v, metadata %+v", name, kinds[:min(3, len(kinds))], meta)
		}
		dtmf := strings.Count(strings.Join(kinds, " "), "DtmfData")
		if want := map[string]int{"agent": 1, "scribe": 0}[name]; dtmf != want {
			t.Errorf("%s: %d DTMF messages, want %d", name, dtmf, want)
		}
		if len(frames) != n*len(parts) {
			t.Fatalf("%s: %d frames, want %d", name, len(frames), n*len(parts))
		}
		for k, f := range frames {
			i, p := k/len(parts), k%len(parts)
			if !f.ts.Equal(tsOf(i)) || f.part != parts[p] || f.silent != (i%7 == 0) || !bytes.Equal(f.data, pcm(p, i)) {
				t.Fatalf("%s: frame %d: %v %q silent %v, %d bytes: not as sent", name, k, f.ts, f.part, f.silent, len(f.data))
			}
		}
	}
	if got := conformance.Metric(t, reg, "audiofan_forward_messages_sent_total", "agent"); got != float64(1+n*len(parts)+1) {
		t.Errorf("agent: %v messages counted, want %d", got, 1+n*len(parts)+1)
	}
}

// What a target sends back goes into the call: its AudioData reaches the
// call's ACS socket as outbound audio with the same PCM, its StopAudio as
// StopAudio; a malformed and an oversized message are dropped and
// counted, and the socket stays.
func TestForwardBackChannel(t *testing.T) {
	r := newRig(t)
	a := newTarget(t)
	reply := make([]byte, 1280) // two 20 ms chunks at 16 kHz
	for i := range reply {
		reply[i] = byte(i * 7)
	}
	conns := make(chan *websocket.Conn, 1)
	a.answer = func(c *websocket.Conn, _ []byte) {
		for _, m := range [][]byte{
			[]byte(`{"kind":"AudioData","audioData":{"data":"` + base64.StdEncoding.EncodeToString(reply) + `"}}`),
			[]byte(`{"kind":"Nonsense"}`),
			bytes.Repeat([]byte("x"), 4096),
		} {
			_ = c.WriteMessage(websocket.TextMessage, m)
		}
		conns <- c
	}
	reg := r.forwarder(a.url("#name=agent"), func(c *forward.Config) { c.MaxMessage = 2048 }).reg
	c := r.dialACS("8:acs:back-channel")
	var got bytes.Buffer
	stopped := make(chan struct{})
	go func() {
		defer close(stopped)
		var back *websocket.Conn
		for {
			_, m, err := c.ws.ReadMessage()
			if err != nil {
				return
			}
			out, err := acs.ParseOutbound(m)
			if err != nil {
				t.Errorf("outbound ACS would not take: %v: %s", err, m)
				return
			}
			if out.Kind == acs.OutboundStopAudio {
				return
			}
			got.Write(out.PCM)
			if got.Len() >= len(reply) && back == nil {
				// Played whole: now the target barges in (a StopAudio
				// sent with it would have dropped it unplayed).
				back = <-conns
				_ = back.WriteMessage(websocket.TextMessage, []byte(`{"Kind":"StopAudio","StopAudio":{}}`)) // .NET's casing
			}
		}
	}()
	for i := 0; ; i++ {
		c.send(acs.AppendAudioData(nil, t0.Add(time.Duration(i)*20*time.Millisecond), "8:acs:alice", pcm(0, i), false))
		select {
		case <-stopped:
		case <-time.After(20 * time.Millisecond):
			if i < 1500 {
				continue
			}
			t.Fatal("no StopAudio reached the call")
		}
		break
	}
	c.hangUp()
	if !bytes.Equal(got.Bytes(), reply) {
		t.Errorf("the call got %d bytes of outbound audio, want the target's %d byte for byte", got.Len(), len(reply))
	}
	for result, want := range map[string]float64{"relayed": 2, "invalid": 1, "too_large": 1} {
		conformance.WaitFor(t, result+" counted", func() bool {
			return metricWith(t, reg, "audiofan_forward_backchannel_total", "result", result) == want
		})
	}
}

// One slow target holds up only itself: the other gets every frame, and
// the slow one's queue loses its oldest, counted.
func TestForwardSlowTarget(t *testing.T) {
	r := newRig(t)
	slow, fast := newTarget(t), newTarget(t)
	slow.stall.Store(true)
	reg := r.forwarder(slow.url("#name=slow")+","+fast.url("#name=fast"), func(c *forward.Config) {
		c.Buffer = 500                   // the Group hands messages over in bursts: the fast target's queue takes them
		c.WriteTimeout = 2 * time.Second // then the stalled socket is dropped and redialled; its queue overflows meanwhile
	}).reg
	c := r.dialACS("8:acs:slow")
	// 160 s of audio: past what the queue and the kernel's buffers (the
	// sender's grows to megabytes on loopback) hold for the stalled target.
	const n = 8000
	for i := range n {
		c.send(acs.AppendAudioData(nil, t0.Add(time.Duration(i)*20*time.Millisecond), "", pcm(0, i), false))
		if i%10 == 9 {
			time.Sleep(2 * time.Millisecond) // 100 times real time: within what the receiver stores without shedding
		}
	}
	conformance.WaitFor(t, "every frame at the fast target", func() bool {
		s := fast.all()
		if len(s) != 1 {
			return false
		}
		msgs := s[0].messages()
		if len(msgs) < n+1 {
			return false
		}
		_, frames, _ := parse(t, msgs)
		return len(frames) == n
	})
	if d := metricWith(t, reg, "audiofan_forward_dropped_total", "target", "slow"); d == 0 {
		t.Error("the slow target dropped nothing")
	}
	if d := metricWith(t, reg, "audiofan_forward_dropped_total", "target", "fast"); d != 0 {
		t.Errorf("the fast target dropped %v", d)
	}
	c.hangUp()
}

// A target that refuses the socket is redialled with backoff until it
// takes it; the socket then starts with AudioMetadata, at live audio.
func TestForwardRedial(t *testing.T) {
	r := newRig(t)
	a := newTarget(t)
	a.refuse.Store(4)
	reg := r.forwarder(a.url("#name=agent"), func(c *forward.Config) { c.RedialMax = 500 * time.Millisecond }).reg
	c := r.dialACS("8:acs:redial")
	for i := 0; len(a.all()) == 0; i++ {
		if i > 1500 {
			t.Fatal("never redialled")
		}
		c.send(acs.AppendAudioData(nil, t0.Add(time.Duration(i)*20*time.Millisecond), "", pcm(0, i), false))
		time.Sleep(10 * time.Millisecond)
	}
	for i := range 10 {
		c.send(acs.AppendAudioData(nil, t0.Add(time.Hour+time.Duration(i)*20*time.Millisecond), "", pcm(0, i), false))
	}
	c.hangUp()
	s := a.all()[0]
	<-s.closed
	kinds, frames, _ := parse(t, s.messages())
	if kinds[0] != "AudioMetadata" || len(frames) < 10 {
		t.Errorf("after the redials: %v…, %d frames", kinds[:min(2, len(kinds))], len(frames))
	}
	if got := conformance.Metric(t, reg, "audiofan_forward_dial_failures_total", "agent"); got != 4 {
		t.Errorf("%v failed dials counted, want 4", got)
	}
}

// A target down for 10 s in mid-call (its socket cut, its upgrades
// refused) is redialled with backoff and jitter until it is back. The new
// socket starts with AudioMetadata and carries live audio: nothing of what
// was said while the target was down is replayed.
func TestForwardTargetDown(t *testing.T) {
	const outage = 10 * time.Second
	r := newRig(t)
	a := newTarget(t)
	reg := r.forwarder(a.url("#name=agent"), func(c *forward.Config) { c.RedialMax = 2 * time.Second }).reg
	c := r.dialACS("8:acs:00000000-down-4b7c+1")
	tick := time.NewTicker(20 * time.Millisecond)
	defer tick.Stop()
	i := 0
	send := func() {
		c.send(acs.AppendAudioData(nil, t0.Add(time.Duration(i)*20*time.Millisecond), "4:+14255550199", pcm(0, i), false))
		i++
		<-tick.C
	}
	for len(a.all()) == 0 {
		if send(); i > 500 {
			t.Fatal("the target was never dialled")
		}
	}
	for range 25 {
		send()
	}
	a.down(outage)
	wentDown, downFrame := time.Now(), i
	for len(a.all()) < 2 {
		if send(); i > downFrame+int(3*outage/(20*time.Millisecond)) {
			t.Fatal("not redialled within three outages")
		}
	}
	back := time.Since(wentDown)
	for range 25 {
		send()
	}
	c.hangUp()
	s := a.all()[1]
	<-s.closed
	kinds, frames, _ := parse(t, s.messages())
	if kinds[0] != "AudioMetadata" || len(frames) < 25 {
		t.Fatalf("after the outage: %v…, %d frames", kinds[:min(2, len(kinds))], len(frames))
	}
	// Live audio: the new socket's first frame was said after the target
	// came back (the test's frames are 20 ms apart in its own clock too).
	if first, upAt := frames[0].ts, t0.Add(time.Duration(downFrame)*20*time.Millisecond+outage); first.Before(upAt.Add(-time.Second)) {
		t.Errorf("the new socket started %v before the target was back: the outage was replayed", upAt.Sub(first))
	}
	if back < outage {
		t.Errorf("a socket within %v of an outage of %v", back, outage)
	}
	t.Logf("back %v after the outage began; first frame on the new socket at +%v", back.Round(time.Millisecond), frames[0].ts.Sub(t0))
	if got := conformance.Metric(t, reg, "audiofan_forward_dial_failures_total", "agent"); got < 3 {
		t.Errorf("%v failed dials in a %v outage with redials at most 2 s (and jitter) apart", got, outage)
	}
	if got := conformance.Metric(t, reg, "audiofan_forward_redials_total", "agent"); got < 4 {
		t.Errorf("%v redials counted", got)
	}
}

func metricWith(t *testing.T, g prometheus.Gatherer, name, label, value string) float64 {
	t.Helper()
	mfs, err := g.Gather()
	if err != nil {
		t.Fatal(err)
	}
	v := 0.0
	for _, mf := range mfs {
		if mf.GetName() != name {
			continue
		}
		for _, m := range mf.GetMetric() {
			for _, l := range m.GetLabel() {
				if l.GetName() == label && l.GetValue() == value {
					v += m.GetCounter().GetValue() + m.GetGauge().GetValue()
				}
			}
		}
	}
	return v
}

func writeFile(path, s string) error { return os.WriteFile(path, []byte(s), 0o600) }
