package recording_test

import (
	"bytes"
	"context"
	"crypto/sha256"
	"encoding/binary"
	"encoding/hex"
	"fmt"
	"io"
	"net/url"
	"os"
	"path/filepath"
	"sort"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/go-audio/wav"
	"github.com/gorilla/websocket"
	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"
	"github.com/prometheus/client_golang/prometheus"

	"github.com/audiofan/audiofan/broker"
	"github.com/audiofan/audiofan/broker/natstest"
	"github.com/audiofan/audiofan/codec"
	"github.com/audiofan/audiofan/codec/acs"
	"github.com/audiofan/audiofan/subscribers"
	"github.com/audiofan/audiofan/subscribers/conformance"
	"github.com/audiofan/audiofan/subscribers/recording"
	"github.com/audiofan/audiofan/subscribers/speech"
)

func newRecorder(t *testing.T, dataDir string, cfg recording.Config, js jetstream.JetStream) *recording.Recorder {
	t.Helper()
	r, err := recording.New(context.Background(), cfg, dataDir, js, prometheus.NewRegistry(), natstest.Logger())
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { r.Close() })
	return r
}

// files reads a call's recording folder: each file's checksum.
func files(t *testing.T, dir string) map[string]string {
	t.Helper()
	entries, err := os.ReadDir(dir)
	if err != nil {
		t.Fatal(err)
	}
	out := map[string]string{}
	for _, e := range entries {
		b, err := os.ReadFile(filepath.Join(dir, e.Name()))
		if err != nil {
			t.Fatal(err)
		}
		sum := sha256.Sum256(b)
		out[e.Name()] = hex.EncodeToString(sum[:])
	}
	return out
}

func TestConformance(t *testing.T) {
	conformance.Run(t, conformance.Spec{
		NewRole: func(t *testing.T, shared string, _ *nats.Conn, js jetstream.JetStream) subscribers.Role {
			return newRecorder(t, shared, natstest.Defaults[recording.Config](t), js).Role()
		},
		Result: func(t *testing.T, shared string, _ jetstream.JetStream, call subscribers.CallInfo) any {
			return files(t, filepath.Join(shared, "recordings", string(call.Token)))
		},
	})
}

// rig is a NATS server, a receiver, and recorder replicas sharing one data
// folder (the volume recorders share in a deployment).
type rig struct {
	ns      *natstest.Server
	rcv     *natstest.Receiver
	dataDir string
	cfg     recording.Config
	group   subscribers.GroupConfig
}

func newRig(t *testing.T) *rig {
	ns := natstest.Start(t)
	return &rig{ns: ns, rcv: natstest.StartReceiver(t, ns, nil), dataDir: t.TempDir(),
		cfg: natstest.Defaults[recording.Config](t), group: conformance.Config(t)}
}

type replica struct {
	nc     *nats.Conn
	g      *subscribers.Group
	reg    *prometheus.Registry
	cancel context.CancelFunc
	done   chan error
}

func (r *rig) replica(t *testing.T) *replica {
	t.Helper()
	rep := r.start(t)
	conformance.WaitFor(t, "replica ready", func() bool { return rep.g.Ready() == nil })
	return rep
}

// start runs a replica without waiting for it to be ready.
func (r *rig) start(t *testing.T) *replica {
	t.Helper()
	nc, err := nats.Connect(r.ns.URL())
	if err != nil {
		t.Fatal(err)
	}
	js, err := jetstream.New(nc)
	if err != nil {
		t.Fatal(err)
	}
	rep := &replica{nc: nc, reg: prometheus.NewRegistry(), done: make(chan error, 1)}
	rec, err := recording.New(context.Background(), r.cfg, r.dataDir, js, rep.reg, natstest.Logger())
	if err != nil {
		t.Fatal(err)
	}
	rep.g, err = subscribers.NewGroup(r.group, rec.Role(), r.rcv.Stream.StreamRef, nc, js, rep.reg, natstest.Logger())
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	rep.cancel = cancel
	go func() { rep.done <- rep.g.Run(ctx) }()
	t.Cleanup(func() { rep.stop(); rec.Close() })
	return rep
}

