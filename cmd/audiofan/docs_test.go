package main

import (
	"bytes"
	"fmt"
	"os"
	"path/filepath"
	"regexp"
	"slices"
	"strings"
	"testing"
)

const configurationDoc = "docs/configuration.md"

// configurationMarkdown is docs/configuration.md: every setting of every
// command, from the struct tags the parser and --help read, with the
// commands that read it and, where they differ, each one's default.
func configurationMarkdown() string {
	type row struct {
		name, help string
		defs       []string // "default" or "default (commands)"
		cmds       []string
	}
	var rows []*row
	byName := map[string]*row{}
	byDef := map[string]map[string][]string{}
	for _, c := range commands() {
		for _, s := range settingsOf(c.config()) {
			r := byName[s.name]
			if r == nil {
				r = &row{name: s.name, help: s.help}
				rows = append(rows, r)
				byName[s.name] = r
				byDef[s.name] = map[string][]string{}
			}
			r.cmds = append(r.cmds, c.name)
			if _, ok := byDef[s.name][s.def]; !ok {
				r.defs = append(r.defs, s.def)
			}
			byDef[s.name][s.def] = append(byDef[s.name][s.def], c.name)
		}
	}
	var b strings.Builder
	b.WriteString(`# Configuration

<!-- Generated from the settings' struct tags by TestConfigurationDoc (cmd/audiofan/docs_test.go):
     AUDIOFAN_UPDATE_DOCS=1 go test -run TestConfigurationDoc ./cmd/audiofan writes it again. Do not edit by hand. -->

Every setting comes from the environment; ` + "`audiofan <command> --help`" + ` prints the same list for one command, from
the same code. Sizes take ` + "`KiB`/`MiB`/`GiB`" + ` (or ` + "`KB`/`MB`/`GB`" + `); durations Go's form (` + "`500ms`, `2m`, `24h`" + `).
A setting left empty takes its default; a bad value stops the command at start with an error naming the variable.

| variable | default | read by | meaning |
| --- | --- | --- | --- |
`)
	for _, r := range rows {
		var defs []string
		for _, d := range r.defs {
			shown := "(empty)"
			if d != "" {
				shown = "`" + strings.ReplaceAll(d, "|", `\|`) + "`"
			}
			if len(r.defs) > 1 {
				shown += " (" + strings.Join(byDef[r.name][d], ", ") + ")"
			}
			defs = append(defs, shown)
		}
		who := strings.Join(r.cmds, ", ")
		var missing []string
		for _, c := range commands() {
			if !slices.Contains(r.cmds, c.name) {
				missing = append(missing, c.name)
			}
		}
		switch {
		case len(missing) == 0:
			who = "every command"
		case len(missing) <= 3 && len(r.cmds) > len(missing):
			who = "every command but " + strings.Join(missing, ", ")
		}
		fmt.Fprintf(&b, "| `%s` | %s | %s | %s |\n", r.name, strings.Join(defs, "; "), who, strings.ReplaceAll(r.help, "|", `\|`))
	}
	return b.String()
}

// readBy reads the page's "read by" column.
func readBy(col, cmd string) bool {
	if col == "every command" {
		return true
	}
	if but, ok := strings.CutPrefix(col, "every command but "); ok {
		return !slices.Contains(strings.Split(but, ", "), cmd)
	}
	return slices.Contains(strings.Split(col, ", "), cmd)
}

// docs/configuration.md is what the code says, and says what --help says.
func TestConfigurationDoc(t *testing.T) {
	want := configurationMarkdown()
	path := filepath.Join(repo, configurationDoc)
	if os.Getenv("AUDIOFAN_UPDATE_DOCS") != "" {
		if err := os.WriteFile(path, []byte(want), 0o644); err != nil {
			t.Fatal(err)
		}
	}
	got, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	if string(got) != want {
		t.Fatalf("%s is out of date: AUDIOFAN_UPDATE_DOCS=1 go test -run TestConfigurationDoc ./cmd/audiofan", configurationDoc)
	}
	// Each command's --help lists exactly the variables the page gives it,
	// with the same default.
	line := regexp.MustCompile(`^  (\S+)\s+(\S.*?)\s{2,}`)
	for _, c := range commands() {
		var out, errOut bytes.Buffer
		if code := run([]string{c.name, "--help"}, &out, &errOut); code != 0 {
			t.Fatalf("%s --help: exit %d: %s", c.name, code, errOut.String())
		}
		_, table, _ := strings.Cut(out.String(), "Settings (environment):\n")
		for _, l := range strings.Split(table, "\n")[1:] {
			m := line.FindStringSubmatch(l)
			if m == nil {
				continue
			}
			def := "`" + m[2] + "`"
			if m[2] == "(empty)" {
				def = "(empty)"
			}
			row := regexp.MustCompile("(?m)^\\| `" + regexp.QuoteMeta(m[1]) + "` \\| (.*?) \\| (.*?) \\|").FindStringSubmatch(string(got))
			switch {
			case row == nil:
				t.Errorf("%s --help lists %s, the page does not", c.name, m[1])
			case !strings.Contains(row[1], def):
				t.Errorf("%s --help gives %s the default %s, the page %s", c.name, m[1], def, row[1])
			case !readBy(row[2], c.name):
				t.Errorf("the page says %s is read by %s, not %s", m[1], row[2], c.name)
			}
		}
	}
}

