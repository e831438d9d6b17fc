package main

import (
	"testing"

	"go.uber.org/goleak"
)

// serve must stop everything it starts: receiver, sockets, embedded server.
func TestMain(m *testing.M) {
	goleak.VerifyTestMain(m)
}
