package deploy

import (
	"bufio"
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"regexp"
	"slices"
	"strings"
	"testing"

	kedav1alpha1 "github.com/kedacore/keda/v2/apis/keda/v1alpha1"
	monitoringv1 "github.com/prometheus-operator/prometheus-operator/pkg/apis/monitoring/v1"
	appsv1 "k8s.io/api/apps/v1"
	autoscalingv2 "k8s.io/api/autoscaling/v2"
	corev1 "k8s.io/api/core/v1"
	networkingv1 "k8s.io/api/networking/v1"
	policyv1 "k8s.io/api/policy/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/labels"
	utilyaml "k8s.io/apimachinery/pkg/util/yaml"
	"sigs.k8s.io/yaml"
)

// manifests are what the chart renders with each values file the project
// ships (kept by TestChartRenders): what an operator's helm install applies.
var manifests = []string{"rendered/default.yaml", "rendered/cluster.yaml"}

// strict decodes one YAML document into out as the API server would, but
// refusing what it would silently drop: duplicate keys, and fields the
// type does not have (a misspelt or misplaced field is a setting that
// never takes effect).
func strict(doc []byte, out any) error {
	j, err := yaml.YAMLToJSONStrict(doc)
	if err != nil {
		return err
	}
	dec := json.NewDecoder(bytes.NewReader(j))
	dec.DisallowUnknownFields()
	return dec.Decode(out)
}

// objects is every document of the manifests, decoded into its real type.
type objects struct {
	deployments map[string]*appsv1.Deployment
	scaled      []*kedav1alpha1.ScaledObject
	hpas        []*autoscalingv2.HorizontalPodAutoscaler
	services    map[string]*corev1.Service
	pdbs        []*policyv1.PodDisruptionBudget
	configMaps  []*corev1.ConfigMap
	ingresses   []*networkingv1.Ingress
	netpols     []*networkingv1.NetworkPolicy
	podMonitors []*monitoringv1.PodMonitor
	rules       []*monitoringv1.PrometheusRule
	pods        []*corev1.Pod
}

func load(t *testing.T) objects {
	t.Helper()
	o := objects{deployments: map[string]*appsv1.Deployment{}, services: map[string]*corev1.Service{}}
	for _, file := range manifests {
		f, err := os.Open(file)
		if err != nil {
			t.Fatal(err)
		}
		r := utilyaml.NewYAMLReader(bufio.NewReader(f))
		for n := 1; ; n++ {
			doc, err := r.Read()
			if errors.Is(err, io.EOF) {
				break
			}
			if err != nil {
				t.Fatalf("%s: %v", file, err)
			}
			var tm metav1.TypeMeta
			if err := yaml.Unmarshal(doc, &tm); err != nil {
				t.Fatalf("%s document %d: %v", file, n, err)
			}
			if tm.Kind == "" {
				continue // a comment-only document
			}
			var obj any
			switch tm.APIVersion + " " + tm.Kind {
			case "apps/v1 Deployment":
				d := &appsv1.Deployment{}
				obj, o.deployments[fmt.Sprint(file, "/", n)] = d, d
			case "v1 Service":
				s := &corev1.Service{}
				obj, o.services[fmt.Sprint(file, "/", n)] = s, s
			case "networking.k8s.io/v1 Ingress":
				x := &networkingv1.Ingress{}
				obj, o.ingresses = x, append(o.ingresses, x)
			case "networking.k8s.io/v1 NetworkPolicy":
				x := &networkingv1.NetworkPolicy{}
				obj, o.netpols = x, append(o.netpols, x)
			case "monitoring.coreos.com/v1 PodMonitor":
				x := &monitoringv1.PodMonitor{}
				obj, o.podMonitors = x, append(o.podMonitors, x)
			case "monitoring.coreos.com/v1 PrometheusRule":
				x := &monitoringv1.PrometheusRule{}
				obj, o.rules = x, append(o.rules, x)
			case "v1 Pod":
				x := &corev1.Pod{}
				obj, o.pods = x, append(o.pods, x)
			case "v1 ConfigMap":
				c := &corev1.ConfigMap{}
				obj, o.configMaps = c, append(o.configMaps, c)
			case "autoscaling/v2 HorizontalPodAutoscaler":
				h := &autoscalingv2.HorizontalPodAutoscaler{}
				obj, o.hpas = h, append(o.hpas, h)
			case "policy/v1 PodDisruptionBudget":
				p := &policyv1.PodDisruptionBudget{}
				obj, o.pdbs = p, append(o.pdbs, p)
			case "keda.sh/v1alpha1 ScaledObject":
				s := &kedav1alpha1.ScaledObject{}
				obj, o.scaled = s, append(o.scaled, s)
			default:
				t.Fatalf("%s document %d: %s %s is not checked here: add its type", file, n, tm.APIVersion, tm.Kind)
			}
			if err := strict(doc, obj); err != nil {
				t.Errorf("%s document %d (%s): %v", file, n, tm.Kind, err)
			}
		}
		f.Close()
	}
	return o
}