// githubAnchor is the anchor GitHub gives a heading.
func githubAnchor(h string) string {
	h = strings.ToLower(strings.TrimSpace(h))
	h = regexp.MustCompile(`[^\p{L}\p{N}_\- ]`).ReplaceAllString(h, "")
	return strings.ReplaceAll(h, " ", "-")
}

// Every link in the README and docs/ to a file of the repository names a
// file that exists, and an anchor that one of its headings gives.
func TestDocsLinks(t *testing.T) {
	pages, _ := filepath.Glob(filepath.Join(repo, "docs", "*.md"))
	pages = append(pages, filepath.Join(repo, "README.md"), filepath.Join(repo, "CHANGELOG.md"))
	anchors := map[string]map[string]bool{}
	anchorsOf := func(path string) map[string]bool {
		if a, ok := anchors[path]; ok {
			return a
		}
		a := map[string]bool{}
		raw, _ := os.ReadFile(path)
		inCode := false
		for _, l := range strings.Split(string(raw), "\n") {
			if strings.HasPrefix(l, "```") {
				inCode = !inCode
			}
			if m := regexp.MustCompile(`^#+ (.*)`).FindStringSubmatch(l); m != nil && !inCode {
				a[githubAnchor(m[1])] = true
			}
		}
		anchors[path] = a
		return a
	}
	link := regexp.MustCompile(`\]\(([^)\s]+)\)`)
	for _, page := range pages {
		raw, err := os.ReadFile(page)
		if err != nil {
			t.Fatal(err)
		}
		for _, m := range link.FindAllStringSubmatch(string(raw), -1) {
			target := m[1]
			if regexp.MustCompile(`^[a-z]+:`).MatchString(target) {
				continue // a web address
			}
			file, anchor, _ := strings.Cut(target, "#")
			path := page
			if file != "" {
				path = filepath.Join(filepath.Dir(page), file)
				if _, err := os.Stat(path); err != nil {
					t.Errorf("%s links to %s, which does not exist", rel(page), target)
					continue
				}
			}
			if anchor != "" && strings.HasSuffix(path, ".md") && !anchorsOf(path)[anchor] {
				t.Errorf("%s links to %s: no such heading", rel(page), target)
			}
		}
	}
}

func rel(p string) string {
	r, err := filepath.Rel(repo, p)
	if err != nil {
		return p
	}
	return r
}

// Every shell block in the README and docs/ runs in a test, or says why
// not: the line before it is <!-- quickstart … --> (run by TestQuickStart),
// <!-- tested: TestA, TestB … --> naming tests that exist, or
// <!-- not tested: why -->.
func TestDocsCommands(t *testing.T) {
	pages, _ := filepath.Glob(filepath.Join(repo, "docs", "*.md"))
	pages = append(pages, filepath.Join(repo, "README.md"), filepath.Join(repo, "examples", "node", "README.md"))
	var sources bytes.Buffer
	_ = filepath.WalkDir(repo, func(path string, d os.DirEntry, err error) error {
		if err == nil && strings.HasSuffix(path, "_test.go") {
			b, _ := os.ReadFile(path)
			sources.Write(b)
		}
		if d != nil && d.IsDir() && d.Name() == "node_modules" {
			return filepath.SkipDir
		}
		return nil
	})
	marker := regexp.MustCompile(`^<!-- (quickstart(?:: [^>]*)?|tested: ([^)>]*?)(?: \(.*\))?|not tested: .+) -->$`)
	for _, page := range pages {
		raw, err := os.ReadFile(page)
		if err != nil {
			t.Fatal(err)
		}
		lines := strings.Split(string(raw), "\n")
		for i, l := range lines {
			if l != "```sh" {
				continue
			}
			m := []string(nil)
			if i > 0 {
				m = marker.FindStringSubmatch(lines[i-1])
			}
			if m == nil {
				t.Errorf("%s:%d: a shell block without <!-- quickstart -->, <!-- tested: … --> or <!-- not tested: why -->", rel(page), i+1)
				continue
			}
			for _, name := range strings.Split(m[2], ", ") {
				if name != "" && !bytes.Contains(sources.Bytes(), []byte("func "+name+"(")) {
					t.Errorf("%s:%d: names %s, which is no test", rel(page), i+1, name)
				}
			}
		}
	}
}