func (r *replica) stop() {
	if r.cancel != nil {
		r.cancel()
		<-r.done
		r.cancel = nil
		r.nc.Close()
	}
}

// kill cuts the replica off first, so nothing it does on the way out
// reaches the bus: a kill -9 as the bus sees it.
func (r *replica) kill() {
	r.nc.Close()
	r.stop()
}

// acsCall streams a call to the receiver as ACS does: unmixed 16 kHz audio
// of parts participants, each frame's PCM distinct, frames listed in skip
// not sent (their slot must come out silent).
type acsCall struct {
	id    string
	parts []string
	n     int
	skip  func(p, i int) bool
}

var t0 = time.Date(2026, 11, 25, 12, 0, 0, 0, time.UTC)

func pcmOf(p, i int) []byte {
	b := make([]byte, 640)
	for j := 0; j < 640; j += 2 {
		binary.LittleEndian.PutUint16(b[j:], uint16(int16(500*(p+1)+(i*31+j)%700-350)))
	}
	return b
}

// want is the PCM each participant's file must hold, and the mix.
func (c *acsCall) want() (map[string][]byte, []byte) {
	out := map[string][]byte{}
	for p, part := range c.parts {
		var b []byte
		for i := range c.n {
			if c.skip(p, i) {
				b = append(b, make([]byte, 640)...)
			} else {
				b = append(b, pcmOf(p, i)...)
			}
		}
		out[part] = b
	}
	mix := make([]byte, c.n*640)
	for j := 0; j < len(mix); j += 2 {
		var s int32
		for _, part := range c.parts {
			s += int32(int16(binary.LittleEndian.Uint16(out[part][j:])))
		}
		binary.LittleEndian.PutUint16(mix[j:], uint16(int16(max(min(s, 32767), -32768))))
	}
	return out, mix
}

// stream sends the call; pause, when set, is called before each frame step.
func (c *acsCall) stream(t *testing.T, addr string, pause func(i int)) {
	ws, _, err := websocket.DefaultDialer.Dial("ws://"+addr+"/ws?callId="+url.QueryEscape(c.id), nil)
	if err != nil {
		t.Error(err)
		return
	}
	defer ws.Close()
	if err := ws.WriteMessage(websocket.TextMessage, acs.AppendAudioMetadata(nil, "sub-"+c.id, 16000)); err != nil {
		t.Error(err)
		return
	}
	var buf []byte
	for i := range c.n {
		if pause != nil {
			pause(i)
		}
		for p, part := range c.parts {
			if c.skip(p, i) {
				continue
			}
			buf = acs.AppendAudioData(buf[:0], t0.Add(time.Duration(i)*20*time.Millisecond), part, pcmOf(p, i), false)
			if err := ws.WriteMessage(websocket.TextMessage, buf); err != nil {
				t.Error(err)
				return
			}
		}
	}
	_ = ws.WriteMessage(websocket.CloseMessage, websocket.FormatCloseMessage(websocket.CloseNormalClosure, "call over"))
	_, _, _ = ws.ReadMessage() // until the receiver closes: every frame is stored
}

// check reads a call's files back with an independent WAV decoder and
// compares them with what was sent, byte for byte.
func (c *acsCall) check(t *testing.T, dir string) {
	t.Helper()
	want, mix := c.want()
	for p, part := range c.parts {
		c.checkFile(t, filepath.Join(dir, string(codec.EncodeToken(part))+".wav"), want[part], fmt.Sprint("participant ", p))
	}
	c.checkFile(t, filepath.Join(dir, "mix.wav"), mix, "mix")
}