// TestManifestsDecodeStrictly: every document is a real object of its
// kind, with no field its type lacks, and the set is what the README says.
func TestManifestsDecodeStrictly(t *testing.T) {
	o := load(t)
	// Both renderings: six Deployments with the forwarder (cluster), five without (default); a
	// ScaledObject and a PDB per role, PDBs for the receivers and the console; the cluster's blob
	// store adds a NetworkPolicy.
	if len(o.deployments) != 11 || len(o.scaled) != 7 || len(o.hpas) != 2 || len(o.services) != 4 || len(o.pdbs) != 11 ||
		len(o.configMaps) != 2 || len(o.ingresses) != 1 || len(o.podMonitors) != 2 || len(o.pods) != 1 || len(o.netpols) != 10 || len(o.rules) != 2 {
		t.Errorf("%d Deployments, %d ScaledObjects, %d HPAs, %d Services, %d PDBs, %d ConfigMaps, %d Ingresses, %d PodMonitors, %d Pods, %d NetworkPolicies",
			len(o.deployments), len(o.scaled), len(o.hpas), len(o.services), len(o.pdbs), len(o.configMaps), len(o.ingresses), len(o.podMonitors), len(o.pods), len(o.netpols))
	}
	// Every Deployment has a PodDisruptionBudget selecting exactly its pods.
	for where, d := range o.deployments {
		found := false
		for _, p := range o.pdbs {
			if p.Spec.Selector != nil && fmt.Sprint(p.Spec.Selector.MatchLabels) == fmt.Sprint(d.Spec.Selector.MatchLabels) {
				found = true
			}
		}
		if !found {
			t.Errorf("%s (%s) has no PodDisruptionBudget", where, d.Name)
		}
		if len(d.Spec.Template.Spec.TopologySpreadConstraints) < 2 {
			t.Errorf("%s (%s) is not spread over nodes and zones", where, d.Name)
		}
	}
	// The strict decoder refuses what kubectl would drop.
	var d appsv1.Deployment
	if err := strict([]byte("apiVersion: apps/v1\nkind: Deployment\nspec:\n  replica: 2\n"), &d); err == nil {
		t.Error("a misspelt field accepted")
	}
}

// imageUser is the USER the Dockerfile's last stage runs as.
func imageUser(t *testing.T) string {
	t.Helper()
	b, err := os.ReadFile("../Dockerfile")
	if err != nil {
		t.Fatal(err)
	}
	user := ""
	for _, m := range regexp.MustCompile(`(?m)^USER\s+(\S+)`).FindAllSubmatch(b, -1) {
		user = string(m[1])
	}
	return user
}

// TestPodsStart: a container that must not run as root runs as a number the
// kubelet can check. The kubelet refuses runAsNonRoot for an image whose
// user is a name ("image has non-numeric user") unless runAsUser says who.
func TestPodsStart(t *testing.T) {
	user, _, _ := strings.Cut(imageUser(t), ":")
	numeric := regexp.MustCompile(`^\d+$`).MatchString(user)
	if !numeric {
		t.Errorf("the Dockerfile runs as %q: use a number", user)
	}
	for where, d := range load(t).deployments {
		pod := d.Spec.Template.Spec
		for _, c := range pod.Containers {
			nonRoot, uid := false, (*int64)(nil)
			if sc := pod.SecurityContext; sc != nil {
				nonRoot = sc.RunAsNonRoot != nil && *sc.RunAsNonRoot
				uid = sc.RunAsUser
			}
			if sc := c.SecurityContext; sc != nil {
				if sc.RunAsNonRoot != nil {
					nonRoot = *sc.RunAsNonRoot
				}
				if sc.RunAsUser != nil {
					uid = sc.RunAsUser
				}
			}
			if !nonRoot {
				t.Errorf("%s %s may run as root", where, c.Name)
			}
			if nonRoot && uid == nil && !numeric {
				t.Errorf("%s %s: runAsNonRoot with an image user %q and no runAsUser: the kubelet will not start it", where, c.Name, user)
			}
			if uid != nil && *uid == 0 {
				t.Errorf("%s %s: runAsUser 0", where, c.Name)
			}
		}
	}
}

