package console

import (
	"cmp"
	"context"
	"errors"
	"fmt"
	"log/slog"
	"maps"
	"slices"
	"sync"
	"time"

	"github.com/nats-io/nats.go/jetstream"

	"github.com/audiofan/audiofan/broker"
	"github.com/audiofan/audiofan/codec"
	"github.com/audiofan/audiofan/subscribers"
)

// CallView is a call as the list and a call's page show it.
type CallView struct {
	ID         string      `json:"id"`
	Token      codec.Token `json:"token"`
	Started    time.Time   `json:"started"`
	Ended      time.Time   `json:"ended,omitzero"`
	LastSeen   time.Time   `json:"lastSeen"`
	Live       bool        `json:"live"`
	DurationMs int64       `json:"durationMs"`
	SampleRate int         `json:"sampleRate"`
	// Mixed is true for a call whose audio is one mixed stream; false when
	// per participant; null while no audio has been seen.
	Mixed        *bool             `json:"mixed"`
	Participants []string          `json:"participants"`
	Receivers    []string          `json:"receivers"`
	Streams      []string          `json:"streams"`
	Reason       string            `json:"reason,omitempty"`
	Frames       map[string]uint64 `json:"frames,omitempty"`
	FramesPerSec float64           `json:"framesPerSec"`
	Drops        uint64            `json:"drops"`
	Hits         int               `json:"hits"`
	Analytics    *codec.Analysis   `json:"analytics,omitempty"`
	Recording    *codec.Recording  `json:"recording,omitempty"`
}

type callEntry struct {
	view CallView
	open map[string]string // connection -> receiver, for sockets not ended
	held map[string]bool   // receivers that ever held a socket of the call
	// parts are the participant raw ids seen, "" for mixed audio.
	parts map[string]bool
}

// index is the list of calls, built from their lifecycle messages and
// events: small, a few messages per call, so it is read from the stream
// from History ago and kept whole.
type index struct {
	cfg  Config
	subj broker.Subjects

	mu      sync.Mutex
	calls   map[codec.Token]*callEntry
	version uint64
	ready   bool
}

func newIndex(cfg Config, subj broker.Subjects) *index {
	return &index{cfg: cfg, subj: subj, calls: map[codec.Token]*callEntry{}}
}

func (x *index) run(ctx context.Context, js jetstream.JetStream, ref broker.StreamRef, log *slog.Logger) error {
	start := time.Now().Add(-x.cfg.History)
	var cons []jetstream.Consumer
	err := broker.Provision(ctx, log, "console call list", func(ctx context.Context) error {
		bus, err := broker.FindBus(ctx, js, ref)
		if err != nil {
			return err
		}
		x.mu.Lock()
		x.subj = bus.Subjects()
		x.mu.Unlock()
		cons = nil
		// Every shard: a call lives in one, the list spans them all.
		for _, s := range bus.Shards() {
			c, err := s.OrderedConsumer(ctx, jetstream.OrderedConsumerConfig{
				FilterSubjects: []string{x.subj.AllKind(broker.KindLifecycle), x.subj.AllKind(broker.KindEvents)},
				DeliverPolicy:  jetstream.DeliverByStartTimePolicy, OptStartTime: &start,
			})
			if errors.Is(err, jetstream.ErrStreamNotFound) {
				err = fmt.Errorf("%w: %w", broker.ErrNotReady, err) // its receiver may start later
			}
			if err != nil {
				return err
			}
			cons = append(cons, c)
		}
		return nil
	})
	switch {
	case ctx.Err() != nil:
		return nil
	case err != nil:
		return fmt.Errorf("console: read calls from %s: %w", ref.Name, err)
	}
	var wg sync.WaitGroup
	defer wg.Wait()
	wg.Go(func() {
		t := time.NewTicker(10 * time.Second)
		defer t.Stop()
		for {
			select {
			case <-ctx.Done():
				return
			case now := <-t.C:
				x.prune(now)
			}
		}
	})
	// Ready once every shard's reader has caught up.
	var mu sync.Mutex
	behind := len(cons)
	caughtUp := func() {
		mu.Lock()
		defer mu.Unlock()
		if behind--; behind == 0 {
			x.setReady()
		}
	}
	errs := make(chan error, len(cons))
	for _, c := range cons {
		wg.Go(func() { errs <- x.read(ctx, c, sync.OnceFunc(caughtUp), log) })
	}
	var first error
	for range cons {
		if err := <-errs; err != nil && first == nil {
			first = err
		}
	}
	return first
}

