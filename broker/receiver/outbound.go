package receiver

import (
	"sync"
	"time"

	"github.com/gorilla/websocket"
	"github.com/nats-io/nats.go"

	"github.com/audiofan/audiofan/codec"
	"github.com/audiofan/audiofan/codec/acs"
)

// Outbound relaying: anyone may speak into a call by publishing Outbound on
// calls.<call>.outbound. Every receiver listens on one wildcard subscription
// (a subscription per call would cost each socket a goroutine) and the one
// holding the call's media socket relays: audio as ACS AudioData in 100 ms
// chunks, paced in real time so ACS's queue stays short; stop as StopAudio,
// at once, dropping what was queued.

const (
	outboundChunk = 100 * time.Millisecond // per AudioData message
	outboundLead  = 200 * time.Millisecond // how far ahead of real time ACS may be fed
	outboundMax   = 60 * time.Second       // queued audio past which more is dropped
)

// Outbound results, the label of the outbound metric.
const (
	outRelayed   = "relayed"
	outStopped   = "stop"
	outNotHere   = "not_here"
	outInvalid   = "invalid"
	outQueueFull = "queue_full"
	outWriteFail = "write_failed"
)

// outbound is a socket's queue of audio to play into the call.
type outbound struct {
	mu      sync.Mutex
	chunks  [][]byte // PCM, outboundChunk each (the last may be shorter)
	queued  time.Duration
	playing bool
	closed  bool
	gen     int // bumped by stop, so a pacer drops the chunk it holds
	// The call's format, a copy the socket's goroutine keeps up to date:
	// outbound audio is handled on NATS's goroutine and the pacer's.
	bytesPerSec int
}

// setFormat records the call's audio format for outbound audio.
func (o *outbound) setFormat(rate, channels int) {
	o.mu.Lock()
	o.bytesPerSec = rate * 2 * channels
	o.mu.Unlock()
}

func (o *outbound) duration(n int) time.Duration {
	return time.Duration(n) * time.Second / time.Duration(o.bytesPerSec)
}

// relayOutbound handles one message of the wildcard subscription.
func (r *Receiver) relayOutbound(msg *nats.Msg) {
	// calls[.<partition>].<call token>.outbound: find the call without
	// decoding its id.
	tok, ok := r.subj.LiveCall(msg.Subject)
	if !ok {
		r.m.outbound.WithLabelValues(outInvalid).Inc()
		return
	}
	r.mu.Lock()
	s := r.calls[tok]
	r.mu.Unlock()
	if s == nil {
		// Another receiver may hold it: each counts what it could not relay.
		r.m.outbound.WithLabelValues(outNotHere).Inc()
		return
	}
	var out codec.Outbound
	if err := codec.Unmarshal(msg.Data, &out); err != nil || (out.Kind != codec.OutboundKindAudio && out.Kind != codec.OutboundKindStop) {
		r.m.outbound.WithLabelValues(outInvalid).Inc()
		r.warn.Warn("refused outbound message", "subject", msg.Subject, "kind", out.Kind, "err", err)
		return
	}
	if out.Kind == codec.OutboundKindStop {
		s.stopAudio()
		return
	}
	s.playAudio(out.Data)
}

// holdCall makes s the socket that outbound audio for its call goes to (the
// newest media socket of a call wins: ACS reconnects with a new one).
func (r *Receiver) holdCall(s *socket) {
	r.mu.Lock()
	r.calls[s.callTok] = s
	r.mu.Unlock()
}

func (r *Receiver) releaseCall(s *socket) {
	r.mu.Lock()
	if r.calls[s.callTok] == s {
		delete(r.calls, s.callTok)
	}
	r.mu.Unlock()
	s.out.mu.Lock()
	s.out.closed, s.out.chunks, s.out.queued = true, nil, 0
	s.out.mu.Unlock()
}

// playAudio queues pcm in chunks and starts the pacer if it is not running.
func (s *socket) playAudio(pcm []byte) {
	o := &s.out
	o.mu.Lock()
	defer o.mu.Unlock()
	if o.closed || o.bytesPerSec == 0 {
		s.r.m.outbound.WithLabelValues(outNotHere).Inc()
		return
	}
	if len(pcm)%2 != 0 {
		s.r.m.outbound.WithLabelValues(outInvalid).Inc()
		return
	}
	chunk := o.bytesPerSec * int(outboundChunk/time.Millisecond) / 1000
	dur := o.duration(len(pcm))
	if o.queued+dur > outboundMax {
		s.r.m.outbound.WithLabelValues(outQueueFull).Inc()
		s.r.warn.Warn("outbound audio dropped: queue full", "conn", s.id, "call", s.call, "queued", o.queued)
		return
	}
	for len(pcm) > 0 {
		n := min(chunk, len(pcm))
		o.chunks = append(o.chunks, pcm[:n:n])
		pcm = pcm[n:]
	}
	o.queued += dur
	s.r.m.outbound.WithLabelValues(outRelayed).Inc()
	if !o.playing {
		o.playing = true
		go s.pace()
	}
}

// stopAudio drops what is queued and tells ACS to drop what it has (barge-in).
func (s *socket) stopAudio() {
	o := &s.out
	o.mu.Lock()
	o.chunks, o.queued = nil, 0
	o.gen++
	closed := o.closed
	o.mu.Unlock()
	if closed {
		s.r.m.outbound.WithLabelValues(outNotHere).Inc()
		return
	}
	s.r.m.outbound.WithLabelValues(outStopped).Inc()
	s.writeText([]byte(acs.StopAudioMessage))
}

// pace sends queued chunks, keeping ACS at most outboundLead ahead of real
// time; it ends when the queue is empty or the socket closes.
func (s *socket) pace() {
	var until time.Time // when what was sent so far has played
	var buf []byte
	for {
		o := &s.out
		o.mu.Lock()
		if len(o.chunks) == 0 || o.closed {
			o.playing = false
			o.mu.Unlock()
			return
		}
		pcm, gen := o.chunks[0], o.gen
		o.chunks = o.chunks[1:]
		d := o.duration(len(pcm))
		o.queued -= d
		o.mu.Unlock()

		now := time.Now()
		if until.Before(now) {
			until = now
		}
		if ahead := until.Sub(now); ahead > outboundLead {
			time.Sleep(ahead - outboundLead)
		}
		buf = acs.AppendOutboundAudio(buf[:0], pcm)
		// Checked and written under the write lock: a stop that comes
		// after the check writes StopAudio after this chunk, never before
		// it (ACS would go on playing the chunk).
		s.writeMu.Lock()
		o.mu.Lock()
		stale := o.gen != gen || o.closed
		o.mu.Unlock()
		ok := stale || s.writeLocked(buf)
		s.writeMu.Unlock()
		if !ok {
			return
		}
		if !stale { // else a stop came while we waited
			until = until.Add(d)
		}
	}
}

// writeText writes one data message to ACS. Writes come from the pacer and
// from stop; the lock keeps them whole (control frames need none).
func (s *socket) writeText(msg []byte) bool {
	s.writeMu.Lock()
	defer s.writeMu.Unlock()
	return s.writeLocked(msg)
}

// writeLocked is writeText with s.writeMu held.
func (s *socket) writeLocked(msg []byte) bool {
	_ = s.conn.SetWriteDeadline(time.Now().Add(5 * time.Second))
	if err := s.conn.WriteMessage(websocket.TextMessage, msg); err != nil {
		s.r.m.outbound.WithLabelValues(outWriteFail).Inc()
		return false
	}
	return true
}
