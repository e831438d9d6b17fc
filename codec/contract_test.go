package codec_test

import (
	"bytes"
	"encoding/base64"
	"encoding/hex"
	"encoding/json"
	"fmt"
	"hash/fnv"
	"os"
	"path/filepath"
	"reflect"
	"sort"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/santhosh-tekuri/jsonschema/v6"
	"github.com/vmihailenco/msgpack/v5"

	"github.com/audiofan/audiofan/codec"
)

// vector is one golden vector of the contract (codec/testdata/vectors):
// the MessagePack bytes of a payload and its canonical JSON.
type vector struct {
	Payload string `json:"payload"` // the schema's name: frame, transcript, …
	Subject string `json:"subject"` // where it is stored, with 32 partitions (outbound: where it is published)
	// Partition is the call's partition of 32: FNV-1a (32 bit) of the
	// call token, modulo 32, as nats-server's partition() computes it.
	Partition int             `json:"partition"`
	Note      string          `json:"note"`
	MsgPack   string          `json:"msgpack"` // hex
	JSON      json.RawMessage `json:"json"`
}

var (
	t0   = time.Date(2026, 12, 7, 9, 0, 0, 20_000_000, time.UTC)
	got  = t0.Add(73*time.Millisecond + 123_456*time.Nanosecond)
	pstn = "4:+14255550123"
	acs  = "8:acs:00000000-aaaa-4bbb-8ccc-000000000001_0000002a"
	call = "2f1c9e7a-4b1d-4e0e-9a3b-7d6c5b4a3f21"
)

func pcm(n int) []byte {
	b := make([]byte, n)
	for i := range b {
		b[i] = byte(i*7 + 3)
	}
	return b
}

// samples are the payloads the vectors hold, with ACS-shaped ids, a
// sender clock an hour behind the receiver's and nanosecond times.
func samples(t *testing.T) map[string]struct {
	v    any
	new  func() any
	subj string
	note string
} {
	summary, err := codec.NewEvent(codec.EventRecording, codec.Recording{Reason: "ended", SampleRate: 16000, Start: t0, DurationMs: 20,
		Files: []codec.RecordingFile{{Name: "4_3A_2B14255550123.wav", Participant: pstn, Path: "recordings/" + call + "/4_3A_2B14255550123.wav",
			Bytes: 684, SHA256: strings.Repeat("ab", 32), DurationMs: 20, Frames: 1}}})
	if err != nil {
		t.Fatal(err)
	}
	summary.V, summary.Call, summary.Source, summary.At = codec.Version, call, codec.SourceRecording, got
	tok := func(s string) string { return string(codec.EncodeToken(s)) }
	type sample = struct {
		v    any
		new  func() any
		subj string
		note string
	}
	return map[string]sample{
		"frame-unmixed": {&codec.Frame{V: 1, Call: call, Participant: pstn, Seq: 1, Timestamp: t0.Add(-time.Hour), ReceivedAt: got,
			SampleRate: 16000, Channels: 1, Encoding: codec.EncodingPCM16, Data: pcm(640)}, func() any { return new(codec.Frame) },
			"calls.<p>." + tok(call) + ".audio." + tok(pstn), "a PSTN participant's 20 ms at 16 kHz; the sender's clock an hour behind"},
		"frame-mixed-silent": {&codec.Frame{V: 1, Call: call, Seq: 7, Timestamp: t0, ReceivedAt: got, SampleRate: 24000, Channels: 1,
			Encoding: codec.EncodingPCM16, Silent: true, Data: make([]byte, 960)}, func() any { return new(codec.Frame) },
			"calls.<p>." + tok(call) + ".audio._mixed", "mixed audio at 24 kHz, silent"},
		"transcript": {&codec.Transcript{V: 1, Call: call, Participant: acs, Text: "Hello, how can I help?", Format: "display",
			Confidence: 0.93, Offset: 12_500_000, Duration: 9_800_000, Words: []codec.Word{{Text: "Hello", Offset: 12_500_000, Duration: 2_000_000},
				{Text: "help", Offset: 20_000_000, Duration: -1}}, Final: true, Language: "en-US", ReceivedAt: got},
			func() any { return new(codec.Transcript) }, "calls.<p>." + tok(call) + ".transcript." + tok(acs), "a final result; a word without a duration"},
		"dtmf": {&codec.Dtmf{V: 1, Call: call, Participant: pstn, Tone: "3", Timestamp: t0, ReceivedAt: got},
			func() any { return new(codec.Dtmf) }, "calls.<p>." + tok(call) + ".dtmf." + tok(pstn), ""},
		"lifecycle-started": {&codec.Lifecycle{V: 1, Call: call, Type: codec.LifecycleStarted, Stream: codec.StreamAudio,
			Connection: "9f86d081884c7d659a2feaa0c55ad015", Receiver: "receiver-7c9d", SubscriptionID: "7e57ab1e-0000-4000-8000-000000000001",
			CorrelationID: "c0ffee00-0000-4000-8000-000000000002", SampleRate: 16000, Channels: 1, Encoding: codec.EncodingPCM16, At: got,
			Frames: map[string]uint64{}}, func() any { return new(codec.Lifecycle) }, "calls.<p>." + tok(call) + ".lifecycle", ""},
		"lifecycle-ended": {&codec.Lifecycle{V: 1, Call: call, Type: codec.LifecycleEnded, Stream: codec.StreamAudio,
			Connection: "9f86d081884c7d659a2feaa0c55ad015", Receiver: "receiver-7c9d", SubscriptionID: "7e57ab1e-0000-4000-8000-000000000001",
			SampleRate: 16000, Channels: 1, Encoding: codec.EncodingPCM16, At: got.Add(time.Minute), Reason: "peer",
			Frames: map[string]uint64{pstn: 3000}}, func() any { return new(codec.Lifecycle) }, "calls.<p>." + tok(call) + ".lifecycle", "one participant"},
		"event-recording": {&summary, func() any { return new(codec.Event) }, "calls.<p>." + tok(call) + ".events.recording", "the recorder's event"},
		"outbound-audio": {&codec.Outbound{V: 1, Kind: codec.OutboundKindAudio, Data: pcm(320)}, func() any { return new(codec.Outbound) },
			"calls." + tok(call) + ".outbound", "published unpartitioned; stored as calls.<p>.<call>.outbound"},
		"outbound-stop": {&codec.Outbound{V: 1, Kind: codec.OutboundKindStop, Data: []byte{}}, func() any { return new(codec.Outbound) },
			"calls." + tok(call) + ".outbound", ""},
	}
}

