package main

import (
	"bytes"
	"encoding/json"
	"errors"
	"io"
	"os"
	"path/filepath"
	"regexp"
	"runtime/debug"
	"slices"
	"strconv"
	"strings"
	"testing"

	"github.com/nats-io/nats-server/v2/server"
	yaml "go.yaml.in/yaml/v3"

	"github.com/audiofan/audiofan/broker"
	"github.com/audiofan/audiofan/broker/natstest"
)

// natsServerVersion is the nats-server the tests run (go.mod's), without
// its v.
func natsServerVersion(t *testing.T) string {
	t.Helper()
	bi, ok := debug.ReadBuildInfo()
	if ok {
		for _, d := range bi.Deps {
			if d.Path == "github.com/nats-io/nats-server/v2" {
				return strings.TrimPrefix(d.Version, "v")
			}
		}
	}
	t.Fatal("no nats-server in the build info")
	return ""
}

// repo is the repository's root, from this package's folder.
const repo = "../.."

// roleSettings lists the environment settings of a subcommand.
func roleSettings(t *testing.T, name string) map[string]bool {
	t.Helper()
	for _, r := range commands() {
		if r.name == name {
			out := map[string]bool{}
			for _, s := range settingsOf(r.config()) {
				out[s.name] = true
			}
			return out
		}
	}
	t.Fatalf("no subcommand %q", name)
	return nil
}

// checkEnv fails for a variable of ours that the role does not read.
func checkEnv(t *testing.T, where, role string, env map[string]string) {
	t.Helper()
	known := roleSettings(t, role)
	for k := range env {
		if (strings.HasPrefix(k, "AUDIOFAN_") || strings.HasPrefix(k, "NATS_")) && !known[k] {
			t.Errorf("%s: %s is not a setting of `audiofan %s`", where, k, role)
		}
	}
	if addr, ok := env["AUDIOFAN_HTTP_ADDR"]; ok && addr != ":8080" {
		t.Errorf("%s: AUDIOFAN_HTTP_ADDR %q, but the load balancer, probes and Prometheus use 8080", where, addr)
	}
}

// metricsInSource are the metric names the Go sources (not tests) register.
func metricsInSource(t *testing.T) map[string]bool {
	t.Helper()
	names := map[string]bool{}
	re := regexp.MustCompile(`"(audiofan_[a-z_]+)"`)
	err := filepath.WalkDir(repo, func(path string, d os.DirEntry, err error) error {
		if err != nil || d.IsDir() || !strings.HasSuffix(path, ".go") || strings.HasSuffix(path, "_test.go") {
			return err
		}
		b, err := os.ReadFile(path)
		for _, m := range re.FindAllSubmatch(b, -1) {
			names[string(m[1])] = true
		}
		return err
	})
	if err != nil {
		t.Fatal(err)
	}
	return names
}

// checkMetrics fails for a metric in text that no code registers.
func checkMetrics(t *testing.T, where, text string, known map[string]bool) {
	t.Helper()
	for _, m := range regexp.MustCompile(`audiofan_[a-z_]+`).FindAllString(text, -1) {
		base := m
		for _, suf := range []string{"_bucket", "_count", "_sum"} {
			base = strings.TrimSuffix(base, suf)
		}
		if !known[base] {
			t.Errorf("%s: metric %s is not registered anywhere", where, m)
		}
	}
}

