package receiver_test

import (
	"errors"
	"testing"
	"time"

	"github.com/nats-io/nats-server/v2/server"
	"github.com/nats-io/nats.go"

	"github.com/audiofan/audiofan/broker/natstest"
)

// ReceiverPermissions are the least a receiver's NATS user needs, as the
// README documents them for the CALLS stream under the calls prefix.
var receiverPermissions = &server.Permissions{
	Publish: &server.SubjectPermission{Allow: []string{"calls.>", "$JS.API.STREAM.NAMES",
		"$JS.API.STREAM.INFO.CALLS", "$JS.API.STREAM.CREATE.CALLS", "$JS.API.STREAM.UPDATE.CALLS"}},
	// Outbound audio to relay, in both forms (sharded or not): the mapping
	// probe at start comes back on them too.
	Subscribe: &server.SubjectPermission{Allow: []string{"_INBOX.>", "calls.*.outbound", "calls.*.*.outbound"}},
}

// The documented permissions are enough for a receiver to provision the
// stream, take a call and report ready; and they confine it.
func TestReceiverPermissions(t *testing.T) {
	ns := natstest.StartUsers(t,
		&server.User{Username: "receiver", Password: "r-secret", Permissions: receiverPermissions},
		&server.User{Username: "admin", Password: "a-secret"})
	r := natstest.StartReceiver(t, ns, nil)
	h := wrap(t, ns, r)

	c := dialACS(t, h.wsURL("?callId=confined"), nil)
	c.audioMetadata("s", 16000)
	for i := 0; i < 20; i++ {
		c.audio(time.Now(), "p", frameOf(0, i, 640), false)
	}
	c.close()
	waitFor(t, "ready", func() bool { return r.R.Ready(t.Context()) == nil })

	// Read back as the admin: the receiver's user may not read the stream.
	ns.User = "admin"
	admin := natstest.StartReceiver(t, ns, nil) // only for its connection and helpers
	ah := wrap(t, ns, admin)
	if n := frames(ah.readStream(1)); n != 20 {
		t.Errorf("%d of 20 frames stored through a confined user", n)
	}

	// Outside the prefix, the receiver's user is refused.
	denied := make(chan error, 1)
	ns.User = "receiver"
	nc, err := nats.Connect(ns.URL(), nats.ErrorHandler(func(_ *nats.Conn, _ *nats.Subscription, err error) { denied <- err }))
	if err != nil {
		t.Fatal(err)
	}
	defer nc.Close()
	_ = nc.Publish("other.subject", []byte("x"))
	_ = nc.Flush()
	select {
	case err := <-denied:
		if !errors.Is(err, nats.ErrPermissionViolation) {
			t.Errorf("publish outside the prefix: %v", err)
		}
	case <-time.After(5 * time.Second):
		t.Error("publish outside the prefix was not refused")
	}
}
