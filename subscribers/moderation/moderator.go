// Package moderation is the moderator role: rules that watch a call's audio
// (shouting, clipping, dead air, one participant dominating) and its
// transcripts (keywords, regular expressions, card numbers, e-mail
// addresses and phone numbers spoken aloud), raise an event on each hit and
// can play a prompt into the call or stop what is playing.
package moderation

import (
	"bytes"
	"context"
	"crypto/sha256"
	"errors"
	"fmt"
	"log/slog"
	"os"
	"slices"
	"sync"
	"sync/atomic"
	"time"

	"github.com/nats-io/nats.go/jetstream"
	"github.com/prometheus/client_golang/prometheus"

	"github.com/audiofan/audiofan/broker"
	"github.com/audiofan/audiofan/codec"
	"github.com/audiofan/audiofan/subscribers"
	"github.com/audiofan/audiofan/subscribers/speech"
)

// RoleName is the moderator's role: its consumers, metrics and event source.
const RoleName = codec.SourceModeration

// Config is the moderator's settings.
type Config struct {
	Rules  string        `env:"AUDIOFAN_MODERATION_RULES" help:"rules file, YAML or JSON (empty: the built-in default rules); changes are picked up while running"`
	Reload time.Duration `env:"AUDIOFAN_MODERATION_RELOAD" envDefault:"2s" help:"how often the rules file is checked for changes"`
}

// Validate checks the settings.
func (c Config) Validate() error {
	if c.Reload <= 0 {
		return errors.New("AUDIOFAN_MODERATION_RELOAD must be positive")
	}
	return nil
}

// Moderator is the role.
type Moderator struct {
	cfg   Config
	js    jetstream.JetStream
	subj  broker.Published
	log   *slog.Logger
	rules atomic.Pointer[Rules]
	sum   [32]byte // of the rules file last read

	hits       *prometheus.CounterVec
	suppressed prometheus.Counter
	actions    *prometheus.CounterVec
	reloads    *prometheus.CounterVec
}

// New loads the rules (a bad file is an error here: there are no old rules
// to keep) and prepares the role; metrics register on reg.
func New(cfg Config, subj broker.Published, js jetstream.JetStream, reg prometheus.Registerer, log *slog.Logger) (*Moderator, error) {
	if err := cfg.Validate(); err != nil {
		return nil, err
	}
	m := &Moderator{cfg: cfg, js: js, subj: subj, log: log.With("role", RoleName),
		hits: prometheus.NewCounterVec(prometheus.CounterOpts{Name: "audiofan_moderation_hits_total",
			Help: "Rule hits that raised an event, by rule kind."}, []string{"kind"}),
		suppressed: prometheus.NewCounter(prometheus.CounterOpts{Name: "audiofan_moderation_suppressed_total",
			Help: "Rule hits within a rule's cooldown in the same call: no event."}),
		actions: prometheus.NewCounterVec(prometheus.CounterOpts{Name: "audiofan_moderation_actions_total",
			Help: "Outbound actions sent into calls: play, stop."}, []string{"action"}),
		reloads: prometheus.NewCounterVec(prometheus.CounterOpts{Name: "audiofan_moderation_rule_loads_total",
			Help: "Rules files read, by result: loaded, refused (the rules in force stay)."}, []string{"result"}),
	}
	for _, c := range []prometheus.Collector{m.hits, m.suppressed, m.actions, m.reloads} {
		if err := reg.Register(c); err != nil {
			return nil, fmt.Errorf("moderation metrics: %w", err)
		}
	}
	for k := range kindFields {
		m.hits.WithLabelValues(string(k))
	}
	m.actions.WithLabelValues(ActionPlay)
	m.actions.WithLabelValues(ActionStop)
	m.reloads.WithLabelValues("loaded")
	m.reloads.WithLabelValues("refused")
	if _, err := m.load(); err != nil {
		return nil, err
	}
	return m, nil
}

// Rules are the rules in force.
func (m *Moderator) Rules() *Rules { return m.rules.Load() }