func (c *acsCall) checkFile(t *testing.T, path string, want []byte, what string) {
	t.Helper()
	f, err := os.Open(path)
	if err != nil {
		t.Fatalf("call %s: %v", c.id, err)
	}
	defer f.Close()
	dec := wav.NewDecoder(f)
	buf, err := dec.FullPCMBuffer()
	if err != nil {
		t.Fatalf("call %s %s: %v", c.id, what, err)
	}
	if dec.SampleRate != 16000 || dec.NumChans != 1 || dec.BitDepth != 16 || dec.WavAudioFormat != 1 {
		t.Fatalf("call %s %s: %d Hz, %d channels, %d bits, format %d", c.id, what, dec.SampleRate, dec.NumChans, dec.BitDepth, dec.WavAudioFormat)
	}
	got := make([]byte, 2*len(buf.Data))
	for i, v := range buf.Data {
		binary.LittleEndian.PutUint16(got[2*i:], uint16(int16(v)))
	}
	if dur := time.Duration(len(buf.Data)) * time.Second / 16000; dur != time.Duration(c.n)*20*time.Millisecond {
		t.Errorf("call %s %s: %v long, want %v", c.id, what, dur, time.Duration(c.n)*20*time.Millisecond)
	}
	if !bytes.Equal(got, want) {
		i := 0
		for i < min(len(got), len(want)) && got[i] == want[i] {
			i++
		}
		var bad []string // which frames, and how: silent (missing), extra (where none was sent), other
		for f := 0; f*640 < min(len(got), len(want)); f++ {
			g, w := got[f*640:f*640+640], want[f*640:f*640+640]
			switch {
			case bytes.Equal(g, w):
			case allZero(g):
				bad = append(bad, fmt.Sprint(f, " silent"))
			case allZero(w):
				bad = append(bad, fmt.Sprint(f, " extra"))
			default:
				bad = append(bad, fmt.Sprint(f, " other"))
			}
		}
		t.Errorf("call %s %s: differs from byte %d (frame %d); frames %v", c.id, what, i, i/640, bad[:min(len(bad), 20)])
	}
}

// recordingEvents returns the recording events stored for a call.
func recordingEvents(t *testing.T, js jetstream.JetStream, ref broker.StreamRef, callID string) []codec.Event {
	return conformance.Events(t, js, ref, callID, "recording")
}

// PCM sent by a client for 3 participants comes out as WAV data equal byte
// for byte, silence exactly where the sender skipped frames; the recording
// event lists the files with their checksums.
func TestRecorderBitExact(t *testing.T) {
	r := newRig(t)
	r.replica(t)
	c := &acsCall{id: "bit-exact", parts: []string{"8:acs:alice", "8:acs:bob", "4:+14255550123"}, n: 250,
		skip: func(p, i int) bool {
			return (p == 1 && i >= 40 && i < 47) || (p == 2 && i < 10) || (p == 0 && i == 249)
		}}
	c.stream(t, r.rcv.Addr, nil)
	var evs []codec.Event
	conformance.WaitFor(t, "the recording event", func() bool {
		evs = recordingEvents(t, r.rcv.JS, r.rcv.Stream.StreamRef, c.id)
		return len(evs) > 0
	})
	dir := filepath.Join(r.dataDir, "recordings", string(codec.EncodeToken(c.id)))
	c.check(t, dir)
	ev := evs[0]
	fs := ev.Data["files"].([]any)
	if len(evs) != 1 || ev.Type != "recording" || ev.Call != c.id || ev.Data["reason"] != "ended" || len(fs) != 4 {
		t.Fatalf("events %+v", evs)
	}
	sums := files(t, dir)
	for _, f := range fs {
		m := f.(map[string]any)
		if sums[m["name"].(string)] != m["sha256"] || m["path"] != "recordings/bit-exact/"+m["name"].(string) {
			t.Errorf("file %v: checksum on disk %s", m, sums[m["name"].(string)])
		}
	}
}

