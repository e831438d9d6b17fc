# audiofan: `make run` starts everything in one process; `make test` is what CI runs.
GO       ?= go
BIN      ?= bin/audiofan
FUZZTIME ?= 30s
BENCHTIME ?= 2s
# What `audiofan version` prints, for builds where Go's build info lacks it (GOFLAGS=-buildvcs=false, images).
VERSION  ?= $(shell git describe --tags --always --dirty 2>/dev/null || echo devel)
COMMIT   ?= $(shell git rev-parse HEAD 2>/dev/null)
LDFLAGS  := -X main.version=$(VERSION) -X main.commit=$(COMMIT)

.PHONY: acs-sdk azurite npm-deps node node-examples all build run test test-race test-lane test-deploy test-configs config-tools test-cluster test-browser chromium vet fmt-check bench fuzz clean

all: build

build:
	$(GO) build -ldflags "$(LDFLAGS)" -o $(BIN) ./cmd/audiofan

## run: audiofan serve with the embedded NATS server (store under ./data)
run:
	$(GO) run ./cmd/audiofan serve

## test: formatting, vet, every test with the race detector in random order and, beside it, the deployment files and
## the console in a browser (the race suite leaves about half of the CPU idle, waiting on timers and processes), then
## the distributed topology alone: its faults are timed against a loaded machine's, and beside the race suite its
## p99 reached 30 s
test: fmt-check
	$(MAKE) config-tools chromium
	$(MAKE) -j2 vet npm-deps
	$(MAKE) -j2 test-race test-lane
	$(MAKE) test-cluster

# The tools the tests run (Microsoft's SDK, the node examples, Azurite), for go test.
TEST_ENV := AUDIOFAN_ACS_SDK_CHECK=$(CURDIR)/tools/acs-sdk-check/check.mjs AUDIOFAN_NODE_EXAMPLES=$(CURDIR)/examples/node \
	AUDIOFAN_AZURITE=$(CURDIR)/tools/azurite/node_modules/.bin/azurite-blob
# cmd/audiofan's longest tests, each a whole serve or stack of its own: run in the second lane, so the package's own
# run is not the race suite's long pole.
LANE_TESTS := TestNATSAccounts|TestQuickStart|TestShardedServe|TestNodeTap|TestNodeMembers
# What runs on a quiet machine, after the rest: faults timed against the cluster's own, and the 1,500-call scale test
# (beside the race suite its roles' history reads stalled, its calls parked and were re-driven, and it ran past 4 min).
QUIET_TESTS := TestTopology|TestShardedCluster|TestRoleOutage|TestServeManyCalls

## test-race: every test of the main module with the race detector, in random order, three packages at a time (most
## wait on timers and processes; part of `make test`; the LANE_TESTS run beside it in test-lane, the QUIET_TESTS
## after it in test-cluster)
test-race:
	$(TEST_ENV) $(GO) test -race -shuffle=on -count=1 -p 3 -timeout 8m -skip '^($(LANE_TESTS)|$(QUIET_TESTS))$$' ./...

# test-lane: what make test runs beside the race suite, one after another
test-lane:
	$(TEST_ENV) $(GO) test -race -shuffle=on -count=1 -timeout 8m -run '^($(LANE_TESTS))$$' ./cmd/audiofan
	$(MAKE) test-deploy
	$(MAKE) test-configs
	$(MAKE) test-browser

## test-deploy: the Kubernetes manifests decoded strictly into the real API types (k8s.io/api, KEDA's ScaledObject),
## in a module of their own under deploy/ so the main go.mod does not carry them (part of `make test`)
test-deploy:
	cd deploy && $(GO) vet ./... && $(GO) test -count=1 ./...

## test-configs: each deployment file checked by its own ecosystem's tool: nats-server -t (built from go.mod's
## version) on the compose nodes' nats.conf, Debian's haproxy -c, docker-compose config and promtool (check config,
## check rules, test rules: a unit test per alert) (installed when missing)
test-configs: config-tools
	NATS_SERVER_NAME=nats-1 NATS_RECEIVER_PASSWORD=x NATS_ROLE_PASSWORD=y $(GO) run github.com/nats-io/nats-server/v2 -t -c deploy/nats/nats.conf
	haproxy -c -f deploy/haproxy/haproxy.cfg
	NATS_RECEIVER_PASSWORD=x NATS_ROLE_PASSWORD=y docker-compose -f docker-compose.yml config -q
	promtool check config --syntax-only deploy/prometheus/prometheus.yml
	promtool check rules deploy/helm/audiofan/files/alerts.yaml
	promtool test rules deploy/prometheus/alerts_test.yml

## acs-sdk: Microsoft's Call Automation SDK for JavaScript (pinned in tools/acs-sdk-check), which the tests parse what
## audiofan sends with, as an ACS application would; node and npm installed from Debian when missing
acs-sdk: node
	@test -d tools/acs-sdk-check/node_modules || npm ci --prefix tools/acs-sdk-check --no-audit --no-fund --loglevel=error

## npm-deps: the test's npm packages, installed side by side (each pinned by its lockfile)
npm-deps: node
	$(MAKE) -j3 acs-sdk node-examples azurite

## azurite: Microsoft's Azure Storage emulator (azurite 3.37.0, pinned in tools/azurite), which the recorder's blob store
## tests run as a real process
azurite: node
	@test -d tools/azurite/node_modules || npm ci --prefix tools/azurite --no-audit --no-fund --loglevel=error

## node-examples: the JavaScript consumers in examples/node (@nats-io/jetstream, @msgpack/msgpack), pinned by their lockfile
node-examples: node
	@test -d examples/node/node_modules || npm ci --prefix examples/node --no-audit --no-fund --loglevel=error

