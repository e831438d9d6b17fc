package forward

import (
	"context"
	"sync/atomic"
	"time"

	"github.com/audiofan/audiofan/codec"
	"github.com/audiofan/audiofan/codec/acs"
	"github.com/audiofan/audiofan/subscribers"
)

// call is a call's forwarding on this replica: what it knows of the call,
// for each socket's metadata, and its sockets, one a target, each opened
// at the first live message that target wants.
type call struct {
	f     *Forwarder
	info  subscribers.CallInfo
	meta  atomic.Pointer[callMeta] // read by the sockets' goroutines
	links []*link                  // by target; nil until opened
	ended bool
}

// callMeta is what the call's lifecycle and frames said of it: what ACS
// puts in its metadata messages and upgrade headers.
type callMeta struct {
	subscriptionID, transcriptionID, correlationID string
	sampleRate                                     int
}

func newCall(f *Forwarder, info subscribers.CallInfo) *call {
	c := &call{f: f, info: info, links: make([]*link, len(f.cfg.targets))}
	c.meta.Store(&callMeta{sampleRate: 16000})
	return c
}

// Handle turns one message into what ACS would have sent, for each target
// that wants it. A replay (the call taken over from another replica) only
// updates what the call is known as: a new socket starts at live audio.
func (c *call) Handle(_ context.Context, d subscribers.Delivery, _ *subscribers.Output) error {
	switch p := d.Payload.(type) {
	case *codec.Lifecycle:
		if p.Type == codec.LifecycleStarted {
			m := *c.meta.Load()
			if p.CorrelationID != "" {
				m.correlationID = p.CorrelationID
			}
			switch p.Stream {
			case codec.StreamAudio:
				m.subscriptionID = p.SubscriptionID
				if p.SampleRate > 0 {
					m.sampleRate = p.SampleRate
				}
			case codec.StreamTranscription:
				m.transcriptionID = p.SubscriptionID
			}
			c.meta.Store(&m)
		}
	case *codec.Frame:
		if m := c.meta.Load(); p.SampleRate > 0 && p.SampleRate != m.sampleRate {
			n := *m
			n.sampleRate = p.SampleRate
			c.meta.Store(&n)
		}
		if !d.Replay {
			c.send(KindAudio, acs.AppendAudioData(nil, p.Timestamp, p.Participant, p.Data, p.Silent), d.Stored)
		}
	case *codec.Dtmf:
		if !d.Replay {
			c.send(KindDtmf, acs.AppendDtmf(nil, p.Timestamp, p.Participant, p.Tone), d.Stored)
		}
	case *codec.Transcript:
		if !d.Replay {
			words := make([]acs.Word, len(p.Words))
			for i, w := range p.Words {
				words[i] = acs.Word{Text: w.Text, Offset: w.Offset, Duration: w.Duration}
			}
			c.send(KindTranscript, acs.EncodeTranscriptionData(acs.TranscriptionData{Text: p.Text, Format: p.Format,
				Confidence: p.Confidence, Offset: p.Offset, Duration: p.Duration, Words: words, Participant: p.Participant,
				Final: p.Final, Sentiment: p.Sentiment, Language: p.Language}), d.Stored)
		}
	}
	return nil
}

// send queues msg on the socket of every target that wants kind, opening
// it first. It never waits on a target.
func (c *call) send(kind Kind, msg []byte, stored time.Time) {
	for i := range c.f.cfg.targets {
		t := &c.f.cfg.targets[i]
		if !t.Wants(kind) {
			continue
		}
		if c.links[i] == nil {
			c.links[i] = c.f.open(c, t, c.f.tm[i])
		}
		c.links[i].push(item{kind: kind, data: msg, stored: stored})
	}
}

// End lets each socket write what it has queued, then close normally, as
// ACS closes its socket when the call's media ends. It does not wait.
func (c *call) End(context.Context, subscribers.EndReason, *subscribers.Output) error {
	c.ended = true
	for _, l := range c.links {
		if l != nil {
			l.finish()
		}
	}
	return nil
}

// Close closes the sockets of a call handed to another replica at once
// (that replica dials its own); those of an ended call finish by
// themselves.
func (c *call) Close() error {
	if c.ended {
		return nil
	}
	for _, l := range c.links {
		if l != nil {
			l.abort()
		}
	}
	return nil
}
