package receiver

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/gorilla/websocket"
	"github.com/nats-io/nats.go"

	"github.com/audiofan/audiofan/broker"
	"github.com/audiofan/audiofan/codec"
	"github.com/audiofan/audiofan/codec/acs"
)

// maxIDLen bounds call and participant ids: long enough for every shape ACS
// uses, short enough that a hostile id cannot bloat every subject. Their
// tokens are bounded too (codec.MaxTokenLen): they name files.
const maxIDLen = 256

// participant is the per-socket state of one speaker.
type participant struct {
	raw     string
	subject string
	seq     uint64 // frames received
	stored  uint64 // frames acknowledged
}

// socket is one ACS WebSocket connection and everything it publishes.
type socket struct {
	r      *Receiver
	conn   *websocket.Conn
	id     string // connection id, random, never reused
	remote string

	call          string // call id ("" until known)
	callTok       codec.Token
	callFromURL   bool // from the header or query: never replaced by a message
	correlationID string

	stream     string // codec.StreamAudio or codec.StreamTranscription once metadata came
	subID      string
	sampleRate int
	channels   int

	parser acs.Parser
	parts  map[string]*participant
	pipe   pipeline

	invalidCount int
	invalidSince time.Time
	started      bool
	closeReason  string
	deadlineSet  time.Time
	closeOnce    sync.Once
	out          outbound    // audio to play into the call (media sockets)
	writeMu      sync.Mutex  // data messages to ACS
	drained      atomic.Bool // closed by the receiver's drain, from another goroutine
}

// errTooManyParticipants refuses a participant past AUDIOFAN_MAX_PARTICIPANTS.
var errTooManyParticipants = errors.New("too many participants")

// notStored reports a message given up for good (the pipeline counted it).
func (s *socket) notStored(kind broker.Kind, err error) {
	s.r.warn.Warn("message not stored", "kind", kind, "conn", s.id, "call", s.call, "err", err)
}

// shedding reports the socket starting or stopping to shed audio.
func (s *socket) shedding(on bool) {
	if on {
		s.r.warn.Warn("JetStream is not keeping up: shedding this socket's audio until its window drains", "conn", s.id, "call", s.call)
	} else {
		s.logger().Info("JetStream caught up: no longer shedding audio")
	}
}

// logger returns the socket's logger. It is built when there is something to
// say rather than kept: an idle socket should cost as little as possible.
func (s *socket) logger() *slog.Logger {
	l := s.r.log.With("conn", s.id)
	if s.call != "" {
		l = l.With("call", s.call)
	}
	return l
}

// inbounds lends parse results to sockets for one message at a time.
var inbounds = sync.Pool{New: func() any { return new(acs.Inbound) }}

// newConnID returns 16 random bytes in hex: unique across restarts, so a
// Nats-Msg-Id is never reused by accident.
func newConnID() string {
	var b [16]byte
	_, _ = rand.Read(b[:])
	return hex.EncodeToString(b[:])
}

// errClose ends the read loop with a close frame for ACS.
type errClose struct {
	code   int
	reason string // metrics label
	text   string
}

func (e *errClose) Error() string { return fmt.Sprintf("close %d: %s", e.code, e.text) }