// read applies one shard's lifecycle messages and events until ctx ends;
// caughtUp is called once it has read what the shard held.
// subjects is the bus's subject scheme, once run has found the bus.
func (x *index) subjects() broker.Subjects {
	x.mu.Lock()
	defer x.mu.Unlock()
	return x.subj
}

func (x *index) read(ctx context.Context, cons jetstream.Consumer, caughtUp func(), log *slog.Logger) error {
	// Pulled in batches: an hour of a busy system's lifecycle messages
	// and analytics events is tens of thousands, too many for one request
	// each.
	it, err := cons.Messages(jetstream.PullMaxMessages(1024))
	if err != nil {
		return fmt.Errorf("console: read calls: %w", err)
	}
	if info := cons.CachedInfo(); info != nil && info.NumPending == 0 {
		caughtUp()
	}
	stop := context.AfterFunc(ctx, it.Stop)
	defer stop()
	for {
		msg, err := it.Next()
		if err != nil {
			if errors.Is(err, jetstream.ErrMsgIteratorClosed) {
				return nil
			}
			// The ordered consumer starts again where it was; an error that
			// repeats at once (a closed connection) must not spin.
			if !sleepCtx(ctx, errorPause) {
				return nil
			}
			continue
		}
		md, err := msg.Metadata()
		if err != nil {
			continue
		}
		if m, err := subscribers.Decode(x.subjects(), msg.Subject(), msg.Data()); err == nil {
			if err := x.apply(m, md.Timestamp); err != nil {
				log.Debug("console: event not understood", "subject", msg.Subject(), "err", err)
			}
		} else {
			log.Debug("console: undecodable message skipped", "subject", msg.Subject(), "err", err)
		}
		if md.NumPending == 0 {
			caughtUp()
		}
	}
}

func (x *index) setReady() {
	x.mu.Lock()
	x.ready = true
	x.mu.Unlock()
}

// apply adds one lifecycle message or event to the list; an event whose
// data is not what its source documents is an error (the call is listed
// without it).
func (x *index) apply(m subscribers.Message, stored time.Time) (bad error) {
	x.mu.Lock()
	defer x.mu.Unlock()
	tok := m.Info.CallToken
	e := x.calls[tok]
	if e == nil {
		e = &callEntry{view: CallView{ID: m.Info.Call, Token: tok}, open: map[string]string{}, held: map[string]bool{}, parts: map[string]bool{}}
		x.calls[tok] = e
	}
	v := &e.view
	if stored.After(v.LastSeen) {
		v.LastSeen = stored
	}
	switch p := m.Payload.(type) {
	case *codec.Lifecycle:
		v.ID = cmp.Or(p.Call, v.ID)
		if !slices.Contains(v.Streams, p.Stream) && p.Stream != "" {
			v.Streams = append(v.Streams, p.Stream)
		}
		switch p.Type {
		case codec.LifecycleStarted:
			if v.Started.IsZero() || p.At.Before(v.Started) {
				v.Started = p.At
			}
			e.open[p.Connection] = p.Receiver
			e.held[p.Receiver] = true
			v.Ended = time.Time{}
			if p.Stream == "audio" && p.SampleRate > 0 {
				v.SampleRate = p.SampleRate
			}
		case codec.LifecycleEnded:
			delete(e.open, p.Connection)
			if len(e.open) == 0 {
				v.Ended = p.At
			}
			if v.Started.IsZero() {
				v.Started = p.At
			}
			// The call ended as its audio did; a transcription socket's
			// reason stands only when there is no audio.
			if p.Reason != "" && (p.Stream == "audio" || v.Reason == "") {
				v.Reason = p.Reason
			}
			for id, n := range p.Frames {
				if v.Frames == nil {
					v.Frames = map[string]uint64{}
				}
				v.Frames[id] += n
				e.parts[id] = true
			}
		}
	case *codec.Event:
		switch m.Info.Source {
		case codec.SourceAnalytics:
			var an codec.Analysis
			if err := codec.DecodeEventData(p.Data, &an); err != nil {
				bad = fmt.Errorf("analytics event: %w", err)
				break
			}
			v.Analytics = &an
			for _, pa := range an.Participants {
				e.parts[pa.Participant] = true
			}
		case codec.SourceRecording:
			var rec codec.Recording
			if err := codec.DecodeEventData(p.Data, &rec); err != nil {
				bad = fmt.Errorf("recording event: %w", err)
				break
			}
			v.Recording = &rec
		case codec.SourceModeration:
			if p.Type == codec.EventHit {
				v.Hits++
			}
		}
	}
	x.version++
	return bad
}

