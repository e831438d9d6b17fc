package deploy

import (
	"bufio"
	"errors"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"slices"
	"sort"
	"strings"
	"testing"

	chartcommon "helm.sh/helm/v4/pkg/chart/common"
	chartutil "helm.sh/helm/v4/pkg/chart/common/util"
	"helm.sh/helm/v4/pkg/chart/v2/lint"
	"helm.sh/helm/v4/pkg/chart/v2/lint/support"
	"helm.sh/helm/v4/pkg/chart/v2/loader"
	"helm.sh/helm/v4/pkg/engine"
	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	utilyaml "k8s.io/apimachinery/pkg/util/yaml"
	psaapi "k8s.io/pod-security-admission/api"
	"k8s.io/pod-security-admission/policy"
	"sigs.k8s.io/yaml"
)

const chartDir = "helm/audiofan"

// valuesFiles are the values the project ships: the chart's defaults, and
// each file under ci/ (a cluster with every part on).
func valuesFiles(t *testing.T) map[string]string {
	t.Helper()
	files := map[string]string{"default": ""}
	ci, _ := filepath.Glob(filepath.Join(chartDir, "ci", "*-values.yaml"))
	for _, f := range ci {
		files[strings.TrimSuffix(filepath.Base(f), "-values.yaml")] = f
	}
	if len(files) < 2 {
		t.Fatalf("values files: %v", files)
	}
	return files
}

// render renders the chart as `helm template audiofan deploy/helm/audiofan
// -f <file>` does, the values checked against values.schema.json.
func render(t *testing.T, valuesFile string, set map[string]any) (string, error) {
	t.Helper()
	ch, err := loader.Load(chartDir)
	if err != nil {
		t.Fatal(err)
	}
	vals := map[string]any{}
	if valuesFile != "" {
		raw, err := os.ReadFile(valuesFile)
		if err != nil {
			t.Fatal(err)
		}
		if err := yaml.Unmarshal(raw, &vals); err != nil {
			t.Fatal(err)
		}
	}
	for k, v := range set {
		vals = chartutil.MergeTables(map[string]any{k: v}, vals)
	}
	rv, err := chartutil.ToRenderValuesWithSchemaValidation(ch, vals, chartcommon.ReleaseOptions{Name: "audiofan", Namespace: "audiofan", IsInstall: true}, nil, false)
	if err != nil {
		return "", err
	}
	out, err := engine.Render(ch, rv)
	if err != nil {
		return "", err
	}
	var names []string
	for name := range out {
		if strings.HasSuffix(name, ".yaml") {
			names = append(names, name)
		}
	}
	sort.Strings(names)
	var b strings.Builder
	for _, name := range names {
		if strings.TrimSpace(out[name]) == "" {
			continue
		}
		fmt.Fprintf(&b, "---\n# Source: %s\n%s\n", name, strings.TrimSpace(out[name]))
	}
	return b.String(), nil
}

// renderedPath is where the rendering of a values file is kept, for the
// main module's checks of settings and metrics (it does not import Helm).
func renderedPath(name string) string { return filepath.Join("rendered", name+".yaml") }

// The chart renders with every values file the project ships, and the
// renderings kept under deploy/rendered are what it renders
// (AUDIOFAN_UPDATE_RENDERED=1 writes them again).
func TestChartRenders(t *testing.T) {
	for name, file := range valuesFiles(t) {
		out, err := render(t, file, nil)
		if err != nil {
			t.Fatalf("%s: %v", name, err)
		}
		if os.Getenv("AUDIOFAN_UPDATE_RENDERED") != "" {
			if err := os.WriteFile(renderedPath(name), []byte(out), 0o644); err != nil {
				t.Fatal(err)
			}
		}
		kept, err := os.ReadFile(renderedPath(name))
		if err != nil || string(kept) != out {
			t.Errorf("%s is not what the chart renders with %s: AUDIOFAN_UPDATE_RENDERED=1 go test -run TestChartRenders ./deploy", renderedPath(name), name)
		}
	}
}

