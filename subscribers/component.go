package subscribers

import (
	"context"
	"log/slog"

	"github.com/nats-io/nats.go/jetstream"
	"github.com/prometheus/client_golang/prometheus"

	"github.com/audiofan/audiofan/broker"
)

// Component is a role as the binary knows it. Each role package exports one,
// and cmd/audiofan lists them once: from that list come the role's command,
// its place in `audiofan serve`, its settings in both, its NATS user and
// permissions, and the console's list of roles. Adding a role is a folder
// under subscribers/ and a line in that list.
type Component struct {
	// Role is the role's name (Role.Name): its consumers, metrics and
	// event source.
	Role string
	// Command runs the role alone. It is a separate name because the
	// public contract fixed it first (`audiofan recorder` runs the role
	// recording); a new role uses its role name. It is also the role's
	// NATS user.
	Command string
	// Summary is the command's line in `audiofan --help`.
	Summary string
	// DataDir: the role keeps files under AUDIOFAN_DATA_DIR, so its
	// command reads that setting.
	DataDir bool
	// Settings returns the role's own settings, zero: a pointer to a struct
	// read from the environment (caarlos0/env tags, and a help tag each).
	Settings func() Settings
	// Start builds the role on a process's connection, with the settings
	// Settings returned, filled. ctx lasts as long as the role runs: what
	// the role starts beside the Group (a file watcher) stops with it.
	// stop runs once the Group has stopped.
	Start func(ctx context.Context, s Settings, env Env) (role Role, stop func(), err error)
	// Enabled, when set, says whether the settings ask for the role at
	// all (a role with nothing to do unconfigured: the forwarder without
	// targets). serve leaves out a role not enabled, and the role's command
	// refuses to run. Nil: always.
	Enabled func(s Settings) bool
	// Publishes lists what the role publishes beyond every role's own
	// (its events, heartbeats, checkpoints, consumers and acks), as NATS
	// subjects for its user's permissions: its buckets, outbound audio.
	// Nil: nothing more.
	Publishes func(s Settings, pub broker.Published) []string
}

// Settings are a role's own settings.
type Settings interface {
	// Validate checks them, naming the variable at fault.
	Validate() error
}

// Env is what a process gives each role it runs.
type Env struct {
	JS jetstream.JetStream
	// Published are the subjects a role publishes on (its events,
	// outbound audio): the stored scheme is the bus's, read by the Group.
	Published broker.Published
	// DataDir is the process's AUDIOFAN_DATA_DIR, for a role that set
	// Component.DataDir.
	DataDir string
	// Version is the binary's release (what `audiofan version` prints),
	// for what a role stamps on its output.
	Version string
	Reg     prometheus.Registerer
	Log     *slog.Logger
}
