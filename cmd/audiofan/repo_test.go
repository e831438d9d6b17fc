package main

import (
	"bytes"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strings"
	"testing"

	"github.com/audiofan/audiofan/codec"
)

// largeOnPurpose lists tracked files allowed past maxTracked, each with why.
var largeOnPurpose = map[string]string{}

const maxTracked = 1 << 20

// The repository holds sources, not build outputs: no tracked file is over
// 1 MB unless listed on purpose, and none is binary (golden vectors are
// kept as hex).
func TestTrackedFiles(t *testing.T) {
	if _, err := os.Stat(filepath.Join(repo, ".git")); err != nil {
		t.Skip("not a git checkout")
	}
	out, err := exec.Command("git", "-C", repo, "ls-files", "-z").Output()
	if err != nil {
		t.Fatalf("git ls-files: %v", err)
	}
	files := strings.Split(strings.TrimRight(string(out), "\x00"), "\x00")
	if len(files) < 100 {
		t.Fatalf("git ls-files listed %d files", len(files))
	}
	for _, f := range files {
		b, err := os.ReadFile(filepath.Join(repo, f))
		if os.IsNotExist(err) {
			continue // deleted in the working tree, not yet committed
		} else if err != nil {
			t.Fatal(err)
		}
		if _, ok := largeOnPurpose[f]; !ok && len(b) > maxTracked {
			t.Errorf("%s is %d bytes: past 1 MB (list it in largeOnPurpose, with why, if it must be tracked)", f, len(b))
		}
		if bytes.IndexByte(b[:min(len(b), 8000)], 0) >= 0 {
			t.Errorf("%s is binary: build outputs stay out of git", f)
		}
	}
}

// `audiofan version` names the contract's version, and the image's label
// says the same.
func TestVersion(t *testing.T) {
	var out, errOut bytes.Buffer
	if code := run([]string{"version"}, &out, &errOut); code != 0 {
		t.Fatalf("exit %d: %s", code, errOut.String())
	}
	if !regexp.MustCompile(`^audiofan \S+ \(commit \S+.*\) contract ` + regexp.QuoteMeta(codec.ContractVersion) + ` go1\.`).MatchString(out.String()) {
		t.Errorf("audiofan version: %q", out.String())
	}
	docker, err := os.ReadFile(filepath.Join(repo, "Dockerfile"))
	if err != nil {
		t.Fatal(err)
	}
	if !strings.Contains(string(docker), `dev.audiofan.contract.version="`+codec.ContractVersion+`"`) {
		t.Errorf("the Dockerfile's contract label is not %s", codec.ContractVersion)
	}
}
