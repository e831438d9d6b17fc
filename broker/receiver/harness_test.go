package receiver_test

import (
	"context"
	"encoding/base64"
	"encoding/json"
	"errors"
	"net/http"
	"testing"
	"time"

	"github.com/gorilla/websocket"
	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"
	"github.com/prometheus/client_golang/prometheus"

	"github.com/audiofan/audiofan/broker"
	"github.com/audiofan/audiofan/broker/natstest"
	"github.com/audiofan/audiofan/broker/receiver"
	"github.com/audiofan/audiofan/codec"
)

// harness runs a receiver against an embedded JetStream, both on random
// ports, and reads back what was stored.
type harness struct {
	*natstest.Receiver
	t  testing.TB
	ns *natstest.Server
	// Shorthands for the receiver's parts.
	js   jetstream.JetStream
	sc   broker.StreamConfig
	reg  *prometheus.Registry
	addr string
}

func defaults[T any](t testing.TB) T { return natstest.Defaults[T](t) }

func newHarness(t testing.TB, modify func(*receiver.Config)) *harness {
	t.Helper()
	ns := natstest.Start(t)
	return wrap(t, ns, natstest.StartReceiver(t, ns, modify))
}

// wrap gives the harness's helpers to a receiver started another way.
func wrap(t testing.TB, ns *natstest.Server, r *natstest.Receiver) *harness {
	return &harness{Receiver: r, t: t, ns: ns, js: r.JS, sc: r.Stream, reg: r.Reg, addr: r.Addr}
}

// frames counts the audio frames among stored messages.
func frames(msgs []stored) int {
	n := 0
	for _, m := range msgs {
		if _, ok := m.payload.(*codec.Frame); ok {
			n++
		}
	}
	return n
}

// stop drains the receiver and waits for Serve to return.
func (h *harness) stop() { h.Stop() }

func (h *harness) wsURL(query string) string { return h.URL(query) }

// counter reads a counter of the receiver's registry.
func (h *harness) counter(name string, labels ...string) float64 {
	h.t.Helper()
	mfs, err := h.reg.Gather()
	if err != nil {
		h.t.Fatal(err)
	}
	for _, mf := range mfs {
		if mf.GetName() != name {
			continue
		}
	metric:
		for _, m := range mf.GetMetric() {
			for i := 0; i+1 < len(labels); i += 2 {
				found := false
				for _, lp := range m.GetLabel() {
					if lp.GetName() == labels[i] && lp.GetValue() == labels[i+1] {
						found = true
					}
				}
				if !found {
					continue metric
				}
			}
			if c := m.GetCounter(); c != nil {
				return c.GetValue()
			}
			return m.GetGauge().GetValue()
		}
	}
	return 0
}

// stored is one message read back from the stream.
type stored struct {
	subject string
	msgID   string
	seq     uint64
	info    broker.SubjectInfo
	payload any
}

// readStream waits until the stream holds `ended` lifecycle messages for
// wantEnded sockets, then returns every message in stream order.
func (h *harness) readStream(wantEnded int) []stored {
	h.t.Helper()
	deadline := time.Now().Add(30 * time.Second)
	for {
		msgs := h.readAll()
		ended := 0
		for _, m := range msgs {
			if lc, ok := m.payload.(*codec.Lifecycle); ok && lc.Type == codec.LifecycleEnded {
				ended++
			}
		}
		if ended >= wantEnded {
			return msgs
		}
		if time.Now().After(deadline) {
			h.t.Fatalf("stream holds %d ended lifecycles after 30s, want %d", ended, wantEnded)
		}
		time.Sleep(50 * time.Millisecond)
	}
}

