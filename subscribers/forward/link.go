package forward

import (
	"context"
	"errors"
	"fmt"
	"math/rand/v2"
	"net/http"
	"os"
	"strings"
	"sync"
	"time"

	"github.com/gorilla/websocket"

	"github.com/audiofan/audiofan/codec/acs"
)

// item is one message for a target, as ACS would send it.
type item struct {
	kind   Kind
	data   []byte
	stored time.Time // when the bus stored what it was made from
}

// link is a call's socket to one target: a bounded queue the call's
// handler pushes to without waiting, and a goroutine that dials, writes
// the queue and redials when the socket is lost.
type link struct {
	f   *Forwarder
	c   *call
	t   *Target
	m   *targetMetrics
	ctx context.Context // ends when the socket must close at once (the call handed over)

	cancel context.CancelFunc
	wake   chan struct{}

	mu     sync.Mutex
	q      []item // a ring of AUDIOFAN_FORWARD_BUFFER: n items from head
	head   int
	n      int
	ending bool // the call ended: write what is queued, then close normally
}

// redialMin is the first wait before a redial; it doubles up to
// AUDIOFAN_FORWARD_REDIAL_MAX.
const redialMin = 250 * time.Millisecond

// open starts the socket of call c to target t.
func (f *Forwarder) open(c *call, t *Target, m *targetMetrics) *link {
	ctx, cancel := context.WithCancel(context.Background())
	l := &link{f: f, c: c, t: t, m: m, ctx: ctx, cancel: cancel, wake: make(chan struct{}, 1), q: make([]item, f.cfg.Buffer)}
	f.wg.Go(l.run)
	return l
}

// push queues it; a full queue (the target slower than the call) loses its
// oldest message.
func (l *link) push(it item) {
	l.mu.Lock()
	dropped := l.n == len(l.q)
	if dropped {
		l.q[l.head] = item{}
		l.head = (l.head + 1) % len(l.q)
		l.n--
	}
	l.q[(l.head+l.n)%len(l.q)] = it
	l.n++
	l.mu.Unlock()
	if dropped {
		l.m.droppedSlow.Inc()
		l.f.warn.Warn("target too slow: its oldest queued message dropped", "target", l.t.Name, "call", l.c.info.ID, "queue", len(l.q))
	}
	l.signal()
}

func (l *link) signal() {
	select {
	case l.wake <- struct{}{}:
	default:
	}
}

// finish has the socket write what is queued and close normally.
func (l *link) finish() {
	l.mu.Lock()
	l.ending = true
	l.mu.Unlock()
	l.signal()
}

// abort closes the socket at once.
func (l *link) abort() { l.cancel() }

// take returns what is queued, and whether the call has ended.
func (l *link) take(into []item) ([]item, bool) {
	l.mu.Lock()
	defer l.mu.Unlock()
	into = into[:0]
	for ; l.n > 0; l.n-- {
		into = append(into, l.q[l.head])
		l.q[l.head] = item{}
		l.head = (l.head + 1) % len(l.q)
	}
	return into, l.ending
}

// dropQueued drops what was queued while the socket was down: a new socket
// starts at live audio, not minutes behind.
func (l *link) dropQueued() {
	l.mu.Lock()
	n := l.n
	clear(l.q)
	l.head, l.n = 0, 0
	l.mu.Unlock()
	if n > 0 {
		l.m.droppedDown.Add(float64(n))
	}
}

func (l *link) isEnding() bool {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.ending
}

// run dials the target, writes to it until the call ends, and redials
// with backoff and jitter whenever a dial fails or the socket is lost.
func (l *link) run() {
	defer l.cancel()
	wait, first := redialMin, true
	for l.ctx.Err() == nil {
		conn, err := l.dial()
		if err != nil {
			l.m.dialErrs.Inc()
			l.f.warn.Warn("target not reachable; redialling", "target", l.t.Name, "call", l.c.info.ID, "in", wait, "err", err)
			if l.isEnding() {
				l.dropQueued() // the call is over and the target was never there for its end
				return
			}
			// Jitter: the sockets of many calls lost at once do not
			// redial together.
			sleep(l.ctx, wait/2+rand.N(wait))
			wait = min(2*wait, l.f.cfg.RedialMax)
			l.m.redials.Inc()
			continue
		}
		if !first {
			l.dropQueued()
		}
		first, wait = false, redialMin
		l.m.open.Inc()
		err = l.serve(conn)
		l.m.open.Dec()
		if err == nil {
			return
		}
		l.f.warn.Warn("socket to target lost; redialling", "target", l.t.Name, "call", l.c.info.ID, "err", err)
		l.m.redials.Inc()
	}
}

