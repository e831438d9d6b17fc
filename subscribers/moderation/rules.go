package moderation

import (
	_ "embed"
	"errors"
	"fmt"
	"math"
	"regexp"
	"slices"
	"strings"
	"time"

	"github.com/audiofan/audiofan/subscribers/speech"
	yaml "go.yaml.in/yaml/v3"
)

//go:embed default.yaml
var defaultRules []byte

// RuleKind is what a rule watches for, the rules file's kind key, and a
// hit's kind on the bus. (Not a subject's kind, broker.Kind.)
type RuleKind string

// Kinds of rules.
const (
	KindShouting   RuleKind = "shouting"
	KindClipping            = "clipping"
	KindDeadAir             = "dead_air"
	KindDominating          = "dominating"
	KindKeywords            = "keywords"
	KindRegex               = "regex"
	KindSensitive           = "sensitive"
)

// Actions a rule takes on a hit, besides the event.
const (
	ActionEvent = "event"
	ActionPlay  = "play"
	ActionStop  = "stop"
)

// ErrRules is wrapped by every error in a rules file.
var ErrRules = errors.New("rules")

// Rule is one rule of the file.
type Rule struct {
	Name     string
	Kind     RuleKind
	Action   string
	Cooldown time.Duration
	Line     int // in the file, for messages

	Level float64       // shouting: dBFS
	For   time.Duration // shouting, clipping, dead_air
	Ratio float64       // clipping: share of frames clipped
	Share float64       // dominating: share of the talk time
	After time.Duration // dominating: call time before it is judged

	phrases *phrases       // keywords
	re      *regexp.Regexp // regex
	types   []string       // sensitive

	prompt *prompt // play
}

// audio reports whether the rule watches audio (else transcripts).
func (r *Rule) audio() bool {
	switch r.Kind {
	case KindShouting, KindClipping, KindDeadAir, KindDominating:
		return true
	}
	return false
}

// Rules is a parsed rules file.
type Rules struct {
	List   []*Rule
	Source string // the file, or "default"
}

// fields each kind allows, besides name, kind, action, prompt and cooldown.
var kindFields = map[RuleKind][]string{
	KindShouting:   {"level", "for"},
	KindClipping:   {"ratio", "for"},
	KindDeadAir:    {"for"},
	KindDominating: {"share", "after"},
	KindKeywords:   {"words"},
	KindRegex:      {"pattern"},
	KindSensitive:  {"types"},
}

// ParseRules reads a rules file, YAML or JSON (JSON is YAML). An error names
// the line; source names the file in it.
func ParseRules(data []byte, source string) (rs *Rules, err error) {
	// A rules file is read again while the moderator runs: a parser bug
	// (ours or the YAML library's) must refuse the file, not stop calls
	// being moderated.
	defer func() {
		if p := recover(); p != nil {
			rs, err = nil, fmt.Errorf("%w: %s: the parser failed on this file: %v", ErrRules, source, p)
		}
	}()
	fail := func(line int, format string, args ...any) error {
		return fmt.Errorf("%w: %s line %d: %s", ErrRules, source, line, fmt.Sprintf(format, args...))
	}
	var doc yaml.Node
	if err := yaml.Unmarshal(data, &doc); err != nil {
		// yaml's own errors name the line already.
		return nil, fmt.Errorf("%w: %s: %w", ErrRules, source, err)
	}
	if len(doc.Content) == 0 {
		return nil, fail(1, "empty file: want a map with a rules list")
	}
	root := doc.Content[0]
	if root.Kind != yaml.MappingNode {
		return nil, fail(root.Line, "want a map with a rules list")
	}
	var list *yaml.Node
	for i := 0; i+1 < len(root.Content); i += 2 {
		if k := root.Content[i]; k.Value == "rules" {
			list = root.Content[i+1]
		} else {
			return nil, fail(k.Line, "unknown key %q (want rules)", k.Value)
		}
	}
	if list == nil || list.Kind != yaml.SequenceNode {
		return nil, fail(root.Line, "want a rules list")
	}
	rs = &Rules{Source: source}
	names := map[string]bool{}
	for _, n := range list.Content {
		r, err := parseRule(n, fail)
		if err != nil {
			return nil, err
		}
		if names[r.Name] {
			return nil, fail(n.Line, "rule %q defined twice", r.Name)
		}
		names[r.Name] = true
		rs.List = append(rs.List, r)
	}
	return rs, nil
}

