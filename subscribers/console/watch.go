package console

import (
	"context"
	"encoding/json"
	"errors"
	"net/http"
	"slices"
	"sync"
	"time"

	"github.com/nats-io/nats.go/jetstream"

	"github.com/audiofan/audiofan/broker"
	"github.com/audiofan/audiofan/codec"
	"github.com/audiofan/audiofan/subscribers"
	"github.com/audiofan/audiofan/subscribers/speech"
)

// Bounds of what a call's page is sent and kept, so a long call or a chatty
// one holds the same memory as a short one.
const (
	keepTranscripts = 200
	keepHits        = 200
	keepSegments    = 5000 // on a call's timeline
	feedQueue       = 64   // updates waiting for one page (6 s at 10/s)
	tickEvery       = 100 * time.Millisecond
)

// watcher follows one call for every page that shows it: it reads the call
// from the stream's start (the timeline and transcripts so far) and then
// live, and sends each page the same encoded updates ten times a second.
type watcher struct {
	c      *Console
	tok    codec.Token
	subj   broker.Subjects // the stream's, read when the watcher starts
	cancel context.CancelFunc
	done   chan struct{}

	mu       sync.Mutex
	pages    map[chan []byte]struct{}
	clock    speech.Clock
	parts    []*partState
	byTok    map[codec.Token]*partState
	segs     []SegmentView
	texts    []Transcript
	hits     []Hit
	newSegs  []SegmentView
	newText  []Transcript
	newHits  []Hit
	maxSlot  int64
	frames   uint64
	caught   bool // read up to the stream's end once
	callSent time.Time
	dirty    bool
}

type partState struct {
	View       PartView
	det        *speech.Detector
	scratch    []speech.Segment
	talkClosed int64   // ms in segments that ended
	power      float64 // mean square of the frames since the last tick
	n          int
}

// PartView is a participant's live state.
type PartView struct {
	Index   int         `json:"index"`
	ID      string      `json:"id"`
	Token   codec.Token `json:"token"`
	Level   float64     `json:"level"` // dBFS over the last tick
	Peak    float64     `json:"peak"`  // dBFS of the last tick's loudest sample
	Talking bool        `json:"talking"`
	TalkMs  int64       `json:"talkMs"`
	Frames  uint64      `json:"frames"`
	// OpenFromMs is where the speech in progress began, -1 when silent.
	OpenFromMs int64 `json:"openFromMs"`
}

// SegmentView is a stretch of speech on the call's timeline.
type SegmentView struct {
	Part    int   `json:"p"`
	StartMs int64 `json:"s"`
	EndMs   int64 `json:"e"`
}

// Transcript is one line of a transcript.
type Transcript struct {
	Participant string  `json:"participant"`
	Text        string  `json:"text"`
	Final       bool    `json:"final"`
	Confidence  float64 `json:"confidence"`
	AtMs        int64   `json:"atMs"`
}

// Hit is a moderation event.
type Hit struct {
	Rule        string `json:"rule"`
	Kind        string `json:"kind"`
	Participant string `json:"participant"`
	AtMs        int64  `json:"atMs"`
	Evidence    any    `json:"evidence"`
}

// update is what a page receives: everything on the first, then what
// changed.
type update struct {
	Snapshot    bool          `json:"snapshot"`
	CallMs      int64         `json:"callMs"`
	Caught      bool          `json:"caught"`
	Call        *CallView     `json:"call,omitempty"`
	Parts       []PartView    `json:"parts"`
	Segments    []SegmentView `json:"segments,omitempty"`
	Transcripts []Transcript  `json:"transcripts,omitempty"`
	Hits        []Hit         `json:"hits,omitempty"`
}

// watch returns the call's watcher with one more page on it.
func (c *Console) watch(tok codec.Token) (*watcher, chan []byte) {
	base := c.runCtx()
	c.mu.Lock()
	defer c.mu.Unlock()
	w := c.watchers[tok]
	if w == nil {
		ctx, cancel := context.WithCancel(base)
		w = &watcher{c: c, tok: tok, cancel: cancel, done: make(chan struct{}), pages: map[chan []byte]struct{}{},
			byTok: map[codec.Token]*partState{}}
		c.watchers[tok] = w
		go w.run(ctx)
	}
	ch := make(chan []byte, feedQueue)
	w.mu.Lock()
	w.pages[ch] = struct{}{}
	snap := w.encode(true)
	w.mu.Unlock()
	ch <- snap
	return w, ch
}

// unwatch takes a page off; the last one stops the watcher.
func (c *Console) unwatch(w *watcher, ch chan []byte) {
	c.mu.Lock()
	defer c.mu.Unlock()
	w.mu.Lock()
	delete(w.pages, ch)
	last := len(w.pages) == 0
	w.mu.Unlock()
	if last && c.watchers[w.tok] == w {
		delete(c.watchers, w.tok)
		w.cancel()
	}
}

