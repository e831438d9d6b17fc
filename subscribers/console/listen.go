package console

import (
	"encoding/binary"
	"encoding/json"
	"math"
	"net/http"
	"strings"
	"sync"
	"time"

	"github.com/gorilla/websocket"
	"github.com/nats-io/nats.go"

	"github.com/audiofan/audiofan/codec"
	"github.com/audiofan/audiofan/subscribers/speech"
)

// Listening in: the browser opens a WebSocket per call (and participant, or
// all of them) and receives the live frames, every 20 ms those that came in
// meanwhile as one binary message: each frame is its length (uint32
// little-endian) and then
//
//	bytes 0-7   capture time, ms since the Unix epoch, float64 little-endian
//	bytes 8-11  sample rate, uint32 little-endian
//	bytes 12-13 participant index (from the "participant" text messages)
//	bytes 14-15 channels
//	bytes 16-   16-bit little-endian PCM as ACS sent it
//
// and a text message {"type":"participant","index":i,"id":...,"token":...}
// before a participant's first frame. The page schedules every frame at its
// capture time plus a jitter delay, so participants play together (Web
// Audio sums what plays at once) and a late frame is dropped, not queued.
const (
	listenHeader = 16
	listenQueue  = 256 // frames waiting for one browser: a second of a five-party call
	listenBatch  = 20 * time.Millisecond
)

var upgrader = websocket.Upgrader{
	ReadBufferSize:  1024,
	WriteBufferSize: 8192,
	// The default origin check stays: only the console's own pages may
	// open a socket that carries call audio with the browser's credentials.
}

// hub shares one NATS subscription to a call's audio among its listeners.
type hub struct {
	c     *Console
	tok   codec.Token
	sub   *nats.Subscription
	mu    sync.Mutex
	lis   map[*listener]struct{}
	index map[codec.Token]int // participant token -> index
	ids   []string
	toks  []codec.Token
	// clock places frames as the call's other timelines do, so a wild
	// timestamp does not make a browser schedule audio years away.
	clock speech.Clock
}

type listener struct {
	part  codec.Token // participant token, "" for all
	out   chan listenMsg
	parts int // participants announced to this listener
}

type listenMsg struct {
	text bool
	b    []byte
}

func (c *Console) listen(tok codec.Token, l *listener) (*hub, error) {
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.hubs == nil {
		c.hubs = map[codec.Token]*hub{}
	}
	h := c.hubs[tok]
	if h == nil {
		h = &hub{c: c, tok: tok, lis: map[*listener]struct{}{}, index: map[codec.Token]int{}}
		sub, err := c.d.NC.Subscribe(c.index.subjects().Live(c.pub.Audio(tok, "*")), h.frame)
		if err == nil {
			// The server knows the subscription before the page is told
			// it is listening.
			err = c.d.NC.Flush()
		}
		if err != nil {
			if sub != nil {
				_ = sub.Unsubscribe()
			}
			return nil, err
		}
		h.sub = sub
		c.hubs[tok] = h
	}
	h.mu.Lock()
	h.lis[l] = struct{}{}
	h.mu.Unlock()
	return h, nil
}

func (c *Console) unlisten(h *hub, l *listener) {
	c.mu.Lock()
	defer c.mu.Unlock()
	h.mu.Lock()
	delete(h.lis, l)
	last := len(h.lis) == 0
	h.mu.Unlock()
	if last && c.hubs[h.tok] == h {
		delete(c.hubs, h.tok)
		_ = h.sub.Unsubscribe()
	}
}

func (h *hub) frame(m *nats.Msg) {
	var f codec.Frame
	if err := codec.UnmarshalFrame(m.Data, &f); err != nil {
		return
	}
	ptok := codec.Token(m.Subject[strings.LastIndexByte(m.Subject, '.')+1:])
	h.mu.Lock()
	defer h.mu.Unlock()
	i, ok := h.index[ptok]
	if !ok {
		i = len(h.ids)
		h.index[ptok] = i
		h.ids, h.toks = append(h.ids, f.Participant), append(h.toks, ptok)
	}
	b := make([]byte, listenHeader+len(f.Data))
	at := h.clock.Place(f.Participant, f.Timestamp, f.ReceivedAt)
	binary.LittleEndian.PutUint64(b[0:], math.Float64bits(float64(at.UnixMicro())/1000))
	binary.LittleEndian.PutUint32(b[8:], uint32(f.SampleRate))
	binary.LittleEndian.PutUint16(b[12:], uint16(i))
	binary.LittleEndian.PutUint16(b[14:], uint16(max(f.Channels, 1)))
	copy(b[listenHeader:], f.Data)
	for l := range h.lis {
		if l.part != "" && l.part != ptok {
			continue
		}
		for ; l.parts < len(h.ids); l.parts++ {
			ann, _ := json.Marshal(map[string]any{"type": "participant", "index": l.parts, "id": h.ids[l.parts],
				"token": h.toks[l.parts]})
			if !h.push(l, listenMsg{text: true, b: ann}) {
				break
			}
		}
		if l.parts == len(h.ids) {
			h.push(l, listenMsg{b: b})
		}
	}
}