// partitionOf is the contract's partition function, written out here so
// that the vectors check it (broker.Subjects.Partition is the code's).
func partitionOf(tok codec.Token, partitions int) int {
	h := fnv.New32a()
	h.Write([]byte(tok))
	return int(h.Sum32() % uint32(partitions))
}

// canonicalJSON is the contract's JSON form of a MessagePack payload
// (docs/contract.md, "Canonical JSON"): maps as objects, bin as base64,
// timestamps as RFC 3339 in UTC with nanoseconds, trailing zeros dropped.
func canonicalJSON(t *testing.T, b []byte) []byte {
	t.Helper()
	dec := msgpack.NewDecoder(bytes.NewReader(b))
	v, err := dec.DecodeInterface()
	if err != nil {
		t.Fatal(err)
	}
	var conv func(any) any
	conv = func(v any) any {
		switch x := v.(type) {
		case map[string]any:
			out := map[string]any{}
			for k, e := range x {
				out[k] = conv(e)
			}
			return out
		case []any:
			out := make([]any, len(x))
			for i, e := range x {
				out[i] = conv(e)
			}
			return out
		case []byte:
			return base64.StdEncoding.EncodeToString(x)
		case time.Time:
			return x.UTC().Format(time.RFC3339Nano)
		}
		return v
	}
	j, err := json.Marshal(conv(v)) // encoding/json sorts object keys
	if err != nil {
		t.Fatal(err)
	}
	return j
}

func compact(t *testing.T, raw []byte) []byte {
	t.Helper()
	var b bytes.Buffer
	if err := json.Compact(&b, raw); err != nil {
		t.Fatal(err)
	}
	// Sort keys as canonicalJSON does.
	var v any
	if err := json.Unmarshal(b.Bytes(), &v); err != nil {
		t.Fatal(err)
	}
	out, _ := json.Marshal(v)
	return out
}