// Three replicas, twelve calls at once; one replica killed mid-call. Every
// recording is complete and bit-exact, and each call is recorded once.
func TestRecorderScaleOut(t *testing.T) {
	r := newRig(t)
	reps := []*replica{r.replica(t), r.replica(t), r.replica(t)}
	var calls []*acsCall
	for k := range 12 {
		calls = append(calls, &acsCall{id: fmt.Sprintf("scale-%02d", k), parts: []string{"a", "b", "c"}, n: 200,
			skip: func(p, i int) bool { return (i+p+k)%29 == 3 }})
	}
	// Every call pauses half-way until the victim is killed.
	half := make(chan struct{})
	var wg sync.WaitGroup
	var reached sync.WaitGroup
	reached.Add(len(calls))
	for _, c := range calls {
		wg.Go(func() {
			c.stream(t, r.rcv.Addr, func(i int) {
				if i == c.n/2 {
					reached.Done()
					<-half
				}
				if i%20 == 0 {
					time.Sleep(5 * time.Millisecond)
				}
			})
		})
	}
	reached.Wait()
	// Kill the replica that owns most calls once they have been applied.
	owned := func(rep *replica) float64 {
		return conformance.Metric(t, rep.reg, "audiofan_subscriber_calls_owned", "")
	}
	conformance.WaitFor(t, "all calls owned", func() bool { return owned(reps[0])+owned(reps[1])+owned(reps[2]) == 12 })
	sort.Slice(reps, func(i, j int) bool { return owned(reps[i]) > owned(reps[j]) })
	victim := owned(reps[0])
	spread := 0
	for _, rep := range reps {
		if owned(rep) > 0 {
			spread++
		}
	}
	if spread < 2 {
		t.Errorf("calls not spread: owned by %d replica(s)", spread)
	}
	time.Sleep(300 * time.Millisecond) // acknowledgements land: the survivors replay
	reps[0].kill()
	close(half)
	wg.Wait()

	for _, c := range calls {
		conformance.WaitFor(t, "recording of "+c.id, func() bool {
			return len(recordingEvents(t, r.rcv.JS, r.rcv.Stream.StreamRef, c.id)) > 0
		})
		if n := len(recordingEvents(t, r.rcv.JS, r.rcv.Stream.StreamRef, c.id)); n != 1 {
			t.Errorf("call %s: %d recording events", c.id, n)
		}
		c.check(t, filepath.Join(r.dataDir, "recordings", string(codec.EncodeToken(c.id))))
	}
	ended, takeovers := 0.0, 0.0
	for _, rep := range reps[1:] {
		ended += conformance.Metric(t, rep.reg, "audiofan_subscriber_calls_total", subscribers.ResultEnded)
		takeovers += conformance.Metric(t, rep.reg, "audiofan_subscriber_takeovers_total", "recording")
	}
	if ended != 12 || takeovers != victim {
		t.Errorf("survivors ended %v calls (want 12), took over %v (the victim owned %v)", ended, takeovers, victim)
	}
}

// An unwritable recordings folder: a clear error, readiness false, nothing
// acknowledged; once it is writable again the recording completes.
func TestRecorderDiskError(t *testing.T) {
	r := newRig(t)
	rep := r.replica(t)
	c := &acsCall{id: "disk-error", parts: []string{"a"}, n: 50, skip: func(int, int) bool { return false }}
	blocker := filepath.Join(r.dataDir, "recordings", string(codec.EncodeToken(c.id)))
	if err := os.WriteFile(blocker, []byte("in the way"), 0o644); err != nil {
		t.Fatal(err)
	}
	c.stream(t, r.rcv.Addr, nil)
	conformance.WaitFor(t, "readiness to go false", func() bool { return rep.g.Ready() != nil })
	if err := rep.g.Ready(); err == nil || conformance.Metric(t, rep.reg, "audiofan_subscriber_messages_total", subscribers.OutcomeRetried) == 0 {
		t.Fatalf("ready: %v", err)
	}
	if err := os.Remove(blocker); err != nil {
		t.Fatal(err)
	}
	conformance.WaitFor(t, "the recording", func() bool { return len(recordingEvents(t, r.rcv.JS, r.rcv.Stream.StreamRef, c.id)) == 1 })
	c.check(t, blocker)
	conformance.WaitFor(t, "readiness back", func() bool { return rep.g.Ready() == nil })
}