// seen records a participant whose audio the live rates saw.
func (x *index) seen(tok codec.Token, participant string) {
	x.mu.Lock()
	defer x.mu.Unlock()
	if e := x.calls[tok]; e != nil && !e.parts[participant] {
		e.parts[participant] = true
		x.version++
	}
}

// prune forgets ended calls past the history or past MaxEnded, and calls
// whose sockets never reported their end (a receiver killed) once nothing
// was heard of them for the history.
func (x *index) prune(now time.Time) {
	x.mu.Lock()
	defer x.mu.Unlock()
	var ended []*callEntry
	for tok, e := range x.calls {
		switch {
		case now.Sub(e.view.LastSeen) > x.cfg.History:
			delete(x.calls, tok)
			x.version++
		case len(e.open) == 0:
			ended = append(ended, e)
		}
	}
	if len(ended) <= x.cfg.MaxEnded {
		return
	}
	slices.SortFunc(ended, func(a, b *callEntry) int { return b.view.Ended.Compare(a.view.Ended) })
	for _, e := range ended[x.cfg.MaxEnded:] {
		delete(x.calls, e.view.Token)
	}
	x.version++
}

// view returns one call.
func (x *index) view(tok codec.Token, now time.Time) (CallView, bool) {
	x.mu.Lock()
	defer x.mu.Unlock()
	e, ok := x.calls[tok]
	if !ok {
		return CallView{}, false
	}
	return e.snapshot(now), true
}

// list returns the calls, live first, then by start, newest first.
func (x *index) list(now time.Time) ([]CallView, uint64) {
	x.mu.Lock()
	defer x.mu.Unlock()
	out := make([]CallView, 0, len(x.calls))
	for _, e := range x.calls {
		out = append(out, e.snapshot(now))
	}
	slices.SortFunc(out, func(a, b CallView) int {
		if a.Live != b.Live {
			if a.Live {
				return -1
			}
			return 1
		}
		return cmp.Or(b.Started.Compare(a.Started), cmp.Compare(a.Token, b.Token))
	})
	return out, x.version
}

func (e *callEntry) snapshot(now time.Time) CallView {
	v := e.view
	v.Live = len(e.open) > 0
	end := v.Ended
	if v.Live {
		end = now
	}
	if !v.Started.IsZero() {
		v.DurationMs = max(end.Sub(v.Started).Milliseconds(), 0)
	}
	v.Participants = append([]string{}, slices.Sorted(maps.Keys(e.parts))...) // [] rather than null for the page
	if len(v.Participants) > 0 {
		mixed := len(v.Participants) == 1 && v.Participants[0] == ""
		v.Mixed = &mixed
	}
	// A live call is on the receivers holding its sockets now; an ended
	// one shows those that held it.
	v.Receivers = nil
	for _, r := range e.open {
		if !slices.Contains(v.Receivers, r) {
			v.Receivers = append(v.Receivers, r)
		}
	}
	if !v.Live {
		v.Receivers = slices.Collect(maps.Keys(e.held))
	}
	slices.Sort(v.Receivers)
	v.Frames = maps.Clone(v.Frames)
	return v
}

// receivers counts the open calls per receiver, for the health view.
func (x *index) receivers() map[string]int {
	x.mu.Lock()
	defer x.mu.Unlock()
	out := map[string]int{}
	for _, e := range x.calls {
		seen := map[string]bool{}
		for _, r := range e.open {
			if !seen[r] {
				seen[r] = true
				out[r]++
			}
		}
	}
	return out
}

// errorPause is the wait after a failed read of the bus before the next.
const errorPause = 100 * time.Millisecond

// sleepCtx waits d, or less if ctx ends first; false when it ended.
func sleepCtx(ctx context.Context, d time.Duration) bool {
	t := time.NewTimer(d)
	defer t.Stop()
	select {
	case <-ctx.Done():
		return false
	case <-t.C:
		return true
	}
}
