package console_test

import (
	"bufio"
	"bytes"
	"context"
	"encoding/binary"
	"encoding/json"
	"errors"
	"io"
	"math"
	"net"
	"net/http"
	"net/http/httptest"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/gorilla/websocket"
	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"
	"github.com/prometheus/client_golang/prometheus"

	"github.com/audiofan/audiofan/broker"
	"github.com/audiofan/audiofan/broker/natstest"
	"github.com/audiofan/audiofan/codec"
	"github.com/audiofan/audiofan/subscribers/conformance"
	"github.com/audiofan/audiofan/subscribers/console"
)

type env struct {
	t    testing.TB
	nc   *nats.Conn
	js   jetstream.JetStream
	ref  broker.StreamRef
	c    *console.Console
	reg  *prometheus.Registry
	srv  *httptest.Server
	data string
}

func start(t testing.TB, modify func(*console.Config)) *env {
	t.Helper()
	bus := natstest.StartBus(t)
	nc, js, sc := bus.NC, bus.JS, bus.Stream
	cfg := natstest.Defaults[console.Config](t)
	if modify != nil {
		modify(&cfg)
	}
	e := &env{t: t, nc: nc, js: js, ref: sc.StreamRef, reg: prometheus.NewRegistry(), data: t.TempDir()}
	var err error
	e.c, err = console.New(cfg, console.Deps{NC: nc, JS: js, Stream: sc.StreamRef, DataDir: e.data,
		Roles: []string{"recording", "analytics"}, Reg: e.reg, Log: natstest.Logger()})
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- e.c.Run(ctx) }()
	e.srv = httptest.NewServer(e.c.Handler())
	t.Cleanup(func() {
		cancel()
		e.srv.CloseClientConnections()
		e.srv.Close()
		if err := <-done; err != nil {
			t.Error(err)
		}
	})
	conformance.WaitFor(t, "console ready", func() bool { return e.c.Ready() == nil })
	return e
}

// publish stores messages of a scripted call.
func (e *env) publish(msgs []conformance.Msg) {
	e.t.Helper()
	for _, m := range msgs {
		data, err := codec.Marshal(m.Payload)
		if err != nil {
			e.t.Fatal(err)
		}
		if _, err := e.js.Publish(e.t.Context(), e.ref.Prefix+"."+m.Subject, data); err != nil {
			e.t.Fatal(err)
		}
	}
}

func (e *env) calls() []console.CallView {
	e.t.Helper()
	var out []console.CallView
	e.get("/api/calls", &out)
	return out
}

func (e *env) get(path string, v any) {
	e.t.Helper()
	resp, err := http.Get(e.srv.URL + path)
	if err != nil {
		e.t.Fatal(err)
	}
	defer resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		e.t.Fatalf("GET %s: %s", path, resp.Status)
	}
	if err := json.NewDecoder(resp.Body).Decode(v); err != nil {
		e.t.Fatal(err)
	}
}

// ended is the scripted call, its audio socket's end reporting what the
// receiver stored.
func ended(id string) []conformance.Msg {
	msgs := conformance.Default(id)
	for _, m := range msgs {
		if l, ok := m.Payload.(*codec.Lifecycle); ok && l.Type == codec.LifecycleEnded && l.Stream == "audio" {
			l.Reason = "peer"
			l.Frames = map[string]uint64{"8:acs:alice": 146, "8:acs:bob": 146, "4:+14255550123": 146}
		}
	}
	return msgs
}

// live is the scripted call without its end.
func live(id string) []conformance.Msg {
	msgs := conformance.Default(id)
	return msgs[:len(msgs)-2] // without the two "ended"
}

