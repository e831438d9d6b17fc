package receiver

import (
	"bufio"
	"io"
	"net"
	"net/http"
	"sync"
	"syscall"
)

// lazyBufSize is what one read syscall may take in: about four ACS frames.
// Larger buffers buy little: a real-time socket has one frame waiting.
const lazyBufSize = 4 << 10

var lazyBufs = sync.Pool{New: func() any { b := make([]byte, lazyBufSize); return &b }}

// lazyConn is a net.Conn whose reads borrow a buffer from a pool only while
// bytes are buffered. Waiting for data holds no buffer: it waits for the
// socket to be readable (RawConn.Read) and only then reads. A thousand idle
// ACS sockets thus hold no read buffers at all, while a busy one still takes
// in many frames per syscall.
type lazyConn struct {
	net.Conn
	raw  syscall.RawConn
	buf  *[]byte
	r, w int
}

func (c *lazyConn) Read(p []byte) (int, error) {
	if c.buf == nil {
		var n int
		var rerr error
		err := c.raw.Read(func(fd uintptr) bool {
			b := lazyBufs.Get().(*[]byte)
			n, rerr = syscall.Read(int(fd), *b)
			if rerr == syscall.EAGAIN || rerr == syscall.EINTR {
				lazyBufs.Put(b)
				return false // wait until readable, holding nothing
			}
			c.buf = b
			return true
		})
		if err == nil && rerr == nil && n <= 0 {
			err = io.EOF
		}
		if err == nil {
			err = rerr
		}
		if err != nil {
			c.release()
			return 0, err
		}
		c.r, c.w = 0, n
	}
	n := copy(p, (*c.buf)[c.r:c.w])
	c.r += n
	if c.r == c.w {
		c.release()
	}
	return n, nil
}

func (c *lazyConn) release() {
	if c.buf != nil {
		lazyBufs.Put(c.buf)
		c.buf = nil
	}
}

// lazyHijacker hands the WebSocket upgrader a lazyConn in place of the raw
// connection, where the connection allows it (a TCP socket, not TLS).
type lazyHijacker struct {
	http.ResponseWriter
}

func (h lazyHijacker) Hijack() (net.Conn, *bufio.ReadWriter, error) {
	c, brw, err := http.NewResponseController(h.ResponseWriter).Hijack()
	if err != nil || brw.Reader.Buffered() > 0 {
		// Bytes already read past the request stay in brw, which the
		// upgrader refuses anyway ("client sent data before handshake").
		return c, brw, err
	}
	sc, ok := c.(syscall.Conn)
	if !ok {
		return c, brw, nil
	}
	raw, err := sc.SyscallConn()
	if err != nil {
		return c, brw, nil
	}
	return &lazyConn{Conn: c, raw: raw}, brw, nil
}
