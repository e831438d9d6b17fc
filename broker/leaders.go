package broker

import (
	"context"
	"encoding/json"
	"fmt"
	"log/slog"
	"slices"
	"time"

	"github.com/nats-io/nats.go/jetstream"
)

// Leaders: on a cluster every shard's stream has its own leader, and the
// point of shards is that those leaders share the work, so they should sit
// on distinct nodes. JetStream elects them where it elects them (often
// several on one node, and after a node restarts it leads nothing), so
// SpreadLeaders moves them: shard i's leader goes to the i-th of the nodes
// that hold the shards (sorted by name), with a step-down that names it
// as preferred. It moves only a leader that is misplaced, and only to a
// replica that is current, so a bus already spread costs S stream infos.

// SpreadLeaders puts the leaders of the bus's shards on distinct nodes as
// far as the nodes go, and says how many it moved. A single node, a single
// shard, or shards of one replica have nothing to spread.
func SpreadLeaders(ctx context.Context, js jetstream.JetStream, b *Bus, log *slog.Logger) (int, error) {
	if !b.Layout.Sharded() {
		return 0, nil
	}
	type shard struct {
		name, leader string
		current      []string // the replicas that may lead: current, online
	}
	var shards []shard
	nodes := map[string]bool{}
	for _, s := range b.streams {
		info, err := s.Info(ctx)
		if err != nil {
			return 0, fmt.Errorf("spread leaders: %w", err)
		}
		if info.Cluster == nil || info.Cluster.Leader == "" || len(info.Cluster.Replicas) == 0 {
			return 0, nil // not clustered, or R1, or electing now: next time
		}
		sh := shard{name: info.Config.Name, leader: info.Cluster.Leader, current: []string{info.Cluster.Leader}}
		nodes[info.Cluster.Leader] = true
		for _, r := range info.Cluster.Replicas {
			nodes[r.Name] = true
			if r.Current && !r.Offline {
				sh.current = append(sh.current, r.Name)
			}
		}
		shards = append(shards, sh)
	}
	order := make([]string, 0, len(nodes))
	for n := range nodes {
		order = append(order, n)
	}
	slices.Sort(order)
	moved := 0
	for i, sh := range shards {
		want := order[i%len(order)]
		if sh.leader == want || !slices.Contains(sh.current, want) {
			continue
		}
		if err := stepDown(ctx, js, sh.name, want); err != nil {
			log.Warn("shard leader not moved", "stream", sh.name, "from", sh.leader, "to", want, "err", err)
			continue
		}
		log.Info("shard leader moved, to spread the shards' leaders over the nodes", "stream", sh.name, "from", sh.leader, "to", want)
		moved++
	}
	return moved, nil
}

// stepDown asks stream's leader to hand over to the node named preferred.
func stepDown(ctx context.Context, js jetstream.JetStream, stream, preferred string) error {
	req, _ := json.Marshal(map[string]any{"placement": map[string]string{"preferred": preferred}})
	ctx, cancel := context.WithTimeout(ctx, 5*time.Second)
	defer cancel()
	msg, err := js.Conn().RequestWithContext(ctx, "$JS.API.STREAM.LEADER.STEPDOWN."+stream, req)
	if err != nil {
		return err
	}
	var resp struct {
		Success bool                `json:"success"`
		Error   *jetstream.APIError `json:"error"`
	}
	if err := json.Unmarshal(msg.Data, &resp); err != nil {
		return err
	}
	if resp.Error != nil {
		return resp.Error
	}
	return nil
}

// tendEvery is how often a receiver looks after the bus: whether the
// leaders need spreading again (a node restarted and leads nothing), and
// what the shards hold.
const tendEvery = 10 * time.Second

// Tend keeps the bus's leaders spread and m (when not nil) up to date, now
// and every tendEvery until ctx ends: what a receiver runs beside its work.
func Tend(ctx context.Context, js jetstream.JetStream, b *Bus, m *BusMetrics, log *slog.Logger) {
	t := time.NewTicker(tendEvery)
	defer t.Stop()
	for {
		moved, err := SpreadLeaders(ctx, js, b, log)
		if err != nil && ctx.Err() == nil {
			log.Debug("spread leaders", "err", err)
		}
		if m != nil {
			m.leaderMoves.Add(float64(moved))
			if err := m.observe(ctx, b); err != nil && ctx.Err() == nil {
				log.Debug("bus metrics", "err", err)
			}
		}
		select {
		case <-ctx.Done():
			return
		case <-t.C:
		}
	}
}