func TestEnabled(t *testing.T) {
	for _, c := range []struct {
		mode, token, addr string
		on                bool
		err               error
	}{
		{"auto", "", "127.0.0.1:8080", true, nil},
		{"auto", "", "localhost:8080", true, nil},
		{"auto", "", "[::1]:8080", true, nil},
		{"auto", "", ":8080", false, nil},
		{"auto", "", "0.0.0.0:8080", false, nil},
		{"auto", "s3cret", ":8080", true, nil},
		{"on", "", ":8080", false, console.ErrUnprotected},
		{"on", "s3cret", ":8080", true, nil},
		{"off", "s3cret", "127.0.0.1:8080", false, nil},
	} {
		cfg := natstest.Defaults[console.Config](t)
		cfg.Mode, cfg.Token = c.mode, c.token
		on, err := cfg.Enabled(c.addr)
		if on != c.on || !errors.Is(err, c.err) {
			t.Errorf("mode %s token %q on %s: %v %v, want %v %v", c.mode, c.token, c.addr, on, err, c.on, c.err)
		}
	}
	cfg := natstest.Defaults[console.Config](t)
	cfg.User = "only-user"
	if cfg.Validate() == nil {
		t.Error("a user without a password is accepted")
	}
}

func TestAuth(t *testing.T) {
	e := start(t, func(c *console.Config) { c.Token, c.User, c.Password = "tok-123", "sup", "pw" })
	noRedirect := &http.Client{CheckRedirect: func(*http.Request, []*http.Request) error { return http.ErrUseLastResponse }}
	do := func(path string, mod func(*http.Request)) *http.Response {
		req, _ := http.NewRequest("GET", e.srv.URL+path, nil)
		if mod != nil {
			mod(req)
		}
		resp, err := noRedirect.Do(req)
		if err != nil {
			t.Fatal(err)
		}
		resp.Body.Close()
		return resp
	}
	for _, c := range []struct {
		name string
		path string
		mod  func(*http.Request)
		want int
	}{
		{"nothing", "/api/calls", nil, 401},
		{"page without credential", "/", nil, 401},
		{"listen without credential", "/api/calls/x/listen", func(r *http.Request) {
			r.Header.Set("Connection", "Upgrade")
			r.Header.Set("Upgrade", "websocket")
		}, 401},
		{"wrong bearer", "/api/calls", func(r *http.Request) { r.Header.Set("Authorization", "Bearer tok-12") }, 401},
		{"bearer", "/api/calls", func(r *http.Request) { r.Header.Set("Authorization", "Bearer tok-123") }, 200},
		{"wrong password", "/api/calls", func(r *http.Request) { r.SetBasicAuth("sup", "pwx") }, 401},
		{"basic", "/api/calls", func(r *http.Request) { r.SetBasicAuth("sup", "pw") }, 200},
		{"wrong cookie", "/api/calls", func(r *http.Request) { r.AddCookie(&http.Cookie{Name: "audiofan_console", Value: "nope"}) }, 401},
		{"wrong token link", "/?token=nope", nil, 401},
	} {
		if got := do(c.path, c.mod).StatusCode; got != c.want {
			t.Errorf("%s: %d, want %d", c.name, got, c.want)
		}
	}
	resp := do("/?token=tok-123", nil)
	if resp.StatusCode != http.StatusSeeOther || resp.Header.Get("Location") != "/" {
		t.Fatalf("token link: %s to %q, want a redirect to /", resp.Status, resp.Header.Get("Location"))
	}
	var ck *http.Cookie
	for _, c := range resp.Cookies() {
		if c.Name == "audiofan_console" {
			ck = c
		}
	}
	if ck == nil || !ck.HttpOnly || ck.SameSite != http.SameSiteStrictMode {
		t.Fatalf("token link cookie %+v: want HttpOnly, SameSite=Strict", ck)
	}
	withCookie := do("/", func(r *http.Request) { r.AddCookie(ck) })
	if withCookie.StatusCode != 200 {
		t.Fatalf("with the cookie: %d", withCookie.StatusCode)
	}
	if csp := withCookie.Header.Get("Content-Security-Policy"); !strings.Contains(csp, "frame-ancestors 'none'") ||
		withCookie.Header.Get("Referrer-Policy") != "no-referrer" {
		t.Errorf("page headers: CSP %q, Referrer-Policy %q", csp, withCookie.Header.Get("Referrer-Policy"))
	}
	if got := conformance.Metric(t, e.reg, "audiofan_console_auth_failures_total", ""); got != 7 {
		t.Errorf("auth failures counted: %v, want 7", got)
	}
}