// helm lint passes on the chart with every values file, warnings included.
func TestChartLint(t *testing.T) {
	for name, file := range valuesFiles(t) {
		vals := map[string]any{}
		if file != "" {
			raw, _ := os.ReadFile(file)
			if err := yaml.Unmarshal(raw, &vals); err != nil {
				t.Fatal(err)
			}
		}
		l := lint.RunAll(chartDir, vals, "audiofan")
		for _, m := range l.Messages {
			if m.Severity >= support.WarningSev {
				t.Errorf("helm lint (%s): %v", name, m)
			} else {
				t.Logf("helm lint (%s): %v", name, m)
			}
		}
	}
}

// Values the chart refuses, with a message naming the value.
func TestChartRefusesBadValues(t *testing.T) {
	for _, tc := range []struct {
		set  map[string]any
		want string
	}{
		{map[string]any{"bus": map[string]any{"shards": 0}}, "shards"},
		{map[string]any{"acs": map[string]any{"auth": "none"}}, "auth"},
		{map[string]any{"recorder": map[string]any{"autoscaling": map[string]any{"maxReplicas": 40}}}, "more than the bus's partitions"},
		{map[string]any{"forwarder": map[string]any{"enabled": true}}, "forwarder.targets"},
		{map[string]any{"receiver": map[string]any{"drainTimeout": "2m"}}, "drainTimeout"},
		{map[string]any{"recorder": map[string]any{"env": map[string]any{"PATH": "/x"}}}, "PATH"},
		{map[string]any{"recorder": map[string]any{"store": "azblob://user:key@recordings"}}, "store"}, // credentials go in a Secret
		{map[string]any{"recorder": map[string]any{"store": "gs://recordings"}}, "store"},
	} {
		_, err := render(t, "", tc.set)
		if err == nil || !strings.Contains(err.Error(), tc.want) {
			t.Errorf("values %v: %v, want an error naming %q", tc.set, err, tc.want)
		}
	}
}

// podSpecs are every pod the renderings make: the Deployments' templates
// and the bare Pods (helm test's).
func podSpecs(t *testing.T, rendered string) map[string]*corev1.PodTemplateSpec {
	t.Helper()
	out := map[string]*corev1.PodTemplateSpec{}
	r := utilyaml.NewYAMLReader(bufio.NewReader(strings.NewReader(rendered)))
	for {
		doc, err := r.Read()
		if errors.Is(err, io.EOF) {
			break
		} else if err != nil {
			t.Fatal(err)
		}
		var tm metav1.TypeMeta
		_ = yaml.Unmarshal(doc, &tm)
		var obj struct {
			Metadata metav1.ObjectMeta `json:"metadata"`
		}
		if err := yaml.Unmarshal(doc, &obj); err != nil {
			t.Fatal(err)
		}
		switch tm.Kind {
		case "Deployment":
			var d struct {
				Spec struct {
					Template corev1.PodTemplateSpec `json:"template"`
				} `json:"spec"`
			}
			if err := yaml.Unmarshal(doc, &d); err != nil {
				t.Fatal(err)
			}
			out[tm.Kind+"/"+obj.Metadata.Name] = &d.Spec.Template
		case "Pod":
			var p corev1.Pod
			if err := yaml.Unmarshal(doc, &p); err != nil {
				t.Fatal(err)
			}
			out[tm.Kind+"/"+obj.Metadata.Name] = &corev1.PodTemplateSpec{ObjectMeta: p.ObjectMeta, Spec: p.Spec}
		}
	}
	return out
}