// push queues a message for a listener without waiting: a browser that
// cannot keep up loses frames (it would play them too late anyway).
func (h *hub) push(l *listener, m listenMsg) bool {
	select {
	case l.out <- m:
		return true
	default:
		h.c.m.dropped.WithLabelValues("listen").Inc()
		return false
	}
}

// serveListen streams a call's live audio to the browser.
func (c *Console) serveListen(w http.ResponseWriter, r *http.Request) {
	tok := codec.Token(r.PathValue("call"))
	if _, ok := c.index.view(tok, time.Now()); !ok {
		http.Error(w, "no such call", http.StatusNotFound)
		return
	}
	// Subscribed before the upgrade completes: once the page has its
	// socket, no frame published after that is missed.
	l := &listener{part: codec.Token(r.URL.Query().Get("participant")), out: make(chan listenMsg, listenQueue)}
	h, err := c.listen(tok, l)
	if err != nil {
		c.warn.Warn("console: cannot listen", "call", tok, "err", err)
		http.Error(w, "bus unavailable", http.StatusServiceUnavailable)
		return
	}
	defer c.unlisten(h, l)
	ws, err := upgrader.Upgrade(w, r, nil)
	if err != nil {
		return // the upgrader answered
	}
	defer ws.Close()
	c.m.pages.WithLabelValues("listen").Inc()
	defer c.m.pages.WithLabelValues("listen").Dec()

	// The page sends nothing; reading notices it close.
	gone := make(chan struct{})
	go func() {
		defer close(gone)
		ws.SetReadLimit(1024)
		for {
			if _, _, err := ws.ReadMessage(); err != nil {
				return
			}
		}
	}()
	ping := time.NewTicker(20 * time.Second)
	defer ping.Stop()
	batch := time.NewTicker(listenBatch)
	defer batch.Stop()
	done := c.runCtx().Done()
	var buf []byte
	for {
		select {
		case <-gone:
			return
		case <-done:
			_ = ws.WriteControl(websocket.CloseMessage, websocket.FormatCloseMessage(websocket.CloseGoingAway, "console stopping"),
				time.Now().Add(time.Second))
			return
		case <-ping.C:
			if err := ws.WriteControl(websocket.PingMessage, nil, time.Now().Add(5*time.Second)); err != nil {
				return
			}
		case <-batch.C:
			var err error
			if buf, err = writeBatch(ws, l.out, buf[:0]); err != nil {
				return
			}
		}
	}
}

// writeBatch writes what the listener's queue holds: its frames as one
// binary message (each with its length in front), a participant's
// announcement as a text message in its place. A frame a tick costs a
// participant one write; a batch costs all of them one.
func writeBatch(ws *websocket.Conn, out <-chan listenMsg, buf []byte) ([]byte, error) {
	flush := func() error {
		if len(buf) == 0 {
			return nil
		}
		_ = ws.SetWriteDeadline(time.Now().Add(5 * time.Second))
		err := ws.WriteMessage(websocket.BinaryMessage, buf)
		buf = buf[:0]
		return err
	}
	for {
		select {
		case m := <-out:
			if !m.text {
				buf = binary.LittleEndian.AppendUint32(buf, uint32(len(m.b)))
				buf = append(buf, m.b...)
				continue
			}
			if err := flush(); err != nil {
				return buf, err
			}
			_ = ws.SetWriteDeadline(time.Now().Add(5 * time.Second))
			if err := ws.WriteMessage(websocket.TextMessage, m.b); err != nil {
				return buf, err
			}
		default:
			return buf, flush()
		}
	}
}