// run reads messages until the peer goes, the socket is closed for cause, or
// the receiver closes it; then it flushes and publishes "ended".
func (s *socket) run(ctx context.Context) {
	r := s.r
	err := s.readLoop(ctx)

	var ec *errClose
	switch {
	case errors.As(err, &ec):
		s.closeReason = ec.reason
		s.sendClose(ec.code, ec.text)
	case s.drained.Load():
		s.closeReason = "drain"
	case websocket.IsCloseError(err, websocket.CloseNormalClosure, websocket.CloseGoingAway, websocket.CloseNoStatusReceived):
		s.closeReason = "peer"
	case errors.Is(err, websocket.ErrReadLimit):
		s.closeReason = "too_large"
		r.m.invalid.WithLabelValues(reasonTooLarge).Inc()
		r.warn.Warn("ACS message over the size limit; connection closed with 1009", "conn", s.id, "call", s.call, "limit", r.cfg.MaxMessageBytes)
	case isTimeout(err):
		s.closeReason = "idle"
		s.sendClose(websocket.CloseGoingAway, "idle timeout")
	default:
		s.closeReason = "error"
		if !errors.Is(err, io.ErrUnexpectedEOF) && !websocket.IsUnexpectedCloseError(err) {
			s.logger().Debug("socket read ended", "err", err)
		}
	}
	if s.stream == codec.StreamAudio {
		r.releaseCall(s)
	}
	_ = s.conn.Close()
	r.m.closes.WithLabelValues(s.closeReason).Inc()

	// Flush even when ctx is done (drain): what was read gets its chance to be
	// stored, bounded by the retry window.
	fctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), r.cfg.Publish.RetryFor+r.cfg.Publish.AckTimeout)
	defer cancel()
	s.pipe.flush(fctx)
	if !s.started {
		r.m.noMetadata.Inc()
		s.logger().Info("connection closed before any metadata", "reason", s.closeReason)
		return
	}
	frames := make(map[string]uint64, len(s.parts))
	for raw, p := range s.parts {
		frames[raw] = p.stored
	}
	lc := s.lifecycle(codec.LifecycleEnded)
	lc.Reason = s.closeReason
	lc.Frames = frames
	// Through the same queue as everything else, and flushed: stored after
	// every other message of the socket, or counted as dropped.
	s.publishLifecycle(fctx, lc, time.Now())
	s.pipe.flush(fctx)
	s.logger().Info("call stream ended", "reason", s.closeReason, "frames", frames)
}

func isTimeout(err error) bool {
	var ne interface{ Timeout() bool }
	return errors.As(err, &ne) && ne.Timeout()
}

// drain closes the socket from outside the read loop with 1001, so that ACS
// reconnects to another replica.
func (s *socket) drain() {
	s.closeOnce.Do(func() {
		s.drained.Store(true)
		s.sendClose(websocket.CloseGoingAway, "server draining")
		_ = s.conn.Close()
	})
}

func (s *socket) sendClose(code int, text string) {
	_ = s.conn.WriteControl(websocket.CloseMessage, websocket.FormatCloseMessage(code, text), time.Now().Add(time.Second))
}

func (s *socket) readLoop(ctx context.Context) error {
	r := s.r
	_ = s.conn.SetReadDeadline(time.Now().Add(r.cfg.FirstMessageTimeout))
	for {
		mt, rd, err := s.conn.NextReader()
		if err != nil {
			return err
		}
		now := time.Now()
		if s.started && r.cfg.IdleTimeout > 0 && now.Sub(s.deadlineSet) > time.Second {
			// Refreshed at most once a second: the deadline is a timer
			// operation, and this runs 50 times a second per participant.
			s.deadlineSet = now
			_ = s.conn.SetReadDeadline(now.Add(r.cfg.IdleTimeout))
		}
		buf := r.bufs.Get().(*[]byte)
		msg, err := readAll(rd, (*buf)[:0])
		if err != nil {
			r.bufs.Put(buf)
			return err
		}
		if mt != websocket.TextMessage && mt != websocket.BinaryMessage {
			r.bufs.Put(buf)
			continue
		}
		err = s.handle(ctx, msg, now)
		*buf = msg[:0]
		r.bufs.Put(buf)
		if err != nil {
			return err
		}
	}
}

// readAll reads a message into buf, growing it as needed; the read limit set
// on the connection bounds it.
func readAll(rd io.Reader, buf []byte) ([]byte, error) {
	for {
		if len(buf) == cap(buf) {
			buf = append(buf, 0)[:len(buf)]
		}
		n, err := rd.Read(buf[len(buf):cap(buf)])
		buf = buf[:len(buf)+n]
		if err == io.EOF {
			return buf, nil
		}
		if err != nil {
			return buf, err
		}
	}
}

// invalid counts a refused message and closes the socket once they come
// faster than the flood limit allows.
func (s *socket) invalid(reason string, err error) error {
	r := s.r
	r.m.invalid.WithLabelValues(reason).Inc()
	r.warn.Warn("refused ACS message", "reason", reason, "err", err, "conn", s.id, "call", s.call, "remote", s.remote)
	now := time.Now()
	if now.Sub(s.invalidSince) > r.cfg.InvalidWindow {
		s.invalidSince, s.invalidCount = now, 0
	}
	s.invalidCount++
	if s.invalidCount > r.cfg.MaxInvalidMessages {
		r.m.invalid.WithLabelValues(reasonFlood).Inc()
		return &errClose{code: websocket.ClosePolicyViolation, reason: "flood", text: "too many invalid messages"}
	}
	return nil
}