// AUDIOFAN_RECORDING_STORE=both: the files are on disk and in the Object
// Store bucket, the same bytes.
func TestRecorderObjectStore(t *testing.T) {
	r := newRig(t)
	r.cfg.Store = "both"
	r.replica(t)
	c := &acsCall{id: "object", parts: []string{"a", "b"}, n: 60, skip: func(p, i int) bool { return p == 1 && i < 5 }}
	c.stream(t, r.rcv.Addr, nil)
	conformance.WaitFor(t, "the recording", func() bool { return len(recordingEvents(t, r.rcv.JS, r.rcv.Stream.StreamRef, c.id)) == 1 })
	dir := filepath.Join(r.dataDir, "recordings", string(codec.EncodeToken(c.id)))
	c.check(t, dir)
	store, err := r.rcv.JS.ObjectStore(context.Background(), "recordings")
	if err != nil {
		t.Fatal(err)
	}
	for name, sum := range files(t, dir) {
		obj, err := store.Get(context.Background(), string(codec.EncodeToken(c.id))+"/"+name)
		if err != nil {
			t.Fatal(err)
		}
		b, err := io.ReadAll(obj)
		obj.Close()
		if s := sha256.Sum256(b); err != nil || hex.EncodeToString(s[:]) != sum {
			t.Errorf("%s in the bucket differs from the disk: %v", name, err)
		}
	}
	ev := recordingEvents(t, r.rcv.JS, r.rcv.Stream.StreamRef, c.id)[0]
	if f := ev.Data["files"].([]any)[0].(map[string]any); f["object"] != "recordings/"+string(codec.EncodeToken(c.id))+"/a.wav" {
		t.Errorf("event file %v", f)
	}
}

// A call whose ended message never comes (its receiver died) is finished
// after the idle timeout.
func TestRecorderIdleTimeout(t *testing.T) {
	r := newRig(t)
	r.group.IdleTimeout = time.Second
	r.replica(t)
	id := "idle"
	tok := codec.EncodeToken(id)
	subj := r.rcv.Stream.Subjects()
	ctx := context.Background()
	lc, _ := codec.Marshal(&codec.Lifecycle{V: 1, Call: id, Type: codec.LifecycleStarted, Stream: "audio", Connection: "x", SampleRate: 16000, Channels: 1})
	if _, err := r.rcv.JS.Publish(ctx, subj.Lifecycle(tok), lc); err != nil {
		t.Fatal(err)
	}
	for i := range 10 {
		f, _ := codec.Marshal(&codec.Frame{V: 1, Call: id, Seq: uint64(i + 1), Timestamp: t0.Add(time.Duration(i) * 20 * time.Millisecond),
			SampleRate: 16000, Channels: 1, Encoding: codec.EncodingPCM16, Data: pcmOf(0, i)})
		if _, err := r.rcv.JS.Publish(ctx, subj.Audio(tok, codec.MixedToken), f); err != nil {
			t.Fatal(err)
		}
	}
	conformance.WaitFor(t, "the idle recording", func() bool { return len(recordingEvents(t, r.rcv.JS, r.rcv.Stream.StreamRef, id)) == 1 })
	if ev := recordingEvents(t, r.rcv.JS, r.rcv.Stream.StreamRef, id)[0]; ev.Data["reason"] != "idle" || ev.Data["durationMs"] != int64(200) && fmt.Sprint(ev.Data["durationMs"]) != "200" {
		t.Errorf("event %+v", ev.Data)
	}
}