// load reads the rules file (or the defaults); it reports whether the rules
// changed. On an error the rules in force stay.
func (m *Moderator) load() (bool, error) {
	data, source := defaultRules, "default"
	if m.cfg.Rules != "" {
		var err error
		if data, err = os.ReadFile(m.cfg.Rules); err != nil {
			m.reloads.WithLabelValues("refused").Inc()
			return false, fmt.Errorf("%w: %w", ErrRules, err)
		}
		source = m.cfg.Rules
	}
	sum := sha256.Sum256(data)
	if m.rules.Load() != nil && bytes.Equal(sum[:], m.sum[:]) {
		return false, nil
	}
	rs, err := ParseRules(data, source)
	m.sum = sum // a refused file is not read again until it changes
	if err != nil {
		m.reloads.WithLabelValues("refused").Inc()
		return false, err
	}
	m.rules.Store(rs)
	m.reloads.WithLabelValues("loaded").Inc()
	return true, nil
}

// Watch reads the rules file again whenever it changes, until ctx ends. A
// file that does not parse is refused with an error naming its line, and the
// rules in force stay.
func (m *Moderator) Watch(ctx context.Context) {
	if m.cfg.Rules == "" {
		return
	}
	t := time.NewTicker(m.cfg.Reload)
	defer t.Stop()
	for {
		select {
		case <-ctx.Done():
			return
		case <-t.C:
		}
		changed, err := m.load()
		switch {
		case err != nil:
			m.log.Error("rules file refused; the rules in force stay", "err", err)
		case changed:
			m.log.Info("rules reloaded", "file", m.cfg.Rules, "rules", len(m.Rules().List))
		}
	}
}

// Role is the moderator as the subscriber framework runs it.
func (m *Moderator) Role() subscribers.Role {
	return subscribers.Role{Name: RoleName, Kinds: []broker.Kind{broker.KindAudio, broker.KindTranscript},
		NewCall: func(_ context.Context, c subscribers.CallInfo) (subscribers.CallHandler, error) {
			return &callModerator{m: m, call: c, rate: 16000, parts: map[string]*listener{},
				last: map[string]int64{}, deadDone: map[string]bool{}}, nil
		}}
}

// callModerator is the rules' state in one call.
type callModerator struct {
	m     *Moderator
	call  subscribers.CallInfo
	rate  int
	clock speech.Clock
	first int64 // slot of the first frame
	seen  bool

	parts      map[string]*listener
	totalTalk  int
	lastSpeech int64            // slot of the last frame anybody spoke in
	deadDone   map[string]bool  // dead-air rules hit in this silence
	last       map[string]int64 // rule -> call time (ms) of its last hit
	words      []string
}

// listener is one participant stream's state.
type listener struct {
	det  *speech.Detector
	talk int
	st   map[ruleKey]*ruleState
}

// ruleKey names an audio rule's state: a reloaded rule of the same name but
// another kind starts afresh.
type ruleKey struct {
	name string
	kind RuleKind
}

// ruleState is an audio rule's state for one participant.
type ruleState struct {
	runStart, runLast int64 // shouting: the loud stretch
	ring              []bool
	idx, n, count     int // clipping: the window of frames
}

func (c *callModerator) Handle(ctx context.Context, d subscribers.Delivery, out *subscribers.Output) error {
	switch p := d.Payload.(type) {
	case *codec.Lifecycle:
		if p.Type == codec.LifecycleStarted && p.SampleRate > 0 {
			c.rate = p.SampleRate
		}
	case *codec.Frame:
		return c.frame(ctx, p, out, d.Replay)
	case *codec.Transcript:
		if p.Final {
			return c.transcript(ctx, p, out, d.Replay)
		}
	}
	return nil
}