func parseRule(n *yaml.Node, fail func(int, string, ...any) error) (*Rule, error) {
	if n.Kind != yaml.MappingNode {
		return nil, fail(n.Line, "a rule is a map")
	}
	fields := map[string]*yaml.Node{}
	for i := 0; i+1 < len(n.Content); i += 2 {
		fields[n.Content[i].Value] = n.Content[i+1]
	}
	r := &Rule{Line: n.Line, Action: ActionEvent, Cooldown: 30 * time.Second}
	str := func(key string, dst *string) error {
		if v, ok := fields[key]; ok {
			if v.Kind != yaml.ScalarNode {
				return fail(v.Line, "%s: want a text", key)
			}
			*dst = v.Value
		}
		return nil
	}
	num := func(key string, dst *float64, lo, hi float64) error {
		v, ok := fields[key]
		if !ok {
			return fail(n.Line, "rule %q: %s is required", r.Name, key)
		}
		if err := v.Decode(dst); err != nil || *dst < lo || *dst > hi {
			return fail(v.Line, "%s: want a number from %g to %g", key, lo, hi)
		}
		return nil
	}
	dur := func(key string, dst *time.Duration, required bool) error {
		v, ok := fields[key]
		if !ok {
			if required {
				return fail(n.Line, "rule %q: %s is required", r.Name, key)
			}
			return nil
		}
		d, err := time.ParseDuration(v.Value)
		if err != nil || d <= 0 {
			return fail(v.Line, "%s: want a duration such as 2s or 500ms", key)
		}
		*dst = d
		return nil
	}
	var kind string
	if err := errors.Join(str("name", &r.Name), str("kind", &kind), str("action", &r.Action)); err != nil {
		return nil, err
	}
	r.Kind = RuleKind(kind)
	if r.Name == "" {
		return nil, fail(n.Line, "a rule needs a name")
	}
	allowed, ok := kindFields[r.Kind]
	if !ok {
		return nil, fail(n.Line, "rule %q: unknown kind %q (want one of %s)", r.Name, r.Kind, kindList())
	}
	for i := 0; i < len(n.Content); i += 2 {
		k := n.Content[i]
		if !slices.Contains(allowed, k.Value) && !slices.Contains([]string{"name", "kind", "action", "prompt", "cooldown"}, k.Value) {
			return nil, fail(k.Line, "rule %q: unknown field %q for kind %s", r.Name, k.Value, r.Kind)
		}
	}
	if err := dur("cooldown", &r.Cooldown, false); err != nil {
		return nil, err
	}
	var err error
	switch r.Kind {
	case KindShouting:
		err = errors.Join(num("level", &r.Level, -60, 0), dur("for", &r.For, true))
	case KindClipping:
		err = errors.Join(num("ratio", &r.Ratio, 0.001, 1), dur("for", &r.For, true))
	case KindDeadAir:
		err = dur("for", &r.For, true)
	case KindDominating:
		err = errors.Join(num("share", &r.Share, 0.5, 1), dur("after", &r.After, true))
	case KindKeywords:
		v, ok := fields["words"]
		var list []string
		if !ok || v.Decode(&list) != nil || len(list) == 0 {
			return nil, fail(n.Line, "rule %q: words: want a list of words and phrases", r.Name)
		}
		r.phrases = newPhrases(list)
	case KindRegex:
		var pat string
		if err := str("pattern", &pat); err != nil {
			return nil, err
		}
		v, ok := fields["pattern"]
		if !ok || pat == "" {
			return nil, fail(n.Line, "rule %q: pattern is required", r.Name)
		}
		if r.re, err = regexp.Compile(pat); err != nil {
			return nil, fail(v.Line, "rule %q: pattern: %v", r.Name, err)
		}
	case KindSensitive:
		v, ok := fields["types"]
		if !ok || v.Decode(&r.types) != nil || len(r.types) == 0 {
			return nil, fail(n.Line, "rule %q: types: want a list of card, email, phone", r.Name)
		}
		for _, t := range r.types {
			if t != Card && t != Email && t != Phone {
				return nil, fail(v.Line, "rule %q: unknown type %q (want card, email, phone)", r.Name, t)
			}
		}
	}
	if err != nil {
		return nil, err
	}
	switch r.Action {
	case ActionEvent, ActionStop:
	case ActionPlay:
		v, ok := fields["prompt"]
		if !ok {
			return nil, fail(n.Line, "rule %q: action play needs a prompt", r.Name)
		}
		if r.prompt, err = parsePrompt(v, fail); err != nil {
			return nil, err
		}
	default:
		return nil, fail(fields["action"].Line, "rule %q: unknown action %q (want event, play or stop)", r.Name, r.Action)
	}
	return r, nil
}

func kindList() string {
	var ks []string
	for k := range kindFields {
		ks = append(ks, string(k))
	}
	slices.Sort(ks)
	return strings.Join(ks, ", ")
}

// prompt is audio to play into a call: a tone, or a WAV file's samples.
type prompt struct {
	tone     float64
	duration time.Duration
	pcm      []byte // a WAV file's, 16-bit mono
	rate     int
}

func parsePrompt(n *yaml.Node, fail func(int, string, ...any) error) (*prompt, error) {
	var p struct {
		Tone     float64 `yaml:"tone"`
		Duration string  `yaml:"duration"`
		WAV      string  `yaml:"wav"`
	}
	if err := n.Decode(&p); err != nil {
		return nil, fail(n.Line, "prompt: want {tone: <Hz>, duration: <time>} or {wav: <file>}")
	}
	switch {
	case p.WAV != "":
		pcm, rate, err := speech.LoadWAV(p.WAV)
		if err != nil {
			return nil, fail(n.Line, "prompt: %v", err)
		}
		return &prompt{pcm: pcm, rate: rate}, nil
	case p.Tone > 0 && p.Tone < 8000:
		d, err := time.ParseDuration(p.Duration)
		if err != nil || d <= 0 || d > 30*time.Second {
			return nil, fail(n.Line, "prompt: duration: want up to 30s")
		}
		return &prompt{tone: p.Tone, duration: d}, nil
	}
	return nil, fail(n.Line, "prompt: want a tone from 1 to 7999 Hz with a duration, or a wav file")
}

// pcm renders the prompt at rate: 16-bit little-endian mono.
func (p *prompt) pcm16(rate int) []byte {
	if p.pcm == nil {
		n := int(p.duration * time.Duration(rate) / time.Second)
		out := make([]byte, 2*n)
		fade := rate / 100 // 10 ms in and out: no clicks
		for i := range n {
			g := min(1, float64(i)/float64(fade), float64(n-1-i)/float64(fade))
			v := int16(8000 * g * math.Sin(2*math.Pi*p.tone*float64(i)/float64(rate)))
			out[2*i], out[2*i+1] = byte(v), byte(uint16(v)>>8)
		}
		return out
	}
	if p.rate == rate {
		return append([]byte{}, p.pcm...)
	}
	return speech.Resample(p.pcm, p.rate, rate)
}
