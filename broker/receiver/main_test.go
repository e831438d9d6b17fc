package receiver_test

import (
	"testing"

	"go.uber.org/goleak"
)

// Every test must stop what it starts: sockets, servers, connections.
func TestMain(m *testing.M) {
	goleak.VerifyTestMain(m)
}