func parseReason(err error) string {
	switch {
	case errors.Is(err, acs.ErrMalformed):
		return reasonJSON
	case errors.Is(err, acs.ErrBase64):
		return reasonBase64
	case errors.Is(err, acs.ErrPCMLength):
		return reasonPCMLength
	case errors.Is(err, acs.ErrTimestamp):
		return reasonTimestamp
	}
	return reasonFieldType
}

func (s *socket) handle(ctx context.Context, msg []byte, now time.Time) error {
	r := s.r
	in := inbounds.Get().(*acs.Inbound)
	defer inbounds.Put(in)
	if err := s.parser.Parse(msg, in); err != nil {
		return s.invalid(parseReason(err), err)
	}
	r.m.message(in.Kind)
	switch in.Kind {
	case acs.KindAudioData:
		return s.audio(ctx, &in.AudioData, now)
	case acs.KindAudioMetadata:
		return s.audioMetadata(ctx, &in.AudioMetadata, now)
	case acs.KindTranscriptionMetadata:
		return s.transcriptionMetadata(ctx, &in.TranscriptionMetadata, now)
	case acs.KindTranscriptionData:
		return s.transcript(ctx, &in.TranscriptionData, now)
	case acs.KindDtmfData:
		return s.dtmf(ctx, &in.Dtmf, now)
	}
	s.logger().Debug("ignoring unknown ACS message kind", "kind", in.KindName)
	return nil
}

func validID(id string) bool { return id != "" && idFits(id) }

// idFits reports whether an id, and the token it becomes in subjects and
// file names, are within bounds.
func idFits(id string) bool { return len(id) <= maxIDLen && codec.TokenLen(id) <= codec.MaxTokenLen }

// setCall records the call id from a message unless the URL named it.
func (s *socket) setCall(id string) error {
	if s.callFromURL || s.call != "" {
		return nil
	}
	if !validID(id) {
		s.r.m.invalid.WithLabelValues(reasonBadID).Inc()
		return &errClose{code: websocket.ClosePolicyViolation, reason: "invalid", text: "no usable call id"}
	}
	s.call, s.callTok = id, codec.EncodeToken(id)
	return nil
}

func (s *socket) audioMetadata(ctx context.Context, md *acs.AudioMetadata, now time.Time) error {
	var reason, text string
	switch {
	case !strings.EqualFold(md.Encoding, "PCM"):
		reason, text = reasonEncoding, fmt.Sprintf("unsupported encoding %q", md.Encoding)
	case md.SampleRate != 16000 && md.SampleRate != 24000:
		reason, text = reasonSampleRate, fmt.Sprintf("unsupported sample rate %d", md.SampleRate)
	case md.Channels != 1:
		reason, text = reasonChannels, fmt.Sprintf("unsupported channel count %d", md.Channels)
	}
	if reason != "" {
		// Every frame after it would be unusable: say so and stop.
		s.r.m.invalid.WithLabelValues(reason).Inc()
		s.r.warn.Warn("refused ACS audio metadata", "reason", reason, "detail", text, "conn", s.id, "call", s.call)
		return &errClose{code: websocket.CloseUnsupportedData, reason: "invalid", text: text}
	}
	if s.stream == codec.StreamTranscription {
		return s.invalid(reasonFieldType, errors.New("audio metadata on a transcription socket"))
	}
	if s.started {
		if md.SampleRate != s.sampleRate {
			s.logger().Warn("audio format changed mid-socket", "from", s.sampleRate, "to", md.SampleRate)
		}
		s.sampleRate, s.channels = md.SampleRate, md.Channels
		s.out.setFormat(s.sampleRate, s.channels)
		return nil
	}
	if err := s.setCall(md.SubscriptionID); err != nil {
		return err
	}
	s.stream, s.subID, s.sampleRate, s.channels = codec.StreamAudio, md.SubscriptionID, md.SampleRate, md.Channels
	s.out.setFormat(s.sampleRate, s.channels)
	s.r.holdCall(s)
	s.start(ctx, now)
	return nil
}