func TestCallList(t *testing.T) {
	e := start(t, nil)
	e.publish(ended("ended-call"))
	e.publish(live("live-call"))
	tokLive := string(codec.EncodeToken("live-call"))
	e.publish([]conformance.Msg{
		{Subject: tokLive + ".events.analytics", Payload: &codec.Event{V: 1, Call: "live-call", Source: "analytics", Type: "progress",
			Data: map[string]any{"final": false, "participants": []any{}}}},
		{Subject: tokLive + ".events.moderation", Payload: &codec.Event{V: 1, Call: "live-call", Source: "moderation", Type: "hit",
			Data: map[string]any{"rule": "shouting"}}},
	})
	var calls []console.CallView
	conformance.WaitFor(t, "both calls listed", func() bool {
		calls = e.calls()
		return len(calls) == 2 && calls[0].Hits == 1 && calls[1].Reason != ""
	})
	lv, ended := calls[0], calls[1]
	if lv.ID != "live-call" || !lv.Live || len(lv.Receivers) != 1 || lv.Receivers[0] != "test" || lv.SampleRate != 16000 ||
		lv.Analytics == nil || len(lv.Streams) != 2 {
		t.Errorf("live call: %+v", lv)
	}
	if ended.ID != "ended-call" || ended.Live || ended.Ended.IsZero() || ended.DurationMs != 3000 || len(ended.Participants) != 3 ||
		ended.Mixed == nil || *ended.Mixed || ended.Frames["8:acs:alice"] == 0 || len(ended.Receivers) != 1 {
		t.Errorf("ended call: %+v", ended)
	}
	var one console.CallView
	e.get("/api/calls/"+tokLive, &one)
	if one.ID != "live-call" {
		t.Errorf("one call: %+v", one)
	}
	resp, err := http.Get(e.srv.URL + "/api/calls/nope/feed")
	if err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	if resp.StatusCode != http.StatusNotFound {
		t.Errorf("feed of an unknown call: %s", resp.Status)
	}

	var h console.Health
	e.get("/api/health", &h)
	if h.Stream.Name != e.ref.Name || h.Stream.Messages == 0 || h.Receivers["test"] != 1 || len(h.Roles) != 2 || h.Roles[0].Present {
		t.Errorf("health: %+v", h)
	}
}

// sse reads a page's feed.
type sse struct {
	resp *http.Response
	sc   *bufio.Scanner
}

func openFeed(t testing.TB, url string) *sse {
	t.Helper()
	resp, err := http.Get(url)
	if err != nil {
		t.Fatal(err)
	}
	if resp.StatusCode != http.StatusOK {
		t.Fatalf("%s: %s", url, resp.Status)
	}
	sc := bufio.NewScanner(resp.Body)
	sc.Buffer(make([]byte, 0, 64<<10), 1<<22)
	return &sse{resp: resp, sc: sc}
}

func (s *sse) next(t testing.TB, v any) {
	t.Helper()
	for s.sc.Scan() {
		if data, ok := strings.CutPrefix(s.sc.Text(), "data: "); ok {
			if err := json.Unmarshal([]byte(data), v); err != nil {
				t.Fatal(err)
			}
			return
		}
	}
	t.Fatalf("feed ended: %v", s.sc.Err())
}

type update struct {
	Snapshot    bool
	CallMs      int64
	Parts       []console.PartView
	Segments    []console.SegmentView
	Transcripts []console.Transcript
	Hits        []console.Hit
	Call        *console.CallView
}

