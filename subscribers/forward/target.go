package forward

import (
	"errors"
	"fmt"
	"net/url"
	"regexp"
	"slices"
	"strings"
)

// Kind is what a target can be sent besides nothing: a call's audio, its
// DTMF tones, its transcripts.
type Kind string

// The kinds a target asks for (`kinds=` in its URL's fragment).
const (
	KindAudio      Kind = "audio"
	KindDtmf       Kind = "dtmf"
	KindTranscript Kind = "transcript"
)

// Target is one configured service.
type Target struct {
	// Name labels its metrics and logs: letters, digits and '-'.
	Name string
	// URL is dialled for every call: ws:// or wss://, as configured,
	// without the fragment (audiofan's options, never sent).
	URL string
	// Kinds are what it is sent.
	Kinds []Kind
	// TokenFile, when set, holds a bearer token sent as Authorization at
	// every dial (read each time, so a rotated secret is picked up);
	// AuthFile holds a whole Authorization header value instead.
	TokenFile, AuthFile string
	// Speak: what the target sends back goes into the call. Off, its
	// messages are dropped (counted).
	Speak bool
}

// Wants says whether the target is sent messages of kind k.
func (t *Target) Wants(k Kind) bool { return slices.Contains(t.Kinds, k) }

var targetName = regexp.MustCompile(`^[A-Za-z0-9][A-Za-z0-9-]{0,62}$`)

// ErrTarget is a target the settings cannot be read as.
var ErrTarget = errors.New("AUDIOFAN_FORWARD_URL")

// ParseTargets reads AUDIOFAN_FORWARD_URL: comma-separated ws:// or wss://
// URLs (a comma starts a new one where a URL follows it), each with its
// options in its fragment, which is never sent:
//
//	wss://bot.example.com/ws#name=bot&kinds=audio,dtmf&token_file=/run/secrets/bot
//
// Options: name (default: the host's first label), kinds (audio, dtmf,
// transcript; default audio), token_file or auth_file, speak (true or
// false; default true). A URL with a user or password is refused: a
// secret belongs in a file, not in a setting that is logged.
func ParseTargets(list string) ([]Target, error) {
	var out []Target
	for _, raw := range splitTargets(list) {
		t, err := parseTarget(raw)
		if err != nil {
			return nil, err
		}
		if slices.ContainsFunc(out, func(o Target) bool { return o.Name == t.Name }) {
			return nil, fmt.Errorf("%w: two targets named %q: give each its own name= in its fragment", ErrTarget, t.Name)
		}
		out = append(out, t)
	}
	return out, nil
}

// splitTargets splits the list at the commas that start a new URL (a
// comma followed by ws:// or wss://): kinds= lists its kinds with commas.
func splitTargets(list string) []string {
	var out []string
	for f := range strings.SplitSeq(list, ",") {
		t := strings.TrimSpace(f)
		switch {
		case t == "":
		case len(out) == 0 || strings.Contains(t, "://"):
			out = append(out, t)
		default:
			out[len(out)-1] += "," + t
		}
	}
	return out
}

func parseTarget(raw string) (Target, error) {
	u, err := url.Parse(raw)
	if err != nil {
		return Target{}, fmt.Errorf("%w: %v", ErrTarget, err)
	}
	if u.Scheme != "ws" && u.Scheme != "wss" {
		return Target{}, fmt.Errorf("%w: %s: the scheme must be ws or wss", ErrTarget, u.Redacted())
	}
	if u.Host == "" {
		return Target{}, fmt.Errorf("%w: %s: no host", ErrTarget, u.Redacted())
	}
	if u.User != nil {
		return Target{}, fmt.Errorf("%w: %s: credentials in the URL; put them in a file (token_file= or auth_file=)", ErrTarget, u.Redacted())
	}
	opts, err := url.ParseQuery(u.Fragment)
	if err != nil {
		return Target{}, fmt.Errorf("%w: %s: options after #: %v", ErrTarget, u.Redacted(), err)
	}
	u.Fragment, u.RawFragment = "", ""
	t := Target{URL: u.String(), Name: strings.Split(u.Hostname(), ".")[0], Kinds: []Kind{KindAudio}, Speak: true}
	for k, vs := range opts {
		v := vs[len(vs)-1]
		switch k {
		case "name":
			t.Name = v
		case "kinds":
			t.Kinds = nil
			for f := range strings.SplitSeq(v, ",") {
				switch k := Kind(strings.TrimSpace(f)); k {
				case KindAudio, KindDtmf, KindTranscript:
					if !slices.Contains(t.Kinds, k) {
						t.Kinds = append(t.Kinds, k)
					}
				default:
					return Target{}, fmt.Errorf("%w: %s: kind %q: want audio, dtmf or transcript", ErrTarget, t.URL, f)
				}
			}
			if len(t.Kinds) == 0 {
				return Target{}, fmt.Errorf("%w: %s: kinds= is empty", ErrTarget, t.URL)
			}
		case "token_file":
			t.TokenFile = v
		case "auth_file":
			t.AuthFile = v
		case "speak":
			switch v {
			case "true":
				t.Speak = true
			case "false":
				t.Speak = false
			default:
				return Target{}, fmt.Errorf("%w: %s: speak=%q: want true or false", ErrTarget, t.URL, v)
			}
		default:
			return Target{}, fmt.Errorf("%w: %s: unknown option %q (name, kinds, token_file, auth_file, speak)", ErrTarget, t.URL, k)
		}
	}
	if t.TokenFile != "" && t.AuthFile != "" {
		return Target{}, fmt.Errorf("%w: %s: token_file and auth_file both set", ErrTarget, t.URL)
	}
	if !targetName.MatchString(t.Name) {
		return Target{}, fmt.Errorf("%w: %s: name %q: letters, digits and '-', up to 63", ErrTarget, t.URL, t.Name)
	}
	return t, nil
}
