package main

import (
	"bytes"
	"context"
	"encoding/base64"
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"os"
	"path/filepath"
	"testing"
	"time"

	"github.com/gorilla/websocket"
	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"

	"github.com/audiofan/audiofan/broker"
	"github.com/audiofan/audiofan/codec"
	"github.com/audiofan/audiofan/subscribers/conformance"
	"github.com/audiofan/audiofan/subscribers/console"
)

// A sharded serve: calls that land in every shard are stored there, in
// their partition's shard only, recorded and analysed; serve started
// again with another AUDIOFAN_STREAM_SHARDS moves its embedded bus.
func TestShardedServe(t *testing.T) {
	httpAddr, natsAddr := freePort(t), freePort(t)
	dataDir := t.TempDir()
	t.Setenv("AUDIOFAN_HTTP_ADDR", httpAddr)
	t.Setenv("AUDIOFAN_NATS_LISTEN", natsAddr)
	t.Setenv("AUDIOFAN_DATA_DIR", dataDir)
	t.Setenv("AUDIOFAN_DRAIN_TIMEOUT", "5s")
	t.Setenv("AUDIOFAN_STREAM_SHARDS", "4")
	layout := broker.Layout{Stream: "CALLS", Prefix: "calls", Partitions: 32, Shards: 4}

	// Real-shaped ids, one at least in each shard.
	var calls []string
	seen := map[int]bool{}
	for i := 0; len(seen) < layout.Shards; i++ {
		id := fmt.Sprintf("4:+1425555%04d", i)
		shard := layout.ShardOf(layout.Subjects().Partition(codec.EncodeToken(id)))
		if !seen[shard] {
			seen[shard] = true
			calls = append(calls, id)
		}
	}

	serve := func() (chan int, *syncBuffer) {
		var out syncBuffer
		errb := &syncBuffer{}
		done := make(chan int, 1)
		go func() { done <- run([]string{"serve"}, &out, errb) }()
		waitHTTP(t, "serve", "http://"+httpAddr+"/readyz", 30*time.Second, func() bool { return len(done) > 0 })
		return done, errb
	}
	done, serveErr := serve()
	pcm := bytes.Repeat([]byte{1, 2}, 320)
	for _, id := range calls {
		streamCall(t, "ws://"+httpAddr+"/ws", id, pcm, 5)
	}

	nc, err := nats.Connect("nats://" + natsAddr)
	if err != nil {
		t.Fatal(err)
	}
	defer nc.Close()
	js, _ := jetstream.New(nc)
	bus, err := broker.FindBus(t.Context(), js, broker.StreamRef{Name: "CALLS", Prefix: "calls"})
	if err != nil || bus.Layout != layout {
		t.Fatalf("bus %v: %v", bus, err)
	}
	for _, id := range calls {
		tok := codec.EncodeToken(id)
		p := layout.Subjects().Partition(tok)
		for i, s := range bus.Shards() {
			_, err := s.GetLastMsgForSubject(t.Context(), layout.Subjects().StoredKind(tok, broker.KindLifecycle))
			if in := err == nil; in != (i == layout.ShardOf(p)) {
				t.Errorf("call %s (partition %d): in shard %d = %v (%v)", id, p, i, in, err)
			}
		}
		rec := filepath.Join(dataDir, "recordings", string(tok))
		waitForFile(t, filepath.Join(rec, "mix.wav"))
		b, err := os.ReadFile(filepath.Join(rec, "mix.wav"))
		if err != nil || len(b) != 44+5*640 {
			t.Errorf("call %s: mix.wav %d bytes, %v", id, len(b), err)
		}
	}
	kv, err := js.KeyValue(context.Background(), "call-analytics")
	if err != nil {
		t.Fatal(err)
	}
	for _, id := range calls {
		conformance.WaitFor(t, "the analytics summary of "+id, func() bool {
			e, err := kv.Get(context.Background(), string(codec.EncodeToken(id)))
			var ev codec.Event
			return err == nil && codec.Unmarshal(e.Value(), &ev) == nil && ev.Type == "summary"
		})
	}
	// The receiver reports what each shard holds, the roles their lag in each.
	conformance.WaitFor(t, "the bus's metrics of every shard", func() bool {
		resp, err := http.Get("http://" + httpAddr + "/metrics")
		if err != nil {
			return false
		}
		defer resp.Body.Close()
		body, _ := io.ReadAll(resp.Body)
		for i := range layout.Shards {
			// And each role's lag, by shard.
			if !bytes.Contains(body, fmt.Appendf(nil, "audiofan_subscriber_lag_messages{role=\"recording\",shard=%q}", fmt.Sprint(i))) {
				return false
			}
			if !bytes.Contains(body, fmt.Appendf(nil, "audiofan_bus_shard_messages{shard=%q}", fmt.Sprint(i))) ||
				bytes.Contains(body, fmt.Appendf(nil, "audiofan_bus_shard_messages{shard=%q} 0\n", fmt.Sprint(i))) {
				return false
			}
		}
		return true
	})
	// The console's health reads the bus over its shards.
	conformance.WaitFor(t, "the console's health of the sharded bus", func() bool {
		resp, err := http.Get("http://" + httpAddr + "/api/health")
		if err != nil {
			return false
		}
		defer resp.Body.Close()
		var h console.Health
		if json.NewDecoder(resp.Body).Decode(&h) != nil {
			return false
		}
		return h.Error == "" && h.Stream.Shards == layout.Shards && h.Stream.Messages > 0 && len(h.Roles) > 0 && h.Roles[0].Partitions == layout.Partitions
	})
	nc.Close()
	stopServe(t, done, serveErr)

	// Started again with two shards: the four are retired, two made.
	t.Setenv("AUDIOFAN_STREAM_SHARDS", "2")
	done, serveErr = serve()
	nc2, err := nats.Connect("nats://" + natsAddr)
	if err != nil {
		t.Fatal(err)
	}
	defer nc2.Close()
	js2, _ := jetstream.New(nc2)
	bus, err = broker.FindBus(t.Context(), js2, broker.StreamRef{Name: "CALLS", Prefix: "calls"})
	if err != nil || bus.Layout.Shards != 2 || len(bus.Retired) != 4 {
		t.Fatalf("after the move: %v, %v", bus, err)
	}
	after := "4:+14255559999"
	streamCall(t, "ws://"+httpAddr+"/ws", after, pcm, 5)
	waitForFile(t, filepath.Join(dataDir, "recordings", string(codec.EncodeToken(after)), "mix.wav"))
	nc2.Close()
	stopServe(t, done, serveErr)
}