// Ten pages on one call share one watcher (one consumer on the stream), and
// each gets the call's participants, speech and transcript; when they go,
// the watcher goes.
func TestCallFeedShared(t *testing.T) {
	e := start(t, nil)
	e.publish(live("busy"))
	tok := string(codec.EncodeToken("busy"))
	conformance.WaitFor(t, "call listed", func() bool { return len(e.calls()) == 1 })

	consumers := func() int {
		s, err := e.js.Stream(t.Context(), e.ref.Name)
		if err != nil {
			t.Fatal(err)
		}
		return s.CachedInfo().State.Consumers
	}
	var feeds []*sse
	for range 10 {
		feeds = append(feeds, openFeed(t, e.srv.URL+"/api/calls/"+tok+"/feed"))
	}
	if w, _ := console.Feeds(e.c); w != 1 {
		t.Fatalf("%d watchers for 10 pages of one call", w)
	}
	// The watcher makes its consumer once its first page is open; the
	// pages share it.
	conformance.WaitFor(t, "the call's consumer", func() bool { return consumers() >= 2 })
	if n := consumers(); n != 2 { // the call list's and the call's
		t.Fatalf("%d consumers on the stream with 10 pages open, want 2", n)
	}
	for i, f := range feeds {
		var parts, segs, texts int
		for parts < 3 || segs == 0 || texts < 3 {
			var u update
			f.next(t, &u)
			parts, segs, texts = len(u.Parts), segs+len(u.Segments), texts+len(u.Transcripts)
		}
		_ = i
	}
	// A moderation hit arrives live on every page.
	e.publish([]conformance.Msg{{Subject: tok + ".events.moderation", Payload: &codec.Event{V: 1, Call: "busy", Source: "moderation",
		Type: "hit", Participant: "8:acs:bob", Data: map[string]any{"rule": "shouting", "kind": "shouting", "callTimeMs": int64(1500), "evidence": "loud"}}}})
	for _, f := range feeds {
		for {
			var u update
			f.next(t, &u)
			if len(u.Hits) > 0 {
				if h := u.Hits[0]; h.Rule != "shouting" || h.AtMs != 1500 || h.Participant != "8:acs:bob" {
					t.Fatalf("hit %+v", h)
				}
				break
			}
		}
	}
	if got := conformance.Metric(t, e.reg, "audiofan_console_feeds", "call"); got != 10 {
		t.Errorf("call feeds gauge %v, want 10", got)
	}
	for _, f := range feeds {
		f.resp.Body.Close()
	}
	conformance.WaitFor(t, "the watcher gone with the pages", func() bool { w, _ := console.Feeds(e.c); return w == 0 })
}

// A call's timeline: talk segments where the script has speech.
func TestCallFeedTimeline(t *testing.T) {
	e := start(t, nil)
	e.publish(conformance.Default("done"))
	conformance.WaitFor(t, "call listed", func() bool { c := e.calls(); return len(c) == 1 && !c[0].Live })
	f := openFeed(t, e.srv.URL+"/api/calls/"+string(codec.EncodeToken("done"))+"/feed")
	defer f.resp.Body.Close()
	var segs []console.SegmentView
	var last update
	for len(segs) < 6 {
		var u update
		f.next(t, &u)
		segs = append(segs, u.Segments...)
		last = u
	}
	// The script: 150 frames, each participant speaks for 25 frames
	// (500 ms) in turn, twice.
	for _, s := range segs {
		if d := s.EndMs - s.StartMs; d < 400 || d > 520 || s.StartMs%500 > 40 {
			t.Errorf("segment %+v: want 500 ms turns starting on a 500 ms boundary", s)
		}
	}
	if last.CallMs < 2900 {
		t.Errorf("call time %d ms, want the whole 3 s", last.CallMs)
	}
}