func (c *callModerator) frame(ctx context.Context, f *codec.Frame, out *subscribers.Output, replay bool) error {
	if f.Channels != 1 || f.Encoding != codec.EncodingPCM16 || len(f.Data)%2 != 0 {
		return subscribers.Permanent(fmt.Errorf("frame format: %d channels, %q, %d bytes", f.Channels, f.Encoding, len(f.Data)))
	}
	if f.SampleRate > 0 {
		c.rate = f.SampleRate
	}
	slot := c.clock.FrameSlot(f.Participant, f.Timestamp, f.ReceivedAt)
	if !c.seen {
		c.first, c.lastSpeech, c.seen = slot, slot, true
	}
	l := c.parts[f.Participant]
	if l == nil {
		l = &listener{det: speech.NewDetector(speech.Config{}), st: map[ruleKey]*ruleState{}}
		c.parts[f.Participant] = l
	}
	lv := speech.Measure(f.Data)
	if l.det.Above(lv.RMS) {
		l.talk++
		c.totalTalk++
		c.lastSpeech = max(c.lastSpeech, slot)
		clear(c.deadDone)
	}
	l.det.Add(slot, lv.RMS, nil) // keeps the noise floor
	now := (slot - c.first) * int64(speech.SlotDur/time.Millisecond)
	at := c.clock.Time(slot)
	for _, r := range c.m.Rules().List {
		if !r.audio() {
			continue
		}
		key := ruleKey{r.Name, r.Kind}
		st := l.st[key]
		if st == nil {
			st = &ruleState{runLast: -1 << 62}
			l.st[key] = st
		}
		var ev map[string]any
		who := f.Participant
		switch r.Kind {
		case KindShouting:
			if lv.RMS < r.Level {
				break
			}
			if slot-st.runLast > 15 { // quieter for over 300 ms: a new stretch
				st.runStart = slot
			}
			st.runLast = slot
			if d := time.Duration(slot-st.runStart+1) * speech.SlotDur; d >= r.For {
				ev = map[string]any{"levelDbfs": round1(lv.RMS), "durationMs": d.Milliseconds()}
				st.runStart = slot + 1
			}
		case KindClipping:
			n := int(r.For / speech.SlotDur)
			if len(st.ring) != n {
				st.ring, st.idx, st.n, st.count = make([]bool, n), 0, 0, 0
			}
			if st.ring[st.idx] {
				st.count--
			}
			st.ring[st.idx] = lv.Clipped >= 2
			if st.ring[st.idx] {
				st.count++
			}
			st.idx, st.n = (st.idx+1)%n, min(st.n+1, n)
			if st.n == n && float64(st.count) >= r.Ratio*float64(n) {
				ev = map[string]any{"clippedFrames": st.count, "windowMs": r.For.Milliseconds()}
				clear(st.ring)
				st.n, st.count = 0, 0
			}
		case KindDeadAir:
			who = ""
			if quiet := time.Duration(slot-c.lastSpeech) * speech.SlotDur; quiet >= r.For && !c.deadDone[r.Name] {
				c.deadDone[r.Name] = true
				ev = map[string]any{"silenceMs": quiet.Milliseconds()}
			}
		case KindDominating:
			if time.Duration(now)*time.Millisecond >= r.After && c.totalTalk > 0 {
				if share := float64(l.talk) / float64(c.totalTalk); share >= r.Share {
					ev = map[string]any{"talkShare": round1(share*100) / 100, "talkMs": int64(l.talk) * 20}
				}
			}
		}
		if ev != nil {
			if err := c.hit(ctx, out, r, who, now, at, ev, replay); err != nil {
				return err
			}
		}
	}
	return nil
}

func (c *callModerator) transcript(ctx context.Context, t *codec.Transcript, out *subscribers.Output, replay bool) error {
	now := t.Offset / 10_000 // 100 ns ticks to ms
	for _, h := range matchTranscript(c.m.Rules(), t.Text, &c.words) {
		if err := c.hit(ctx, out, h.rule, t.Participant, now, t.ReceivedAt, h.evidence, replay); err != nil {
			return err
		}
	}
	return nil
}

// match is a transcript rule that hit, with its evidence.
type match struct {
	rule     *Rule
	evidence map[string]any
}

