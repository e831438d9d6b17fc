package subscribers_test

import (
	"fmt"
	"slices"
	"testing"

	"github.com/audiofan/audiofan/subscribers"
)

// The assignment covers every partition, evenly, the same on every replica
// whatever order it lists the members in, and a replica joining or leaving
// moves few partitions.
func TestAssignPartitions(t *testing.T) {
	const n = 32
	for members := 1; members <= 12; members++ {
		var ids []string
		for i := range members {
			ids = append(ids, fmt.Sprintf("replica-%d", i))
		}
		owners := subscribers.AssignPartitions(n, ids)
		count := map[string]int{}
		for p, o := range owners {
			if !slices.Contains(ids, o) {
				t.Fatalf("%d members: partition %d owned by %q", members, p, o)
			}
			count[o]++
		}
		most, least := 0, n
		for _, id := range ids {
			most, least = max(most, count[id]), min(least, count[id])
		}
		if most > (n+members-1)/members || (members <= n && least == 0) {
			t.Errorf("%d members: from %d to %d partitions each", members, least, most)
		}
		rev := slices.Clone(ids)
		slices.Reverse(rev)
		if !slices.Equal(subscribers.AssignPartitions(n, rev), owners) {
			t.Errorf("%d members: the order of the list changes the assignment", members)
		}
		// One more member: it takes about its share, the others keep the rest.
		grown := subscribers.AssignPartitions(n, append(slices.Clone(ids), "newcomer"))
		moved := 0
		for p := range owners {
			if grown[p] != owners[p] {
				moved++
			}
		}
		share := (n + members) / (members + 1)
		if moved > 2*share+1 {
			t.Errorf("%d members + 1: %d partitions moved, its share is %d", members, moved, share)
		}
	}
	if o := subscribers.AssignPartitions(4, nil); len(o) != 4 || o[0] != "" {
		t.Errorf("no members: %v", o)
	}
}
