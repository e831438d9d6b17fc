package main

import (
	"os"
	"testing"

	"go.uber.org/goleak"

	"github.com/audiofan/audiofan/broker/natstest"
)

// serve must stop everything it starts: receiver, sockets, embedded server.
// The binaries the process tests shared are removed at the end.
func TestMain(m *testing.M) {
	goleak.VerifyTestMain(m,
		natstest.LibraryLeak,
		goleak.Cleanup(func(code int) {
			if built.dir != "" {
				_ = os.RemoveAll(built.dir)
			}
			os.Exit(code)
		}))
}