// matchTranscript runs the transcript rules on a text. Every piece of text
// in the evidence has sensitive data masked, whichever rule hit. words is a
// buffer kept between calls.
func matchTranscript(rs *Rules, text string, words *[]string) []match {
	var out []match
	var spans []span
	masked, analysed := "", false
	analyse := func() {
		if !analysed {
			spans = sensitive(text)
			masked = mask(text, spans)
			analysed = true
		}
	}
	*words = wordsOf(text, (*words)[:0])
	for _, r := range rs.List {
		var ev map[string]any
		switch r.Kind {
		case KindKeywords:
			if found := r.phrases.find(*words); len(found) > 0 {
				analyse()
				ev = map[string]any{"text": masked, "matches": found}
			}
		case KindRegex:
			if idx := r.re.FindAllStringIndex(text, -1); len(idx) > 0 {
				analyse()
				ms := make([]string, len(idx))
				for i, m := range idx {
					ms[i] = maskMatch(text, spans, m[0], m[1]) // no sensitive value leaks through a pattern
				}
				ev = map[string]any{"text": masked, "matches": ms}
			}
		case KindSensitive:
			analyse()
			var kinds, values []string
			for _, s := range spans {
				if slices.Contains(r.types, s.kind) {
					kinds = append(kinds, s.kind)
					values = append(values, mask(text[s.start:s.end], []span{{s.kind, 0, s.end - s.start}}))
				}
			}
			if len(kinds) > 0 {
				ev = map[string]any{"text": masked, "types": kinds, "values": values}
			}
		}
		if ev != nil {
			out = append(out, match{r, ev})
		}
	}
	return out
}

// hit raises a rule's event and takes its action, unless the rule hit in
// this call less than its cooldown ago (call time). During a replay only the
// cooldown is kept: the previous owner raised the event.
func (c *callModerator) hit(ctx context.Context, out *subscribers.Output, r *Rule, participant string, now int64, at time.Time,
	evidence map[string]any, replay bool) error {
	if last, ok := c.last[r.Name]; ok && now-last < r.Cooldown.Milliseconds() {
		if !replay {
			c.m.suppressed.Inc()
		}
		return nil
	}
	c.last[r.Name] = now
	if replay {
		return nil
	}
	ev, err := codec.NewEvent(codec.EventHit, &codec.Hit{Rule: r.Name, Kind: string(r.Kind), Action: r.Action, CallTimeMs: now, Evidence: evidence})
	if err != nil {
		return subscribers.Permanent(err)
	}
	ev.Participant, ev.At = participant, at
	if err := out.Emit(ctx, ev); err != nil {
		return err
	}
	c.m.hits.WithLabelValues(string(r.Kind)).Inc()
	var o *codec.Outbound
	switch r.Action {
	case ActionPlay:
		o = &codec.Outbound{V: codec.Version, Kind: codec.OutboundKindAudio, Data: r.prompt.pcm16(c.rate)}
	case ActionStop:
		o = &codec.Outbound{V: codec.Version, Kind: codec.OutboundKindStop, Data: []byte{}}
	default:
		return nil
	}
	data, err := codec.Marshal(o)
	if err != nil {
		return subscribers.Permanent(err)
	}
	// Core NATS, as the contract says: the receiver holding the call's
	// socket relays it; none holding it means nobody to speak to.
	if err := c.m.js.Conn().Publish(c.m.subj.Outbound(c.call.Token), data); err != nil {
		return fmt.Errorf("outbound to %s: %w", c.call.ID, err)
	}
	c.m.actions.WithLabelValues(r.Action).Inc()
	return nil
}

func (c *callModerator) End(context.Context, subscribers.EndReason, *subscribers.Output) error {
	return nil
}

func (c *callModerator) Close() error { return nil }

func round1(v float64) float64 {
	if v < 0 {
		return -float64(int64(-v*10+0.5)) / 10
	}
	return float64(int64(v*10+0.5)) / 10
}

// Component is the moderator as the binary runs it: its rules file is
// watched while it runs.
var Component = subscribers.Component{
	Role:     RoleName,
	Command:  "moderator",
	Summary:  "rules on every call's audio and transcripts that raise events and speak into the call, one replica of many",
	Settings: func() subscribers.Settings { return &Config{} },
	Start: func(ctx context.Context, s subscribers.Settings, env subscribers.Env) (subscribers.Role, func(), error) {
		m, err := New(*s.(*Config), env.Published, env.JS, env.Reg, env.Log)
		if err != nil {
			return subscribers.Role{}, nil, err
		}
		rs := m.Rules()
		env.Log.Info("moderation rules", "source", rs.Source, "rules", len(rs.List))
		var wg sync.WaitGroup
		wg.Go(func() { m.Watch(ctx) })
		return m.Role(), wg.Wait, nil
	},
	Publishes: func(_ subscribers.Settings, subj broker.Published) []string {
		return []string{subj.AnyCall(broker.KindOutbound)}
	},
}
