package sim

import (
	"bufio"
	"context"
	"crypto/rand"
	"encoding/hex"
	"fmt"
	"net"
	"net/http"
	"net/url"
	"sort"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/gorilla/websocket"

	"github.com/audiofan/audiofan/codec/acs"
	"github.com/audiofan/audiofan/subscribers/speech"
)

// stream is one participant stream of a call (or the mixed one).
type stream struct {
	participant string // raw id, "" for mixed
	voice       *voice
	wav         *wavAudio
	sent        atomic.Uint64
}

// call is one simulated call: a media socket and, optionally, a transcription socket.
type call struct {
	id          string
	correlation string
	index       int
	streams     []*stream
	spurts      [][]spurt
	frames      int // frames per stream
	outAudio    atomic.Uint64
	outStop     atomic.Uint64
	transcripts atomic.Uint64
	dtmf        atomic.Uint64
	sockets     atomic.Int32 // sockets that sent their metadata
	mixVoices   []*voice     // a mixed synthetic call: the voices summed into its one stream
}

func randomHex(n int) string {
	b := make([]byte, n)
	_, _ = rand.Read(b)
	return hex.EncodeToString(b)
}

// participantID gives realistic raw ids of several shapes.
func participantID(call, i int) string {
	switch i % 3 {
	case 0:
		return fmt.Sprintf("8:acs:6a1f0c2e-1111-2222-3333-%012d_%08x", call, i)
	case 1:
		return fmt.Sprintf("4:+1425555%04d", (call*7+i)%10000)
	}
	return fmt.Sprintf("8:orgid:%08x-0000-4000-8000-%012d", i, call)
}

// bufConn batches a socket's writes so that the frames of one 20 ms tick go
// out in one syscall, as they would from ACS. Writes are serialised by
// gorilla; flush comes from the sender, hence the lock.
type bufConn struct {
	net.Conn
	mu sync.Mutex
	w  *bufio.Writer
}

func (c *bufConn) Write(p []byte) (int, error) {
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.w == nil {
		return c.Conn.Write(p)
	}
	return c.w.Write(p)
}

func (c *bufConn) flush() error {
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.w == nil {
		return nil
	}
	return c.w.Flush()
}

// dial opens a socket the way ACS does: its headers, and the secret (if any)
// in the query.
func (r *runner) dial(ctx context.Context, c *call) (*websocket.Conn, *bufConn, error) {
	u, _ := url.Parse(r.cfg.URL)
	if r.cfg.Secret != "" {
		q := u.Query()
		q.Set("token", r.cfg.Secret)
		u.RawQuery = q.Encode()
	}
	h := http.Header{}
	h.Set("x-ms-call-connection-id", c.id)
	h.Set("x-ms-call-correlation-id", c.correlation)
	if r.cfg.Bearer != "" {
		h.Set("Authorization", "Bearer "+r.cfg.Bearer)
	}
	var bc *bufConn
	d := websocket.Dialer{
		HandshakeTimeout: 10 * time.Second,
		TLSClientConfig:  r.tls,
		NetDialContext: func(ctx context.Context, network, addr string) (net.Conn, error) {
			conn, err := (&net.Dialer{}).DialContext(ctx, network, addr)
			if err != nil {
				return nil, err
			}
			bc = &bufConn{Conn: conn}
			return bc, nil
		},
	}
	ws, resp, err := d.DialContext(ctx, u.String(), h)
	if err != nil {
		if resp != nil {
			return nil, nil, fmt.Errorf("dial %s: receiver refused the upgrade: HTTP %s", redact(u), resp.Status)
		}
		return nil, nil, fmt.Errorf("dial %s: %w", redact(u), err)
	}
	if bc != nil {
		bc.mu.Lock()
		bc.w = bufio.NewWriterSize(bc.Conn, 16<<10)
		bc.mu.Unlock()
	}
	return ws, bc, nil
}

func redact(u *url.URL) string {
	s := u.String()
	if q := u.Query(); q.Get("token") != "" {
		s = strings.Replace(s, "token="+url.QueryEscape(q.Get("token")), "token=REDACTED", 1)
	}
	return s
}

// readBack counts what the receiver sends into the call (bidirectional mode)
// until the socket closes.
func (c *call) readBack(ws *websocket.Conn, done chan<- struct{}) {
	defer close(done)
	for {
		_, msg, err := ws.ReadMessage()
		if err != nil {
			return
		}
		if out, err := acs.ParseOutbound(msg); err == nil {
			if out.Kind == acs.OutboundStopAudio {
				c.outStop.Add(1)
			} else {
				c.outAudio.Add(1)
			}
		}
	}
}

// simSocket is one open socket of a call, with its reader of what the
// receiver sends back.
type simSocket struct {
	ws       *websocket.Conn
	bc       *bufConn
	readDone chan struct{}
}

func (r *runner) open(ctx context.Context, c *call) (*simSocket, error) {
	ws, bc, err := r.dial(ctx, c)
	if err != nil {
		return nil, err
	}
	s := &simSocket{ws: ws, bc: bc, readDone: make(chan struct{})}
	go c.readBack(ws, s.readDone)
	return s, nil
}

// send writes one text message (into the tick's batch).
func (s *simSocket) send(c *call, msg []byte) error {
	if err := s.ws.WriteMessage(websocket.TextMessage, msg); err != nil {
		return fmt.Errorf("call %s: send: %w", c.id, err)
	}
	return nil
}

// flush sends the tick's batch.
func (s *simSocket) flush(c *call) error {
	if s.bc == nil {
		return nil
	}
	if err := s.bc.flush(); err != nil {
		return fmt.Errorf("call %s: send: %w", c.id, err)
	}
	return nil
}