// dial opens the socket with the headers ACS sends (its call connection
// and correlation ids) and the target's own Authorization, read now.
func (l *link) dial() (*websocket.Conn, error) {
	m := l.c.meta.Load()
	h := http.Header{}
	h.Set("x-ms-call-connection-id", l.c.info.ID)
	if m.correlationID != "" {
		h.Set("x-ms-call-correlation-id", m.correlationID)
	}
	h.Set("User-Agent", "audiofan-forwarder")
	switch {
	case l.t.TokenFile != "":
		tok, err := readSecret(l.t.TokenFile)
		if err != nil {
			return nil, err
		}
		h.Set("Authorization", "Bearer "+tok)
	case l.t.AuthFile != "":
		v, err := readSecret(l.t.AuthFile)
		if err != nil {
			return nil, err
		}
		h.Set("Authorization", v)
	}
	ctx, cancel := context.WithTimeout(l.ctx, l.f.cfg.DialTimeout)
	defer cancel()
	conn, resp, err := l.f.dialer.DialContext(ctx, l.t.URL, h)
	if resp != nil && resp.Body != nil {
		_ = resp.Body.Close()
	}
	if err != nil {
		if resp != nil {
			return nil, fmt.Errorf("upgrade refused: %s: %w", resp.Status, err)
		}
		return nil, err
	}
	return conn, nil
}

// readSecret reads a secret file; what it holds is never logged.
func readSecret(path string) (string, error) {
	b, err := os.ReadFile(path)
	if err != nil {
		return "", fmt.Errorf("target credentials: %w", err)
	}
	s := strings.TrimSpace(string(b))
	if s == "" || strings.ContainsAny(s, "\r\n") {
		return "", fmt.Errorf("target credentials %s: empty, or more than one line", path)
	}
	return s, nil
}

// errPeerGone: the target closed its socket, or it failed under the reader.
var errPeerGone = errors.New("the target closed the socket")

// serve writes the queue to conn, each socket's metadata first, until the
// call ends (nil: closed normally) or the socket fails.
func (l *link) serve(conn *websocket.Conn) error {
	defer conn.Close()
	// Handed over: a write blocked on a stalled target ends now, not at
	// its deadline.
	defer context.AfterFunc(l.ctx, func() { _ = conn.NetConn().SetWriteDeadline(time.Now()) })()
	readerDone := make(chan struct{})
	go func() {
		defer close(readerDone)
		l.readBack(conn)
	}()
	var audioMeta, transcriptMeta bool
	write := func(data []byte) error {
		_ = conn.SetWriteDeadline(time.Now().Add(l.f.cfg.WriteTimeout))
		if err := conn.WriteMessage(websocket.TextMessage, data); err != nil {
			return err
		}
		l.m.sent.Inc()
		return nil
	}
	var batch []item
	for {
		var ending bool
		batch, ending = l.take(batch)
		for _, it := range batch {
			m := l.c.meta.Load()
			switch {
			case (it.kind == KindAudio || it.kind == KindDtmf) && !audioMeta:
				// ACS's audio socket opens with AudioMetadata; its DTMF
				// tones come on that socket too.
				if err := write(acs.AppendAudioMetadata(nil, subscription(m.subscriptionID, l.c.info.ID), m.sampleRate)); err != nil {
					return err
				}
				audioMeta = true
			case it.kind == KindTranscript && !transcriptMeta:
				if err := write(acs.EncodeTranscriptionMetadata(subscription(m.transcriptionID, l.c.info.ID), l.c.info.ID, m.correlationID, "")); err != nil {
					return err
				}
				transcriptMeta = true
			}
			if err := write(it.data); err != nil {
				return err
			}
			if !it.stored.IsZero() {
				l.m.latency.Observe(time.Since(it.stored).Seconds())
			}
		}
		clear(batch)
		if ending && len(batch) == 0 {
			_ = conn.WriteControl(websocket.CloseMessage, websocket.FormatCloseMessage(websocket.CloseNormalClosure, "call ended"),
				time.Now().Add(l.f.cfg.WriteTimeout))
			select { // the target's close in answer, briefly
			case <-readerDone:
			case <-time.After(time.Second):
			}
			return nil
		}
		if len(batch) > 0 {
			continue // more may have come while writing
		}
		select {
		case <-l.wake:
		case <-readerDone:
			return errPeerGone
		case <-l.ctx.Done():
			_ = conn.WriteControl(websocket.CloseMessage, websocket.FormatCloseMessage(websocket.CloseGoingAway, "call moved to another replica"),
				time.Now().Add(time.Second))
			return nil
		}
	}
}

// subscription is the id put in a metadata message: the one ACS gave the
// stream, or the call's when the lifecycle did not say.
func subscription(id, call string) string {
	if id != "" {
		return id
	}
	return call
}

func sleep(ctx context.Context, d time.Duration) {
	t := time.NewTimer(d)
	defer t.Stop()
	select {
	case <-ctx.Done():
	case <-t.C:
	}
}
