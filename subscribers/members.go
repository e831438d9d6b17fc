package subscribers

import (
	"cmp"
	"context"
	"encoding/binary"
	"fmt"
	"hash/fnv"
	"slices"
	"strings"
	"sync"
	"time"

	"github.com/nats-io/nats.go"
)

// Membership: a role's replicas find each other by heartbeats on core NATS,
// not by JetStream objects (nothing to create, store or replicate). Each
// replica publishes "up <id>" every lease/4 on MembersSubject and listens to
// the others; one not heard from for a lease is gone. A replica stopping says
// "down <id>", so the others take its partitions at once instead of after a
// lease. Every replica computes the same assignment from the same members;
// while views differ for a moment, the partition consumers' pins still keep a
// partition with one replica at a time. "redrive" on the same subject (from
// `audiofan redrive`) has every replica re-drive its parked calls now.

// MembersSubject is the core NATS subject a role's replicas announce
// themselves on (outside the stream's prefix: nothing stores it).
func MembersSubject(stream, role string) string { return "audiofan.group." + stream + "." + role }

type members struct {
	subject string
	self    string
	lease   time.Duration
	redrive func() // an operator asked for the parked calls to be re-driven

	mu      sync.Mutex
	seen    map[string]time.Time // replica id → when last heard (this host's clock)
	changed chan struct{}        // a member came or went
	// joined closes once this replica is subscribed and its first "up" is
	// through the server: from then, the others' answers are on their way.
	joined chan struct{}
}

func newMembers(subject, self string, lease time.Duration, redrive func()) *members {
	return &members{subject: subject, self: self, lease: lease, redrive: redrive, seen: map[string]time.Time{self: time.Now()},
		changed: make(chan struct{}, 1), joined: make(chan struct{})}
}

// run announces this replica until ctx ends, then says it is going.
func (m *members) run(ctx context.Context, nc *nats.Conn) error {
	var joinOnce sync.Once
	join := func() { joinOnce.Do(func() { close(m.joined) }) }
	defer join() // failed to subscribe: nobody to wait for
	sub, err := nc.Subscribe(m.subject, func(msg *nats.Msg) {
		if string(msg.Data) == redriveRequest {
			if m.redrive != nil {
				m.redrive()
			}
			return
		}
		state, id, ok := strings.Cut(string(msg.Data), " ")
		if !ok || id == "" || id == m.self {
			return
		}
		m.mu.Lock()
		_, known := m.seen[id]
		if state == "down" {
			delete(m.seen, id)
		} else {
			m.seen[id] = time.Now()
		}
		m.mu.Unlock()
		if known != (state != "down") {
			m.signal()
			if !known {
				// A newcomer learns of us now rather than a period later.
				_ = nc.Publish(m.subject, []byte("up "+m.self))
			}
		}
	})
	if err != nil {
		return err
	}
	defer func() { _ = sub.Unsubscribe() }()
	_ = nc.Publish(m.subject, []byte("up "+m.self))
	// The flush's round trip: the subscription is in place and the "up"
	// with the server, so every live replica answers now (see above).
	_ = nc.FlushTimeout(m.lease / 4)
	join()
	t := time.NewTicker(m.lease / 4)
	defer t.Stop()
	for {
		select {
		case <-ctx.Done():
			_ = nc.Publish(m.subject, []byte("down "+m.self))
			_ = nc.Flush()
			return nil
		case <-t.C:
		}
		_ = nc.Publish(m.subject, []byte("up "+m.self))
		m.mu.Lock()
		gone := false
		for id, at := range m.seen {
			if id != m.self && time.Since(at) > m.lease {
				delete(m.seen, id)
				gone = true
			}
		}
		m.mu.Unlock()
		if gone {
			m.signal()
		}
	}
}

// redriveRequest is the word on a role's members subject that re-drives
// its parked calls.
const redriveRequest = "redrive"

// AskRedrive asks every replica of role on stream to re-drive its parked
// calls now (after a repair), instead of at their next backoff. It needs the
// right to publish the role's members subject, which the role's own NATS
// user has.
func AskRedrive(nc *nats.Conn, stream, role string) error {
	if err := nc.Publish(MembersSubject(stream, role), []byte(redriveRequest)); err != nil {
		return fmt.Errorf("ask %s to re-drive: %w", role, err)
	}
	return nc.Flush()
}

func (m *members) signal() {
	select {
	case m.changed <- struct{}{}:
	default:
	}
}

// list returns the live members (AssignPartitions orders them itself).
func (m *members) list() []string {
	m.mu.Lock()
	defer m.mu.Unlock()
	ids := make([]string, 0, len(m.seen))
	for id := range m.seen {
		ids = append(ids, id)
	}
	return ids
}

// AssignPartitions gives each of n partitions an owner among members: by rendezvous
// hashing, so a member coming or going moves few partitions, capped at
// ceil(n/len(members)) each, so the load is even. Every replica computes the
// same answer from the same members.
func AssignPartitions(n int, members []string) []string {
	owners := make([]string, n)
	if len(members) == 0 {
		return owners
	}
	members = slices.Sorted(slices.Values(members)) // any order of the same members gives the same answer
	capacity := (n + len(members) - 1) / len(members)
	// Every (partition, member) pair by its score, best first; each pair is
	// taken while the partition is free and the member under its cap. The
	// strongest preferences are honoured first, so a change of members
	// moves little more than the share that has to move.
	type pair struct {
		p     int
		id    string
		score uint64
	}
	pairs := make([]pair, 0, n*len(members))
	var buf [8]byte
	for p := range n {
		for _, id := range members {
			h := fnv.New64a()
			_, _ = h.Write([]byte(id))
			binary.BigEndian.PutUint64(buf[:], uint64(p))
			_, _ = h.Write(buf[:])
			pairs = append(pairs, pair{p, id, mix(h.Sum64())})
		}
	}
	slices.SortFunc(pairs, func(a, b pair) int {
		if c := cmp.Compare(b.score, a.score); c != 0 {
			return c
		}
		if c := cmp.Compare(a.p, b.p); c != 0 {
			return c
		}
		return strings.Compare(a.id, b.id)
	})
	count := make(map[string]int, len(members))
	left := n
	for _, pr := range pairs {
		if left == 0 {
			break
		}
		if owners[pr.p] == "" && count[pr.id] < capacity {
			owners[pr.p] = pr.id
			count[pr.id]++
			left--
		}
	}
	return owners
}

// mix spreads FNV's output over all 64 bits (its low bits correlate for
// keys that differ in their last bytes).
func mix(x uint64) uint64 {
	x ^= x >> 33
	x *= 0xff51afd7ed558ccd
	x ^= x >> 33
	x *= 0xc4ceb9fe1a85ec53
	x ^= x >> 33
	return x
}