// The codec is held to the contract's golden vectors: each vector's bytes
// decode into the payload it names and their canonical JSON is the
// vector's; the payload encodes to the same canonical JSON; and the JSON
// is valid under the payload's schema. AUDIOFAN_UPDATE_VECTORS=1 writes
// the vectors again: a change of the contract, which docs/contract.md's
// version and change list must say.
func TestContractVectors(t *testing.T) {
	dir := "testdata/vectors"
	ss := samples(t)
	if os.Getenv("AUDIOFAN_UPDATE_VECTORS") != "" {
		for name, s := range ss {
			b, err := codec.Marshal(s.v)
			if err != nil {
				t.Fatal(err)
			}
			var pretty bytes.Buffer
			_ = json.Indent(&pretty, canonicalJSON(t, b), "  ", "  ")
			payload, _, _ := strings.Cut(name, "-")
			var out bytes.Buffer
			enc := json.NewEncoder(&out)
			enc.SetEscapeHTML(false)
			enc.SetIndent("", "  ")
			p := partitionOf(codec.EncodeToken(call), 32)
			if err := enc.Encode(vector{Payload: payload, Subject: strings.Replace(s.subj, "<p>", strconv.Itoa(p), 1), Partition: p,
				Note: s.note, MsgPack: hex.EncodeToString(b), JSON: pretty.Bytes()}); err != nil {
				t.Fatal(err)
			}
			if err := os.WriteFile(filepath.Join(dir, name+".json"), out.Bytes(), 0o644); err != nil {
				t.Fatal(err)
			}
		}
	}
	files, _ := filepath.Glob(filepath.Join(dir, "*.json"))
	if len(files) != len(ss) {
		t.Fatalf("%d vectors, %d samples", len(files), len(ss))
	}
	c := jsonschema.NewCompiler()
	schemas := map[string]*jsonschema.Schema{}
	for _, f := range files {
		name := strings.TrimSuffix(filepath.Base(f), ".json")
		t.Run(name, func(t *testing.T) {
			raw, err := os.ReadFile(f)
			if err != nil {
				t.Fatal(err)
			}
			var vec vector
			if err := json.Unmarshal(raw, &vec); err != nil {
				t.Fatal(err)
			}
			s, ok := ss[name]
			if !ok {
				t.Fatalf("no sample for vector %s", name)
			}
			b, err := hex.DecodeString(vec.MsgPack)
			if err != nil {
				t.Fatal(err)
			}
			want := compact(t, vec.JSON)
			if got := canonicalJSON(t, b); !bytes.Equal(got, want) {
				t.Errorf("the vector's bytes decode to\n%s\nits JSON says\n%s", got, want)
			}
			// Decoded by the codec into its type: the sample, whose
			// encoding has the vector's canonical JSON.
			into := s.new()
			if f, ok := into.(*codec.Frame); ok {
				err = codec.UnmarshalFrame(b, f)
			} else {
				err = codec.Unmarshal(b, into)
			}
			if err != nil {
				t.Fatal(err)
			}
			again, _ := codec.Marshal(into)
			if got := canonicalJSON(t, again); !bytes.Equal(got, want) {
				t.Errorf("decoded and encoded again:\n%s\nwant\n%s", got, want)
			}
			enc, _ := codec.Marshal(s.v)
			if got := canonicalJSON(t, enc); !bytes.Equal(got, want) {
				t.Errorf("the codec encodes the sample as\n%s\nthe vector says\n%s", got, want)
			}
			if p := partitionOf(codec.EncodeToken(call), 32); vec.Partition != p || (vec.Payload != "outbound" && !strings.HasPrefix(vec.Subject, "calls."+strconv.Itoa(p)+".")) {
				t.Errorf("partition %d, subject %s: the call's partition of 32 is %d", vec.Partition, vec.Subject, p)
			}
			if _, ok := into.(*codec.Frame); ok && !bytes.Equal(enc, b) {
				t.Errorf("a frame's bytes are not the vector's") // the hand-written encoder is deterministic
			}
			sc := schemas[vec.Payload]
			if sc == nil {
				path, _ := filepath.Abs(filepath.Join("..", "docs", "schemas", vec.Payload+".schema.json"))
				if sc, err = c.Compile(path); err != nil {
					t.Fatal(err)
				}
				schemas[vec.Payload] = sc
			}
			inst, err := jsonschema.UnmarshalJSON(bytes.NewReader(want))
			if err != nil {
				t.Fatal(err)
			}
			if err := sc.Validate(inst); err != nil {
				t.Errorf("not valid under %s.schema.json: %v", vec.Payload, err)
			}
		})
	}
	// Every payload type has a schema and a vector.
	var kinds []string
	for _, s := range ss {
		kinds = append(kinds, reflect.TypeOf(s.v).Elem().Name())
	}
	sort.Strings(kinds)
	if fmt.Sprint(kinds) != "[Dtmf Event Frame Frame Lifecycle Lifecycle Outbound Outbound Transcript]" {
		t.Errorf("vectors of %v", kinds)
	}
}