// The compose stack names only images, roles, settings, ports and files
// that exist; its NATS, Prometheus and Grafana files parse.
func TestComposeStack(t *testing.T) {
	raw, err := os.ReadFile(filepath.Join(repo, "docker-compose.yml"))
	if err != nil {
		t.Fatal(err)
	}
	var compose struct {
		Services map[string]struct {
			Build       string            `yaml:"build"`
			Image       string            `yaml:"image"`
			Command     []string          `yaml:"command"`
			Environment map[string]string `yaml:"environment"`
			Volumes     []string          `yaml:"volumes"`
			Ports       []string          `yaml:"ports"`
			Ulimits     struct {
				Nofile struct {
					Soft, Hard int
				} `yaml:"nofile"`
			} `yaml:"ulimits"`
		} `yaml:"services"`
	}
	if err := yaml.Unmarshal(raw, &compose); err != nil {
		t.Fatal(err)
	}
	images := []string{"nats:", "haproxy:", "prom/prometheus:", "grafana/grafana:"}
	var audiofanRoles []string
	for name, s := range compose.Services {
		if s.Build == "." {
			if s.Image != "audiofan:latest" || len(s.Command) != 1 {
				t.Errorf("service %s: image %q, command %v", name, s.Image, s.Command)
				continue
			}
			checkEnv(t, "service "+name, s.Command[0], s.Environment)
			audiofanRoles = append(audiofanRoles, s.Command[0])
		} else if !slices.ContainsFunc(images, func(p string) bool { return strings.HasPrefix(s.Image, p) }) {
			t.Errorf("service %s: unexpected image %q", name, s.Image)
		}
		for _, v := range s.Volumes {
			if src, _, ok := strings.Cut(v, ":"); ok && strings.HasPrefix(src, "./") {
				if _, err := os.Stat(filepath.Join(repo, src)); err != nil {
					t.Errorf("service %s mounts %s: %v", name, src, err)
				}
			}
		}
	}
	slices.Sort(audiofanRoles)
	if want := []string{"analytics", "console", "forwarder", "moderator", "receiver", "recorder"}; !slices.Equal(audiofanRoles, want) {
		t.Errorf("audiofan services run %v, want %v", audiofanRoles, want)
	}
	for _, n := range []string{"nats-1", "nats-2", "nats-3", "lb", "prometheus", "grafana"} {
		if _, ok := compose.Services[n]; !ok {
			t.Errorf("no service %s", n)
		}
	}
	// One NATS version everywhere: the one the tests run.
	natsImage := "nats:" + natsServerVersion(t) + "-alpine"
	for _, n := range []string{"nats-1", "nats-2", "nats-3"} {
		if img := compose.Services[n].Image; img != natsImage {
			t.Errorf("service %s runs %s, the tests %s", n, img, natsImage)
		}
	}
	// HAProxy's maxconn fits the descriptors compose gives it: two a
	// connection, and a margin for listeners, checks and resolvers.
	cfg, err := os.ReadFile(filepath.Join(repo, "deploy/haproxy/haproxy.cfg"))
	if err != nil {
		t.Fatal(err)
	}
	m := regexp.MustCompile(`(?m)^\s*maxconn\s+(\d+)`).FindSubmatch(cfg)
	if m == nil {
		t.Fatal("haproxy.cfg sets no global maxconn")
	}
	maxconn, _ := strconv.Atoi(string(m[1]))
	if lim := compose.Services["lb"].Ulimits.Nofile; lim.Soft < 2*maxconn+1000 || lim.Hard < lim.Soft {
		t.Errorf("haproxy maxconn %d needs about %d descriptors; the lb container gets %+v", maxconn, 2*maxconn+1000, lim)
	}

	// The NATS configuration parses, with the variables compose passes.
	t.Setenv("NATS_SERVER_NAME", "nats-1")
	t.Setenv("NATS_RECEIVER_PASSWORD", "a")
	t.Setenv("NATS_ROLE_PASSWORD", "b")
	opts, err := server.ProcessConfigFile(filepath.Join(repo, "deploy/nats/nats.conf"))
	if err != nil {
		t.Fatal(err)
	}
	if opts.ServerName != "nats-1" || !opts.JetStream || len(opts.Routes) != 3 || len(opts.Users) != len(components)+3 { // the receiver, the roles, the console, the tools
		t.Errorf("nats.conf: name %q, jetstream %v, %d routes, %d users", opts.ServerName, opts.JetStream, len(opts.Routes), len(opts.Users))
	}

	// The accounts file is what `audiofan nats-accounts` prints for the
	// default settings: regenerated, never edited by hand.
	var want bytes.Buffer
	na := natsAccountsCommand.config().(*natsAccountsSettings)
	for _, p := range partsOf(na) {
		natstest.Fill(t, p)
	}
	if err := writeNATSAccounts(&want, *na); err != nil {
		t.Fatal(err)
	}
	got, err := os.ReadFile(filepath.Join(repo, "deploy/nats/accounts.conf"))
	if err != nil {
		t.Fatal(err)
	}
	if !bytes.Equal(got, want.Bytes()) {
		t.Error("deploy/nats/accounts.conf is not what `audiofan nats-accounts` prints: run it again and replace the file")
	}
	if sc := natstest.Defaults[broker.StreamConfig](t); na.Partitions != sc.Partitions {
		t.Errorf("nats-accounts defaults to %d partitions, the stream to %d", na.Partitions, sc.Partitions)
	}

	// Prometheus scrapes every audiofan service; Grafana's dashboard is
	// JSON whose queries name metrics the code registers.
	var prom struct {
		ScrapeConfigs []struct {
			DNS []struct {
				Names []string `yaml:"names"`
				Port  int      `yaml:"port"`
			} `yaml:"dns_sd_configs"`
		} `yaml:"scrape_configs"`
	}
	b, err := os.ReadFile(filepath.Join(repo, "deploy/prometheus/prometheus.yml"))
	if err != nil || yaml.Unmarshal(b, &prom) != nil || len(prom.ScrapeConfigs) == 0 || len(prom.ScrapeConfigs[0].DNS) == 0 {
		t.Fatalf("prometheus.yml: %v", err)
	}
	for _, n := range prom.ScrapeConfigs[0].DNS[0].Names {
		if _, ok := compose.Services[n]; !ok || prom.ScrapeConfigs[0].DNS[0].Port != 8080 {
			t.Errorf("prometheus scrapes %s:%d", n, prom.ScrapeConfigs[0].DNS[0].Port)
		}
	}
	dash, err := os.ReadFile(filepath.Join(repo, "deploy/grafana/dashboards/audiofan.json"))
	if err != nil || !json.Valid(dash) {
		t.Fatalf("dashboard: %v", err)
	}
	checkMetrics(t, "dashboard", string(dash), metricsInSource(t))
}