func (h *harness) readAll() []stored {
	h.t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	s, err := h.js.Stream(ctx, h.sc.Name)
	if err != nil {
		h.t.Fatal(err)
	}
	info, err := s.Info(ctx)
	if err != nil {
		h.t.Fatal(err)
	}
	n := int(info.State.Msgs)
	if n == 0 {
		return nil
	}
	cons, err := s.OrderedConsumer(ctx, jetstream.OrderedConsumerConfig{})
	if err != nil {
		h.t.Fatal(err)
	}
	subj := h.sc.Subjects()
	out := make([]stored, 0, n)
	for len(out) < n {
		batch, err := cons.Fetch(n-len(out), jetstream.FetchMaxWait(5*time.Second))
		if err != nil {
			h.t.Fatal(err)
		}
		got := 0
		for m := range batch.Messages() {
			got++
			md, _ := m.Metadata()
			info, err := subj.ParseStored(m.Subject())
			if err != nil {
				h.t.Fatalf("stored subject %q: %v", m.Subject(), err)
			}
			st := stored{subject: m.Subject(), msgID: m.Headers().Get(jetstream.MsgIDHeader), seq: md.Sequence.Stream, info: info}
			switch info.Kind {
			case broker.KindAudio:
				st.payload = &codec.Frame{}
			case broker.KindTranscript:
				st.payload = &codec.Transcript{}
			case broker.KindDtmf:
				st.payload = &codec.Dtmf{}
			case broker.KindLifecycle:
				st.payload = &codec.Lifecycle{}
			default:
				h.t.Fatalf("unexpected subject %q", m.Subject())
			}
			if err := codec.Unmarshal(m.Data(), st.payload); err != nil {
				h.t.Fatalf("%s: %v", m.Subject(), err)
			}
			out = append(out, st)
		}
		if err := batch.Error(); err != nil && !errors.Is(err, nats.ErrTimeout) {
			h.t.Fatal(err)
		}
		if got == 0 {
			h.t.Fatalf("read %d of %d stored messages", len(out), n)
		}
	}
	return out
}

// fakeACS is a test client that speaks to the receiver as ACS does.
type fakeACS struct {
	t *testing.T
	c *websocket.Conn
}

func dialACS(t *testing.T, url string, header http.Header) *fakeACS {
	t.Helper()
	c, resp, err := websocket.DefaultDialer.Dial(url, header)
	if err != nil {
		status := 0
		if resp != nil {
			status = resp.StatusCode
		}
		t.Fatalf("dial %s: %v (HTTP %d)", url, err, status)
	}
	return &fakeACS{t: t, c: c}
}

func (a *fakeACS) sendRaw(msg string) {
	a.t.Helper()
	if err := a.c.WriteMessage(websocket.TextMessage, []byte(msg)); err != nil {
		a.t.Fatalf("send: %v", err)
	}
}

// trySend writes a message the receiver may answer by closing the socket
// before it has all been written: the close is what the test checks.
func (a *fakeACS) trySend(msg string) {
	_ = a.c.WriteMessage(websocket.TextMessage, []byte(msg))
}

func (a *fakeACS) send(v any) {
	a.t.Helper()
	b, err := json.Marshal(v)
	if err != nil {
		a.t.Fatal(err)
	}
	a.sendRaw(string(b))
}

func (a *fakeACS) audioMetadata(subscriptionID string, rate int) {
	a.send(map[string]any{"kind": "AudioMetadata", "audioMetadata": map[string]any{
		"subscriptionId": subscriptionID, "encoding": "PCM", "sampleRate": rate, "channels": 1, "length": rate / 50 * 2}})
}

func (a *fakeACS) audio(ts time.Time, participant string, pcm []byte, silent bool) {
	body := map[string]any{"timestamp": ts.UTC().Format("2006-01-02T15:04:05.000Z"), "data": base64.StdEncoding.EncodeToString(pcm), "silent": silent}
	if participant != "" {
		body["participantRawID"] = participant
	}
	a.send(map[string]any{"kind": "AudioData", "audioData": body})
}

// close says goodbye as ACS does and waits for the receiver to close too.
func (a *fakeACS) close() {
	_ = a.c.WriteControl(websocket.CloseMessage, websocket.FormatCloseMessage(websocket.CloseNormalClosure, ""), time.Now().Add(time.Second))
	a.waitClosed()
}

// waitClosed reads until the receiver closes the socket and returns its close code.
func (a *fakeACS) waitClosed() int {
	_ = a.c.SetReadDeadline(time.Now().Add(30 * time.Second))
	for {
		if _, _, err := a.c.ReadMessage(); err != nil {
			_ = a.c.Close()
			var ce *websocket.CloseError
			if errors.As(err, &ce) {
				return ce.Code
			}
			return -1
		}
	}
}

// frameOf returns distinct PCM for (participant index, frame index).
func frameOf(p, i, size int) []byte {
	b := make([]byte, size)
	for j := range b {
		b[j] = byte(p*31 + i*7 + j)
	}
	return b
}
