package codec_test

import (
	"os"
	"os/exec"
	"path/filepath"
	"testing"
)

// The same golden vectors decode to the same JSON in a second language:
// examples/node/check-vectors.mjs, with @msgpack/msgpack, also computes
// each vector's partition and subject tokens from its call id. make test
// installs the node examples' packages and sets AUDIOFAN_NODE_EXAMPLES.
func TestContractVectorsInNode(t *testing.T) {
	dir := os.Getenv("AUDIOFAN_NODE_EXAMPLES")
	if dir == "" {
		t.Skip("AUDIOFAN_NODE_EXAMPLES is not set: make test installs examples/node (make node-examples) and sets it")
	}
	vectors, err := filepath.Abs("testdata/vectors")
	if err != nil {
		t.Fatal(err)
	}
	out, err := exec.Command("node", filepath.Join(dir, "check-vectors.mjs"), vectors).CombinedOutput()
	if err != nil {
		t.Fatalf("check-vectors.mjs: %v\n%s", err, out)
	}
	t.Logf("%s", out)
}