func (s *socket) transcriptionMetadata(ctx context.Context, md *acs.TranscriptionMetadata, now time.Time) error {
	if s.started {
		if s.stream != codec.StreamTranscription {
			return s.invalid(reasonFieldType, errors.New("transcription metadata on an audio socket"))
		}
		return nil
	}
	id := md.CallConnectionID
	if id == "" {
		id = md.SubscriptionID
	}
	if err := s.setCall(id); err != nil {
		return err
	}
	if s.correlationID == "" {
		s.correlationID = md.CorrelationID
	}
	s.stream, s.subID = codec.StreamTranscription, md.SubscriptionID
	s.start(ctx, now)
	return nil
}

func (s *socket) lifecycle(typ string) codec.Lifecycle {
	lc := codec.Lifecycle{V: codec.Version, Call: s.call, Type: typ, Stream: s.stream, Connection: s.id, Receiver: s.r.cfg.Instance,
		SubscriptionID: s.subID, CorrelationID: s.correlationID, SampleRate: s.sampleRate, Channels: s.channels, At: time.Now().UTC(),
		Frames: map[string]uint64{}}
	if s.stream == codec.StreamAudio {
		lc.Encoding = codec.EncodingPCM16
	}
	return lc
}

func (s *socket) start(ctx context.Context, now time.Time) {
	s.started = true
	s.deadlineSet = now
	if s.r.cfg.IdleTimeout > 0 {
		_ = s.conn.SetReadDeadline(now.Add(s.r.cfg.IdleTimeout))
	} else {
		_ = s.conn.SetReadDeadline(time.Time{})
	}
	s.logger().Info("call stream started", "stream", s.stream, "sample_rate", s.sampleRate)
	s.publishLifecycle(ctx, s.lifecycle(codec.LifecycleStarted), now)
}

// publishLifecycle publishes a lifecycle message and waits (up to one ack
// timeout) for it, so that nothing is left in flight after it; if JetStream
// does not answer it stays queued, retried like any message.
func (s *socket) publishLifecycle(ctx context.Context, lc codec.Lifecycle, now time.Time) {
	data, err := codec.Marshal(&lc)
	if err == nil {
		err = s.pipe.publishAwait(ctx, s.r.subj.Lifecycle(s.callTok), broker.KindLifecycle, data, now)
	}
	if err != nil {
		if !errors.Is(err, ErrTooLarge) { // counted where it was refused
			s.r.m.dropped.WithLabelValues(dropRejected).Inc()
		}
		s.r.warn.Warn("lifecycle message not stored", "type", lc.Type, "conn", s.id, "call", s.call, "err", err)
	}
}

// publish hands a message to the pipeline and accounts for a drop.
func (s *socket) publish(ctx context.Context, subject string, kind broker.Kind, data []byte, part *participant, now time.Time, droppable bool) error {
	msg := s.pipe.newMsg(subject)
	msg.Data = append(msg.Data, data...)
	return s.publishMsg(ctx, msg, kind, part, now, droppable)
}

func (s *socket) publishMsg(ctx context.Context, msg *nats.Msg, kind broker.Kind, part *participant, now time.Time, droppable bool) error {
	err := s.pipe.publish(ctx, msg, kind, part, now, droppable)
	if errors.Is(err, ErrTooLarge) {
		// Counted by the pipeline. The socket goes on: it is this message
		// alone that cannot be stored.
		s.r.warn.Warn("message not stored: too large for NATS once encoded", "kind", kind, "conn", s.id, "call", s.call, "err", err)
		return nil
	}
	if err != nil {
		s.r.m.dropped.WithLabelValues(dropBackpressure).Inc()
		if !droppable {
			s.r.warn.Warn("message dropped: JetStream is not keeping up", "kind", kind, "conn", s.id, "call", s.call, "err", err)
		}
	}
	return nil
}

// participant returns the state of raw, creating it on first sight.
func (s *socket) participant(raw []byte) (*participant, error) {
	if p, ok := s.parts[string(raw)]; ok {
		return p, nil
	}
	if !idFits(string(raw)) {
		return nil, fmt.Errorf("participant id of %d bytes, %d as a token", len(raw), codec.TokenLen(string(raw)))
	}
	if len(s.parts) >= s.r.cfg.MaxParticipants {
		return nil, fmt.Errorf("%w: more than %d on one socket", errTooManyParticipants, s.r.cfg.MaxParticipants)
	}
	if s.parts == nil {
		s.parts = make(map[string]*participant, 4)
	}
	id := string(raw)
	tok := codec.EncodeToken(id)
	p := &participant{raw: id, subject: s.r.subj.Audio(s.callTok, tok)}
	s.parts[id] = p
	return p, nil
}

