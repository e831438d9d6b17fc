package main

import (
	"encoding/json"
	"errors"
	"io"
	"os/exec"
	"slices"
	"strings"
	"testing"
)

// module is this repository's module path.
const module = "github.com/audiofan/audiofan/"

// layers says, for each package of ours, which of our packages it may
// import: the arrows point one way (cmd wires; roles use subscribers;
// subscribers and the receiver use broker; broker uses codec; codec uses
// nothing of ours). A package missing here fails the test: place it.
var layers = map[string][]string{
	"codec":                   {},
	"codec/acs":               {},
	"broker":                  {"codec"},
	"broker/embedded":         {},
	"broker/warn":             {},
	"broker/httpserve":        {},
	"broker/receiver":         {"broker", "broker/httpserve", "broker/warn", "codec", "codec/acs"},
	"broker/natstest":         {"broker", "broker/embedded", "broker/receiver"},
	"subscribers/speech":      {},
	"subscribers":             {"broker", "broker/warn", "codec"},
	"subscribers/conformance": {"subscribers", "broker", "broker/natstest", "codec"},
	"subscribers/recording":   {"subscribers", "subscribers/speech", "broker", "codec"},
	"subscribers/analytics":   {"subscribers", "subscribers/speech", "broker", "codec"},
	"subscribers/moderation":  {"subscribers", "subscribers/speech", "broker", "codec"},
	"subscribers/console":     {"subscribers", "subscribers/speech", "broker", "broker/httpserve", "broker/warn", "codec"},
	"subscribers/forward":     {"subscribers", "broker", "broker/warn", "codec", "codec/acs"},
	"examples/echo-agent":     {}, // an ACS application of its own: none of ours
}

// busReaders read the bus and nothing else: they must not link the NATS
// server, the WebSocket or JWT libraries, or the profiler (what the
// receiver and serve need), so a role's binary and its attack surface stay
// what it uses.
var busReaders = []string{"broker", "broker/httpserve", "broker/warn", "subscribers", "subscribers/recording", "subscribers/analytics", "subscribers/moderation", "subscribers/speech"}

var heavy = []string{"github.com/nats-io/nats-server/", "github.com/gorilla/websocket", "github.com/golang-jwt/", "github.com/nats-io/jwt/",
	"github.com/MicahParks/", "net/http/pprof"}

// linkedOnPurpose are heavy modules a bus reader links for a reason of its
// own: the recorder's blob store reaches Azure through azidentity (managed
// identities), whose MSAL links a JWT library.
var linkedOnPurpose = map[string][]string{"subscribers/recording": {"github.com/golang-jwt/"}}

type listed struct {
	ImportPath string
	Imports    []string
	Deps       []string
}

func listPackages(t *testing.T) []listed {
	t.Helper()
	out, err := exec.Command("go", "list", "-deps=false", "-json", repo+"/...").Output()
	if err != nil {
		t.Fatalf("go list: %v", err)
	}
	var pkgs []listed
	dec := json.NewDecoder(strings.NewReader(string(out)))
	for {
		var p listed
		if err := dec.Decode(&p); errors.Is(err, io.EOF) {
			break
		} else if err != nil {
			t.Fatal(err)
		}
		pkgs = append(pkgs, p)
	}
	return pkgs
}

// TestLayout fails when an import runs the wrong way, a role imports
// another, or a bus reader links what only the receiver and serve need.
func TestLayout(t *testing.T) {
	for _, p := range listPackages(t) {
		name, ok := strings.CutPrefix(p.ImportPath, module)
		if !ok || strings.HasPrefix(name, "cmd/") {
			continue // cmd wires everything
		}
		allowed, known := layers[name]
		if !known {
			t.Errorf("%s is in no layer: add it to layers, with what it may import", name)
			continue
		}
		for _, imp := range p.Imports {
			if ours, ok := strings.CutPrefix(imp, module); ok && !slices.Contains(allowed, ours) {
				t.Errorf("%s imports %s: the arrows point the other way (it may import %v)", name, ours, allowed)
			}
		}
		if slices.Contains(busReaders, name) {
			for _, d := range p.Deps {
				for _, h := range heavy {
					if strings.HasPrefix(d, h) && !slices.Contains(linkedOnPurpose[name], h) {
						t.Errorf("%s links %s: a reader of the bus should not", name, d)
					}
				}
			}
		}
	}
}
