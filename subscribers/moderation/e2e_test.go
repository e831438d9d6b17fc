package moderation_test

import (
	"bytes"
	"context"
	"encoding/binary"
	"math"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/gorilla/websocket"
	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"
	"github.com/prometheus/client_golang/prometheus"

	"github.com/audiofan/audiofan/broker/natstest"
	"github.com/audiofan/audiofan/codec"
	"github.com/audiofan/audiofan/codec/acs"
	"github.com/audiofan/audiofan/subscribers"
	"github.com/audiofan/audiofan/subscribers/conformance"
	"github.com/audiofan/audiofan/subscribers/moderation"
)

// The end-to-end run, with the default rules: a caller on a real
// ACS-style socket reads a card number (its transcription socket) and
// shouts (its audio socket). The moderation events arrive, the number
// masked, and the caller's audio socket receives the warning tone as ACS
// outbound AudioData.
func TestCardNumberAndShoutingEndToEnd(t *testing.T) {
	ns := natstest.Start(t)
	rcv := natstest.StartReceiver(t, ns, nil)
	nc, err := nats.Connect(ns.URL())
	if err != nil {
		t.Fatal(err)
	}
	defer nc.Close()
	js, _ := jetstream.New(nc)
	reg := prometheus.NewRegistry()
	m, err := moderation.New(natstest.Defaults[moderation.Config](t), rcv.Stream.Published(), js, reg, natstest.Logger())
	if err != nil {
		t.Fatal(err)
	}
	g, err := subscribers.NewGroup(conformance.Config(t), m.Role(), rcv.Stream.StreamRef, nc, js, reg, natstest.Logger())
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	var wg sync.WaitGroup
	wg.Go(func() { _ = g.Run(ctx) })
	defer func() { cancel(); wg.Wait() }()

	const id, caller = "e2e-moderation", "4:+14255550123"
	audio, _, err := websocket.DefaultDialer.Dial(rcv.URL("?callId="+id), nil)
	if err != nil {
		t.Fatal(err)
	}
	defer audio.Close()
	text, _, err := websocket.DefaultDialer.Dial(rcv.URL("?callId="+id), nil)
	if err != nil {
		t.Fatal(err)
	}
	defer text.Close()
	send := func(ws *websocket.Conn, msg []byte) {
		if err := ws.WriteMessage(websocket.TextMessage, msg); err != nil {
			t.Fatal(err)
		}
	}
	send(text, acs.EncodeTranscriptionMetadata("sub-t", id, "corr", "en-US"))
	send(text, acs.EncodeTranscriptionData(acs.TranscriptionData{Text: "My card number is 4111 1111 1111 1111.",
		Format: "display", Confidence: 0.93, Offset: 5_000_000, Duration: 30_000_000, Participant: caller, Final: true}))

	send(audio, acs.AppendAudioMetadata(nil, "sub-a", 16000))
	t0 := time.Now().UTC()
	var buf []byte
	for i := range 150 { // 3 s, loud (about -7 dBFS), a breath every second
		pcm := make([]byte, 640)
		if i%50 < 45 {
			for s := range 320 {
				binary.LittleEndian.PutUint16(pcm[2*s:], uint16(int16(20000*math.Sin(2*math.Pi*220*float64(i*320+s)/16000))))
			}
		}
		buf = acs.AppendAudioData(buf[:0], t0.Add(time.Duration(i)*20*time.Millisecond), caller, pcm, false)
		send(audio, buf)
	}

	// The warning comes back on the audio socket, paced in real time.
	var got []byte
	_ = audio.SetReadDeadline(time.Now().Add(20 * time.Second))
	for len(got) < 9600 {
		_, msg, err := audio.ReadMessage()
		if err != nil {
			t.Fatalf("after %d bytes of outbound audio: %v", len(got), err)
		}
		o, err := acs.ParseOutbound(msg)
		if err != nil || o.Kind != acs.OutboundAudioData {
			t.Fatalf("outbound %q: %v", msg, err)
		}
		got = append(got, o.PCM...)
	}
	if len(got) != 9600 || bytes.Count(got, []byte{0, 0}) > 100 {
		t.Errorf("the prompt: %d bytes (want 300 ms at 16 kHz, a tone)", len(got))
	}

	var evs []codec.Event
	conformance.WaitFor(t, "both hits", func() bool { evs = events(t, js, rcv.Stream.StreamRef, id); return len(evs) >= 2 })
	rules := map[string]codec.Event{}
	for _, ev := range evs {
		rules[ev.Data["rule"].(string)] = ev
	}
	card, shout := rules["sensitive-data"], rules["shouting"]
	if e := evidence(card); card.Participant != caller || e["text"] != "My card number is **** **** **** 1111." ||
		strings.Contains(card.Data["evidence"].(map[string]any)["values"].([]any)[0].(string), "4111") {
		t.Errorf("card: %+v", card)
	}
	if shout.Participant != caller || shout.Data["action"] != "play" {
		t.Errorf("shouting: %+v", shout)
	}
}