// The Kubernetes manifests parse, run known roles with their own settings,
// probe endpoints that exist, and scale on consumers and metrics that exist.
func TestKubernetesManifests(t *testing.T) {
	known := metricsInSource(t)
	pwKeys := passwordKeys(t)
	consumers := map[string]string{"recorder": "recording", "analytics": "analytics", "moderator": "moderation", "forwarder": "forwarder"}
	kinds := map[string]int{}
	// What the Helm chart renders with each values file the project ships
	// (deploy/rendered, kept equal to the chart by the deploy module's tests).
	for _, file := range []string{"default.yaml", "cluster.yaml"} {
		raw, err := os.ReadFile(filepath.Join(repo, "deploy/rendered", file))
		if err != nil {
			t.Fatal(err)
		}
		dec := yaml.NewDecoder(bytes.NewReader(raw))
		for {
			var doc map[string]any
			if err := dec.Decode(&doc); errors.Is(err, io.EOF) {
				break
			} else if err != nil {
				t.Fatalf("%s: %v", file, err)
			}
			kind, _ := doc["kind"].(string)
			kinds[kind]++
			spec, _ := doc["spec"].(map[string]any)
			switch kind {
			case "Deployment":
				pod := spec["template"].(map[string]any)["spec"].(map[string]any)
				for _, c := range pod["containers"].([]any) {
					c := c.(map[string]any)
					args := c["args"].([]any)
					role := args[0].(string)
					env := map[string]string{}
					for _, e := range c["env"].([]any) {
						e := e.(map[string]any)
						v, _ := e["value"].(string)
						env[e["name"].(string)] = v
					}
					checkEnv(t, file+" "+role, role, env)
					// Its NATS password is the one accounts.conf gives its
					// user on the NATS pods: the same key of the same Secret.
					var user, key, secret string
					for _, e := range c["env"].([]any) {
						e := e.(map[string]any)
						switch e["name"] {
						case "NATS_USER":
							user, _ = e["value"].(string)
						case "NATS_PASSWORD":
							ref, _ := e["valueFrom"].(map[string]any)["secretKeyRef"].(map[string]any)
							secret, _ = ref["name"].(string)
							key, _ = ref["key"].(string)
						}
					}
					if want, ok := pwKeys[user]; !ok || secret != passwordsSecret || key != want {
						t.Errorf("%s %s: NATS user %q, password from %s/%s; accounts.conf and the NATS pods want %s/%s",
							file, role, user, secret, key, passwordsSecret, want)
					}
					for _, probe := range []string{"readinessProbe", "livenessProbe"} {
						path := c[probe].(map[string]any)["httpGet"].(map[string]any)["path"]
						if path != "/readyz" && path != "/healthz" {
							t.Errorf("%s %s: %s on %v", file, role, probe, path)
						}
					}
				}
			case "ScaledObject":
				target := spec["scaleTargetRef"].(map[string]any)["name"].(string)
				role := strings.TrimPrefix(target, "audiofan-")
				for _, tr := range spec["triggers"].([]any) {
					tr := tr.(map[string]any)
					q, _ := tr["metadata"].(map[string]any)["query"].(string)
					if tr["type"] != "prometheus" || !strings.Contains(q, `role="`+consumers[role]+`"`) {
						t.Errorf("%s scales on %v %q", target, tr["type"], q)
					}
					checkMetrics(t, file+" "+target, q, known)
				}
				if max, _ := spec["maxReplicaCount"].(int); max > natstest.Defaults[broker.StreamConfig](t).Partitions {
					t.Errorf("%s scales to %d replicas, more than the partitions", target, max)
				}
			case "HorizontalPodAutoscaler":
				b, _ := json.Marshal(spec)
				checkMetrics(t, file, string(b), known)
			}
		}
	}
	if kinds["Deployment"] != 11 || kinds["ScaledObject"] != 7 || kinds["ConfigMap"] != 2 || kinds["HorizontalPodAutoscaler"] != 2 || kinds["PodDisruptionBudget"] != 11 || kinds["Service"] != 4 {
		t.Errorf("manifests: %v", kinds)
	}
	if v := readNATSValues(t); v.Container.Image.Tag != natsServerVersion(t)+"-alpine" {
		t.Errorf("the chart runs nats %s, the tests %s", v.Container.Image.Tag, natsServerVersion(t))
	}
}