func (s *socket) audio(ctx context.Context, a *acs.AudioData, now time.Time) error {
	if s.stream != codec.StreamAudio {
		return s.invalid(reasonNoMetadata, errors.New("AudioData before AudioMetadata"))
	}
	if len(a.PCM)%(2*s.channels) != 0 {
		return s.invalid(reasonPCMLength, fmt.Errorf("%d bytes for %d channels", len(a.PCM), s.channels))
	}
	p, err := s.participant(a.Participant)
	if errors.Is(err, errTooManyParticipants) {
		// The participants already on the socket are good: refuse this
		// one's frames, counted, without counting them towards closing the
		// socket for flooding (they come fifty a second).
		s.r.m.invalid.WithLabelValues(reasonParticipants).Inc()
		s.r.warn.Warn("refused ACS message", "reason", reasonParticipants, "err", err, "conn", s.id, "call", s.call, "remote", s.remote)
		return nil
	}
	if err != nil {
		return s.invalid(reasonBadID, err)
	}
	p.seq++
	ts := a.Timestamp
	if ts.IsZero() {
		ts = now
	}
	f := codec.Frame{V: codec.Version, Call: s.call, Participant: p.raw, Seq: p.seq, Timestamp: ts, ReceivedAt: now,
		SampleRate: s.sampleRate, Channels: s.channels, Encoding: codec.EncodingPCM16, Silent: a.Silent, Data: a.PCM}
	msg := s.pipe.newMsg(p.subject)
	msg.Data = codec.AppendFrame(msg.Data, &f)
	return s.publishMsg(ctx, msg, broker.KindAudio, p, now, true)
}

// needCall refuses a message that needs a call id before metadata gave one.
func (s *socket) needCall(kind string) error {
	if s.call == "" || !s.started {
		return s.invalid(reasonNoMetadata, fmt.Errorf("%s before metadata", kind))
	}
	return nil
}

func (s *socket) transcript(ctx context.Context, t *acs.TranscriptionData, now time.Time) error {
	if err := s.needCall("TranscriptionData"); err != nil {
		return err
	}
	if !idFits(t.Participant) {
		return s.invalid(reasonBadID, fmt.Errorf("participant id of %d bytes, %d as a token", len(t.Participant), codec.TokenLen(t.Participant)))
	}
	data, err := codec.Marshal(&codec.Transcript{V: codec.Version, Call: s.call, Participant: t.Participant, Text: t.Text, Format: t.Format,
		Confidence: t.Confidence, Offset: t.Offset, Duration: t.Duration, Words: words(t.Words), Final: t.Final, Sentiment: t.Sentiment,
		Language: t.Language, ReceivedAt: now})
	if err != nil {
		return err
	}
	return s.publish(ctx, s.r.subj.Transcript(s.callTok, codec.EncodeToken(t.Participant)), broker.KindTranscript, data, nil, now, false)
}

// words copies ACS's words into the payload's (an empty list, never nil:
// the payload's words key is always a list).
func words(ws []acs.Word) []codec.Word {
	out := make([]codec.Word, len(ws))
	for i, w := range ws {
		out[i] = codec.Word{Text: w.Text, Offset: w.Offset, Duration: w.Duration}
	}
	return out
}

func (s *socket) dtmf(ctx context.Context, d *acs.DtmfData, now time.Time) error {
	if err := s.needCall("DtmfData"); err != nil {
		return err
	}
	if !idFits(d.Participant) || len(d.Tone) > maxIDLen {
		return s.invalid(reasonBadID, errors.New("DTMF participant or tone too long"))
	}
	ts := d.Timestamp
	if ts.IsZero() {
		ts = now
	}
	data, err := codec.Marshal(&codec.Dtmf{V: codec.Version, Call: s.call, Participant: d.Participant, Tone: d.Tone, Timestamp: ts, ReceivedAt: now})
	if err != nil {
		return err
	}
	return s.publish(ctx, s.r.subj.Dtmf(s.callTok, codec.EncodeToken(d.Participant)), broker.KindDtmf, data, nil, now, false)
}
