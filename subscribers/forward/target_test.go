package forward

import (
	"errors"
	"slices"
	"strings"
	"testing"
)

func TestParseTargets(t *testing.T) {
	ts, err := ParseTargets(" wss://bot.example.com/media?tenant=a#name=bot&kinds=audio,dtmf,transcript&token_file=/run/secrets/bot , ws://127.0.0.1:9000/ws#speak=false")
	if err != nil {
		t.Fatal(err)
	}
	if len(ts) != 2 {
		t.Fatalf("%d targets", len(ts))
	}
	bot := ts[0]
	if bot.Name != "bot" || bot.URL != "wss://bot.example.com/media?tenant=a" || bot.TokenFile != "/run/secrets/bot" || !bot.Speak ||
		!slices.Equal(bot.Kinds, []Kind{KindAudio, KindDtmf, KindTranscript}) {
		t.Errorf("bot: %+v", bot)
	}
	local := ts[1]
	if local.Name != "127" || local.URL != "ws://127.0.0.1:9000/ws" || local.Speak || !slices.Equal(local.Kinds, []Kind{KindAudio}) || !local.Wants(KindAudio) || local.Wants(KindDtmf) {
		t.Errorf("local: %+v", local)
	}
	if ts, err := ParseTargets(""); err != nil || len(ts) != 0 {
		t.Errorf("empty: %v, %v", ts, err)
	}
	for _, bad := range []string{
		"http://bot.example.com/ws",                         // not a WebSocket
		"wss:///ws",                                         // no host
		"wss://user:secret@bot.example.com/ws",              // a secret in a setting
		"wss://bot.example.com/ws#kinds=video",              // no such kind
		"wss://bot.example.com/ws#kinds=",                   // nothing
		"wss://bot.example.com/ws#colour=blue",              // no such option
		"wss://bot.example.com/ws#speak=maybe",              // not a bool
		"wss://bot.example.com/ws#name=a b",                 // not a label
		"wss://a.example.com/ws,wss://a.example.org/ws",     // both named a
		"wss://bot.example.com/ws#token_file=x&auth_file=y", // two credentials
	} {
		if _, err := ParseTargets(bad); !errors.Is(err, ErrTarget) {
			t.Errorf("%q: %v, want ErrTarget", bad, err)
		}
	}
	if _, err := ParseTargets("wss://user:secret@bot.example.com/ws"); err == nil || strings.Contains(err.Error(), "secret") {
		t.Errorf("the refusal shows the password: %v", err)
	}
}
