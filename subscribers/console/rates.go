package console

import (
	"encoding/json"
	"net/http"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/nats-io/nats.go"

	"github.com/audiofan/audiofan/codec"
)

// rates counts every call's frames per second and the frames lost before
// the bus (gaps in a participant's seq), from a plain NATS subscription to
// all audio that exists only while a list page is open: a console nobody
// looks at costs nothing, and if it cannot keep up NATS drops its copies
// (a slow consumer), never the receivers' publishes.
type rates struct {
	c *Console

	mu    sync.Mutex
	refs  int
	sub   *nats.Subscription
	stop  chan struct{}
	calls map[codec.Token]*callRate
	// mapped: the bus is sharded, so frames come in the stored form.
	mapped atomic.Bool
}

type callRate struct {
	frames, prev uint64
	perSec       float64
	drops        uint64
	last         map[codec.Token]uint64 // participant token -> last seq
	heard        time.Time
}

func newRates(c *Console) *rates { return &rates{c: c, calls: map[codec.Token]*callRate{}} }

// acquire starts counting for one more list page; release stops it.
func (r *rates) acquire() error {
	r.mu.Lock()
	defer r.mu.Unlock()
	r.refs++
	if r.refs > 1 {
		return nil
	}
	subj := r.c.index.subjects()
	r.mapped.Store(subj.Mapped())
	sub, err := r.c.d.NC.Subscribe(subj.Live(subj.Audio("*", "*")), r.frame)
	if err != nil {
		r.refs--
		return err
	}
	r.sub, r.stop = sub, make(chan struct{})
	go r.tick(r.stop)
	return nil
}

func (r *rates) release() {
	r.mu.Lock()
	defer r.mu.Unlock()
	r.refs--
	if r.refs > 0 {
		return
	}
	_ = r.sub.Unsubscribe()
	close(r.stop)
	r.sub, r.calls = nil, map[codec.Token]*callRate{}
}

func (r *rates) frame(m *nats.Msg) {
	// prefix.<call>.audio.<participant>, read without allocating: this
	// runs for every frame on the bus while a list page is open.
	_, rest, _ := strings.Cut(m.Subject, ".")
	if r.mapped.Load() { // prefix.<partition>.<call>...: a sharded bus
		_, rest, _ = strings.Cut(rest, ".")
	}
	t, rest, _ := strings.Cut(rest, ".")
	_, p, ok := strings.Cut(rest, ".")
	tok, ptok := codec.Token(t), codec.Token(p)
	if !ok {
		return
	}
	var f codec.Frame
	if err := codec.UnmarshalFrame(m.Data, &f); err != nil {
		return
	}
	r.mu.Lock()
	cr := r.calls[tok]
	if cr == nil {
		cr = &callRate{last: map[codec.Token]uint64{}}
		r.calls[tok] = cr
	}
	cr.frames++
	cr.heard = time.Now()
	last, known := cr.last[ptok]
	if known && f.Seq > last+1 {
		cr.drops += f.Seq - last - 1
	}
	// A lower seq is a new socket for the participant (its seq starts
	// again) or a frame re-sent late: neither is a loss.
	cr.last[ptok] = f.Seq
	r.mu.Unlock()
	if !known {
		r.c.index.seen(tok, f.Participant)
	}
}

func (r *rates) tick(stop chan struct{}) {
	t := time.NewTicker(time.Second)
	defer t.Stop()
	for {
		select {
		case <-stop:
			return
		case now := <-t.C:
			r.mu.Lock()
			for tok, cr := range r.calls {
				cr.perSec, cr.prev = float64(cr.frames-cr.prev), cr.frames
				if now.Sub(cr.heard) > time.Minute {
					delete(r.calls, tok)
				}
			}
			r.mu.Unlock()
		}
	}
}

func (r *rates) fill(views []CallView) {
	r.mu.Lock()
	defer r.mu.Unlock()
	for i := range views {
		if cr := r.calls[views[i].Token]; cr != nil {
			views[i].FramesPerSec, views[i].Drops = cr.perSec, cr.drops
		}
	}
}

// serveCalls answers the list once.
func (c *Console) serveCalls(w http.ResponseWriter, _ *http.Request) {
	views, _ := c.index.list(time.Now())
	c.rates.fill(views)
	writeJSON(w, views)
}

// serveCallsFeed streams the list as Server-Sent Events: the whole list
// once a second (it is small, and a whole list needs no merging on the
// page), while the page is open.
func (c *Console) serveCallsFeed(w http.ResponseWriter, r *http.Request) {
	sse, ok := startSSE(w)
	if !ok {
		return
	}
	if err := c.rates.acquire(); err != nil {
		c.log.Warn("console: live rates unavailable", "err", err)
	} else {
		defer c.rates.release()
	}
	c.m.pages.WithLabelValues("calls").Inc()
	defer c.m.pages.WithLabelValues("calls").Dec()
	t := time.NewTicker(time.Second)
	defer t.Stop()
	done := c.runCtx().Done()
	for {
		views, _ := c.index.list(time.Now())
		c.rates.fill(views)
		b, _ := json.Marshal(views)
		if err := sse.send("calls", b); err != nil {
			return
		}
		select {
		case <-r.Context().Done():
			return
		case <-done:
			return
		case <-t.C:
		}
	}
}

type sseWriter struct {
	w  http.ResponseWriter
	f  http.Flusher
	rc *http.ResponseController
}

func startSSE(w http.ResponseWriter) (*sseWriter, bool) {
	f, ok := w.(http.Flusher)
	if !ok {
		http.Error(w, "streaming unsupported", http.StatusInternalServerError)
		return nil, false
	}
	h := w.Header()
	h.Set("Content-Type", "text/event-stream")
	h.Set("Cache-Control", "no-cache")
	h.Set("X-Accel-Buffering", "no")
	w.WriteHeader(http.StatusOK)
	f.Flush()
	return &sseWriter{w: w, f: f, rc: http.NewResponseController(w)}, true
}

// send writes one event; a page that does not read it within ten seconds
// is let go (its EventSource connects again and starts afresh).
func (s *sseWriter) send(event string, data []byte) error {
	_ = s.rc.SetWriteDeadline(time.Now().Add(10 * time.Second))
	if _, err := s.w.Write([]byte("event: " + event + "\ndata: ")); err != nil {
		return err
	}
	if _, err := s.w.Write(data); err != nil {
		return err
	}
	if _, err := s.w.Write([]byte("\n\n")); err != nil {
		return err
	}
	s.f.Flush()
	return nil
}

func writeJSON(w http.ResponseWriter, v any) {
	w.Header().Set("Content-Type", "application/json")
	w.Header().Set("Cache-Control", "no-cache")
	_ = json.NewEncoder(w).Encode(v)
}