// Every pod passes the restricted Pod Security Standard, as the API
// server's own admission code (k8s.io/pod-security-admission) evaluates it
// at its latest version: non-root by number, RuntimeDefault seccomp, every
// capability dropped, no privilege escalation, only restricted volume
// types; and beyond it, a read-only root filesystem with the writable
// folders on emptyDir.
func TestPodsRestricted(t *testing.T) {
	eval, err := policy.NewEvaluator(policy.DefaultChecks(), nil)
	if err != nil {
		t.Fatal(err)
	}
	lv := psaapi.LevelVersion{Level: psaapi.LevelRestricted, Version: psaapi.LatestVersion()}
	for name, file := range valuesFiles(t) {
		out, err := render(t, file, nil)
		if err != nil {
			t.Fatal(err)
		}
		pods := podSpecs(t, out)
		if len(pods) < 5 {
			t.Fatalf("%s: %d pods", name, len(pods))
		}
		for where, p := range pods {
			res := policy.AggregateCheckResults(eval.EvaluatePod(lv, &p.ObjectMeta, &p.Spec))
			if !res.Allowed {
				t.Errorf("%s %s is refused by the restricted profile: %s", name, where, res.ForbiddenDetail())
			}
			for _, c := range p.Spec.Containers {
				if sc := c.SecurityContext; sc == nil || sc.ReadOnlyRootFilesystem == nil || !*sc.ReadOnlyRootFilesystem {
					t.Errorf("%s %s %s: root filesystem writable", name, where, c.Name)
				}
			}
			if uid := p.Spec.SecurityContext.RunAsUser; uid == nil || *uid == 0 {
				t.Errorf("%s %s: no numeric non-root user", name, where)
			}
		}
		// The recorder's spool: an emptyDir, asked for as ephemeral storage.
		rec := pods["Deployment/audiofan-recorder"]
		if rec == nil {
			t.Fatalf("%s: no recorder", name)
		}
		spool := slices.IndexFunc(rec.Spec.Volumes, func(v corev1.Volume) bool {
			return v.Name == "spool" && v.EmptyDir != nil && v.EmptyDir.SizeLimit != nil
		})
		if _, ok := rec.Spec.Containers[0].Resources.Requests[corev1.ResourceEphemeralStorage]; spool < 0 || !ok {
			t.Errorf("%s: the recorder's spool is not a sized emptyDir with an ephemeral-storage request", name)
		}
	}
}

// A pod the restricted profile refuses is caught: the check can fail.
func TestPodsRestrictedCatchesRoot(t *testing.T) {
	eval, _ := policy.NewEvaluator(policy.DefaultChecks(), nil)
	out, err := render(t, "", nil)
	if err != nil {
		t.Fatal(err)
	}
	p := podSpecs(t, out)["Deployment/audiofan-analytics"]
	p.Spec.Containers[0].SecurityContext.Capabilities = nil
	res := policy.AggregateCheckResults(eval.EvaluatePod(psaapi.LevelVersion{Level: psaapi.LevelRestricted, Version: psaapi.LatestVersion()}, &p.ObjectMeta, &p.Spec))
	if res.Allowed {
		t.Error("a container that drops no capability passed the restricted profile")
	}
}

// The install steps in docs/deployment.md take the chart as it is: every
// `helm install … deploy/helm/audiofan` there renders with the values it
// sets (placeholders filled in), and every file it names exists.
func TestDocsInstallSteps(t *testing.T) {
	raw, err := os.ReadFile("../docs/deployment.md")
	if err != nil {
		t.Fatal(err)
	}
	n := 0
	for _, line := range strings.Split(string(raw), "\n") {
		line = strings.TrimSpace(line)
		if !strings.HasPrefix(line, "helm install audiofan deploy/helm/audiofan") {
			continue
		}
		n++
		set := map[string]any{}
		fields := strings.Fields(line)
		for i := 0; i < len(fields); i++ {
			switch fields[i] {
			case "--set":
				k, v, _ := strings.Cut(fields[i+1], "=")
				v = strings.NewReplacer("<registry>", "registry.example.com", "<tag>", "v0.1.0").Replace(v)
				m := set
				parts := strings.Split(k, ".")
				for _, p := range parts[:len(parts)-1] {
					if _, ok := m[p].(map[string]any); !ok {
						m[p] = map[string]any{}
					}
					m = m[p].(map[string]any)
				}
				m[parts[len(parts)-1]] = v
				i++
			case "-f":
				if _, err := os.Stat(filepath.Join("..", fields[i+1])); err != nil {
					t.Errorf("the docs install with %s: %v", fields[i+1], err)
				}
				i++
			}
		}
		if _, err := render(t, "", set); err != nil {
			t.Errorf("the docs' %q does not render: %v", line, err)
		}
	}
	if n == 0 {
		t.Error("docs/deployment.md has no helm install of the chart")
	}
}
