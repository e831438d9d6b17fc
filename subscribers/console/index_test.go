package console

import (
	"encoding/json"
	"fmt"
	"log/slog"
	"strings"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/audiofan/audiofan/broker"
	"github.com/audiofan/audiofan/codec"
	"github.com/audiofan/audiofan/subscribers"
)

func lifecycle(call, typ, conn string, at time.Time) subscribers.Message {
	return subscribers.Message{Info: broker.SubjectInfo{Call: call, CallToken: codec.EncodeToken(call), Kind: broker.KindLifecycle},
		Payload: &codec.Lifecycle{Call: call, Type: typ, Stream: "audio", Connection: conn, Receiver: "r1", At: at}}
}

// The list keeps the newest MaxEnded ended calls, forgets what is older than
// the history, and keeps a call live while any of its sockets is open.
func TestIndexPrune(t *testing.T) {
	x := newIndex(Config{History: time.Hour, MaxEnded: 2}, broker.Subjects{Published: broker.Published{Prefix: "calls"}})
	now := time.Now()
	for i := range 4 {
		at := now.Add(time.Duration(i) * time.Minute)
		id := fmt.Sprintf("c%d", i)
		x.apply(lifecycle(id, codec.LifecycleStarted, id+"-a", at), now)
		x.apply(lifecycle(id, codec.LifecycleEnded, id+"-a", at.Add(time.Second)), now)
	}
	// Two sockets, one ended: still live.
	x.apply(lifecycle("live", codec.LifecycleStarted, "l1", now), now)
	x.apply(lifecycle("live", codec.LifecycleStarted, "l2", now), now)
	x.apply(lifecycle("live", codec.LifecycleEnded, "l2", now), now)
	// Heard of last two hours ago: forgotten.
	x.apply(lifecycle("old", codec.LifecycleStarted, "o1", now.Add(-2*time.Hour)), now.Add(-2*time.Hour))

	x.prune(now)
	list, _ := x.list(now)
	var ids []string
	for _, c := range list {
		ids = append(ids, c.ID)
	}
	if fmt.Sprint(ids) != "[live c3 c2]" {
		t.Fatalf("list after pruning: %v, want [live c3 c2]", ids)
	}
	if !list[0].Live || list[0].Receivers[0] != "r1" {
		t.Fatalf("live call: %+v", list[0])
	}
	// A call with no audio seen yet lists no participants as [] (the page
	// reads it as a list), never null.
	if b, _ := json.Marshal(list[0]); !strings.Contains(string(b), `"participants":[]`) {
		t.Fatalf("no participants as %s", b)
	}
}

// A page that stops reading is let go once its queue is full, and counted;
// the others go on.
func TestSlowPageLetGo(t *testing.T) {
	reg := prometheus.NewRegistry()
	c, err := New(Config{Mode: "auto", History: time.Hour, MaxEnded: 10}, Deps{Reg: reg, Log: discard()})
	if err != nil {
		t.Fatal(err)
	}
	w := &watcher{c: c, tok: "t", pages: map[chan []byte]struct{}{}, byTok: map[codec.Token]*partState{}}
	slow, fast := make(chan []byte, feedQueue), make(chan []byte, feedQueue)
	w.pages[slow], w.pages[fast] = struct{}{}, struct{}{}
	for range feedQueue + 1 {
		w.dirty = true
		w.tick()
		select {
		case <-fast:
		default:
			t.Fatal("the reading page got no update")
		}
	}
	if _, ok := w.pages[slow]; ok {
		t.Fatal("the page that never read is still fed")
	}
	if _, open := <-slow; !open {
		t.Fatal("the slow page's queue was closed before its updates were read")
	}
	if _, ok := w.pages[fast]; !ok {
		t.Fatal("the reading page was let go")
	}
}

func discard() *slog.Logger { return slog.New(slog.DiscardHandler) }
