package recording_test

import (
	"testing"

	"go.uber.org/goleak"

	"github.com/audiofan/audiofan/broker/natstest"
)

func TestMain(m *testing.M) {
	goleak.VerifyTestMain(m, natstest.LibraryLeak)
}