// close says goodbye as ACS does and waits for the receiver's close.
func (s *simSocket) close() {
	_ = s.ws.WriteControl(websocket.CloseMessage, websocket.FormatCloseMessage(websocket.CloseNormalClosure, ""), time.Now().Add(5*time.Second))
	if s.bc != nil {
		_ = s.bc.flush() // the close frame went into the batch
	}
	select {
	case <-s.readDone:
	case <-time.After(10 * time.Second):
	}
	_ = s.ws.Close()
}

// waitUntil sleeps until start+at when pacing in real time: an absolute
// schedule, so a late tick is not carried into the next. It reports false
// when ctx ends first.
func (r *runner) waitUntil(ctx context.Context, start time.Time, at time.Duration) bool {
	if !r.cfg.Realtime {
		return ctx.Err() == nil
	}
	wait := time.Until(start.Add(at))
	if wait <= 0 {
		return ctx.Err() == nil
	}
	t := time.NewTimer(wait)
	defer t.Stop()
	select {
	case <-ctx.Done():
		return false
	case <-t.C:
		return true
	}
}

// media streams the call's audio (and DTMF) on its media socket.
func (r *runner) media(ctx context.Context, c *call) error {
	sock, err := r.open(ctx, c)
	if err != nil {
		return err
	}
	defer sock.close()
	if err := sock.send(c, acs.AppendAudioMetadata(nil, "sub-"+c.id, r.cfg.Rate)); err != nil {
		return err
	}
	c.sockets.Add(1)

	size := r.cfg.Rate / 50 * 2
	pcm := make([]byte, size)
	var voices [][]byte
	if r.cfg.Mixed && len(r.cfg.WAV) == 0 {
		voices = make([][]byte, r.cfg.Participants)
		for i := range voices {
			voices[i] = make([]byte, size)
		}
	}
	var buf []byte
	start := time.Now()
	tones := "0123456789*#"
	for k := 0; k < c.frames; k++ {
		at := time.Duration(k) * speech.SlotDur
		if !r.waitUntil(ctx, start, at) {
			return nil
		}
		for _, s := range c.streams {
			silent := r.render(c, s, pcm, voices, k, at)
			// The capture timestamp is the send time: the verifier's latency.
			buf = acs.AppendAudioData(buf[:0], time.Now(), s.participant, pcm, silent)
			if err := sock.send(c, buf); err != nil {
				return err
			}
			s.sent.Add(1)
			r.framesSent.Add(1)
		}
		if r.cfg.DTMF && k > 0 && k%250 == 0 {
			buf = acs.AppendDtmf(buf[:0], time.Now(), c.streams[0].participant, string(tones[(k/250)%len(tones)]))
			if err := sock.send(c, buf); err != nil {
				return err
			}
			c.dtmf.Add(1)
		}
		if err := sock.flush(c); err != nil {
			return err
		}
	}
	return nil
}

// render fills pcm with stream s's frame k and reports whether it is silent.
// A WAV file played once is followed by silence until the call ends, as ACS
// keeps sending (silent) frames.
func (r *runner) render(c *call, s *stream, pcm []byte, voices [][]byte, k int, at time.Duration) bool {
	switch {
	case s.wav != nil:
		return s.wav.frame(pcm, k, r.cfg.Duration > 0)
	case s.voice != nil:
		return s.voice.frame(pcm, at)
	}
	silent := true
	for i, v := range c.mixVoices {
		if !v.frame(voices[i], at) {
			silent = false
		}
	}
	mix(pcm, voices)
	return silent
}

// transcription streams intermediate and final results of each talk spurt
// on the call's transcription socket.
func (r *runner) transcription(ctx context.Context, c *call) error {
	sock, err := r.open(ctx, c)
	if err != nil {
		return err
	}
	defer sock.close()
	if err := sock.send(c, acs.EncodeTranscriptionMetadata("tsub-"+c.id, c.id, c.correlation, "en-US")); err != nil {
		return err
	}
	c.sockets.Add(1)
	type event struct {
		at  time.Duration
		msg []byte
	}
	var events []event
	words := strings.Fields("so the thing is we can ship it next week if the tests pass and the numbers hold up")
	for p, spurts := range c.spurts {
		part := ""
		if !r.cfg.Mixed {
			part = c.streams[p].participant
		}
		for si, sp := range spurts {
			n := 0
			for at := sp.start + 500*time.Millisecond; at <= sp.end; at += 500 * time.Millisecond {
				n++
				final := at+500*time.Millisecond > sp.end
				var ws []acs.Word
				for w := 0; w < n && w < len(words); w++ {
					off := int64(sp.start/100) + int64(w)*4_000_000
					ws = append(ws, acs.Word{Text: words[(si+w)%len(words)], Offset: off, Duration: 3_500_000})
				}
				text := make([]string, len(ws))
				for i, w := range ws {
					text[i] = w.Text
				}
				events = append(events, event{at, acs.EncodeTranscriptionData(acs.TranscriptionData{
					Text: strings.Join(text, " "), Format: "display", Confidence: 0.9, Offset: int64(sp.start / 100),
					Duration: int64((at - sp.start) / 100), Words: ws, Participant: part, Final: final})})
			}
		}
	}
	sort.SliceStable(events, func(i, j int) bool { return events[i].at < events[j].at })
	start := time.Now()
	for _, e := range events {
		if e.at >= time.Duration(c.frames)*speech.SlotDur {
			break
		}
		if !r.waitUntil(ctx, start, e.at) {
			return nil
		}
		if err := sock.send(c, e.msg); err != nil {
			return err
		}
		c.transcripts.Add(1)
		if err := sock.flush(c); err != nil {
			return err
		}
	}
	return nil
}