node: APT_HINT = apt-get install nodejs npm
node:
	@command -v node >/dev/null && command -v npm >/dev/null || { \
		sudo=; [ "$$(id -u)" = 0 ] || sudo=sudo; \
		[ -z "$$sudo" ] || command -v sudo >/dev/null || { echo "make test needs Debian packages it cannot install without root or sudo: $(APT_HINT)"; exit 1; }; \
		echo "installing Debian's nodejs and npm for the SDK check and the node examples"; \
		$$sudo apt-get update -qq && DEBIAN_FRONTEND=noninteractive $$sudo apt-get install -y -qq nodejs npm >/dev/null; }

# promtool comes with Debian's prometheus package: building it from its Go module takes 6 minutes here.
config-tools: APT_HINT = apt-get install --no-install-recommends haproxy docker-compose prometheus
config-tools:
	@command -v haproxy >/dev/null && command -v docker-compose >/dev/null && command -v promtool >/dev/null || { \
		sudo=; [ "$$(id -u)" = 0 ] || sudo=sudo; \
		[ -z "$$sudo" ] || command -v sudo >/dev/null || { echo "make test needs Debian packages it cannot install without root or sudo: $(APT_HINT)"; exit 1; }; \
		echo "installing Debian's haproxy, docker-compose and prometheus (for promtool) for test-configs"; \
		$$sudo apt-get update -qq && DEBIAN_FRONTEND=noninteractive $$sudo apt-get install -y -qq --no-install-recommends haproxy docker-compose prometheus >/dev/null; }

## test-cluster: the distributed topology as processes on loopback (3 NATS nodes, receivers, every role), with a NATS
## node and a recorder killed mid-call; then roles as processes with a recorder frozen mid-call and a call whose
## recording cannot be written until repaired; and serve with 1,500 calls open at once (part of `make test`)
test-cluster:
	AUDIOFAN_TOPOLOGY=1 $(GO) test -race -count=1 -run '^($(QUIET_TESTS))$$' -v -timeout 10m ./cmd/audiofan

## test-browser: the web console driven in headless Chromium (Debian's, installed when missing); its screenshots go
## to artifacts/ (part of `make test`)
CHROMIUM ?= /usr/bin/chromium
test-browser: chromium
	mkdir -p artifacts
	AUDIOFAN_BROWSER=$(CHROMIUM) $(GO) test -race -count=1 -run '^TestConsoleInBrowser$$' -v -timeout 5m \
		-artifacts -outputdir $(CURDIR)/artifacts ./cmd/audiofan

chromium: APT_HINT = apt-get install chromium
chromium:
	@test -x $(CHROMIUM) || { \
		sudo=; [ "$$(id -u)" = 0 ] || sudo=sudo; \
		[ -z "$$sudo" ] || command -v sudo >/dev/null || { echo "make test needs Debian packages it cannot install without root or sudo: $(APT_HINT)"; exit 1; }; \
		echo "installing Debian's chromium for the browser test"; \
		$$sudo apt-get update -qq && DEBIAN_FRONTEND=noninteractive $$sudo apt-get install -y -qq chromium >/dev/null; }

vet:
	$(GO) vet ./...

fmt-check:
	@out=$$(gofmt -l $$(git ls-files '*.go' 2>/dev/null || find . -name '*.go')); \
	if [ -n "$$out" ]; then echo "gofmt needed:"; echo "$$out"; exit 1; fi

## bench: codec, receiver and subscriber benchmarks, each beside its baseline
bench: azurite
	$(GO) test -run=NONE -bench=. -benchmem -benchtime=$(BENCHTIME) -count=3 ./codec/... ./subscribers/moderation
	AUDIOFAN_AZURITE=$(CURDIR)/tools/azurite/node_modules/.bin/azurite-blob \
	$(GO) test -run=NONE -bench=. -benchmem -benchtime=3x -count=3 ./subscribers/recording ./subscribers/analytics
	$(GO) test -run=NONE -bench=. -benchtime=40x -count=3 ./subscribers/console
	$(GO) test -run=NONE -bench=. -benchmem -benchtime=1x -count=3 -timeout 30m ./broker/receiver
	$(GO) test -run=NONE -bench='CallStartRate|Takeover' -benchtime=1x -count=3 -timeout 20m ./subscribers
	$(GO) test -run=NONE -bench='ManyCalls|ClusterCalls|BusCostPerFrame|BusReadCost|RoleOutage' -benchtime=1x -count=1 -timeout 20m ./cmd/audiofan

## fuzz: each fuzz target for FUZZTIME, a time or a count such as 10000x (CI: 10000x each); crashers land in
## testdata/fuzz and are committed as regression cases
fuzz:
	for t in FuzzParse FuzzParseTimestamp FuzzDecodeBase64 FuzzParseOutbound; do \
		$(GO) test -run=NONE -fuzz="^$$t\$$" -fuzztime=$(FUZZTIME) ./codec/acs || exit 1; \
	done
	for t in FuzzToken FuzzUnmarshalFrame; do \
		$(GO) test -run=NONE -fuzz="^$$t\$$" -fuzztime=$(FUZZTIME) ./codec || exit 1; \
	done
	$(GO) test -run=NONE -fuzz='^FuzzSocketMessages$$' -fuzztime=$(FUZZTIME) ./broker/receiver
	for t in FuzzTranscriptRules FuzzParseRules; do \
		$(GO) test -run=NONE -fuzz="^$$t\$$" -fuzztime=$(FUZZTIME) ./subscribers/moderation || exit 1; \
	done
	$(GO) test -run=NONE -fuzz='^FuzzParseWAV$$' -fuzztime=$(FUZZTIME) ./subscribers/speech

clean:
	rm -rf bin artifacts