func (w *watcher) run(ctx context.Context) {
	defer close(w.done)
	var cons jetstream.Consumer
	err := broker.Provision(ctx, w.c.log, "console call "+string(w.tok), func(ctx context.Context) (err error) {
		bus, err := broker.FindBus(ctx, w.c.d.JS, w.c.d.Stream)
		if err != nil {
			return err
		}
		w.subj = bus.Subjects()
		cons, err = bus.Stream(w.subj.Partition(w.tok)).OrderedConsumer(ctx, jetstream.OrderedConsumerConfig{
			FilterSubjects: []string{w.subj.StoredCall(w.tok)}})
		return err
	})
	if err != nil {
		if ctx.Err() == nil {
			w.c.log.Warn("console: cannot follow call", "call", w.tok, "err", err)
		}
		return
	}
	it, err := cons.Messages(jetstream.PullMaxMessages(512))
	if err != nil {
		w.c.log.Warn("console: cannot follow call", "call", w.tok, "err", err)
		return
	}
	msgs := make(chan jetstream.Msg, 256)
	go func() {
		defer close(msgs)
		for {
			m, err := it.Next()
			if err != nil {
				if errors.Is(err, jetstream.ErrMsgIteratorClosed) {
					return
				}
				// The ordered consumer starts again where it was; an error
				// that repeats at once (a closed connection) must not spin.
				if !sleepCtx(ctx, errorPause) {
					return
				}
				continue
			}
			select {
			case msgs <- m:
			case <-ctx.Done():
				return
			}
		}
	}()
	defer it.Stop()
	t := time.NewTicker(tickEvery)
	defer t.Stop()
	for {
		select {
		case <-ctx.Done():
			return
		case m, ok := <-msgs:
			if !ok {
				return
			}
			w.apply(m)
		case <-t.C:
			w.tick()
		}
	}
}

func (w *watcher) apply(msg jetstream.Msg) {
	m, err := subscribers.Decode(w.subj, msg.Subject(), msg.Data())
	if err != nil {
		return
	}
	md, _ := msg.Metadata()
	w.mu.Lock()
	defer w.mu.Unlock()
	if md != nil && md.NumPending == 0 {
		w.caught = true
	}
	w.dirty = true
	switch p := m.Payload.(type) {
	case *codec.Frame:
		w.frame(m.Info.ParticipantToken, p)
	case *codec.Transcript:
		t := Transcript{Participant: p.Participant, Text: p.Text, Final: p.Final, Confidence: p.Confidence,
			AtMs: w.ms(p.ReceivedAt)}
		if !t.Final {
			// An intermediate result replaces the participant's previous
			// one rather than piling up.
			w.texts = slices.DeleteFunc(w.texts, func(x Transcript) bool { return !x.Final && x.Participant == t.Participant })
			w.newText = slices.DeleteFunc(w.newText, func(x Transcript) bool { return !x.Final && x.Participant == t.Participant })
		} else {
			w.texts = slices.DeleteFunc(w.texts, func(x Transcript) bool { return !x.Final && x.Participant == t.Participant })
		}
		w.texts = keepLast(append(w.texts, t), keepTranscripts)
		w.newText = keepLast(append(w.newText, t), keepTranscripts)
	case *codec.Lifecycle:
		if p.Type == codec.LifecycleEnded && p.Stream == "audio" {
			// The audio socket closed: speech in progress ends with it.
			for _, ps := range w.parts {
				if seg, ok := ps.det.Flush(); ok {
					w.addSeg(ps, seg)
				}
			}
		}
	case *codec.Event:
		if p.Source == codec.SourceModeration && p.Type == codec.EventHit {
			var hit codec.Hit
			if err := codec.DecodeEventData(p.Data, &hit); err != nil {
				w.c.log.Debug("console: moderation hit not understood", "call", p.Call, "err", err)
				break
			}
			h := Hit{Participant: p.Participant, Rule: hit.Rule, Kind: hit.Kind, Evidence: hit.Evidence, AtMs: hit.CallTimeMs}
			w.hits = keepLast(append(w.hits, h), keepHits)
			w.newHits = keepLast(append(w.newHits, h), keepHits)
		}
	}
}

func (w *watcher) frame(ptok codec.Token, f *codec.Frame) {
	ps := w.byTok[ptok]
	if ps == nil {
		ps = &partState{View: PartView{Index: len(w.parts), ID: f.Participant, Token: ptok, Level: speech.Floor, Peak: speech.Floor},
			det: speech.NewDetector(speech.Config{})}
		w.parts = append(w.parts, ps)
		w.byTok[ptok] = ps
	}
	slot := w.clock.FrameSlot(f.Participant, f.Timestamp, f.ReceivedAt)
	w.maxSlot = max(w.maxSlot, slot)
	w.frames++
	l := speech.Measure(f.Data)
	ps.View.Frames++
	ps.View.Peak = max(ps.View.Peak, l.Peak)
	ps.power += l.Power
	ps.n++
	out := ps.det.Add(slot, l.RMS, ps.scratch[:0])
	for _, seg := range out {
		w.addSeg(ps, seg)
	}
	ps.scratch = out
}