// TestAutoscaledLeaveReplicas: a Deployment an HPA or KEDA scales names no
// replicas, or every kubectl apply resets the count the autoscaler chose.
func TestAutoscaledLeaveReplicas(t *testing.T) {
	o := load(t)
	byName := map[string]*appsv1.Deployment{}
	for _, d := range o.deployments {
		byName[d.Name] = d
	}
	var targets []string
	for _, h := range o.hpas {
		targets = append(targets, h.Spec.ScaleTargetRef.Name)
	}
	for _, s := range o.scaled {
		targets = append(targets, s.Spec.ScaleTargetRef.Name)
	}
	for _, name := range targets {
		d, ok := byName[name]
		if !ok {
			t.Errorf("an autoscaler targets %s, which no manifest defines", name)
			continue
		}
		if d.Spec.Replicas != nil {
			t.Errorf("%s is autoscaled but sets replicas: %d", name, *d.Spec.Replicas)
		}
	}
}

// natsValues is what the checks read of nats-values.yaml.
type natsValues struct {
	Config struct {
		Monitor struct {
			Enabled bool `json:"enabled"`
			Port    int  `json:"port"`
		} `json:"monitor"`
	} `json:"config"`
	Service struct {
		Ports map[string]struct {
			Enabled *bool `json:"enabled"`
		} `json:"ports"`
	} `json:"service"`
}

// TestTriggersReachTheirEndpoints: each KEDA trigger names an endpoint
// that exists. A nats-jetstream trigger reads NATS's monitoring port, which
// the chart serves only when config.monitor is on, and in a cluster KEDA
// asks each node by its host name under the headless Service (the client
// Service does not carry the monitor port): so it must name
// <release>-headless.<namespace>.svc.cluster.local:<monitor port>. A
// prometheus trigger names a server and a query.
func TestTriggersReachTheirEndpoints(t *testing.T) {
	raw, err := os.ReadFile("k8s/nats-values.yaml")
	if err != nil {
		t.Fatal(err)
	}
	var v natsValues
	if err := yaml.Unmarshal(raw, &v); err != nil {
		t.Fatal(err)
	}
	headless := regexp.MustCompile(`^[a-z0-9-]+-headless\.[a-z0-9-]+\.svc\.cluster\.local:(\d+)$`)
	for _, s := range load(t).scaled {
		if len(s.Spec.Triggers) == 0 {
			t.Errorf("%s has no trigger", s.Name)
		}
		for _, tr := range s.Spec.Triggers {
			switch tr.Type {
			case "prometheus":
				if !strings.HasPrefix(tr.Metadata["serverAddress"], "http") || tr.Metadata["query"] == "" || tr.Metadata["threshold"] == "" {
					t.Errorf("%s: prometheus trigger %v", s.Name, tr.Metadata)
				}
			case "nats-jetstream":
				ep := tr.Metadata["natsServerMonitoringEndpoint"]
				m := headless.FindStringSubmatch(ep)
				switch {
				case !v.Config.Monitor.Enabled:
					t.Errorf("%s reads NATS monitoring, which nats-values.yaml leaves off", s.Name)
				case m == nil:
					t.Errorf("%s: %q is not the headless Service (KEDA reaches each node under it)", s.Name, ep)
				case m[1] != fmt.Sprint(v.Config.Monitor.Port):
					t.Errorf("%s: port %s, the monitor listens on %d", s.Name, m[1], v.Config.Monitor.Port)
				}
			default:
				t.Errorf("%s: trigger type %q is not checked here", s.Name, tr.Type)
			}
		}
	}
}