// Listening in: ten listeners of one call share one NATS subscription; each
// gets a participant announcement, then the frames (batched, each behind its
// length) with their capture time, rate, participant and PCM; a listener of
// one participant gets only it.
func TestListen(t *testing.T) {
	e := start(t, nil)
	e.publish(live("talk"))
	tok := string(codec.EncodeToken("talk"))
	conformance.WaitFor(t, "call listed", func() bool { return len(e.calls()) == 1 })
	base := e.nc.NumSubscriptions()
	wsURL := "ws" + strings.TrimPrefix(e.srv.URL, "http") + "/api/calls/" + tok + "/listen"
	var conns []*websocket.Conn
	for i := range 10 {
		u := wsURL
		if i == 9 {
			u += "?participant=" + string(codec.EncodeToken("8:acs:bob"))
		}
		c, _, err := websocket.DefaultDialer.Dial(u, nil)
		if err != nil {
			t.Fatal(err)
		}
		defer c.Close()
		conns = append(conns, c)
	}
	if _, hubs := console.Feeds(e.c); hubs != 1 {
		t.Fatalf("%d hubs for one call", hubs)
	}
	if got := e.nc.NumSubscriptions() - base; got != 1 {
		t.Fatalf("%d NATS subscriptions for 10 listeners, want 1", got)
	}
	t0 := time.Date(2026, 11, 25, 12, 0, 0, 0, time.UTC)
	pcm := make([]byte, 640)
	for i := range pcm {
		pcm[i] = byte(i)
	}
	send := func(part string, n int) {
		e.publish([]conformance.Msg{{Subject: tok + ".audio." + string(codec.EncodeToken(part)), Payload: &codec.Frame{V: 1, Call: "talk",
			Participant: part, Seq: uint64(1000 + n), Timestamp: t0.Add(time.Duration(n) * 20 * time.Millisecond), SampleRate: 16000,
			Channels: 1, Encoding: codec.EncodingPCM16, Data: pcm}}})
	}
	send("8:acs:alice", 0)
	send("8:acs:bob", 0)
	for i, c := range conns {
		_ = c.SetReadDeadline(time.Now().Add(10 * time.Second))
		names := map[int]string{}
		var got []string
		for len(got) < 2 && !(i == 9 && len(got) == 1) {
			kind, b, err := c.ReadMessage()
			if err != nil {
				t.Fatalf("listener %d: %v", i, err)
			}
			if kind == websocket.TextMessage {
				var a struct {
					Index int
					ID    string
				}
				if err := json.Unmarshal(b, &a); err != nil {
					t.Fatal(err)
				}
				names[a.Index] = a.ID
				continue
			}
			// A batch: each frame behind its length.
			for len(b) > 0 {
				n := int(binary.LittleEndian.Uint32(b))
				if n < 16 || 4+n > len(b) {
					t.Fatalf("listener %d: frame length %d in a batch of %d bytes", i, n, len(b))
				}
				f := b[4 : 4+n]
				b = b[4+n:]
				at := math.Float64frombits(binary.LittleEndian.Uint64(f))
				if int64(at) != t0.UnixMilli() || binary.LittleEndian.Uint32(f[8:]) != 16000 || binary.LittleEndian.Uint16(f[14:]) != 1 ||
					!bytes.Equal(f[16:], pcm) {
					t.Fatalf("listener %d: frame header or PCM wrong: at %v", i, at)
				}
				got = append(got, names[int(binary.LittleEndian.Uint16(f[12:]))])
			}
		}
		if i == 9 && (len(got) != 1 || got[0] != "8:acs:bob") {
			t.Fatalf("the one-participant listener got %v", got)
		}
		if i < 9 && (got[0] != "8:acs:alice" || got[1] != "8:acs:bob") {
			t.Fatalf("listener %d got %v", i, got)
		}
	}
	for _, c := range conns {
		c.Close()
	}
	conformance.WaitFor(t, "the hub gone with the listeners", func() bool { _, h := console.Feeds(e.c); return h == 0 })
	if got := e.nc.NumSubscriptions(); got != base {
		t.Fatalf("%d subscriptions left, want %d", got, base)
	}
}