// Every alert names only metrics the code registers and links a runbook
// section of docs/runbooks.md that exists; every section is an alert's.
func TestAlertsRunbooks(t *testing.T) {
	raw, err := os.ReadFile(filepath.Join(repo, "deploy/helm/audiofan/files/alerts.yaml"))
	if err != nil {
		t.Fatal(err)
	}
	var rules struct {
		Groups []struct {
			Rules []struct {
				Alert       string            `yaml:"alert"`
				Expr        string            `yaml:"expr"`
				Annotations map[string]string `yaml:"annotations"`
			} `yaml:"rules"`
		} `yaml:"groups"`
	}
	if err := yaml.Unmarshal(raw, &rules); err != nil {
		t.Fatal(err)
	}
	book, err := os.ReadFile(filepath.Join(repo, "docs/runbooks.md"))
	if err != nil {
		t.Fatal(err)
	}
	sections := map[string]bool{}
	for _, m := range regexp.MustCompile(`(?m)^## (.+)$`).FindAllStringSubmatch(string(book), -1) {
		sections[githubAnchor(m[1])] = true
	}
	known := metricsInSource(t)
	linked := map[string]bool{}
	const base = "https://github.com/audiofan/audiofan/blob/main/docs/runbooks.md#"
	for _, g := range rules.Groups {
		for _, r := range g.Rules {
			checkMetrics(t, "alert "+r.Alert, r.Expr, known)
			anchor, ok := strings.CutPrefix(r.Annotations["runbook_url"], base)
			if !ok || !sections[anchor] {
				t.Errorf("alert %s: runbook %q is no section of docs/runbooks.md", r.Alert, r.Annotations["runbook_url"])
			}
			linked[anchor] = true
		}
	}
	for s := range sections {
		if !linked[s] {
			t.Errorf("docs/runbooks.md has a section %s that no alert links", s)
		}
	}
	if len(linked) < 9 {
		t.Errorf("%d alerts", len(linked))
	}
}