// streamCall streams a call of n frames of pcm from one participant, then
// closes the socket and waits for the receiver to close its side.
func streamCall(t *testing.T, url, id string, pcm []byte, n int) {
	t.Helper()
	c, _, err := websocket.DefaultDialer.Dial(url, http.Header{"x-ms-call-connection-id": {id}})
	if err != nil {
		t.Fatal(err)
	}
	send := func(s string) {
		if err := c.WriteMessage(websocket.TextMessage, []byte(s)); err != nil {
			t.Fatal(err)
		}
	}
	send(`{"kind":"AudioMetadata","audioMetadata":{"subscriptionId":"s","encoding":"PCM","sampleRate":16000,"channels":1,"length":640}}`)
	for i := range n {
		send(fmt.Sprintf(`{"kind":"AudioData","audioData":{"timestamp":"2026-12-06T09:26:53.%03dZ","participantRawID":"8:acs:x","data":"%s","silent":false}}`,
			i*20, base64.StdEncoding.EncodeToString(pcm)))
	}
	_ = c.WriteControl(websocket.CloseMessage, websocket.FormatCloseMessage(websocket.CloseNormalClosure, ""), time.Now().Add(time.Second))
	for {
		if _, _, err := c.ReadMessage(); err != nil {
			break
		}
	}
}
