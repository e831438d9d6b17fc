package main

import (
	"fmt"
	"os"
	"path/filepath"
	"regexp"
	"slices"
	"strings"
	"testing"

	"github.com/nats-io/nats-server/v2/server"
	yaml "go.yaml.in/yaml/v3"
)

// natsValues is what the tests read of deploy/k8s/nats-values.yaml.
type natsValues struct {
	Container struct {
		Image struct {
			Tag string `yaml:"tag"`
		} `yaml:"image"`
		Env map[string]struct {
			ValueFrom struct {
				SecretKeyRef struct {
					Name, Key string
				} `yaml:"secretKeyRef"`
			} `yaml:"valueFrom"`
		} `yaml:"env"`
	} `yaml:"container"`
	Config struct {
		Monitor struct {
			Enabled bool `yaml:"enabled"`
			Port    int  `yaml:"port"`
		} `yaml:"monitor"`
		Jetstream struct {
			Enabled bool `yaml:"enabled"`
		} `yaml:"jetstream"`
		Merge map[string]any `yaml:"merge"`
	} `yaml:"config"`
}

func readNATSValues(t *testing.T) natsValues {
	t.Helper()
	b, err := os.ReadFile(filepath.Join(repo, "deploy/k8s/nats-values.yaml"))
	if err != nil {
		t.Fatal(err)
	}
	var v natsValues
	if err := yaml.Unmarshal(b, &v); err != nil {
		t.Fatalf("nats-values.yaml: %v", err)
	}
	return v
}

// passwordsSecret is the Secret the NATS pods and the audiofan pods take
// the passwords of accounts.conf from.
const passwordsSecret = "audiofan-nats-passwords"

// accountUsers reads deploy/nats/accounts.conf: each user's password
// variable ($NATS_…_PASSWORD).
func accountUsers(t *testing.T) map[string]string {
	t.Helper()
	b, err := os.ReadFile(filepath.Join(repo, "deploy/nats/accounts.conf"))
	if err != nil {
		t.Fatal(err)
	}
	users := map[string]string{}
	for _, m := range regexp.MustCompile(`user:\s*(\w+),\s*password:\s*\$(\w+)`).FindAllSubmatch(b, -1) {
		users[string(m[1])] = string(m[2])
	}
	if len(users) == 0 {
		t.Fatal("accounts.conf names no users")
	}
	return users
}

// passwordKeys maps each NATS user to the key of passwordsSecret its
// password comes from on Kubernetes: accounts.conf names the variable,
// the chart values fill the variable from the Secret.
func passwordKeys(t *testing.T) map[string]string {
	t.Helper()
	v := readNATSValues(t)
	keys := map[string]string{}
	for user, variable := range accountUsers(t) {
		e, ok := v.Container.Env[variable]
		if !ok {
			t.Errorf("accounts.conf needs $%s, which nats-values.yaml does not give the NATS container: the server would not start", variable)
			continue
		}
		if ref := e.ValueFrom.SecretKeyRef; ref.Name != passwordsSecret || ref.Key == "" {
			t.Errorf("nats-values.yaml: %s from %+v, want a key of the Secret %s", variable, ref, passwordsSecret)
		}
		keys[user] = e.ValueFrom.SecretKeyRef.Key
	}
	return keys
}

// kubernetesNATS loads the configuration a NATS pod of the chart runs with
// deploy/k8s/nats-values.yaml: /etc/nats-config/nats.conf with the values'
// config.merge (its $include keys become include directives, in order) and
// accounts.conf beside it (what `--set-file configMap.merge.data.accounts\.conf=
// deploy/nats/accounts.conf` puts in the ConfigMap), its variables set from
// the container's env. The chart's own template is not run here (it is not
// in any registry this project can reach); what is checked is what the auth
// depends on: that the file the pods include is the compose stack's, that it
// parses with the variables the pods get, and that its users can do their
// work and nothing more.
func kubernetesNATS(t *testing.T) *server.Options {
	t.Helper()
	v := readNATSValues(t)
	dir := t.TempDir()
	var conf strings.Builder
	conf.WriteString("port: 4222\nserver_name: $POD_NAME\n")
	if v.Config.Monitor.Enabled {
		fmt.Fprintf(&conf, "http_port: %d\n", v.Config.Monitor.Port)
	}
	if v.Config.Jetstream.Enabled {
		conf.WriteString("jetstream { store_dir: /data }\n")
	}
	keys := make([]string, 0, len(v.Config.Merge))
	for k := range v.Config.Merge {
		keys = append(keys, k)
	}
	slices.Sort(keys)
	var included []string
	for _, k := range keys {
		if strings.HasSuffix(k, "$include") {
			file, _ := v.Config.Merge[k].(string)
			included = append(included, file)
			fmt.Fprintf(&conf, "include %s\n", file)
		}
	}
	if !slices.Contains(included, "accounts.conf") {
		t.Fatalf("nats-values.yaml includes %v, not accounts.conf: the pods would run without the users", included)
	}
	accounts, err := os.ReadFile(filepath.Join(repo, "deploy/nats/accounts.conf"))
	if err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(filepath.Join(dir, "accounts.conf"), accounts, 0o644); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(filepath.Join(dir, "nats.conf"), []byte(conf.String()), 0o644); err != nil {
		t.Fatal(err)
	}
	t.Setenv("POD_NAME", "nats-0")
	users := accountUsers(t)
	for user, key := range passwordKeys(t) {
		t.Setenv(users[user], "k8s-"+key+"-pw")
	}
	opts, err := server.ProcessConfigFile(filepath.Join(dir, "nats.conf"))
	if err != nil {
		t.Fatalf("the pods' nats.conf: %v", err)
	}
	return opts
}
