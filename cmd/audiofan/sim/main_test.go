package sim

import (
	"testing"

	"go.uber.org/goleak"
)

// A simulation must stop everything it starts: sockets, readers, consumers.
func TestMain(m *testing.M) {
	goleak.VerifyTestMain(m)
}