func TestRecordings(t *testing.T) {
	e := start(t, nil)
	tok := string(codec.EncodeToken("rec"))
	wav := bytes.Repeat([]byte("RIFFdata"), 1000)
	if err := os.MkdirAll(filepath.Join(e.data, "recordings", tok), 0o755); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(filepath.Join(e.data, "recordings", tok, "mix.wav"), wav, 0o644); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(filepath.Join(e.data, "secret.wav"), []byte("not listed"), 0o644); err != nil {
		t.Fatal(err)
	}
	store, err := e.js.CreateObjectStore(t.Context(), jetstream.ObjectStoreConfig{Bucket: "recs"})
	if err != nil {
		t.Fatal(err)
	}
	obj := bytes.Repeat([]byte("OBJECT"), 5000)
	if _, err := store.PutBytes(t.Context(), tok+"/a.wav", obj); err != nil {
		t.Fatal(err)
	}
	e.publish(append(conformance.Default("rec"), conformance.Msg{Subject: tok + ".events.recording", Payload: &codec.Event{V: 1,
		Call: "rec", Source: "recording", Type: "recording", Data: map[string]any{"files": []any{
			map[string]any{"name": "mix.wav", "path": "recordings/" + tok + "/mix.wav", "object": ""},
			map[string]any{"name": "a.wav", "path": "", "object": "recs/" + tok + "/a.wav"},
			map[string]any{"name": "evil.wav", "path": "../secret.wav", "object": ""},
		}}}}))
	conformance.WaitFor(t, "recording listed", func() bool { c := e.calls(); return len(c) == 1 && c[0].Recording != nil })

	get := func(name string, hdr http.Header) (*http.Response, []byte) {
		req, _ := http.NewRequest("GET", e.srv.URL+"/api/calls/"+tok+"/recordings/"+name, nil)
		for k, v := range hdr {
			req.Header[k] = v
		}
		resp, err := http.DefaultClient.Do(req)
		if err != nil {
			t.Fatal(err)
		}
		defer resp.Body.Close()
		b, _ := io.ReadAll(resp.Body)
		return resp, b
	}
	if resp, b := get("mix.wav", nil); resp.StatusCode != 200 || !bytes.Equal(b, wav) || resp.Header.Get("Content-Type") != "audio/wav" {
		t.Errorf("mix.wav from disk: %s, %d bytes", resp.Status, len(b))
	}
	if resp, b := get("mix.wav", http.Header{"Range": {"bytes=8-15"}}); resp.StatusCode != http.StatusPartialContent || string(b) != "RIFFdata" {
		t.Errorf("a range of mix.wav: %s %q", resp.Status, b)
	}
	if resp, _ := get("mix.wav?download", nil); !strings.Contains(resp.Header.Get("Content-Disposition"), "attachment") {
		t.Errorf("download: Content-Disposition %q", resp.Header.Get("Content-Disposition"))
	}
	if resp, b := get("a.wav", nil); resp.StatusCode != 200 || !bytes.Equal(b, obj) {
		t.Errorf("a.wav from the object store: %s, %d bytes", resp.Status, len(b))
	}
	for _, name := range []string{"evil.wav", "secret.wav", "other.wav", "..%2Fsecret.wav"} {
		if resp, b := get(name, nil); resp.StatusCode != http.StatusNotFound || bytes.Contains(b, []byte("not listed")) {
			t.Errorf("%s: %s %q, want 404", name, resp.Status, b)
		}
	}
}

// The list feed counts each live call's frames per second and the frames
// that never reached the bus (gaps in seq).
func TestListRates(t *testing.T) {
	e := start(t, nil)
	e.publish(live("fps"))
	tok := string(codec.EncodeToken("fps"))
	conformance.WaitFor(t, "call listed", func() bool { return len(e.calls()) == 1 })
	f := openFeed(t, e.srv.URL+"/api/calls/feed")
	defer f.resp.Body.Close()
	var first []console.CallView
	f.next(t, &first)
	var wg sync.WaitGroup
	stop := make(chan struct{})
	wg.Go(func() {
		t0 := time.Now()
		for n := 0; ; n++ {
			select {
			case <-stop:
				return
			case <-time.After(20 * time.Millisecond):
			}
			seq := uint64(n + 1)
			if n >= 10 {
				seq += 5 // five frames lost once
			}
			data, _ := codec.Marshal(&codec.Frame{V: 1, Call: "fps", Participant: "p", Seq: seq, Timestamp: t0.Add(time.Duration(n) * 20 * time.Millisecond),
				SampleRate: 16000, Channels: 1, Encoding: codec.EncodingPCM16, Data: make([]byte, 640)})
			_ = e.nc.Publish(e.ref.Prefix+"."+tok+".audio.p", data)
		}
	})
	defer func() { close(stop); wg.Wait() }()
	for range 20 {
		var calls []console.CallView
		f.next(t, &calls)
		if len(calls) == 1 && calls[0].FramesPerSec > 20 && calls[0].Drops == 5 {
			return
		}
	}
	t.Fatal("no frame rate or drops in 20 s of the list feed")
}