func (w *watcher) addSeg(ps *partState, seg speech.Segment) {
	sv := SegmentView{Part: ps.View.Index, StartMs: slotMs(seg.Start), EndMs: slotMs(seg.End + 1)}
	ps.talkClosed += sv.EndMs - sv.StartMs
	w.segs = keepLast(append(w.segs, sv), keepSegments)
	w.newSegs = keepLast(append(w.newSegs, sv), keepSegments)
}

func slotMs(slot int64) int64 { return slot * speech.SlotDur.Milliseconds() }

// ms is a time on the call's timeline (ms since its first frame).
func (w *watcher) ms(t time.Time) int64 {
	origin := w.clock.Time(0)
	if origin.IsZero() || t.IsZero() {
		return 0
	}
	return t.Sub(origin).Milliseconds()
}

// tick sends the pages what changed since the last tick.
func (w *watcher) tick() {
	w.mu.Lock()
	defer w.mu.Unlock()
	if !w.dirty && time.Since(w.callSent) < time.Second {
		// Nothing arrived: the meters fall to silence once, and the
		// call's entry (its end, its recording) is looked at each second.
		quiet := true
		for _, ps := range w.parts {
			quiet = quiet && ps.n == 0 && ps.View.Level == speech.Floor
		}
		if quiet {
			return
		}
	}
	for _, ps := range w.parts {
		if ps.n > 0 {
			ps.View.Level = speech.DB(ps.power / float64(ps.n))
		} else {
			ps.View.Level, ps.View.Peak = speech.Floor, speech.Floor
		}
		ps.power, ps.n = 0, 0
		open, ok := ps.det.Open()
		ps.View.Talking, ps.View.OpenFromMs, ps.View.TalkMs = ok, -1, ps.talkClosed
		if ok {
			ps.View.OpenFromMs = slotMs(open.Start)
			ps.View.TalkMs += slotMs(open.End+1) - ps.View.OpenFromMs
		}
	}
	b := w.encode(false)
	for _, ps := range w.parts {
		ps.View.Peak = speech.Floor
	}
	w.newSegs, w.newText, w.newHits, w.dirty = w.newSegs[:0], w.newText[:0], w.newHits[:0], false
	for ch := range w.pages {
		select {
		case ch <- b:
		default:
			// A page that fell six seconds behind is let go; its
			// EventSource comes back to a fresh snapshot.
			w.c.m.dropped.WithLabelValues("call").Inc()
			delete(w.pages, ch)
			close(ch)
		}
	}
}

// encode builds a page's message: the whole state for a new page, what is
// new for the others. w.mu is held.
func (w *watcher) encode(snapshot bool) []byte {
	u := update{Snapshot: snapshot, CallMs: slotMs(w.maxSlot), Caught: w.caught, Parts: make([]PartView, len(w.parts))}
	for i, ps := range w.parts {
		u.Parts[i] = ps.View
	}
	// The call's entry (with its analytics) is the bulk of a message:
	// once a second is often enough.
	if now := time.Now(); snapshot || now.Sub(w.callSent) >= time.Second {
		if v, ok := w.c.index.view(w.tok, now); ok {
			u.Call = &v
		}
		if !snapshot {
			w.callSent = now
		}
	}
	if snapshot {
		u.Segments, u.Transcripts, u.Hits = w.segs, w.texts, w.hits
	} else {
		u.Segments, u.Transcripts, u.Hits = w.newSegs, w.newText, w.newHits
	}
	b, _ := json.Marshal(u)
	return b
}

func keepLast[T any](s []T, n int) []T {
	if len(s) > n {
		return append(s[:0], s[len(s)-n:]...)
	}
	return s
}

// serveCallFeed streams a call's page as Server-Sent Events.
func (c *Console) serveCallFeed(w http.ResponseWriter, r *http.Request) {
	tok := codec.Token(r.PathValue("call"))
	if _, ok := c.index.view(tok, time.Now()); !ok {
		http.Error(w, "no such call", http.StatusNotFound)
		return
	}
	sse, ok := startSSE(w)
	if !ok {
		return
	}
	c.m.pages.WithLabelValues("call").Inc()
	defer c.m.pages.WithLabelValues("call").Dec()
	wt, ch := c.watch(tok)
	defer c.unwatch(wt, ch)
	for {
		select {
		case <-r.Context().Done():
			return
		case <-wt.done:
			return
		case b, ok := <-ch:
			if !ok {
				return
			}
			if err := sse.send("update", b); err != nil {
				return
			}
		}
	}
}

// serveCall answers one call's list entry.
func (c *Console) serveCall(w http.ResponseWriter, r *http.Request) {
	v, ok := c.index.view(codec.Token(r.PathValue("call")), time.Now())
	if !ok {
		http.Error(w, "no such call", http.StatusNotFound)
		return
	}
	writeJSON(w, v)
}
