package console

import (
	"context"
	"net/http"
	"slices"
	"strconv"
	"strings"
	"sync"
	"time"

	"github.com/audiofan/audiofan/broker"
	"github.com/audiofan/audiofan/subscribers"
)

// Health is the bus as the console sees it.
type Health struct {
	At        time.Time      `json:"at"`
	Error     string         `json:"error,omitempty"`
	Stream    StreamHealth   `json:"stream"`
	Roles     []RoleHealth   `json:"roles"`
	Receivers map[string]int `json:"receivers"` // open calls per receiver instance
	NATS      string         `json:"nats"`
}

// StreamHealth is the bus's size against its limits: over its shards when
// it has several (Leader then lists each shard's).
type StreamHealth struct {
	Name      string `json:"name"`
	Shards    int    `json:"shards"`
	Messages  uint64 `json:"messages"`
	Bytes     uint64 `json:"bytes"`
	MaxBytes  int64  `json:"maxBytes"`
	Replicas  int    `json:"replicas"`
	Consumers int    `json:"consumers"`
	Leader    string `json:"leader,omitempty"`
}

// RoleHealth is one subscriber role's partition consumers: how many there
// are, how many a replica holds, and the messages not yet delivered or not
// yet acknowledged.
type RoleHealth struct {
	Role       string `json:"role"`
	Present    bool   `json:"present"`
	Partitions int    `json:"partitions"`
	Held       int    `json:"held"` // partitions pinned to a replica
	Lag        uint64 `json:"lag"`
	InFlight   int    `json:"inFlight"` // delivered, not yet acknowledged
}

// healthCache keeps the last look for a few seconds: listing the roles'
// consumers is a paged request, not one for every page's poll.
type healthCache struct {
	mu   sync.Mutex
	last Health
}

const healthEvery = 3 * time.Second

func (c *Console) serveHealth(w http.ResponseWriter, r *http.Request) {
	c.health.mu.Lock()
	defer c.health.mu.Unlock()
	if time.Since(c.health.last.At) > healthEvery {
		ctx, cancel := context.WithTimeout(r.Context(), 5*time.Second)
		c.health.last = c.lookHealth(ctx)
		cancel()
	}
	writeJSON(w, c.health.last)
}

func (c *Console) lookHealth(ctx context.Context) Health {
	h := Health{At: time.Now(), Receivers: c.index.receivers(), NATS: c.d.NC.Status().String()}
	bus, err := broker.FindBus(ctx, c.d.JS, c.d.Stream)
	if err != nil {
		h.Error = "stream " + c.d.Stream.Name + ": " + err.Error()
		return h
	}
	h.Stream = StreamHealth{Name: bus.Layout.String(), Shards: bus.Layout.Shards, Replicas: bus.Config().Replicas}
	if !bus.Layout.Sharded() {
		h.Stream.Name = c.d.Stream.Name
	}
	roles := map[string]*RoleHealth{}
	for _, name := range c.d.Roles {
		roles[name] = &RoleHealth{Role: name}
	}
	var leaders []string
	for _, s := range bus.Shards() {
		info, err := s.Info(ctx)
		if err != nil {
			h.Error = "stream " + s.CachedInfo().Config.Name + ": " + err.Error()
			return h
		}
		h.Stream.Messages += info.State.Msgs
		h.Stream.Bytes += info.State.Bytes
		h.Stream.MaxBytes += info.Config.MaxBytes
		h.Stream.Consumers += info.State.Consumers
		if info.Cluster != nil {
			leaders = append(leaders, info.Cluster.Leader)
		}
		list := s.ListConsumers(ctx)
		for ci := range list.Info() {
			role, part, ok := strings.Cut(ci.Name, "-p")
			rh := roles[role]
			if rh == nil || !ok || ci.Name != subscribers.PartitionConsumer(role, atoi(part)) {
				continue
			}
			rh.Present = true
			rh.Partitions++
			rh.Lag += ci.NumPending
			rh.InFlight += ci.NumAckPending
			for _, pg := range ci.PriorityGroups {
				if pg.PinnedClientID != "" {
					rh.Held++
					break
				}
			}
		}
		if err := list.Err(); err != nil {
			h.Error = "consumers: " + err.Error()
		}
	}
	h.Stream.Leader = strings.Join(leaders, ",")
	for _, name := range c.d.Roles {
		h.Roles = append(h.Roles, *roles[name])
	}
	slices.SortFunc(h.Roles, func(a, b RoleHealth) int { return strings.Compare(a.Role, b.Role) })
	return h
}

func atoi(s string) int {
	n, err := strconv.Atoi(s)
	if err != nil {
		return -1
	}
	return n
}