// Audio played into a call (an Outbound through the receiver holding it) is
// recorded on its own track, outbound.wav, whole and in one piece, and is
// in the mix; the recording event lists it.
func TestRecorderOutbound(t *testing.T) {
	r := newRig(t)
	r.replica(t)
	c := &acsCall{id: "prompted", parts: []string{"8:acs:alice"}, n: 100, skip: func(int, int) bool { return false }}
	prompt := make([]byte, 16*300*2) // 300 ms at 16 kHz
	for i := 0; i < len(prompt); i += 2 {
		binary.LittleEndian.PutUint16(prompt[i:], uint16(int16(4000+i%1000)))
	}
	out, err := codec.Marshal(&codec.Outbound{V: codec.Version, Kind: codec.OutboundKindAudio, Data: prompt})
	if err != nil {
		t.Fatal(err)
	}
	// In real time, so the receivers' clock and the capture times agree.
	c.stream(t, r.rcv.Addr, func(i int) {
		time.Sleep(20 * time.Millisecond)
		if i == 40 {
			if err := r.rcv.NC.Publish(r.rcv.Stream.Subjects().Outbound(codec.EncodeToken(c.id)), out); err != nil {
				t.Error(err)
			}
		}
	})
	var evs []codec.Event
	conformance.WaitFor(t, "the recording event", func() bool {
		evs = recordingEvents(t, r.rcv.JS, r.rcv.Stream.StreamRef, c.id)
		return len(evs) > 0
	})
	var listed bool
	for _, f := range evs[0].Data["files"].([]any) {
		m := f.(map[string]any)
		listed = listed || m["name"] == "outbound.wav" && m["outbound"] == true
	}
	if !listed {
		t.Fatalf("no outbound.wav in %v", evs[0].Data["files"])
	}
	dir := filepath.Join(r.dataDir, "recordings", string(codec.EncodeToken(c.id)))
	read := func(name string) []byte {
		b, err := os.ReadFile(filepath.Join(dir, name))
		if err != nil {
			t.Fatal(err)
		}
		pcm, _, err := speech.ParseWAV(b, name)
		if err != nil {
			t.Fatal(err)
		}
		return pcm
	}
	ob, part, mix := read("outbound.wav"), read(string(codec.EncodeToken("8:acs:alice"))+".wav"), read("mix.wav")
	if len(ob) != c.n*640 || len(mix) != len(ob) {
		t.Fatalf("outbound %d bytes, mix %d: want the call's %d", len(ob), len(mix), c.n*640)
	}
	at := bytes.Index(ob, prompt)
	if at < 0 || at%2 != 0 || !allZero(ob[:at]) || !allZero(ob[at+len(prompt):]) {
		t.Fatalf("the prompt is not in outbound.wav whole and alone (found at byte %d)", at)
	}
	for j := 0; j < len(mix); j += 2 {
		s := int32(int16(binary.LittleEndian.Uint16(part[j:]))) + int32(int16(binary.LittleEndian.Uint16(ob[j:])))
		if got := int16(binary.LittleEndian.Uint16(mix[j:])); got != int16(max(min(s, 32767), -32768)) {
			t.Fatalf("mix at sample %d: %d, want the participant and the prompt summed (%d)", j/2, got, s)
		}
	}
	t.Logf("prompt placed at %d ms of the call (sent after frame 40, 800 ms)", at/32)
}

func allZero(b []byte) bool { return len(bytes.Trim(b, "\x00")) == 0 }

// A call whose token is too long for a folder name (stored by a publisher
// that did not bound it) is given up, not retried forever: the calls after
// it are recorded and the replica stays ready.
func TestRecorderOverlongToken(t *testing.T) {
	r := newRig(t)
	rep := r.replica(t)
	subj := r.rcv.Stream.Subjects()
	ctx := context.Background()
	publish := func(id string) {
		tok := codec.EncodeToken(id)
		for _, m := range []struct {
			subj string
			v    any
		}{
			{subj.Lifecycle(tok), &codec.Lifecycle{V: 1, Call: id, Type: codec.LifecycleStarted, Stream: "audio", Connection: "x", SampleRate: 16000, Channels: 1}},
			{subj.Audio(tok, codec.MixedToken), &codec.Frame{V: 1, Call: id, Seq: 1, Timestamp: t0, SampleRate: 16000, Channels: 1,
				Encoding: codec.EncodingPCM16, Data: pcmOf(0, 0)}},
			{subj.Lifecycle(tok), &codec.Lifecycle{V: 1, Call: id, Type: codec.LifecycleEnded, Stream: "audio", Connection: "x", SampleRate: 16000, Channels: 1}},
		} {
			b, err := codec.Marshal(m.v)
			if err != nil {
				t.Fatal(err)
			}
			if _, err := r.rcv.JS.Publish(ctx, m.subj, b); err != nil {
				t.Fatal(err)
			}
		}
	}
	long := strings.Repeat(":", 100) // a 300-byte token
	publish(long)
	publish("after")
	conformance.WaitFor(t, "the next call recorded", func() bool {
		return len(recordingEvents(t, r.rcv.JS, r.rcv.Stream.StreamRef, "after")) == 1
	})
	conformance.WaitFor(t, "the long one given up", func() bool {
		return conformance.Metric(t, rep.reg, "audiofan_subscriber_calls_total", "failed") == 1
	})
	if err := rep.g.Ready(); err != nil {
		t.Errorf("not ready: %v", err)
	}
}
