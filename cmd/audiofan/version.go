package main

import (
	"context"
	"fmt"
	"io"
	"log/slog"
	"runtime"
	"runtime/debug"

	"github.com/audiofan/audiofan/codec"
)

// version is the release this binary is, set at build time
// (-ldflags "-X main.version=v0.1.0", as the Dockerfile does). Without it
// the module's version from the build info is used (`go install
// …@v0.1.0`), and "devel" for a build from a working tree.
var version string

// commit is the commit this binary was built from, set at build time where
// the build info carries none (a build with -buildvcs=false, or in a
// container without the repository's .git).
var commit string

// buildVersion is what `audiofan version` prints: the release, the commit
// and its time from the build info (with "+dirty" for uncommitted changes),
// and the contract version.
type buildVersion struct {
	Version, Commit, CommitTime, Contract, Go string
}

func readVersion() buildVersion {
	v := buildVersion{Version: version, Commit: commit, Contract: codec.ContractVersion, Go: runtime.Version()}
	bi, ok := debug.ReadBuildInfo()
	if ok && v.Version == "" && bi.Main.Version != "" && bi.Main.Version != "(devel)" {
		v.Version = bi.Main.Version
	}
	if v.Version == "" {
		v.Version = "devel"
	}
	if ok {
		dirty := false
		for _, s := range bi.Settings {
			switch s.Key {
			case "vcs.revision":
				v.Commit = s.Value
			case "vcs.time":
				v.CommitTime = s.Value
			case "vcs.modified":
				dirty = s.Value == "true"
			}
		}
		if dirty && v.Commit != "" {
			v.Commit += "+dirty"
		}
	}
	if v.Commit == "" {
		v.Commit = "unknown"
	}
	return v
}

func (v buildVersion) String() string {
	s := "audiofan " + v.Version + " (commit " + v.Commit
	if v.CommitTime != "" {
		s += ", " + v.CommitTime
	}
	return s + ") contract " + v.Contract + " " + v.Go
}

// VersionSettings: the version command reads nothing.
type VersionSettings struct{}

var versionCommand = command{
	name:    "version",
	summary: "print the release, the commit it was built from and the bus contract's version",
	config:  func() any { return &VersionSettings{} },
	run: func(_ context.Context, _ any, _ *slog.Logger, stdout io.Writer) error {
		_, err := fmt.Fprintln(stdout, readVersion())
		return err
	},
}
