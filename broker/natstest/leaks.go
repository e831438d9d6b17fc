package natstest

import "go.uber.org/goleak"

// LibraryLeak is the one goroutine a package's leak check lets pass, for it
// is nats.go's (v1.55.0), not ours: the Object Store's Put publishes
// through a JetStream context of its own and cleans it up when done, and
// when the cleanup runs before the goroutine that watches the connection
// has read its status channel, that goroutine reads the channel as nil and
// blocks for good (jetstream/publish.go, resetPendingAcksOnReconnect,
// against cleanupReplySub). Seen once, on a loaded machine, after a
// recorder stored to the Object Store.
var LibraryLeak = goleak.IgnoreTopFunction("github.com/nats-io/nats.go/jetstream.(*jetStream).resetPendingAcksOnReconnect")
