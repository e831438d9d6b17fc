package receiver

import (
	"bytes"
	"context"
	"io"
	"log/slog"
	"net/http"
	"net/http/httptest"
	"strings"
	"testing"
	"time"

	"github.com/gorilla/websocket"
	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"
	"github.com/prometheus/client_golang/prometheus"

	"github.com/audiofan/audiofan/broker"
	"github.com/audiofan/audiofan/codec"
	"github.com/audiofan/audiofan/codec/acs"
)

// okPublisher stores nothing and acknowledges everything at once.
type okPublisher struct{ n int }

func (p *okPublisher) PublishMsg(context.Context, *nats.Msg, ...jetstream.PublishOpt) (*jetstream.PubAck, error) {
	p.n++
	return &jetstream.PubAck{}, nil
}

func (p *okPublisher) PublishMsgAsync(m *nats.Msg, _ ...jetstream.PublishOpt) (jetstream.PubAckFuture, error) {
	p.n++
	f := &doneFuture{msg: m, ok: make(chan *jetstream.PubAck, 1), err: make(chan error)}
	f.ok <- &jetstream.PubAck{}
	return f, nil
}

type doneFuture struct {
	msg *nats.Msg
	ok  chan *jetstream.PubAck
	err chan error
}

func (f *doneFuture) Ok() <-chan *jetstream.PubAck { return f.ok }
func (f *doneFuture) Err() <-chan error            { return f.err }
func (f *doneFuture) Msg() *nats.Msg               { return f.msg }

// serverConn returns the receiving end of a real WebSocket on loopback.
func serverConn(t testing.TB) *websocket.Conn {
	conns := make(chan *websocket.Conn, 1)
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		c, err := (&websocket.Upgrader{}).Upgrade(w, r, nil)
		if err != nil {
			t.Error(err)
			return
		}
		conns <- c
	}))
	t.Cleanup(srv.Close)
	client, _, err := websocket.DefaultDialer.Dial("ws"+strings.TrimPrefix(srv.URL, "http")+"/", nil)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { client.Close() })
	c := <-conns
	t.Cleanup(func() { c.Close() })
	return c
}

// FuzzSocketMessages drives the socket's message handling (the path every
// ACS message takes after the WebSocket: parse, state, encode, publish) with
// arbitrary sequences of messages, separated by 0xFF in the input. Nothing
// may panic, and what the socket holds must stay consistent and bounded.
func FuzzSocketMessages(f *testing.F) {
	meta := string(acs.AppendAudioMetadata(nil, "sub", 16000))
	audioOf := func(part string) string {
		return string(acs.AppendAudioData(nil, time.Unix(1741944413, 0), part, make([]byte, 640), false))
	}
	audio := string(acs.AppendAudioData(nil, time.Unix(1741944413, 0), "4:+1", make([]byte, 640), false))
	for _, seq := range [][]string{
		{meta, audio, audio},
		{audio, meta, audio, `{"kind":"DtmfData","dtmfData":{"data":"3"}}`},
		{`{"kind":"TranscriptionMetadata","transcriptionMetadata":{"callConnectionId":"c"}}`, string(acs.EncodeTranscriptionData(acs.TranscriptionData{Text: "hi", Duration: -1}))},
		{meta, `{"kind":"AudioMetadata","audioMetadata":{"encoding":"PCM","sampleRate":24000,"channels":1}}`, audio},
		{`{"kind":"AudioData"`, "garbage", meta},
		// A fifth participant past MaxParticipants (4), an id that triples
		// when escaped, a frame stamped years early, a transcript whose
		// empty words encode past the pipeline's max payload.
		{meta, audioOf("a"), audioOf("b"), audioOf("c"), audioOf("d"), audioOf("e"), audio},
		{meta, audioOf(strings.Repeat(":", 100)), audio},
		{meta, string(acs.AppendAudioData(nil, time.Unix(1641944413, 0), "4:+1", make([]byte, 640), false)), audio},
		{meta, `{"kind":"TranscriptionData","transcriptionData":{"text":"x","words":[` + strings.Repeat(`{},`, 30000) + `{}],"resultStatus":"Final"}}`, audio},
	} {
		f.Add([]byte(strings.Join(seq, "\xff")))
	}
	cfg := Config{MaxParticipants: 4, MaxInvalidMessages: 1000, InvalidWindow: time.Minute, IdleTimeout: time.Minute,
		Publish: PublishConfig{Window: 8, MaxPending: 64, AckTimeout: time.Second, RetryFor: time.Second, Block: time.Millisecond}}
	log := slog.New(slog.NewTextHandler(io.Discard, nil))
	r := New(cfg, broker.StreamConfig{StreamRef: broker.StreamRef{Name: "CALLS", Prefix: "calls"}}, nil, nil, prometheus.NewRegistry(), log)
	conn := serverConn(f)
	f.Fuzz(func(t *testing.T, input []byte) {
		pub := &okPublisher{}
		s := &socket{r: r, conn: conn, id: "fuzz"}
		s.pipe = pipeline{js: pub, cfg: cfg.Publish, m: r.m, connID: s.id, events: s, maxPayload: 64 << 10}
		for _, msg := range bytes.Split(input, []byte{0xff}) {
			if err := s.handle(context.Background(), msg, time.Now()); err != nil {
				break // the socket would be closed here
			}
		}
		s.pipe.flush(context.Background())
		if s.stream == codec.StreamAudio {
			r.releaseCall(s)
		}
		if s.started && (s.call == "" || s.callTok != codec.EncodeToken(s.call)) {
			t.Fatalf("started with call %q token %q", s.call, s.callTok)
		}
		if len(s.parts) > cfg.MaxParticipants || s.pipe.inflight() != 0 {
			t.Fatalf("%d participants, %d in flight after flush", len(s.parts), s.pipe.inflight())
		}
		var frames uint64
		for _, p := range s.parts {
			if n := len(p.subject) - strings.LastIndexByte(p.subject, '.') - 1; n > codec.MaxTokenLen {
				t.Fatalf("participant %q has a token of %d bytes", p.raw, n)
			}
			if p.stored != p.seq {
				t.Fatalf("participant %q: %d received, %d stored with every publish acknowledged", p.raw, p.seq, p.stored)
			}
			frames += p.seq
		}
		if uint64(pub.n) < frames {
			t.Fatalf("%d publishes for %d frames", pub.n, frames)
		}
	})
}
