package forward

import (
	"io"
	"log/slog"
	"testing"

	"github.com/prometheus/client_golang/prometheus"
	dto "github.com/prometheus/client_model/go"

	"github.com/audiofan/audiofan/broker/warn"
	"github.com/audiofan/audiofan/subscribers"
)

// The socket's queue keeps the newest AUDIOFAN_FORWARD_BUFFER messages in
// order, counting what it drops, across wrap-arounds.
func TestLinkQueue(t *testing.T) {
	m, err := newMetrics(prometheus.NewRegistry())
	if err != nil {
		t.Fatal(err)
	}
	f := &Forwarder{cfg: &Config{Buffer: 3}, warn: warn.New(slog.New(slog.NewTextHandler(io.Discard, nil)), 1, 1, nil)}
	tm := m.forTarget("t")
	l := &link{f: f, c: &call{info: subscribers.CallInfo{ID: "4:+14255550123"}}, t: &Target{Name: "t"}, m: tm,
		q: make([]item, 3), wake: make(chan struct{}, 1)}
	push := func(ids ...string) {
		for _, id := range ids {
			l.push(item{data: []byte(id)})
		}
	}
	take := func() string {
		got, _ := l.take(nil)
		s := ""
		for _, it := range got {
			s += string(it.data)
		}
		return s
	}
	for _, c := range []struct {
		push    []string
		want    string
		dropped float64
	}{
		{[]string{"a", "b"}, "ab", 0},
		{[]string{"c", "d", "e", "f"}, "def", 1},      // c dropped
		{[]string{"g", "h", "i", "j", "k"}, "ijk", 3}, // g, h dropped, wrapped
		{nil, "", 3},
	} {
		push(c.push...)
		if got := take(); got != c.want {
			t.Errorf("after %v: %q, want %q", c.push, got, c.want)
		}
		if d := value(tm.droppedSlow); d != c.dropped {
			t.Errorf("after %v: %v dropped, want %v", c.push, d, c.dropped)
		}
	}
	push("x", "y")
	l.dropQueued()
	if got := take(); got != "" || value(tm.droppedDown) != 2 {
		t.Errorf("after a redial: %q left, %v dropped", got, value(tm.droppedDown))
	}
}

func value(c prometheus.Counter) float64 {
	var m dto.Metric
	_ = c.Write(&m)
	return m.GetCounter().GetValue()
}