// Without a credential the console answers only to loopback host names: a
// page whose name was rebound to 127.0.0.1 gets nothing.
func TestDNSRebinding(t *testing.T) {
	e := start(t, nil)
	_, port, _ := net.SplitHostPort(strings.TrimPrefix(e.srv.URL, "http://"))
	for host, want := range map[string]int{
		"127.0.0.1:" + port:      200,
		"localhost:" + port:      200,
		"LOCALHOST":              200,
		"[::1]:" + port:          200,
		"127.0.0.2":              200,
		"evil.example:" + port:   403,
		"localhost.evil.example": 403,
		"127.0.0.1.nip.io":       403,
	} {
		for _, path := range []string{"/", "/api/calls", "/api/calls/x/listen"} {
			req, _ := http.NewRequest("GET", e.srv.URL+path, nil)
			req.Host = host
			resp, err := http.DefaultClient.Do(req)
			if err != nil {
				t.Fatal(err)
			}
			resp.Body.Close()
			if got := resp.StatusCode; (got == 403) != (want == 403) {
				t.Errorf("Host %q %s: %d, want %d", host, path, got, want)
			}
		}
	}
}

// A call and participants with real ACS-shaped ids, whose tokens differ
// from the ids: the list gives the token, the call is found by it, its feed
// names each participant by token, and listening to one participant by
// the token its feed gave hears that participant.
func TestACSShapedIDs(t *testing.T) {
	e := start(t, nil)
	const id = "bar:call_x-R"
	const want = codec.Token("bar_3Acall_5Fx-R")
	e.publish(live(id))
	var calls []console.CallView
	conformance.WaitFor(t, "call listed", func() bool { calls = e.calls(); return len(calls) == 1 })
	if calls[0].Token != want || calls[0].ID != id {
		t.Fatalf("listed as %q (%q), want token %q", calls[0].Token, calls[0].ID, want)
	}
	var one console.CallView
	e.get("/api/calls/"+string(want), &one)
	if one.ID != id {
		t.Fatalf("by token: %+v", one)
	}
	feed := openFeed(t, e.srv.URL+"/api/calls/"+string(want)+"/feed")
	defer feed.resp.Body.Close()
	var parts []console.PartView
	for len(parts) < 3 {
		var u update
		feed.next(t, &u)
		parts = u.Parts
	}
	var bob console.PartView
	for _, p := range parts {
		if p.Token != codec.EncodeToken(p.ID) {
			t.Errorf("participant %q given token %q, want %q", p.ID, p.Token, codec.EncodeToken(p.ID))
		}
		if p.ID == "8:acs:bob" {
			bob = p
		}
	}
	c, _, err := websocket.DefaultDialer.Dial("ws"+strings.TrimPrefix(e.srv.URL, "http")+"/api/calls/"+string(want)+
		"/listen?participant="+string(bob.Token), nil)
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	conformance.WaitFor(t, "listener subscribed", func() bool { _, h := console.Feeds(e.c); return h == 1 })
	for _, p := range []string{"8:acs:alice", "8:acs:bob"} {
		e.publish([]conformance.Msg{{Subject: string(want) + ".audio." + string(codec.EncodeToken(p)), Payload: &codec.Frame{V: 1, Call: id,
			Participant: p, Seq: 1000, Timestamp: time.Now(), SampleRate: 16000, Channels: 1, Encoding: codec.EncodingPCM16,
			Data: make([]byte, 640)}}})
	}
	_ = c.SetReadDeadline(time.Now().Add(10 * time.Second))
	names := map[int]string{}
	for {
		kind, b, err := c.ReadMessage()
		if err != nil {
			t.Fatalf("listening to %q: %v", bob.Token, err)
		}
		if kind == websocket.TextMessage {
			var a struct {
				Index int
				ID    string
			}
			if err := json.Unmarshal(b, &a); err != nil {
				t.Fatal(err)
			}
			names[a.Index] = a.ID
			continue
		}
		if n := binary.LittleEndian.Uint32(b); int(n)+4 != len(b) {
			t.Fatalf("one frame expected, got a batch of %d bytes", len(b))
		}
		if who := names[int(binary.LittleEndian.Uint16(b[4+12:]))]; who != "8:acs:bob" {
			t.Fatalf("listening to bob, heard %q", who)
		}
		return
	}
}
