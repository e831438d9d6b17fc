package receiver

import (
	"net"
	"sync"
	"time"

	"golang.org/x/time/rate"
)

// ipLimiter bounds how fast one address may open sockets. ACS connects from
// a few Azure addresses for many calls, so the limit is generous; it is
// there to blunt a flood from one host, not to meter ACS.
type ipLimiter struct {
	rate  rate.Limit
	burst int
	mu    sync.Mutex
	ips   map[string]*ipEntry
	swept time.Time
}

type ipEntry struct {
	lim  *rate.Limiter
	seen time.Time
}

// maxTrackedIPs bounds the table against a flood from many addresses: past
// it, idle entries are swept at once.
const maxTrackedIPs = 100_000

func newIPLimiter(perSecond float64, burst int) *ipLimiter {
	if perSecond <= 0 {
		return nil
	}
	return &ipLimiter{rate: rate.Limit(perSecond), burst: max(burst, 1), ips: map[string]*ipEntry{}}
}

// allow reports whether remote (host:port) may open a socket now. A nil
// limiter allows everything.
func (l *ipLimiter) allow(remote string, now time.Time) bool {
	if l == nil {
		return true
	}
	host, _, err := net.SplitHostPort(remote)
	if err != nil {
		host = remote
	}
	l.mu.Lock()
	defer l.mu.Unlock()
	if now.Sub(l.swept) > time.Minute || len(l.ips) >= maxTrackedIPs {
		l.sweep(now)
	}
	e := l.ips[host]
	if e == nil {
		e = &ipEntry{lim: rate.NewLimiter(l.rate, l.burst)}
		l.ips[host] = e
	}
	e.seen = now
	return e.lim.AllowN(now, 1)
}

// sweep forgets addresses idle long enough for their bucket to be full again.
func (l *ipLimiter) sweep(now time.Time) {
	l.swept = now
	idle := time.Duration(float64(l.burst)/float64(l.rate)*float64(time.Second)) + time.Second
	for ip, e := range l.ips {
		if now.Sub(e.seen) > idle {
			delete(l.ips, ip)
		}
	}
}
