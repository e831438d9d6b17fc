package main

import (
	"bytes"
	"context"
	"encoding/binary"
	"net/http"
	"net/http/httptest"
	"strings"
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

// The README's example, behind the forwarder as a real target: a call's
// second of speech comes back into the call, byte for byte, through the
// receiver's outbound path.
func TestEchoAgentBehindForwarder(t *testing.T) {
	agent := httptest.NewServer(handler())
	defer agent.Close()
	ns := natstest.Start(t)
	rcv := natstest.StartReceiver(t, ns, nil)

	cfg := natstest.Defaults[forward.Config](t)
	cfg.URL = "ws" + strings.TrimPrefix(agent.URL, "http") + "/ws#name=echo&kinds=audio,dtmf"
	if err := cfg.Validate(); err != nil {
		t.Fatal(err)
	}
	nc, err := nats.Connect(ns.URL())
	if err != nil {
		t.Fatal(err)
	}
	defer nc.Close()
	js, _ := jetstream.New(nc)
	reg := prometheus.NewRegistry()
	f, err := forward.New(&cfg, rcv.Stream.Published(), nc, reg, natstest.Logger())
	if err != nil {
		t.Fatal(err)
	}
	g, err := subscribers.NewGroup(conformance.Config(t), f.Role(), rcv.Stream.StreamRef, nc, js, reg, natstest.Logger())
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan struct{})
	go func() { defer close(done); _ = g.Run(ctx) }()
	defer func() { cancel(); <-done; f.Wait() }()
	conformance.WaitFor(t, "the forwarder ready", func() bool { return g.Ready() == nil })

	ws, _, err := websocket.DefaultDialer.Dial(rcv.URL(""), http.Header{"x-ms-call-connection-id": {"4:+14255550123"}})
	if err != nil {
		t.Fatal(err)
	}
	defer ws.Close()
	_ = ws.WriteMessage(websocket.TextMessage, acs.AppendAudioMetadata(nil, "sub", 16000))
	var said []byte
	t0 := time.Date(2026, 12, 7, 9, 0, 0, 0, time.UTC)
	for i := range 50 { // one second
		pcm := make([]byte, 640)
		for j := 0; j < 640; j += 2 {
			binary.LittleEndian.PutUint16(pcm[j:], uint16(int16(1000+i*13+j)))
		}
		said = append(said, pcm...)
		_ = ws.WriteMessage(websocket.TextMessage, acs.AppendAudioData(nil, t0.Add(time.Duration(i)*20*time.Millisecond), "8:acs:alice", pcm, false))
	}
	var heard []byte
	_ = ws.SetReadDeadline(time.Now().Add(30 * time.Second))
	for len(heard) < len(said) {
		_, m, err := ws.ReadMessage()
		if err != nil {
			t.Fatalf("after %d of %d bytes: %v", len(heard), len(said), err)
		}
		out, err := acs.ParseOutbound(m)
		if err != nil || out.Kind != acs.OutboundAudioData {
			t.Fatalf("outbound %s: %v", m, err)
		}
		heard = append(heard, out.PCM...)
	}
	if !bytes.Equal(heard, said) {
		t.Error("the call heard back something else than it said")
	}
	_ = ws.WriteMessage(websocket.CloseMessage, websocket.FormatCloseMessage(websocket.CloseNormalClosure, ""))
}