// Autoscaling cannot stop silently. KEDA's prometheus scaler takes an
// answer without the series as 0 unless ignoreNullValues is "false" (its
// documented default is true), and a role then sits at its minimum however
// far behind it is. Every trigger here makes that an error, and every
// ScaledObject has a fallback for errors that holds the role or raises it
// (currentReplicasIfHigher, to at least min) and that KEDA accepts (fallback
// needs AverageValue triggers).
func TestAutoscalingHoldsWithoutData(t *testing.T) {
	for _, s := range load(t).scaled {
		fb := s.Spec.Fallback
		switch {
		case fb == nil:
			t.Errorf("%s: no fallback: an unreachable Prometheus leaves the role where KEDA last put it, and no data drops it to the minimum", s.Name)
		case fb.FailureThreshold < 1 || fb.Behavior != "currentReplicasIfHigher":
			t.Errorf("%s: fallback %+v: it must hold or raise, never lower", s.Name, *fb)
		case s.Spec.MinReplicaCount == nil || fb.Replicas <= *s.Spec.MinReplicaCount || s.Spec.MaxReplicaCount == nil || fb.Replicas > *s.Spec.MaxReplicaCount:
			t.Errorf("%s: fallback to %d replicas, not above its minimum and within its maximum", s.Name, fb.Replicas)
		}
		for _, tr := range s.Spec.Triggers {
			if tr.Metadata["ignoreNullValues"] != "false" {
				t.Errorf("%s: trigger %q has ignoreNullValues %q: with no series it reads 0", s.Name, tr.Metadata["query"], tr.Metadata["ignoreNullValues"])
			}
			if tr.MetricType != "" && tr.MetricType != "AverageValue" {
				t.Errorf("%s: metricType %s: KEDA refuses a fallback with it", s.Name, tr.MetricType)
			}
		}
	}
}

// TestValuesFileParses keeps nats-values.yaml strict YAML too.
func TestValuesFileParses(t *testing.T) {
	raw, err := os.ReadFile(filepath.Join("k8s", "nats-values.yaml"))
	if err != nil {
		t.Fatal(err)
	}
	if _, err := yaml.YAMLToJSONStrict(raw); err != nil {
		t.Error(err)
	}
}

// With a blob store (the cluster's values), the recorder and the console get
// its credentials from the Secret, the console plays from the recorder's
// store, and a NetworkPolicy lets exactly those two reach it.
func TestBlobStoreWiring(t *testing.T) {
	o := load(t)
	envOf := func(d *appsv1.Deployment) (map[string]string, []string) {
		env, from := map[string]string{}, []string{}
		c := d.Spec.Template.Spec.Containers[0]
		for _, e := range c.Env {
			env[e.Name] = e.Value
		}
		for _, f := range c.EnvFrom {
			if f.SecretRef != nil {
				from = append(from, f.SecretRef.Name)
			}
		}
		return env, from
	}
	var rec, con *appsv1.Deployment
	for where, d := range o.deployments {
		if !strings.HasPrefix(where, "rendered/cluster.yaml") {
			continue
		}
		switch d.Spec.Template.Labels["app.kubernetes.io/component"] {
		case "recorder":
			rec = d
		case "console":
			con = d
		}
	}
	if rec == nil || con == nil {
		t.Fatalf("the cluster rendering has no recorder or console: %v", o.deployments)
	}
	recEnv, recFrom := envOf(rec)
	conEnv, conFrom := envOf(con)
	if store := recEnv["AUDIOFAN_RECORDING_STORE"]; !strings.HasPrefix(store, "azblob://") || conEnv["AUDIOFAN_CONSOLE_RECORDINGS"] != store {
		t.Errorf("recorder stores to %q, console plays from %q", store, conEnv["AUDIOFAN_CONSOLE_RECORDINGS"])
	}
	if !slices.Equal(recFrom, []string{"audiofan-blob"}) || !slices.Equal(conFrom, []string{"audiofan-blob"}) {
		t.Errorf("credentials from Secrets: recorder %v, console %v", recFrom, conFrom)
	}
	allows443 := func(d *appsv1.Deployment) bool {
		for _, np := range o.netpols {
			sel, err := metav1.LabelSelectorAsSelector(&np.Spec.PodSelector)
			if err != nil {
				t.Fatal(err)
			}
			if np.Namespace != d.Namespace || !sel.Matches(labels.Set(d.Spec.Template.Labels)) {
				continue
			}
			for _, e := range np.Spec.Egress {
				for _, p := range e.Ports {
					if len(e.To) == 0 && p.Port != nil && p.Port.IntValue() == 443 {
						return true
					}
				}
			}
		}
		return false
	}
	if !allows443(rec) || !allows443(con) {
		t.Errorf("egress to the blob store on 443: recorder %v, console %v", allows443(rec), allows443(con))
	}
	for where, d := range o.deployments {
		if c := d.Spec.Template.Labels["app.kubernetes.io/component"]; c != "recorder" && c != "console" && c != "forwarder" && allows443(d) {
			t.Errorf("%s (%s) may leave the cluster on 443", where, c)
		}
	}
}
